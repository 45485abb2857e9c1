"""The ``binary`` tokenizer: accessible features and sampled inaccessible ones, values 1 / 0.

For scATAC (peaks or genome bins) a count says little beyond "accessible or not": a cell has
a few thousand accessible features out of 10^5-10^6. Definition (exact; tested):

- positives: the cell's vocabulary features with a nonzero count; when there are more than
  ``p = max_len - floor(max_len * negatives / (1 + negatives))`` of them, a seeded random
  subset of ``p`` (per-cell seed, like ``genes: random``);
- negatives: ``min(max_len - n_pos, ceil(n_pos * negatives))`` distinct vocabulary features the
  cell does not have, drawn uniformly with the same per-cell seed;
- tokens in vocabulary order, value 1 for positives and 0 for negatives (value kind ``bin``
  with two classes, so the ordinal/ce objectives are a binary cross-entropy of masked
  accessibility and the per-feature trivial predictor is its accessibility frequency).

Without negatives the value of every token would be 1 and masked prediction trivial.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit

from scfm.tokenize.kernels import _splitmix64


@njit(cache=True)
def _binary_rows(
    indptr,
    indices,
    data,
    col_token,
    seeds,
    rows,
    max_len,
    negatives,
    n_special,
    n_vocab,
    offsets,
    genes,
    values,
):  # pragma: no cover - compiled
    mark = np.zeros(n_vocab, np.int64)  # mark[t] == stamp: t is taken in the current cell
    pos = np.empty(1, np.int32)
    out = 0
    offsets[0] = 0
    span = n_vocab - n_special
    pos_budget = max_len - int(np.floor(max_len * negatives / (1.0 + negatives)))
    for r in range(rows.shape[0]):
        row = rows[r]
        stamp = r + 1
        state = np.uint64(seeds[row])
        lo, hi = indptr[row], indptr[row + 1]
        if pos.shape[0] < hi - lo:
            pos = np.empty(hi - lo, np.int32)
        m = 0
        for j in range(lo, hi):
            t = col_token[indices[j]]
            if t >= 0 and data[j] > 0 and mark[t] != stamp:
                mark[t] = stamp
                pos[m] = t
                m += 1
        keep = m
        if m > pos_budget:
            # partial Fisher-Yates: the first pos_budget entries become a uniform subset
            for i in range(pos_budget):
                state = _splitmix64(state)
                k = i + int(state % np.uint64(m - i))
                tmp = pos[i]
                pos[i] = pos[k]
                pos[k] = tmp
            keep = pos_budget  # dropped positives stay marked: they are never negatives
        n_neg = min(max_len - keep, int(np.ceil(keep * negatives)))
        n_neg = min(n_neg, span - m)
        start = out
        for i in range(keep):
            genes[out] = pos[i]
            values[out] = 1
            out += 1
        got = 0
        while got < n_neg:
            state = _splitmix64(state)
            t = n_special + int(state % np.uint64(span))
            if mark[t] != stamp:
                mark[t] = stamp
                genes[out] = t
                values[out] = 0
                out += 1
                got += 1
        # vocabulary order within the cell (insertion sort on a short row would be O(L^2):
        # argsort of the slice instead)
        order = np.argsort(genes[start:out], kind="mergesort")
        g = genes[start:out][order].copy()
        v = values[start:out][order].copy()
        genes[start:out] = g
        values[start:out] = v
        offsets[r + 1] = out


def tokenize_binary(
    block: sp.csr_matrix,
    col_token: np.ndarray,
    *,
    max_len: int,
    negatives: float,
    n_special: int,
    n_vocab: int,
    seeds: np.ndarray,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, tokens, values) of ``rows`` of a CSR block; see the module docstring."""
    block = sp.csr_matrix(block)
    n = len(rows)
    offsets = np.empty(n + 1, np.int64)
    genes = np.empty(n * max_len, np.int32)
    values = np.empty(n * max_len, np.int16)
    _binary_rows(
        block.indptr.astype(np.int64, copy=False),
        block.indices.astype(np.int64, copy=False),
        block.data,
        np.ascontiguousarray(col_token, dtype=np.int32),
        seeds.astype(np.uint64),
        rows.astype(np.int64),
        int(max_len),
        float(negatives),
        int(n_special),
        int(n_vocab),
        offsets,
        genes,
        values,
    )
    used = int(offsets[-1])
    return offsets, genes[:used].copy(), values[:used].copy()
