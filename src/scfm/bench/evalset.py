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
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError
from scfm.io.standardize import strings_keep_missing
from scfm.paths import check_outputs_not_inputs
from scfm.provenance import versions
from scfm.spec import default

log = logging.getLogger("scfm.bench")

#: A label that means "not annotated" (standardize's value for a key the source lacks,
#: CELLxGENE's for unannotated cells): counted as missing, never scored as a cell type.
MISSING_LABEL = "unknown"
#: Batches with fewer cells are pooled for the per-batch HVG fit (see highly_variable_by_batch).
HVG_MIN_BATCH_CELLS = 50
#: The group the small batches are pooled into (not a batch name: obs names have no "<").
POOLED = "<small batches pooled>"

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
    split_key: str | None = default("benchmarks.*.split_key"),
    metrics: Sequence[str] = tuple(default("benchmarks.*.metrics")),
    max_cells: int | None = default("benchmarks.*.max_cells"),
    seed: int = default("benchmarks.*.seed"),
    n_hvg: int = default("benchmarks.*.n_hvg"),
    name: str = "",
    hvg_min_batch_cells: int = default("benchmarks.*.hvg_min_batch_cells"),
    exclude: pd.Index | None = None,
) -> ad.AnnData:
    """Write the evaluation set of one benchmark: counts, keys, highly variable genes.

    Cells whose batch (or split group) is missing are dropped (and counted in the log). Cells
    whose label is missing (NaN, or :data:`MISSING_LABEL`) are kept with a missing
    ``scfm_label``: label-based metrics exclude them (:func:`labelled_cells`) and say how many;
    ``uns["scfm_bench"]["n_unlabelled"]`` counts them. The output keeps ``X`` as raw integer
    counts (CSR) and all genes; ``var["highly_variable"]`` marks ``n_hvg`` genes chosen by
    scanpy's ``seurat_v3`` flavour on counts per batch (Stuart et al. 2019; batches below
    ``hvg_min_batch_cells`` pooled, see :func:`highly_variable_by_batch`), which the pca, hvg
    and scvi baselines use. ``obs["scfm_label"]``, ``obs["scfm_batch"]`` and
    ``obs["scfm_split"]`` hold the keys as strings so metrics need no config. ``exclude``: cell
    IDs left out before any subset is drawn (cells a trained run saw, see
    :mod:`scfm.bench.leakage`).
    """
    qc_h5ad = Path(qc_h5ad)
    check_outputs_not_inputs({"output": out_h5ad}, {"input": qc_h5ad})
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
    for column in dict.fromkeys([batch_key, split_key]):
        missing = adata.obs[column].isna().to_numpy()
        if missing.any():
            log.warning("dropping %d cells without obs[%r]", int(missing.sum()), column)
        keep &= ~missing
    if not keep.all():
        adata = adata[keep].copy()
    # cells without a label stay (embeddings, batch mixing plots, masked prediction use them);
    # label-based metrics leave them out and say how many (see labelled_cells())
    label = missing_labels(adata.obs[label_key])
    n_unlabelled = int(label.isna().sum())
    if adata.n_obs == n_unlabelled:
        raise ScfmInputError(
            qc_h5ad, f"obs[{label_key!r}]", "no cell has a label", "labelled cells"
        )
    if n_unlabelled:
        log.warning(
            "%d of %d cells have no obs[%r] (missing or %r): kept, and excluded from the "
            "label-based metrics (scib, scGraph, annotation)",
            n_unlabelled,
            adata.n_obs,
            label_key,
            MISSING_LABEL,
        )
    adata.obs["scfm_label"] = label
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
    hvg, hvg_record = highly_variable_by_batch(
        adata,
        n_hvg,
        "scfm_batch",
        min_batch_cells=hvg_min_batch_cells,
        path=qc_h5ad,
        shown_key=batch_key,
    )
    adata.var["highly_variable"] = hvg
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
        "n_unlabelled": n_unlabelled,
        "hvg": hvg_record,
        "versions": versions(),
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


def missing_labels(values: Any) -> pd.Categorical:
    """Labels as categorical strings; NaN, "" and :data:`MISSING_LABEL` are missing (NaN)."""
    return strings_keep_missing(pd.Series(np.asarray(values, dtype=object)), [MISSING_LABEL])


def labelled_cells(adata: ad.AnnData, metric: str, method: str = "") -> np.ndarray:
    """Mask of the evaluation set's cells that have a label; logs how many a metric leaves out.

    Every label-based metric (scib, scGraph, annotation) scores these cells only and writes the
    count of the others in its table's ``n_unlabelled_excluded`` column.
    """
    mask = adata.obs["scfm_label"].notna().to_numpy()
    n_out = int((~mask).sum())
    if n_out:
        log.info(
            "%s%s: %d of %d cells have no label and are excluded",
            f"{method} " if method else "",
            metric,
            n_out,
            len(mask),
        )
    return mask


