"""FLOP counts and model FLOP utilisation (MFU).

Conventions (as in PaLM's MFU, Chowdhery et al. 2022, appendix B): a matmul of [m, k] by
[k, n] costs ``2 m k n`` FLOPs; element-wise work (norms, activations, softmax) and embedding
lookups are not counted; the backward pass costs twice the forward, so a training step is
``3 x`` forward. Attention is counted over the padded length ``L`` because SDPA computes the
masked scores too.

Forward FLOPs per token of one transformer layer (``d`` = d_model, ``f`` = ff_hidden)::

    QKV projection      2 * d * 3d      = 6 d^2
    scores  Q K^T       2 * L * d             (all heads together)
    weights x V         2 * L * d
    output projection   2 * d * d       = 2 d^2
    feed-forward        GELU 4 d f, SwiGLU 6 d f (gate, up, down)

plus, for float values, the value MLP ``2 d + 2 d^2``. Heads of the objectives are not
included (they run on the masked positions only).
"""

from __future__ import annotations

from scfm.models.config import ModelConfig

#: Peak dense (no structured sparsity) BF16 tensor-core FLOP/s per GPU, from NVIDIA's data
#: sheets, which print the sparse figure (2x) next to the dense one:
#: A100 SXM4/PCIe: "BF16 Tensor Core 312 TFLOPS | 624 TFLOPS*" (NVIDIA A100 Tensor Core GPU
#: data sheet); H100 SXM: "BF16 Tensor Core 1,979 teraFLOPS*" with sparsity, i.e. 989.4 dense,
#: H100 PCIe 1,513* -> 756, H100 NVL 1,671* -> 835 (NVIDIA H100 Tensor Core GPU data sheet;
#: torchtitan's ``get_peak_flops`` uses the same dense figures); H200 SXM as H100 SXM
#: (H200 data sheet); L40S "BF16 Tensor Core 362.05 | 733*" (L40S data sheet); A10
#: "BF16 Tensor Core 125 | 250*" (A10 data sheet); L4 "BF16 Tensor Core 242 TFLOPS*" with
#: sparsity -> 121 (L4 data sheet).
PEAK_FLOPS_BF16: dict[str, float] = {
    "A100": 312e12,
    "H100 SXM": 989.4e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989.4e12,
    "L40S": 362.05e12,
    "A10": 125e12,
    "L4": 121e12,
}

# torch.cuda.get_device_name() substrings -> table key, most specific first.
_DEVICE_PATTERNS = (
    ("H100 PCIE", "H100 PCIe"),
    ("H100 NVL", "H100 NVL"),
    ("H100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("H200", "H200"),
    ("A100", "A100"),
    ("L40S", "L40S"),
    ("A10G", None),  # AWS part with lower clocks than the A10: unknown, not guessed
    ("A10", "A10"),
    ("L4", "L4"),
)


def peak_flops_for_device(device_name: str) -> float | None:
    """Peak dense BF16 FLOP/s for a ``torch.cuda.get_device_name()`` string, None if unknown."""
    name = device_name.upper()
    for pattern, key in _DEVICE_PATTERNS:
        if pattern in name:
            return PEAK_FLOPS_BF16[key] if key is not None else None
    return None


def transformer_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of :class:`~scfm.models.transformer.CellTransformer`.

    ``seq_len`` is the padded batch length L (attention cost grows with it).
    """
    d, f, L = cfg.d_model, cfg.ff_hidden, seq_len
    ff = (6 if cfg.activation == "swiglu" else 4) * d * f
    per_layer = 6 * d * d + 2 * d * d + 4 * L * d + ff
    value = 2 * d + 2 * d * d if cfg.value_kind == "float" else 0
    return float(cfg.n_layers * per_layer + value)


def panel_flops_per_cell(cfg: ModelConfig, n_inputs: int) -> float:
    """Forward FLOPs per cell of a panel MLP/VAE whose encoder reads ``n_inputs`` features."""
    h, z, d = cfg.hidden, cfg.latent_dim, cfg.d_model
    encoder = 2 * n_inputs * h + 2 * h * h + 2 * h * z * (2 if cfg.kind == "vae" else 1)
    decoder = 2 * z * h + 2 * h * d
    return float(encoder + decoder)


def mfu(
    tokens_per_s: float, flops_per_token: float, peak_flops: float, *, training: bool = True
) -> float:
    """Model FLOP utilisation: achieved FLOP/s over ``peak_flops``.

    Parameters
    ----------
    tokens_per_s
        Tokens (padded positions) processed per second, over all devices counted in
        ``peak_flops``.
    flops_per_token
        *Forward* FLOPs per token, e.g. ``model.flops_per_token(seq_len)``.
    peak_flops
        Peak FLOP/s of the hardware (e.g. ``PEAK_FLOPS_BF16["A100"] * n_gpus``).
    training
        Count forward + backward (``3 x`` forward); False for inference.
    """
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be > 0, got {peak_flops}")
    return tokens_per_s * flops_per_token * (3.0 if training else 1.0) / peak_flops
