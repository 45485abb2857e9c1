"""ModelConfig: the one validated dataclass behind every model, and its size presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from scfm.errors import ScfmConfigError
from scfm.spec import max_len_problems, tokens_per_cell

ModelKind = Literal["transformer", "mlp", "vae"]
ValueKind = Literal["bin", "count", "float", "none"]

MODEL_KINDS = ("transformer", "mlp", "vae")
VALUE_KINDS = ("bin", "count", "float", "none")

#: Transformer sizes: "tiny" for CPU tests, "base" for real runs (12 layers, 512 wide, 8 heads).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layers": 2, "d_model": 64, "n_heads": 4},
    "small": {"n_layers": 4, "d_model": 256, "n_heads": 4},
    "base": {"n_layers": 12, "d_model": 512, "n_heads": 8},
}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of one model; stored next to the weights in every checkpoint.

    Parameters
    ----------
    kind
        "transformer", or a panel baseline "mlp" / "vae" (see :mod:`scfm.models.baseline`).
    vocab_size
        Token vocabulary size (special tokens + genes), from the corpus manifest.
    value_kind
        The corpus ``value_kind``: "bin"/"count" (value tokens), "float" or "none".
    n_value_tokens
        Bins or count tokens (bin/count only). The value embedding has ``n_value_tokens + 1``
        rows: the extra one is the mask value the collator writes at masked positions.
    max_len
        Genes per cell, without ``<cls>`` (the corpus' ``max_len``); the positional embedding,
        when there is one, has :attr:`n_positions` rows (``<cls>`` and the genes).
    d_model, n_layers, n_heads
        Transformer width, depth and heads (``d_model % n_heads == 0``). The panel baselines
        use ``d_model`` as the width of their per-position decoder features.
    d_ff
        Feed-forward width; ``None`` means ``4 * d_model``. SwiGLU uses 2/3 of it, rounded
        to a multiple of 8, so that both activations have about the same parameter count.
    activation
        "gelu" or "swiglu".
    dropout
        Dropout on embeddings, attention probabilities and residual branches.
    pooling
        Cell embedding: the ``<cls>`` state ("cls") or the mean of the gene states ("mean").
    n_conditions
        Size of the learned condition table (batch, modality, ...); 0 disables it. Models add
        ``sum_c emb[batch["conditions"][:, c]]`` to every token (negative ids are skipped).
    positional
        Learned position embeddings; ``None`` means only for value kind "none", where the
        order of the gene tokens is the information (rank encoding).
    hidden, latent_dim
        Panel baselines: hidden width and bottleneck (cell embedding) size.
    panel_size
        Panel baselines: the panel is gene ids ``[0, panel_size)`` (``None``: the whole
        vocabulary), unless ``panel_genes`` lists the ids explicitly (e.g. HVGs).
    panel_genes
        Panel baselines: explicit token ids of the panel, in column order.
    norm_eps
        LayerNorm epsilon.
    """

    kind: ModelKind = "transformer"
    vocab_size: int
    value_kind: ValueKind
    n_value_tokens: int | None = None
    max_len: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None
    activation: Literal["gelu", "swiglu"] = "gelu"
    dropout: float = 0.0
    pooling: Literal["cls", "mean"] = "cls"
    n_conditions: int = 0
    positional: bool | None = None
    hidden: int = 256
    latent_dim: int = 32
    panel_size: int | None = None
    panel_genes: tuple[int, ...] | None = None
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if isinstance(self.panel_genes, list):
            object.__setattr__(self, "panel_genes", tuple(self.panel_genes))
        problems = []
        if self.kind not in MODEL_KINDS:
            problems.append(f"kind: {self.kind!r} is not one of {MODEL_KINDS}")
        if self.value_kind not in VALUE_KINDS:
            problems.append(f"value_kind: {self.value_kind!r} is not one of {VALUE_KINDS}")
        problems += max_len_problems(self.max_len)
        for name, low in (
            ("vocab_size", 3),
            ("d_model", 1),
            ("n_layers", 1),
            ("n_heads", 1),
            ("hidden", 1),
            ("latent_dim", 1),
            ("n_conditions", 0),
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                problems.append(f"{name}: {value!r} is not an integer >= {low}")
        if self.value_kind in ("bin", "count"):
            if not _is_int(self.n_value_tokens) or self.n_value_tokens < 2:
                problems.append(
                    f"n_value_tokens: {self.n_value_tokens!r} is not an integer >= 2 "
                    f"(needed for value_kind {self.value_kind!r})"
                )
        elif self.n_value_tokens is not None:
            problems.append(f"n_value_tokens: must be null for value_kind {self.value_kind!r}")
        heads_ok = _is_int(self.d_model) and _is_int(self.n_heads) and self.n_heads > 0
        if heads_ok and self.kind == "transformer" and self.d_model % self.n_heads:
            problems.append(f"d_model: {self.d_model} is not divisible by n_heads")
        if self.d_ff is not None and (not _is_int(self.d_ff) or self.d_ff < 1):
            problems.append(f"d_ff: {self.d_ff!r} is not null or an integer >= 1")
        if self.activation not in ("gelu", "swiglu"):
            problems.append(f"activation: {self.activation!r} is not 'gelu' or 'swiglu'")
        if self.pooling not in ("cls", "mean"):
            problems.append(f"pooling: {self.pooling!r} is not 'cls' or 'mean'")
        drop = self.dropout
        if isinstance(drop, bool) or not isinstance(drop, int | float) or not 0 <= drop < 1:
            problems.append(f"dropout: {drop!r} is not a number in [0, 1)")
        if self.positional is not None and not isinstance(self.positional, bool):
            problems.append(f"positional: {self.positional!r} is not null or a boolean")
        if not isinstance(self.norm_eps, float) or not self.norm_eps > 0:
            problems.append(f"norm_eps: {self.norm_eps!r} is not a positive float")
        problems += self._panel_problems()
        if problems:
            raise ScfmConfigError(problems, source="ModelConfig")

    def _panel_problems(self) -> list[str]:
        if self.panel_genes is not None:
            ids = self.panel_genes
            if not ids or not all(_is_int(i) for i in ids):
                return ["panel_genes: not a non-empty list of integer token ids"]
            if self.panel_size is not None:
                return ["panel_size: give panel_size or panel_genes, not both"]
            if len(set(ids)) != len(ids):
                return ["panel_genes: contains duplicates"]
            if _is_int(self.vocab_size) and not all(0 < i < self.vocab_size for i in ids):
                return [f"panel_genes: ids must lie in [1, vocab_size={self.vocab_size})"]
        elif self.panel_size is not None:
            vocab = self.vocab_size if _is_int(self.vocab_size) else None
            if not _is_int(self.panel_size) or self.panel_size < 2:
                return [f"panel_size: {self.panel_size!r} is not null or an integer >= 2"]
            if vocab is not None and self.panel_size > vocab:
                return [f"panel_size: {self.panel_size} > vocab_size {vocab}"]
        return []

    # ------------------------------------------------------------------ derived sizes

    @property
    def ff_hidden(self) -> int:
        """Feed-forward hidden width actually used (2/3 of ``d_ff`` for SwiGLU, 8-aligned)."""
        d_ff = self.d_ff or 4 * self.d_model
        if self.activation == "swiglu":
            return max(8, round(2 * d_ff / 3 / 8) * 8)
        return d_ff

    @property
    def n_positions(self) -> int:
        """Longest token sequence of a cell: ``<cls>`` plus ``max_len`` genes."""
        return tokens_per_cell(self.max_len)

    @property
    def use_positional(self) -> bool:
        """Whether the transformer adds learned position embeddings."""
        return self.value_kind == "none" if self.positional is None else self.positional

    @property
    def embedding_dim(self) -> int:
        """Width of ``cell_embedding``: ``d_model`` (transformer) or ``latent_dim`` (panel)."""
        return self.d_model if self.kind == "transformer" else self.latent_dim

    @property
    def state_dim(self) -> int:
        """Width of ``position_states`` (what the objectives' heads read): ``d_model``."""
        return self.d_model

    @property
    def n_classes(self) -> int | None:
        """Classes of the value (or, for "none", gene) prediction: None for float values."""
        return {"bin": self.n_value_tokens, "count": self.n_value_tokens}.get(
            self.value_kind, self.vocab_size if self.value_kind == "none" else None
        )

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON/checkpoint friendly); ``from_dict`` inverts it."""
        out = dataclasses.asdict(self)
        if out["panel_genes"] is not None:
            out["panel_genes"] = list(out["panel_genes"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> ModelConfig:
        """Config from a mapping; an optional ``preset`` key fills the sizes it names.

        Keys given explicitly (in ``data`` or ``overrides``) win over the preset's.

        Raises
        ------
        ScfmConfigError
            Unknown keys or preset, or any invalid value.
        """
        data = {**data, **overrides}
        preset = data.pop("preset", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        problems = [f"{k}: unknown key" for k in data if k not in fields]
        if preset is not None and preset not in PRESETS:
            problems.append(f"preset: {preset!r} is not one of {sorted(PRESETS)}")
        if problems:
            raise ScfmConfigError(problems, source="ModelConfig")
        base = dict(PRESETS[preset]) if preset is not None else {}
        missing = [k for k in ("vocab_size", "value_kind", "max_len") if k not in data]
        if missing:
            raise ScfmConfigError([f"{k}: missing" for k in missing], source="ModelConfig")
        return cls(**{**base, **data})

    @classmethod
    def preset(cls, name: str, **fields: Any) -> ModelConfig:
        """Config from a named preset ("tiny", "small", "base") plus the given fields."""
        return cls.from_dict({"preset": name, **fields})


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
