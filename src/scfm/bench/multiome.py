"""Multi-omic checks: whether two modalities' embeddings of the same cells agree.

FOSCTTM, "fraction of samples closer than the true match" (Liu et al. 2019, UnionCom; used by
SCOT and later integration benchmarks): for each cell i with embeddings ``a_i`` (modality 1)
and ``b_i`` (modality 2, same barcode), the fraction of cells j != i whose ``b_j`` is closer
to ``a_i`` than ``b_i`` is, and the same from ``b``'s side; averaged over cells and both sides.
0 means every cell's partner is its nearest neighbour across modalities; 0.5 is chance.
"""

from __future__ import annotations

import numpy as np


def foscttm(a: np.ndarray, b: np.ndarray, *, chunk: int = 2048) -> float:
    """FOSCTTM of paired embeddings ``a`` and ``b`` (rows = the same cells, same dimensions).

    Euclidean distances, computed in row chunks so memory is ``chunk x n``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired embeddings need equal shapes; got {a.shape} and {b.shape}")
    n = a.shape[0]
    if n < 2:
        raise ValueError("FOSCTTM needs at least two cells")
    a2 = (a**2).sum(1)
    b2 = (b**2).sum(1)
    # distances by the expansion |a|^2 + |b|^2 - 2ab carry rounding error of order eps * |a|^2:
    # "closer" means closer by more than that, so that a cell's own partner never counts
    tol = 1e-9 * float(np.mean(a2) + np.mean(b2) + 1e-300)
    true = ((a - b) ** 2).sum(1) - tol
    closer_a = np.empty(n)  # from a_i: how many b_j are closer than b_i
    closer_b = np.zeros(n)  # from b_j: how many a_i are closer than a_j (column counts)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        d = a2[lo:hi, None] + b2[None, :] - 2.0 * a[lo:hi] @ b.T  # a_i (rows) to b_j (cols)
        closer_a[lo:hi] = (d < true[lo:hi, None]).sum(1)
        closer_b += (d < true[None, :]).sum(0)
    return float((closer_a.mean() + closer_b.mean()) / (2 * (n - 1)))


def gene_space_foscttm(rna, activity, *, n_pcs: int = 10, seed: int = 0) -> dict[str, float]:
    """FOSCTTM of paired RNA and scATAC gene-activity profiles in one joint PCA space.

    The first multi-omic check needs no model: both modalities in gene space (the genes they
    share, matched by ``var_names``), each log1p-normalised to 10^4 and z-scored per gene
    within its modality, then one PCA (scikit-learn, seeded) fitted on the cells of both
    modalities. Returns ``{"foscttm", "random", "n_cells", "n_genes", "n_pcs"}``; "random" is
    the same score after shuffling the pairing (near 0.5).
    """
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    cells = rna.obs_names.intersection(activity.obs_names)
    genes = rna.var_names.intersection(activity.var_names)
    if len(cells) < 10 or len(genes) < 2:
        raise ValueError(
            f"{len(cells)} shared cells and {len(genes)} shared genes; expected paired cells "
            "(same barcodes) and genes in the same ID space"
        )

    def prepare(adata):
        X = adata[cells, genes].X
        X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
        totals = X.sum(1, keepdims=True)
        X = np.log1p(X / np.where(totals > 0, totals, 1) * 1e4)
        sd = X.std(0)
        return (X - X.mean(0)) / np.where(sd > 0, sd, 1)

    a, b = prepare(rna), prepare(activity)
    k = min(n_pcs, len(genes) - 1)
    pca = PCA(n_components=k, random_state=seed).fit(np.vstack([a, b]))
    za, zb = pca.transform(a), pca.transform(b)
    shuffled = zb[np.random.default_rng(seed).permutation(len(zb))]
    return {
        "foscttm": foscttm(za, zb),
        "random": foscttm(za, shuffled),
        "n_cells": len(cells),
        "n_genes": len(genes),
        "n_pcs": k,
    }
