"""Small batches from the real Collator and matching tiny model configs for the model tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scfm.data import Collator
from scfm.models import ModelConfig

VOCAB = 60  # ids 0..5 special (pad, cls, mask, ...), genes 6..59
N_VALUES = 8
MAX_LEN = 16


def make_batch(
    value_kind: str, lengths: Sequence[int], *, mask_ratio: float = 0.3, seed: int = 0
) -> dict:
    """A batch from the real Collator, with synthetic cells of the given lengths."""
    rng = np.random.default_rng(seed)
    collator = Collator(
        max_len=MAX_LEN,
        value_kind=value_kind,
        n_value_tokens=N_VALUES if value_kind in ("bin", "count") else None,
        mask_id=2,
        mask_ratio=mask_ratio,
    )
    genes = [rng.choice(np.arange(6, VOCAB), k, replace=False) for k in lengths]
    values = None
    if value_kind == "float":
        values = [rng.random(k).astype(np.float32) * 3 for k in lengths]
    elif value_kind != "none":
        values = [rng.integers(0, N_VALUES, k) for k in lengths]
    return collator(genes, values, rng=rng)


def make_cfg(value_kind: str, **kw) -> ModelConfig:
    """A tiny model config for ``value_kind`` (overrides in ``kw``)."""
    nvt = N_VALUES if value_kind in ("bin", "count") else None
    fields = dict(vocab_size=VOCAB, value_kind=value_kind, n_value_tokens=nvt, max_len=MAX_LEN)
    return ModelConfig.preset("tiny", **{**fields, "hidden": 32, "latent_dim": 8, **kw})
