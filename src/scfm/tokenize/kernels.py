"""Numba kernels: tokenize CSR rows without a per-cell Python loop.

Every cell is processed in O(nnz) with small LSD radix sorts (8-bit digits, passes whose digit
is the same for all keys are skipped, so typical UMI counts < 256 need a single pass), never a
comparison sort, and everything is a pure function of the input and the per-cell seeds: the same
cell gives the same tokens whatever the chunking.
"""

from __future__ import annotations

import numpy as np
from numba import njit

BINNED, RANK, CONTINUOUS, COUNTS = 0, 1, 2, 3
NONZERO, TOP_K, RANDOM, PANEL = 0, 1, 2, 3


@njit(cache=True, inline="always")
def _splitmix64(x: np.uint64) -> np.uint64:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def radix_argsort(
    keys: np.ndarray, m: int, out: np.ndarray, tmp: np.ndarray, count: np.ndarray
) -> None:
    """Stable ascending argsort of ``keys[:m]`` (uint32) into ``out[:m]``."""
    acc_or = np.uint32(0)
    acc_and = np.uint32(0xFFFFFFFF)
    for i in range(m):
        out[i] = i
        acc_or |= keys[i]
        acc_and &= keys[i]
    varying = acc_or ^ acc_and  # bits that differ between keys; other bytes need no pass
    for shift in range(0, 32, 8):
        if ((varying >> np.uint32(shift)) & np.uint32(255)) == 0:
            continue
        count[:] = 0
        for i in range(m):
            count[((keys[out[i]] >> np.uint32(shift)) & np.uint32(255)) + 1] += 1
        for b in range(256):
            count[b + 1] += count[b]
        for i in range(m):
            d = (keys[out[i]] >> np.uint32(shift)) & np.uint32(255)
            tmp[count[d]] = out[i]
            count[d] += 1
        for i in range(m):
            out[i] = tmp[i]


#: Rank keys are packed as ``key << INDEX_BITS | position`` (positions below 2^24).
INDEX_BITS = 24


@njit(cache=True)
def packed_key_sort(a, b, m, hist):
    """Sort ``a[:m]`` by value; returns whichever of ``a`` and ``b`` holds the result.

    Values are uint64: a 32-bit key above :data:`INDEX_BITS` bits of position.

    Sorting by (key, position) is what the stable :func:`radix_argsort` of the keys gives, but
    the values move themselves (no indirection through an index array), one pass counts all four
    key bytes, and a byte that is the same in every key costs no pass.
    """
    hist[:, :] = 0
    for i in range(m):
        v = a[i] >> np.uint64(INDEX_BITS)
        for p in range(4):
            hist[p, np.int64((v >> np.uint64(8 * p)) & np.uint64(255))] += 1
    src, dst = a, b
    for p in range(4):
        sh = np.uint64(INDEX_BITS + 8 * p)
        h = hist[p]
        if m == 0 or h[np.int64((src[0] >> sh) & np.uint64(255))] == m:
            continue  # one digit for all: the pass would not move anything
        run = 0
        for d in range(256):
            c = h[d]
            h[d] = run
            run += c
        for i in range(m):
            v = src[i]
            d = np.int64((v >> sh) & np.uint64(255))
            dst[h[d]] = v
            h[d] += 1
        src, dst = dst, src
    return src


@njit(cache=True)
def count_less(vals, m, less, hist, keys, order, tmp, count):
    """``less[i]`` = how many of ``vals[:m]`` (integers >= 0) are strictly below ``vals[i]``.

    A counting pass when the values fit the histogram (UMI counts almost always do), else a
    radix sort.
    """
    top = hist.shape[0] - 1
    mx = 0
    for i in range(m):
        mx = max(mx, vals[i])
    if mx < top:
        for v in range(mx + 1):
            hist[v] = 0
        for i in range(m):
            hist[vals[i]] += 1
        run = 0
        for v in range(mx + 1):
            c = hist[v]
            hist[v] = run
            run += c
        for i in range(m):
            less[i] = hist[vals[i]]
        return
    for i in range(m):
        keys[i] = np.uint32(vals[i])
    radix_argsort(keys, m, order, tmp, count)
    start = 0
    for j in range(m):
        if j > 0 and keys[order[j]] != keys[order[j - 1]]:
            start = j
        less[order[j]] = start


@njit(cache=True, inline="always")
def _float_key_desc(x: float) -> np.uint32:
    # Positive float32 bit patterns order like the values; invert for a descending sort.
    return np.uint32(0xFFFFFFFF) - np.float32(x).view(np.uint32)


