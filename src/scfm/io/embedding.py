"""Embedding files: ``obs`` of the embedded cells and one ``obsm`` matrix, no expression.

Every method of a benchmark (trained runs and baselines) writes the same small h5ad:
``results/embed/<method>/<evalset>.h5ad`` with ``obsm["X_<method>"]``. It joins the data it
came from by ``obs_names``; the counts are not copied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError


def write_embedding(
    path: str | Path,
    obs: pd.DataFrame,
    key: str,
    embedding: np.ndarray,
    record: dict[str, Any] | None = None,
    *,
    stage: str = "embed",
) -> None:
    """Atomically write ``obs`` and ``obsm[key] = embedding`` (float32) to an h5ad file.

    ``record`` (JSON-serialisable) is the provenance, stored as JSON in ``uns["scfm"][stage]``
    like every scfm stage's record (read it with :func:`scfm.io.h5ad.provenance`).
    """
    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding.ndim != 2 or embedding.shape[0] != len(obs):
        raise ValueError(
            f"embedding of shape {embedding.shape} does not match {len(obs)} cells in obs"
        )
    if not np.isfinite(embedding).all():
        raise ValueError(f"{key}: embedding has NaN or infinite values")
    record = {"key": key, **(record or {})}
    out = ad.AnnData(
        obs=obs.copy(), obsm={key: embedding}, uns={"scfm": {stage: json.dumps(record)}}
    )
    with atomic_path(path, suffix=".h5ad") as tmp:
        out.write_h5ad(tmp)


def read_embedding(
    path: str | Path, key: str | None = None, *, obs_names: pd.Index | None = None
) -> np.ndarray:
    """Read one embedding matrix; with ``obs_names``, check it covers those cells in order.

    ``key`` defaults to the only ``obsm`` entry of the file.
    """
    adata = ad.read_h5ad(path)
    if key is None:
        if len(adata.obsm) != 1:
            raise ScfmInputError(
                path, "obsm", f"{len(adata.obsm)} matrices {list(adata.obsm)}", "exactly one"
            )
        key = next(iter(adata.obsm))
    if key not in adata.obsm:
        raise ScfmInputError(
            path, f"obsm[{key!r}]", "no such embedding", f"one of {list(adata.obsm)}"
        )
    emb = np.asarray(adata.obsm[key], dtype=np.float32)
    if obs_names is not None and not adata.obs_names.equals(pd.Index(obs_names)):
        raise ScfmInputError(
            path,
            "obs_names",
            "cells differ from the evaluation set (another subset or order)",
            "the cells of the evaluation set, in its order; rebuild the embedding",
        )
    if not np.isfinite(emb).all():
        raise ScfmInputError(path, f"obsm[{key!r}]", "NaN or infinite values", "finite values")
    return emb
