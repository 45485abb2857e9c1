"""scGraph: how well an embedding keeps the cell-type geometry seen in each batch's expression.

From Wang, Leskovec & Regev (2024), "Metric Mirages in Cell Embeddings" (bioRxiv); the numbers
agree with the authors' package ``scgraph-eval`` 0.1.2 (tests/bench/test_scgraph.py checks this).

Reference graph, per batch of at least ``min_batch_cells`` cells, on log-normalised ``X``:
1000 highly variable genes (scanpy, flavor ``seurat``), 10 principal components of those genes,
a centroid per cell type (the two-sided trimmed mean of its cells' coordinates, cutting
``trim_rate`` at each end), the Euclidean distances between centroids, each column divided by
its maximum. The batch graphs are averaged entry by entry over the batches that hold both cell
types (NaN elsewhere), and each column is divided by its maximum again. Cell types with fewer
than ``min_type_cells`` cells in the whole dataset are left out.

Embedding graph: the same centroids and column-normalised distances, on the embedding of all
cells. Each cell type's column of the embedding graph is compared with the reference column over
the entries both define: Spearman (``Rank-PCA``), Pearson (``Corr-PCA``) and a Pearson
correlation weighted by 1/reference distance (``Corr-Weighted``: near neighbours count most;
the cell type's own zero distance gets weight 0). Each score is the mean over cell types.
As in the reference, that zero self-distance is one of the pairs for Rank-PCA and Corr-PCA, which
lifts both even for random embeddings when there are few cell types; Corr-Weighted is the most
discriminating of the three.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist
from scipy.stats import rankdata, trim_mean

from scfm.errors import ScfmInputError

SCORES = ("Rank-PCA", "Corr-PCA", "Corr-Weighted")


def scgraph_reference(
    adata: Any,
    label_key: str,
    batch_key: str,
    *,
    n_hvg: int = 1000,
    n_pcs: int = 10,
    trim_rate: float = 0.05,
    min_batch_cells: int = 100,
    min_type_cells: int = 10,
    path: str = "<AnnData>",
) -> pd.DataFrame:
    """Consensus cell-type distance graph from per-batch PCA of log-normalised expression.

    Parameters
    ----------
    adata
        AnnData whose ``X`` is log1p-normalised expression; it is not modified.
    label_key, batch_key
        ``obs`` columns with cell types and batches. Cells without a label or batch are unused.
    n_hvg, n_pcs
        Highly variable genes and principal components per batch.
    trim_rate
        Fraction cut from each end before averaging a cell type's coordinates.
    min_batch_cells
        Smaller batches are skipped.
    min_type_cells
        Cell types with fewer cells in the whole dataset are left out.
    path
        Named in error messages.

    Returns
    -------
    Square matrix, index and columns the cell types (str, sorted): consensus distances, each
    column scaled to maximum 1; NaN for pairs of cell types that share no batch.
    """
    labels = _obs_labels(adata, label_key, path)
    batches = _obs_labels(adata, batch_key, path)
    if n_pcs >= min_batch_cells:
        raise ValueError(f"min_batch_cells ({min_batch_cells}) must exceed n_pcs ({n_pcs})")

    type_sizes = labels.value_counts()
    types = sorted(type_sizes.index[type_sizes >= min_type_cells])
    if len(types) < 3:
        raise ScfmInputError(
            path,
            f"obs/{label_key}",
            f"{len(types)} cell type(s) with >= {min_type_cells} cells "
            f"(sizes: {_sizes(type_sizes)})",
            "at least 3 to compare distances between cell types",
        )
    batch_sizes = batches.value_counts()
    used = batch_sizes.index[batch_sizes >= min_batch_cells]
    if len(used) == 0:
        raise ScfmInputError(
            path,
            f"obs/{batch_key}",
            f"no batch has min_batch_cells={min_batch_cells} cells (sizes: {_sizes(batch_sizes)})",
            "at least one batch that large (lower min_batch_cells for small datasets)",
        )

    graphs = []
    for batch in used:
        in_batch = (batches == batch).to_numpy()
        batch_labels = labels.to_numpy()[in_batch]
        present = [t for t in types if (batch_labels == t).any()]
        if not present:
            continue
        coords = _batch_pca(adata, in_batch, n_hvg=n_hvg, n_pcs=n_pcs)
        graph = np.full((len(types), len(types)), np.nan)
        idx = np.searchsorted(types, present)
        graph[np.ix_(idx, idx)] = _centroid_graph(coords, batch_labels, present, trim_rate)
        graphs.append(graph)

    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
        consensus = np.nanmean(np.stack(graphs), axis=0)
        consensus = consensus / np.nanmax(consensus, axis=0)
    return pd.DataFrame(consensus, index=pd.Index(types), columns=pd.Index(types))


def scgraph_scores(
    embedding: np.ndarray,
    labels: Any,
    reference: pd.DataFrame,
    *,
    trim_rate: float = 0.05,
    path: str = "<AnnData>",
) -> tuple[dict[str, float], pd.DataFrame]:
    """Compare an embedding's cell-type distance graph with a :func:`scgraph_reference` graph.

    Parameters
    ----------
    embedding
        (n_cells, d) coordinates.
    labels
        n_cells cell types; only the types in ``reference`` are used.
    reference
        Output of :func:`scgraph_reference`; it decides which cell types count.
    trim_rate
        Fraction cut from each end before averaging a cell type's coordinates.
    path
        Named in error messages.

    Returns
    -------
    The three scores (means over cell types) and the per-cell-type table behind them
    (index: cell type; columns ``Rank-PCA``, ``Corr-PCA``, ``Corr-Weighted``).
    """
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 2:
        raise ScfmInputError(path, "embedding", f"shape {emb.shape}", "(n_cells, n_dims)")
    lab = _as_labels(labels)
    if emb.shape[0] != len(lab):
        raise ScfmInputError(
            path, "embedding", f"{emb.shape[0]} rows but {len(lab)} labels", "one row per cell"
        )
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ScfmInputError(
            path, "embedding", f"{int(bad.sum())} row(s) contain NaN or inf", "finite values"
        )
    if set(reference.index) != set(reference.columns):
        raise ScfmInputError(
            path, "reference", "index and columns name different cell types", "a square graph"
        )

    reference = reference.rename(index=str, columns=str)
    present = set(lab.dropna())
    types = [t for t in reference.columns if t in present]
    if len(types) < 3:
        raise ScfmInputError(
            path,
            "labels",
            f"{len(types)} cell type(s) shared with the reference graph "
            f"(reference: {list(reference.columns)})",
            "at least 3",
        )
    ref = reference.loc[types, types].to_numpy(dtype=np.float64)
    keep = lab.isin(types).to_numpy()
    emb_graph = _centroid_graph(emb[keep], lab.to_numpy()[keep], types, trim_rate)

    valid = np.isfinite(ref) & np.isfinite(emb_graph)
    with np.errstate(divide="ignore"):
        inverse = np.where(valid & (ref > 0), 1.0 / ref, 0.0)
    table = pd.DataFrame(
        {
            "Rank-PCA": _column_correlations(
                _ranks(emb_graph, valid), _ranks(ref, valid), valid.astype(float)
            ),
            "Corr-PCA": _column_correlations(emb_graph, ref, valid.astype(float)),
            "Corr-Weighted": _column_correlations(emb_graph, ref, inverse),
        },
        index=pd.Index(types, name="cell_type"),
    )
    with _quiet_nan_warnings():
        scores = {name: float(np.nanmean(table[name].to_numpy())) for name in SCORES}
    return scores, table


def _obs_labels(adata: Any, key: str, path: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise ScfmInputError(
            path, f"obs/{key}", "no such column", f"one of {list(adata.obs.columns)}"
        )
    return _as_labels(adata.obs[key])


def _as_labels(values: Any) -> pd.Series:
    """Labels as a str Series (positional index); missing values stay NaN."""
    s = pd.Series(np.asarray(values, dtype=object))
    return s.where(s.isna(), s.astype(str))


def _sizes(counts: pd.Series) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items())


def _batch_pca(adata: Any, in_batch: np.ndarray, *, n_hvg: int, n_pcs: int) -> np.ndarray:
    """PCA coordinates of one batch on its own highly variable genes (as scgraph-eval does)."""
    import anndata as ad
    import scanpy as sc

    # A lean copy: only X of this batch and the log base that scanpy's seurat flavour reads.
    sub = ad.AnnData(X=adata.X[in_batch], var=pd.DataFrame(index=adata.var_names.copy()))
    if "log1p" in adata.uns:
        sub.uns["log1p"] = dict(adata.uns["log1p"])
    sc.pp.highly_variable_genes(sub, n_top_genes=n_hvg)
    sc.pp.pca(sub, n_comps=n_pcs, mask_var="highly_variable")
    return np.asarray(sub.obsm["X_pca"], dtype=np.float64)


def _centroid_graph(
    x: np.ndarray, labels: np.ndarray, types: list[str], trim_rate: float
) -> np.ndarray:
    """Distances between trimmed-mean centroids, each column divided by its maximum."""
    x = np.asarray(x, dtype=np.float64)
    centroids = np.vstack([trim_mean(x[labels == t], trim_rate, axis=0) for t in types])
    dist = cdist(centroids, centroids)
    with np.errstate(invalid="ignore", divide="ignore"):
        return dist / dist.max(axis=0)


def _ranks(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Average ranks within each column over the valid entries (NaN elsewhere)."""
    return rankdata(np.where(valid, x, np.nan), axis=0, nan_policy="omit")


def _column_correlations(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation of each column of ``x`` with that of ``y``.

    Weights ``w >= 0`` are normalised to sum 1 per column; weight 0 drops an entry (its x, y may
    be NaN). Equal weights give the ordinary Pearson correlation.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        w = w / w.sum(axis=0)
        x = np.where(w > 0, x, 0.0)
        y = np.where(w > 0, y, 0.0)
        dx = x - (w * x).sum(axis=0)
        dy = y - (w * y).sum(axis=0)
        cov = (w * dx * dy).sum(axis=0)
        return cov / np.sqrt((w * dx**2).sum(axis=0) * (w * dy**2).sum(axis=0))


@contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    """Silence numpy's 'Mean of empty slice' / 'All-NaN slice' warnings: NaN is the answer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*(empty|NaN) slice")
        yield
