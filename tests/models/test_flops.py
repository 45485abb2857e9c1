"""FLOP arithmetic: hand counts, torch's FlopCounterMode, MFU and the peak table."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scfm.models import (
    PEAK_FLOPS_BF16,
    ModelConfig,
    build_model,
    mfu,
    peak_flops_for_device,
    transformer_flops_per_token,
)


def tiny(**kw) -> ModelConfig:
    fields = dict(vocab_size=50, value_kind="bin", n_value_tokens=8, max_len=32)
    return ModelConfig.preset("tiny", **{**fields, **kw})


def test_hand_count_tiny() -> None:
    # d=64, L=16, 2 layers, GELU d_ff=256, per token and layer:
    # qkv 2*64*192 = 24576, scores 2*16*64 = 2048, weights x V 2048, out 2*64*64 = 8192,
    # ff 2*64*256 * 2 = 65536  ->  102400
    assert transformer_flops_per_token(tiny(), 16) == 2 * 102400
    # SwiGLU: hidden 2/3 * 256 -> 168; ff = 3 matmuls of 2*64*168 = 64512
    assert tiny(activation="swiglu").ff_hidden == 168
    assert transformer_flops_per_token(tiny(activation="swiglu"), 16) == 2 * (
        24576 + 2048 + 2048 + 8192 + 64512
    )
    # float values add the value MLP: 2*1*64 + 2*64*64
    assert (
        transformer_flops_per_token(tiny(value_kind="float", n_value_tokens=None), 16)
        == 2 * 102400 + 128 + 8192
    )
    # attention grows linearly with L per token
    assert transformer_flops_per_token(tiny(), 32) - transformer_flops_per_token(tiny(), 16) == (
        2 * 4 * 16 * 64
    )


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"activation": "swiglu", "value_kind": "float", "n_value_tokens": None},
        {"value_kind": "none", "n_value_tokens": None, "n_heads": 2},
    ],
)
def test_matches_torch_flop_counter(kw: dict) -> None:
    cfg = tiny(**kw)
    model = build_model(cfg)
    b, n = 3, 20
    batch = {
        "genes": torch.randint(6, 50, (b, n)),
        "padding_mask": torch.arange(n)[None, :] >= torch.tensor([[20], [12], [5]]),
    }
    if cfg.value_kind == "float":
        batch["values"] = torch.rand(b, n)
    elif cfg.value_kind == "bin":
        batch["values"] = torch.randint(0, 8, (b, n))
    # The math backend decomposes attention into matmuls the counter sees (the fused CPU
    # kernel has no FLOP formula).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch)
    counted = counter.get_total_flops()
    ours = model.flops_per_token(n) * b * n
    assert ours == pytest.approx(counted, rel=0.1)


def test_mfu_arithmetic() -> None:
    # 1000 tok/s * 1e9 FLOPs/token * 3 (fwd + bwd) = 3e12 FLOP/s
    assert mfu(1000, 1e9, 3e12) == pytest.approx(1.0)
    assert mfu(1000, 1e9, 3e12, training=False) == pytest.approx(1 / 3)
    assert mfu(2e5, tiny().n_layers * 1e6, PEAK_FLOPS_BF16["A100"]) == pytest.approx(
        2e5 * 2e6 * 3 / 312e12
    )
    with pytest.raises(ValueError):
        mfu(1, 1, 0)


def test_peak_table_and_device_names() -> None:
    assert PEAK_FLOPS_BF16["A100"] == 312e12
    assert PEAK_FLOPS_BF16["H100 SXM"] == pytest.approx(989e12, rel=1e-3)
    assert peak_flops_for_device("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_device("NVIDIA H100 80GB HBM3") == PEAK_FLOPS_BF16["H100 SXM"]
    assert peak_flops_for_device("NVIDIA H100 PCIe") == PEAK_FLOPS_BF16["H100 PCIe"]
    assert peak_flops_for_device("NVIDIA A10G") is None
    assert peak_flops_for_device("Quadro P1000") is None


def test_panel_models_report_flops() -> None:
    cfg = tiny(kind="mlp", hidden=32, latent_dim=8, panel_size=40)
    model = build_model(cfg)
    batch = {
        "genes": torch.randint(6, 50, (2, 10)),
        "values": torch.randint(0, 8, (2, 10)),
        "padding_mask": torch.zeros(2, 10, dtype=torch.bool),
    }
    with FlopCounterMode(display=False) as counter:
        model(batch)
    assert model.flops_per_token(10) * 2 * 10 == pytest.approx(counter.get_total_flops())
