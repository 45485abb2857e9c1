"""Evaluation sets: the cells, keys and gene selection every method of a benchmark shares.

An evaluation set is one QC'd dataset (raw integer counts) with a label key (cell types) and a
batch key, optionally a seeded random subset of its cells. Every baseline and trained model is
scored on exactly these cells, so their rows in the results table are comparable.

Evaluation sets are held in memory (they are sized for metrics whose cost grows faster than
linearly in the number of cells: silhouettes and kNN graphs); use ``max_cells`` for atlases.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from scfm import __version__
from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError

log = logging.getLogger("scfm.bench")

#: Metrics that compare batches (scib) or hold batches out (annotation): they need >= 2 groups.
_NEEDS_GROUPS = {"scib": "batch_key", "annotation": "split_key"}


def check_obs_keys(obs: pd.DataFrame, keys: dict[str, str | None], path: str | Path) -> None:
    """Stop with a clear error when a configured obs column is missing.

    ``keys`` maps the config name (``label_key``) to the column it names (``cell_type``).
    """
    for config_key, column in keys.items():
        if column is not None and column not in obs.columns:
            raise ScfmInputError(
                path,
                f"obs[{column!r}]",
                f"no such column (benchmarks.<name>.{config_key} = {column!r})",
                f"one of the obs columns: {', '.join(map(str, obs.columns))}",
            )


def prepare_evalset(
    qc_h5ad: str | Path,
    out_h5ad: str | Path,
    *,
    label_key: str,
    batch_key: str,
    split_key: str | None = None,
    metrics: Sequence[str] = ("scib", "scgraph", "annotation"),
    max_cells: int | None = None,
    seed: int = 0,
    n_hvg: int = 2000,
    name: str = "",
    exclude: pd.Index | None = None,
) -> ad.AnnData:
    """Write the evaluation set of one benchmark: counts, keys, highly variable genes.

    Cells whose label or batch is missing are dropped (and counted in the log). The output keeps
    ``X`` as raw integer counts (CSR) and all genes; ``var["highly_variable"]`` marks ``n_hvg``
    genes chosen by scanpy's ``seurat_v3`` flavour on counts with ``batch_key`` (Stuart et al.
    2019), which the pca, hvg and scvi baselines use. ``obs["scfm_label"]``,
    ``obs["scfm_batch"]`` and ``obs["scfm_split"]`` hold the keys as strings so metrics need no
    config. ``exclude``: cell IDs left out before any subset is drawn (cells a trained run saw,
    see :mod:`scfm.bench.leakage`).
    """
    qc_h5ad = Path(qc_h5ad)
    split_key = split_key or batch_key
    backed = ad.read_h5ad(qc_h5ad, backed="r")
    try:
        check_obs_keys(
            backed.obs,
            {"label_key": label_key, "batch_key": batch_key, "split_key": split_key},
            qc_h5ad,
        )
        rows = np.arange(backed.n_obs)
        if exclude is not None:
            rows = rows[~backed.obs_names.astype(str).isin(exclude)]
            log.info(
                "held out: %d of %d cells were trained on by a run and are left out",
                backed.n_obs - rows.size,
                backed.n_obs,
            )
            if rows.size == 0:
                raise ScfmInputError(
                    qc_h5ad,
                    "obs_names",
                    "every cell is in the training split of a run of this evaluation set",
                    "held-out cells (a corpus split with test > 0, or a dataset outside the "
                    "runs' corpora), or benchmarks.<name>.held_out: false",
                )
        if max_cells is not None and rows.size > max_cells:
            rng = np.random.default_rng(seed)
            n_eligible = rows.size
            rows = np.sort(rng.choice(rows, size=max_cells, replace=False))
            log.info("evaluating a seeded subset of %d of %d cells", max_cells, n_eligible)
        adata = backed[rows].to_memory()
    finally:
        backed.file.close()
    if not adata.obs_names.is_unique:
        log.warning("%s: obs_names are not unique; suffixes -1, -2, ... added", qc_h5ad)
        adata.obs_names_make_unique()

    keep = np.ones(adata.n_obs, dtype=bool)
    for column in dict.fromkeys([label_key, batch_key, split_key]):
        missing = adata.obs[column].isna().to_numpy()
        if missing.any():
            log.warning("dropping %d cells without obs[%r]", int(missing.sum()), column)
        keep &= ~missing
    if not keep.all():
        adata = adata[keep].copy()
    if adata.n_obs == 0:
        raise ScfmInputError(
            qc_h5ad, f"obs[{label_key!r}]", "no cell has a label", "labelled cells"
        )
    adata.obs["scfm_label"] = adata.obs[label_key].astype(str).astype("category")
    adata.obs["scfm_batch"] = adata.obs[batch_key].astype(str).astype("category")
    adata.obs["scfm_split"] = adata.obs[split_key].astype(str).astype("category")
    for metric, config_key in _NEEDS_GROUPS.items():
        column = {"batch_key": "scfm_batch", "split_key": "scfm_split"}[config_key]
        n_groups = adata.obs[column].nunique()
        if metric in metrics and n_groups < 2:
            key = batch_key if config_key == "batch_key" else split_key
            raise ScfmInputError(
                qc_h5ad,
                f"obs[{key!r}]",
                f"one group only ({adata.obs[column].iloc[0]!r}); metric {metric!r} compares or "
                "holds out groups",
                f"at least two values (benchmarks.<name>.{config_key}), or drop {metric!r} "
                "from benchmarks.<name>.metrics",
            )
    if adata.obs["scfm_label"].nunique() < 2:
        raise ScfmInputError(
            qc_h5ad, f"obs[{label_key!r}]", "one cell type only", "at least two cell types"
        )

    adata.X = sp.csr_matrix(adata.X)
    adata.var["highly_variable"] = highly_variable(adata, n_hvg, "scfm_batch")
    adata.uns["scfm_bench"] = {
        "name": name,
        "source": str(qc_h5ad),
        "label_key": label_key,
        "batch_key": batch_key,
        "split_key": split_key,
        "max_cells": -1 if max_cells is None else int(max_cells),
        "held_out": exclude is not None,
        "seed": int(seed),
        "n_hvg": int(adata.var["highly_variable"].sum()),
        "scfm_version": __version__,
    }
    log.info(
        "evaluation set %s: %d cells, %d cell types, %d batches, %d HVGs",
        name,
        adata.n_obs,
        adata.obs["scfm_label"].nunique(),
        adata.obs["scfm_batch"].nunique(),
        int(adata.var["highly_variable"].sum()),
    )
    with atomic_path(out_h5ad, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)
    return adata


def highly_variable(adata: ad.AnnData, n_top: int, batch_key: str | None) -> np.ndarray:
    """Boolean mask of ``n_top`` highly variable genes (scanpy ``seurat_v3`` on raw counts)."""
    n_top = min(n_top, adata.n_vars)
    if n_top >= adata.n_vars:
        return np.ones(adata.n_vars, dtype=bool)
    probe = ad.AnnData(X=adata.X, obs=adata.obs[[batch_key]] if batch_key else None)
    probe.var_names = adata.var_names
    n_batches = adata.obs[batch_key].nunique() if batch_key else 1
    table = sc.pp.highly_variable_genes(
        probe,
        flavor="seurat_v3",
        n_top_genes=n_top,
        batch_key=batch_key if n_batches > 1 else None,
        inplace=False,
    )
    return table["highly_variable"].to_numpy(dtype=bool)


def log_normalized(adata: ad.AnnData, *, genes: np.ndarray | None = None) -> sp.csr_matrix:
    """log1p of counts scaled to 10,000 per cell (scanpy), optionally of a gene subset.

    Library sizes are taken over all genes before subsetting, as in the usual scanpy recipe.
    """
    probe = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32))
    sc.pp.normalize_total(probe, target_sum=1e4)
    sc.pp.log1p(probe)
    X = probe.X
    return X[:, genes] if genes is not None else X


def read_evalset(path: str | Path, *, counts: bool = True) -> ad.AnnData:
    """Read an evaluation set written by :func:`prepare_evalset`.

    With ``counts=False`` only ``obs``, ``var`` and ``uns`` are read (the metric jobs need the
    labels and batches, not the matrix).
    """
    if counts:
        adata = ad.read_h5ad(path)
    else:
        with h5py.File(path, "r") as f:
            adata = ad.AnnData(
                obs=ad.io.read_elem(f["obs"]),
                var=ad.io.read_elem(f["var"]),
                uns=ad.io.read_elem(f["uns"]),
            )
    missing = [c for c in ("scfm_label", "scfm_batch", "scfm_split") if c not in adata.obs]
    if missing or "scfm_bench" not in adata.uns:
        raise ScfmInputError(
            path,
            "obs",
            f"not an scfm evaluation set (missing {missing or ['uns/scfm_bench']})",
            "a file written by the bench_data rule (scfm.bench.prepare_evalset)",
        )
    return adata
