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