@njit(cache=True, inline="always")
def _int_value(kind, count, less, m, bins, cap):
    if kind == BINNED:
        return np.int32(1 + min(bins - 1, (bins * less) // m))
    return np.int32(min(count, cap))


@njit(cache=True, inline="always")
def _small_value(kind, count, h, cap):
    # counting path: h = hist[count] already holds the bin (binned)
    if kind == BINNED:
        return np.int32(h)
    return np.int32(min(count, cap))


@njit(cache=True, nogil=True)
def tokenize_rows(
    indptr,
    indices,
    data,
    col_token,
    totals,
    own_totals,
    exact_below,
    seeds,
    kind,
    mode,
    limit,
    n_bins,
    cap,
    target_sum,
    inv_median,
    panel_size,
    n_special,
    rows,
    out_offsets,
    out_genes,
    out_ivalues,
    out_fvalues,
    col_sums,
):
    """Tokenize the CSR ``rows`` in that order (see ``tokenizers.tokenize_csr``).

    Emitting rows in a caller-given order lets a caller group cells (e.g. by split) without
    copying the matrix or the tokens; ``col_sums`` accumulates each column's counts.

    With ``own_totals`` the kernel sums each row itself (``totals[r]``) in the pass that gathers
    it, instead of reading totals summed beforehand. A sum is only trusted when every value is an
    integer and the sum of absolute values stays below ``exact_below`` (then every summation
    order gives the same, exact, number, so it equals the caller's); otherwise the kernel stops
    and sets ``out_offsets[-1] = -1``, and the caller sums the rows its own way and calls again.
    The GIL is released: a caller may read the next chunk meanwhile.
    """
    n_rows = rows.shape[0]
    width = 1
    for i in range(n_rows):
        r = rows[i]
        width = max(width, indptr[r + 1] - indptr[r])
    tok = np.empty(width, np.int32)
    icnt = np.empty(width, np.int64)
    less = np.empty(width, np.int64)
    keys = np.empty(width, np.uint32)
    order = np.empty(width, np.int64)
    tmp = np.empty(width, np.int64)
    count = np.zeros(257, np.int64)
    hist = np.zeros(4097, np.int64)
    if kind == RANK and width >= 1 << INDEX_BITS:
        raise ValueError("rank: a cell has more than 2^24 expressed genes")
    packed = np.empty(width if kind == RANK else 1, np.uint64)
    packed_tmp = np.empty(width if kind == RANK else 1, np.uint64)
    hist4 = np.zeros((4, 256), np.int64)
    index_mask = np.uint64((1 << INDEX_BITS) - 1)
    keep = np.zeros(width, np.bool_)
    dense_i = np.zeros(max(panel_size, 1), np.int32)
    dense_f = np.zeros(max(panel_size, 1), np.float32)
    bins = n_bins - 1
    top = hist.shape[0] - 1
    pos = 0
    for i_out in range(n_rows):
        r = rows[i_out]
        out_offsets[i_out] = pos
        # gather the expressed vocabulary genes; histogram their counts on the way
        m = 0
        mx = 0
        tot = 0.0
        absum = 0.0
        whole = True
        for k in range(indptr[r], indptr[r + 1]):
            col_sums[indices[k]] += data[k]
            if own_totals:
                x = np.float64(data[k])
                tot += x
                absum += abs(x)
                whole &= x == np.floor(x)
            t = col_token[indices[k]]
            if t >= 0 and data[k] > 0:
                c = np.int64(data[k])
                tok[m] = t
                icnt[m] = c
                m += 1
                if kind == RANK:  # rank needs no histogram of the counts
                    continue
                if c > mx:
                    if c < top:
                        for v in range(mx + 1, c + 1):
                            hist[v] = 0
                    mx = c
                if c < top:
                    hist[c] += 1
        if own_totals:
            if not (whole and absum < exact_below):
                out_offsets[n_rows] = -1
                return
            totals[r] = tot
        if m == 0 and mode != PANEL:
            continue
        scale = target_sum / totals[r] if totals[r] > 0 else 0.0
        if kind == RANK:
            for i in range(m):
                key = np.uint64(_float_key_desc(icnt[i] * scale * inv_median[tok[i]]))
                packed[i] = (key << np.uint64(INDEX_BITS)) | np.uint64(i)
            done = packed_key_sort(packed, packed_tmp, m, hist4)
            s = min(m, limit)
            for j in range(s):
                out_genes[pos + j] = tok[np.int64(done[j] & index_mask)]
            pos += s
            continue
        s = m if mode == PANEL else min(m, limit)
        small = mx < top
        # threshold for keeping the s highest counts: all above vstar, the first `ties` at it
        vstar, ties = -1, 0
        if s < m and mode != RANDOM and small:
            cum = 0
            for v in range(mx, -1, -1):
                if cum + hist[v] >= s:
                    vstar, ties = v, s - cum
                    break
                cum += hist[v]
        if small and kind == BINNED:
            # hist[v] = the bin of count v: 1 + min(bins - 1, bins * less // m), less = the
            # number of counts below v; q = bins * less // m only grows with v, so it is
            # advanced by comparisons instead of a division per gene
            run = 0
            q = 0
            for v in range(mx + 1):
                c = hist[v]
                while q < bins - 1 and (q + 1) * m <= bins * run:
                    q += 1
                hist[v] = 1 + q
                run += c
        elif small:  # exclusive prefix sums: hist[v] = number of counts below v
            run = 0
            for v in range(mx + 1):
                c = hist[v]
                hist[v] = run
                run += c
        elif kind == BINNED or (s < m and mode != RANDOM):
            count_less(icnt, m, less, hist, keys, order, tmp, count)
            if s < m and mode != RANDOM:
                for i in range(m):
                    if m - less[i] >= s and icnt[i] > vstar:
                        vstar = icnt[i]
                ties = s
                for i in range(m):
                    if icnt[i] > vstar:
                        ties -= 1
        if mode == PANEL:
            dense_i[:] = 0
            dense_f[:] = 0.0
            for i in range(m):
                if kind == CONTINUOUS:
                    dense_f[tok[i] - n_special] = np.float32(np.log1p(icnt[i] * scale))
                elif small:
                    dense_i[tok[i] - n_special] = _small_value(kind, icnt[i], hist[icnt[i]], cap)
                else:
                    dense_i[tok[i] - n_special] = _int_value(kind, icnt[i], less[i], m, bins, cap)
            for j in range(panel_size):
                out_genes[pos + j] = n_special + j
                if kind == CONTINUOUS:
                    out_fvalues[pos + j] = dense_f[j]
                else:
                    out_ivalues[pos + j] = dense_i[j]
            pos += panel_size
        else:
            if mode == RANDOM and s < m:
                # partial Fisher-Yates over positions, seeded per cell
                for i in range(m):
                    order[i] = i
                    keep[i] = False
                state = np.uint64(seeds[r])
                for j in range(s):
                    state = _splitmix64(state)
                    pick = j + np.int64(state % np.uint64(m - j))
                    order[j], order[pick] = order[pick], order[j]
                    keep[order[j]] = True
            j = 0
            if s < m and mode != RANDOM and small and kind != CONTINUOUS:
                # the common case, branch-free: every gene is written at j, which advances only
                # for kept genes (callers leave one slot of slack after the last row)
                for i in range(m):
                    c = icnt[i]
                    at = np.int64(c == vstar) * np.int64(ties > 0)
                    ties -= at
                    out_genes[pos + j] = tok[i]
                    out_ivalues[pos + j] = _small_value(kind, c, hist[c], cap)
                    j += np.int64(c > vstar) + at
                pos += s
                if small:
                    hist[: mx + 1] = 0
                continue
            for i in range(m):
                c = icnt[i]
                if s < m:
                    if mode == RANDOM:
                        if not keep[i]:
                            continue
                    elif c < vstar:
                        continue
                    elif c == vstar:
                        if ties == 0:
                            continue
                        ties -= 1
                out_genes[pos + j] = tok[i]
                # values only for the genes kept (log1p is the costly part of `continuous`)
                if kind == CONTINUOUS:
                    out_fvalues[pos + j] = np.float32(np.log1p(c * scale))
                elif small:
                    out_ivalues[pos + j] = _small_value(kind, c, hist[c], cap)
                else:
                    out_ivalues[pos + j] = _int_value(kind, c, less[i], m, bins, cap)
                j += 1
            pos += s
        if small:
            hist[: mx + 1] = 0
    out_offsets[n_rows] = pos


@njit(cache=True)
def accumulate_log_hist(indptr, indices, data, col_token, target_sum, lo, per_unit, hist, sums):
    """Add log2(normalised count) of each expressed gene to its histogram row, the value to sums."""
    n_rows = indptr.shape[0] - 1
    n_bins = hist.shape[1]
    for r in range(n_rows):
        total = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            total += data[k]
        if total <= 0:
            continue
        scale = target_sum / total
        for k in range(indptr[r], indptr[r + 1]):
            t = col_token[indices[k]]
            if t < 0 or data[k] <= 0:
                continue
            v = data[k] * scale
            sums[t] += v
            b = int(np.floor((np.log2(v) - lo) * per_unit))
            hist[t, min(max(b, 0), n_bins - 1)] += 1


@njit(cache=True)
def hist_medians(hist, lo, per_unit):
    """Median of each histogram row (bin centre, in linear units); NaN for empty rows."""
    n, n_bins = hist.shape
    out = np.full(n, np.nan)
    for t in range(n):
        total = 0
        for b in range(n_bins):
            total += hist[t, b]
        if total == 0:
            continue
        half = (total + 1) / 2
        run = 0
        for b in range(n_bins):
            run += hist[t, b]
            if run >= half:
                out[t] = 2.0 ** (lo + (b + 0.5) / per_unit)
                break
    return out
