"""A tabix (``.tbi``) index built while a sorted BGZF fragment file is written.

``pysam.tabix_index`` (htslib) reads the whole compressed file back to index it: ~11 s per
50M fragments, a second full read. The writer already knows where every line goes, so it
builds the same index as it writes (:class:`TbiBuilder`), following the tabix format of the
SAM/BAM specification (section 5.2) and htslib's ``hts_idx_push``/``hts_idx_finish`` rules:

- every line gets the bin ``reg2bin(start, end)`` (UCSC binning, 16 kb leaves, 5 levels);
  consecutive lines of one chromosome in the same bin form a chunk ``[first line's virtual
  offset, next line's)``;
- each chromosome has a pseudo-bin 37450 holding its first and last offsets and its number of
  lines;
- the linear index holds, for every 16 kb window, the offset of the first line overlapping it
  (a window no line overlaps: the next window's, as htslib >= 1.10 fills it);
- at the end, a bin whose chunks span less than 64 KiB of compressed file is merged into its
  parent (deepest level first, only into a parent that has chunks), and chunks of a bin that
  start in the block where the previous one ends are joined.

Offsets are tracked as positions in the uncompressed stream and turned into virtual offsets
(compressed block offset << 16 | offset in the block) once the block sizes are known;
:class:`scfm.atac.fragments.BgzfWriter` fills every block but the last with exactly
``BLOCK`` bytes. tests/atac/test_tabix.py compares the index with htslib's, bin for bin and
chunk for chunk, and queries it with pysam. Only ``.tbi`` is written here; the ``.csi`` needed
for chromosomes over 512 Mbp is still built by pysam.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numba import njit

MIN_SHIFT = 14  # 16 kb leaf bins and linear-index windows
N_LVLS = 5
META_BIN = 37450  # ((1 << 18) - 1) // 7 + 1
MIN_MARKER_DIST = 0x10000
TBX_UCSC = 0x10000  # 0-based, half-open coordinates (the "bed" preset)
_FIRST = [((1 << (3 * level)) - 1) // 7 for level in range(N_LVLS + 2)]  # first bin per level


@njit(cache=True)
def _reg2bin(beg: int, end: int) -> int:
    end -= 1
    s, t = MIN_SHIFT, 4681
    for level in range(N_LVLS, 0, -1):
        if beg >> s == end >> s:
            return t + (beg >> s)
        s += 3
        t -= 1 << (3 * (level - 1))
    return 0


@njit(cache=True)
def _push(beg, end, line_start, line_end, state, chunk_bin, chunk_u, chunk_v, linear) -> int:
    """Feed sorted lines of one chromosome; closed chunks go to the ``chunk_*`` arrays.

    ``state``: [current bin (-1: none), its first line's start, last line's end, windows used].
    Returns the number of chunks written.
    """
    m = 0
    cur, run0 = state[0], state[1]
    for i in range(len(beg)):
        b = _reg2bin(beg[i], end[i])
        if b != cur:
            if cur >= 0:
                chunk_bin[m] = cur
                chunk_u[m] = run0
                chunk_v[m] = line_start[i]
                m += 1
            cur, run0 = b, line_start[i]
        w1 = (end[i] - 1) >> MIN_SHIFT
        for w in range(beg[i] >> MIN_SHIFT, w1 + 1):
            if linear[w] < 0:
                linear[w] = line_start[i]
        if w1 + 1 > state[3]:
            state[3] = w1 + 1
    state[0], state[1] = cur, run0
    if len(beg):
        state[2] = line_end[len(beg) - 1]
    return m


class _Chrom:
    def __init__(self, name: str, size: int, first: int) -> None:
        self.name = name
        self.state = np.array([-1, 0, first, 0], np.int64)
        self.first = first
        self.n = 0
        self.linear = np.full((max(size, 1) >> MIN_SHIFT) + 2, -1, np.int64)
        self.bins: list[np.ndarray] = []
        self.us: list[np.ndarray] = []
        self.vs: list[np.ndarray] = []


class TbiBuilder:
    """Collects what the ``.tbi`` needs while lines are written (see the module docstring)."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.chroms: list[_Chrom] = []

    def add(
        self,
        chrom: str,
        size: int,
        start: np.ndarray,
        end: np.ndarray,
        line_start: np.ndarray,
        line_end: np.ndarray,
    ) -> None:
        """Lines ``[line_start, line_end)`` (uncompressed stream positions) of ``chrom``."""
        if not len(start):
            return
        if not self.chroms or self.chroms[-1].name != chrom:
            self._close()
            self.chroms.append(_Chrom(chrom, max(size, int(end.max())), int(line_start[0])))
        c = self.chroms[-1]
        need = (int(end.max()) - 1 >> MIN_SHIFT) + 2
        if need > len(c.linear):
            c.linear = np.r_[c.linear, np.full(need - len(c.linear), -1, np.int64)]
        n = len(start)
        b, u, v = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
        m = _push(start, end, line_start, line_end, c.state, b, u, v, c.linear)
        c.bins.append(b[:m].copy())
        c.us.append(u[:m].copy())
        c.vs.append(v[:m].copy())
        c.n += n

    def _close(self) -> None:
        if self.chroms and self.chroms[-1].state[0] >= 0:
            c = self.chroms[-1]
            c.bins.append(np.array([c.state[0]], np.int64))
            c.us.append(np.array([c.state[1]], np.int64))
            c.vs.append(np.array([c.state[2]], np.int64))
            c.state[0] = -1

    def write(self, path: str | Path, block_sizes: Sequence[int], total: int) -> None:
        """Write the ``.tbi`` (BGZF) given the compressed size of every data block."""
        from scfm.atac.fragments import BgzfWriter

        self._close()
        coff = np.zeros(len(block_sizes) + 1, np.int64)
        coff[1:] = np.cumsum(block_sizes)

        def voff(u: np.ndarray) -> np.ndarray:
            u = np.asarray(u, np.int64)
            k = u // self.block
            out = (coff[np.minimum(k, len(coff) - 1)] << 16) | (u % self.block)
            return np.where(u >= total, coff[-1] << 16, out)

        names = b"".join(c.name.encode() + b"\0" for c in self.chroms)
        parts = [b"TBI\1", np.array([len(self.chroms)], "<i4").tobytes()]
        parts.append(np.array([TBX_UCSC, 1, 2, 3, ord("#"), 0, len(names)], "<i4").tobytes())
        parts.append(names)
        for c in self.chroms:
            parts.append(self._ref(c, voff))
        parts.append(np.array([0], "<u8").tobytes())  # n_no_coor
        with BgzfWriter(path, level=6, threads=1) as fh:
            fh.write(b"".join(parts))

    def _ref(self, c: _Chrom, voff) -> bytes:
        b = np.concatenate(c.bins)
        u, v = voff(np.concatenate(c.us)), voff(np.concatenate(c.vs))
        order = np.lexsort((u, b))
        b, u, v = b[order], u[order], v[order]
        bins: dict[int, list[tuple[int, int]]] = {}
        bounds = np.flatnonzero(np.diff(b)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(b)], strict=True):
            bins[int(b[lo])] = list(zip(u[lo:hi].tolist(), v[lo:hi].tolist(), strict=True))
        first, last = (int(x) for x in voff(np.array([c.first, c.state[2]])))
        # merge bins spanning < 64 KiB of compressed file into an existing parent, deepest first
        for level in range(N_LVLS, 0, -1):
            for key in sorted(k for k in bins if _FIRST[level] <= k < _FIRST[level + 1]):
                p = bins[key]
                if level < N_LVLS:
                    p.sort()
                if (p[-1][1] >> 16) - (p[0][0] >> 16) < MIN_MARKER_DIST:
                    parent = (key - 1) >> 3
                    if parent in bins:
                        bins[parent].extend(p)
                        del bins[key]
        if 0 in bins:
            bins[0].sort()
        out = [np.array([len(bins) + 1], "<i4").tobytes()]
        for key in sorted(bins):
            merged: list[list[int]] = []
            for cu, cv in bins[key]:  # join chunks starting in the block the previous ends in
                if merged and merged[-1][1] >> 16 >= cu >> 16:
                    merged[-1][1] = max(merged[-1][1], cv)
                else:
                    merged.append([cu, cv])
            out.append(np.array([key, len(merged)], "<u4").tobytes())
            out.append(np.array(merged, "<u8").tobytes())
        out.append(np.array([META_BIN, 2], "<u4").tobytes())
        out.append(np.array([first, last, c.n, 0], "<u8").tobytes())
        n = int(c.state[3])
        lin = c.linear[:n].copy()
        valid = lin >= 0
        if n:  # windows without a line take the next window's offset (the last one is set)
            lin_v = np.where(valid, voff(np.maximum(lin, 0)), -1)
            idx = np.where(valid, np.arange(n), n - 1)[::-1]
            np.minimum.accumulate(idx, out=idx)
            lin_v = lin_v[idx[::-1]]
        else:
            lin_v = np.zeros(0, np.int64)
        out.append(np.array([n], "<i4").tobytes())
        out.append(lin_v.astype("<u8").tobytes())
        return b"".join(out)