def highly_variable_by_batch(
    adata: ad.AnnData,
    n_top: int,
    batch_key: str,
    *,
    min_batch_cells: int = HVG_MIN_BATCH_CELLS,
    path: str | Path = "<AnnData>",
    shown_key: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``n_top`` HVGs by seurat_v3 per batch; batches below ``min_batch_cells`` are pooled.

    seurat_v3 fits a loess of variance on mean in every batch; in a batch of a few cells that
    fit is degenerate and scanpy stops with loess' "There are other near singularities". Such
    batches are pooled into one group (:data:`POOLED`) for the fit; when the pooled group is
    itself below ``min_batch_cells``, or no group of two remains, the genes are chosen on all
    cells together (no batch key). What was done is logged and returned as a record (stored in
    the evaluation set's ``uns["scfm_bench"]["hvg"]``): ``batch_key`` (``"none"`` when pooled
    whole), ``min_batch_cells``, ``pooled_batches`` (names) and ``n_groups``.
    """
    shown_key = shown_key or batch_key  # the configured column, in the record and errors
    batches = adata.obs[batch_key].astype(str)
    sizes = batches.value_counts()
    small = sorted(str(b) for b in sizes.index[sizes < min_batch_cells])
    groups = batches.where(~batches.isin(small), POOLED) if small else batches
    n_pooled = int(batches.isin(small).sum())
    whole = bool(small) and (n_pooled < min_batch_cells or groups.nunique() < 2)
    if whole:
        groups = None
    record: dict[str, Any] = {
        "flavor": "seurat_v3",
        "batch_key": "none" if groups is None else shown_key,
        "min_batch_cells": int(min_batch_cells),
        "pooled_batches": small,
        "n_groups": 1 if groups is None else int(groups.nunique()),
    }
    if small:
        shown = ", ".join(f"{b} ({sizes[b]})" for b in small[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        log.warning(
            "HVG selection: %d batch(es) have fewer than %d cells (%s%s): %s",
            len(small),
            min_batch_cells,
            shown,
            more,
            "HVGs chosen on all cells together, without the batch key"
            if whole
            else f"pooled into one group of {n_pooled} cells for the per-batch fit",
        )

    def fail(reason: str) -> ScfmInputError:
        return ScfmInputError(
            path,
            f"obs[{shown_key!r}]",
            f"seurat_v3 HVG selection failed ({reason}); cells per batch: "
            + ", ".join(f"{b}={n}" for b, n in sizes.sort_index().items()),
            "larger batches; batches below benchmarks.<name>.hvg_min_batch_cells "
            f"(now {min_batch_cells}) are pooled for the fit, raise it",
        )

    if n_top < adata.n_vars:
        # loess on (almost) no points crashes the process (a segfault in scikit-misc), so a
        # group in which (almost) no gene varies is refused before the fit
        labels = groups if groups is not None else pd.Series("all cells", index=batches.index)
        for group, rows in labels.groupby(labels).indices.items():
            n_varying = _n_varying_genes(adata.X[rows])
            if n_varying < _MIN_VARYING_GENES:
                raise fail(f"in group {group!r} only {n_varying} gene(s) vary across its cells")
    try:
        mask = highly_variable(adata, n_top, groups)
    except Exception as exc:  # scanpy/loess errors on degenerate batches
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    return mask, record


#: Fewer varying genes in a group than this and seurat_v3's loess cannot be fitted.
_MIN_VARYING_GENES = 10


def _n_varying_genes(x: Any) -> int:
    """Genes whose count is not the same in every row of ``x``."""
    x = sp.csr_matrix(x, dtype=np.float64)
    mean = np.asarray(x.mean(axis=0)).ravel()
    mean_sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
    return int((mean_sq - mean**2 > 1e-12 * np.maximum(mean_sq, 1)).sum())


def highly_variable(adata: ad.AnnData, n_top: int, groups: pd.Series | None) -> np.ndarray:
    """Boolean mask of ``n_top`` highly variable genes (scanpy ``seurat_v3`` on raw counts).

    ``groups`` (one value per cell) are the batches of the per-batch fit; None: all cells.
    """
    n_top = min(n_top, adata.n_vars)
    if n_top >= adata.n_vars:
        return np.ones(adata.n_vars, dtype=bool)
    by_group = groups is not None and groups.nunique() > 1
    obs = pd.DataFrame({"group": np.asarray(groups, dtype=str)}) if by_group else None
    probe = ad.AnnData(X=adata.X, obs=obs)
    probe.var_names = adata.var_names
    table = sc.pp.highly_variable_genes(
        probe,
        flavor="seurat_v3",
        n_top_genes=n_top,
        batch_key="group" if by_group else None,
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
