"""Cell x genome-bin count matrices from fragment files, and the counting engine they share.

Definitions (the same for tiles, peaks and gene activity)
---------------------------------------------------------
A fragment ``[start, end)`` (0-based, half-open, Tn5 offsets already applied as in 10x fragment
files) has two **Tn5 insertion sites**: the 0-based positions of its two ends, ``start`` and
``end - 1``. This is SnapATAC2's convention (``Fragment::to_insertions``: ``[start, start+1)``
and ``[end-1, end)``) and ArchR's (1-based ``start+1`` and ``end``, the same bases).

``counting`` says what one fragment adds to the features (bins, peaks, genes):

- ``"insertion"``: each insertion site adds 1 to every feature containing it, so a fragment whose
  two ends fall in one bin adds 2 there. Identical to SnapATAC2's ``counting_strategy=
  "insertion"``. SnapATAC2 >= 2.6 defaults to ``"paired-insertion"`` (below), so a side-by-side
  benchmark must pass ``counting_strategy="insertion"`` (and ``exclude_chroms=None``: SnapATAC2
  drops chrM/chrY bins by default) to get identical counts.
- ``"paired-insertion"``: as ``"insertion"``, but a fragment adds at most 1 to a feature that
  contains both of its ends (Miao & Kim 2024, "PIC"; SnapATAC2's default).
- ``"fragment"``: a fragment adds 1 to every feature its span ``[start, end)`` overlaps (by at
  least one base): Signac's ``FeatureMatrix``/``GeneActivity`` counting and SnapATAC2's
  ``"fragment"``.

The fragment file's ``count`` column (read-pair support of a unique fragment) is **not** used:
every line is one unique fragment, as in SnapATAC2 (which reads ``count`` only for its
duplicate-rate QC), ArchR and Signac.

Per cell the engine also reports ``n_fragment`` (lines of that barcode in the file, any
chromosome), ``n_counted`` (units counted: 2 per fragment for insertion counting, 1 for
fragment counting) and ``n_in_features`` (units that hit at least one feature); their ratio is
``fraction_in_features`` (FRiP for peaks). Units on chromosomes absent from the genome or past a
chromosome's end are counted in ``n_counted`` only.

Checked: our 500 bp tile matrices equal SnapATAC2 2.9's (``import_fragments`` +
``add_tile_matrix(counting_strategy="insertion" or "paired-insertion", exclude_chroms=None)``)
entry for entry on ../shared/data/atac/pbmc_multiome_fragments.tsv.gz and on an 8M-fragment
synthetic file. Cell Ranger (ARC) peak matrices place the right cut site 1 bp further, at
``end``: on the shared 1,000-cell multiome h5mu, fragment ends moved by +1 reproduce its counts
cell by cell on 123 of its 174 peaks and never exceed them (the others reach past the ±5 kb
windows the excerpted fragment file keeps; tests/atac/test_peaks.py).

Streaming and memory
--------------------
Fragments are coordinate-sorted, not cell-sorted, so the matrix cannot be written row by row
while reading. A file written by :func:`scfm.atac.fragments.prepare_fragments` is read from its
binary sidecar (:mod:`scfm.atac.sidecar`), any other file is parsed. One pass over the file
turns each chunk into (cell, feature) pairs with numba kernels (the file is read in a
background thread meanwhile) and appends them to one of up to 256 buckets of consecutive
cells. Buckets stay in memory until ``buffer_pairs`` pairs are held
(8 bytes each; default 1e8 = 0.8 GB), then all are appended to spill files beside the output
(``.<name>.spill-*``, removed afterwards). At the end each bucket becomes CSR rows (a counting
sort by cell, then per-row sorting of the nearly sorted features and merging of repeats) that
are appended to the h5ad with :class:`scfm.io.h5ad.CsrH5adWriter` in cell order. Peak memory is
therefore about ``chunk_size`` x ~250 bytes (parsing, and up to 3 chunks in flight) +
``buffer_pairs`` x 8 bytes + the largest bucket (pairs / 256 x ~24 bytes while it becomes CSR)
+ the ``var`` of genome bins when it is first built (17 bytes per bin of columns, the names
written in blocks of 1M as fixed-width bytes, never as Python strings; then cached per genome
and bin size, see :class:`BinVar`), never the whole matrix. Measured before the names became
bytes: 8M fragments, 5,000 cells, hg38 500 bp bins (11M nonzeros): 1.6 GB RSS, of which 0.2 GB
imports and 0.8 GB bin names. Atlas example: 2.3M nuclei x 5 kb bins with ~5,000 distinct bins
per nucleus is ~1.2e10 nonzeros: ~92 GB of int32 indices + data before HDF5 compression, a
spill of <= 8 bytes per insertion (2 per fragment) on the output's file system, and ~2-3 GB of
RAM (buffer, chunks, the 2.3M barcodes, one bucket of ~5e7 pairs). Input order does not matter
for correctness (unsorted files cost a per-row sort); sorted input makes the per-row sort
linear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import njit

from scfm.atac.fragments import FragmentChunk, Index, _put_int, read_chunks
from scfm.atomic import atomic_path, temp_dir_beside
from scfm.errors import ScfmInputError
from scfm.io.h5ad import CsrH5adWriter
from scfm.provenance import created, versions
from scfm.spec import default

log = logging.getLogger(__name__)

# wall-clock facts of a run: in the returned record and the log, not in the h5ad
_TIMINGS = ("seconds", "seconds_counting", "fragments_per_second")

COUNTINGS = ("insertion", "paired-insertion", "fragment")
_INSERTION, _PAIRED, _FRAGMENT = 0, 1, 2
_MAX_BUCKETS = 256
_POS_BITS = 32  # interval keys: chrom code << 32 | position (positions < 4.29 Gb)


@dataclass
class MatrixSummary:
    """What a counting function wrote: the h5ad path, its provenance record, per-cell metrics.

    ``record`` is also stored as JSON in ``uns["scfm"][stage]``; ``cells`` (indexed by barcode,
    in output row order) holds ``n_fragment``, ``n_counted``, ``n_in_features`` and
    ``fraction_in_features`` and is also the ``obs`` of the h5ad.
    """

    path: Path
    record: dict[str, Any]
    cells: pd.DataFrame


# --------------------------------------------------------------------------------------------
# numba kernels


@njit(cache=True, nogil=True)
def _tile_pairs(
    chrom: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    cell: np.ndarray,
    bin_offset: np.ndarray,
    chrom_size: np.ndarray,
    bin_size: int,
    mode: int,
    n_counted: np.ndarray,
    n_hit: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(cell, global bin) pairs of one chunk; updates per-cell unit totals in place."""
    n = len(start)
    cap = 2 * n
    if mode == _FRAGMENT:
        cap = 0
        for i in range(n):
            ch = chrom[i]
            if cell[i] >= 0 and ch >= 0:
                s = max(start[i], 0)
                e = min(end[i], chrom_size[ch])
                if s < e:
                    cap += (e - 1) // bin_size - s // bin_size + 1
    out_cell = np.empty(cap, np.int32)
    out_feat = np.empty(cap, np.int32)
    m = 0
    for i in range(n):
        c = cell[i]
        if c < 0:
            continue
        ch = chrom[i]
        if mode == _FRAGMENT:
            n_counted[c] += 1
            if ch < 0:
                continue
            s = max(start[i], 0)
            e = min(end[i], chrom_size[ch])
            if s >= e:
                continue
            n_hit[c] += 1
            for b in range(s // bin_size, (e - 1) // bin_size + 1):
                out_cell[m] = c
                out_feat[m] = bin_offset[ch] + b
                m += 1
            continue
        n_counted[c] += 2
        if ch < 0:
            continue
        size = chrom_size[ch]
        first = -1
        for p in (start[i], end[i] - 1):
            if 0 <= p < size:
                b = bin_offset[ch] + p // bin_size
                n_hit[c] += 1
                if mode == _PAIRED and b == first:
                    continue
                out_cell[m] = c
                out_feat[m] = b
                m += 1
                first = b
    return out_cell[:m], out_feat[:m]


@njit(cache=True, nogil=True)
def _segment_of(bounds: np.ndarray, key: int) -> int:
    """Index k of the segment [bounds[k], bounds[k+1]) holding ``key``, or -1."""
    k = np.searchsorted(bounds, key, side="right") - 1
    if k < 0 or k >= len(bounds) - 1:
        return -1
    return k


@njit(cache=True, nogil=True)
def _interval_pairs(
    chrom: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    cell: np.ndarray,
    bounds: np.ndarray,
    seg_ptr: np.ndarray,
    seg_feat: np.ndarray,
    n_features: int,
    mode: int,
    n_counted: np.ndarray,
    n_hit: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(cell, feature) pairs of one chunk against possibly overlapping intervals.

    The genome is cut into elementary segments at every interval boundary; each segment knows
    the features covering it (``seg_feat[seg_ptr[k]:seg_ptr[k+1]]``). Keys are
    ``chrom << 32 | position``.
    """
    n = len(start)
    last = np.full(n_features, -1, np.int64)  # fragment that last emitted a feature (dedup)
    cap = 16
    out_cell = np.empty(cap, np.int32)
    out_feat = np.empty(cap, np.int32)
    m = 0
    for i in range(n):
        c = cell[i]
        if c < 0:
            continue
        ch = chrom[i]
        n_counted[c] += 1 if mode == _FRAGMENT else 2
        if ch < 0:
            continue
        base = np.int64(ch) << _POS_BITS
        if mode == _FRAGMENT:
            if end[i] <= start[i]:
                continue
            k0 = np.searchsorted(bounds, base + max(start[i], 0), side="right") - 1
            k1 = np.searchsorted(bounds, base + end[i] - 1, side="right") - 1
            k0 = max(k0, 0)
            k1 = min(k1, len(bounds) - 2)
            hit = False
            for k in range(k0, k1 + 1):
                for j in range(seg_ptr[k], seg_ptr[k + 1]):
                    f = seg_feat[j]
                    if last[f] == i:
                        continue
                    last[f] = i
                    hit = True
                    if m == cap:
                        cap *= 2
                        out_cell = _grow(out_cell, cap)
                        out_feat = _grow(out_feat, cap)
                    out_cell[m] = c
                    out_feat[m] = f
                    m += 1
            if hit:
                n_hit[c] += 1
            continue
        for end_ in range(2):
            p = start[i] if end_ == 0 else end[i] - 1
            if p < 0:
                continue
            k = _segment_of(bounds, base + p)
            if k < 0 or seg_ptr[k] == seg_ptr[k + 1]:
                continue
            n_hit[c] += 1
            for j in range(seg_ptr[k], seg_ptr[k + 1]):
                f = seg_feat[j]
                if mode == _PAIRED and last[f] == i:
                    continue
                last[f] = i
                if m == cap:
                    cap *= 2
                    out_cell = _grow(out_cell, cap)
                    out_feat = _grow(out_feat, cap)
                out_cell[m] = c
                out_feat[m] = f
                m += 1
    return out_cell[:m], out_feat[:m]


@njit(cache=True, nogil=True)
def _grow(a: np.ndarray, cap: int) -> np.ndarray:
    out = np.empty(cap, a.dtype)
    out[: len(a)] = a
    return out


@njit(cache=True, nogil=True)
def _scatter_by_bucket(
    cells: np.ndarray, feats: np.ndarray, cells_per_bucket: int, n_buckets: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable counting sort of pairs by bucket; cells become bucket-local row numbers."""
    ptr = np.zeros(n_buckets + 1, np.int64)
    for c in cells:
        ptr[c // cells_per_bucket + 1] += 1
    for b in range(n_buckets):
        ptr[b + 1] += ptr[b]
    pos = ptr[:-1].copy()
    out_cell = np.empty(len(cells), np.int32)
    out_feat = np.empty(len(cells), np.int32)
    for i in range(len(cells)):
        b = cells[i] // cells_per_bucket
        out_cell[pos[b]] = cells[i] - b * cells_per_bucket
        out_feat[pos[b]] = feats[i]
        pos[b] += 1
    return ptr, out_cell, out_feat


@njit(cache=True, nogil=True)
def _sort_run(a: np.ndarray) -> None:
    """Sort in place: insertion sort, or a full sort if the run is not nearly sorted.

    A cell's features arrive nearly sorted from coordinate-sorted fragments (only the right
    ends of fragments step back), so insertion sort is O(n) there; unsorted input falls back.
    """
    n = len(a)
    budget = 8 * n + 64
    moves = 0
    for i in range(1, n):
        x = a[i]
        j = i - 1
        while j >= 0 and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
            moves += 1
        a[j + 1] = x
        if moves > budget:
            a[:] = np.sort(a)
            return


@njit(cache=True, nogil=True)
def _pairs_to_csr(
    rows: np.ndarray, feats: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, indices, data) from (row, feature) pairs, repeats summed, columns sorted."""
    ptr = np.zeros(n_rows + 1, np.int64)
    for r in rows:
        ptr[r + 1] += 1
    for r in range(n_rows):
        ptr[r + 1] += ptr[r]
    pos = ptr[:-1].copy()
    grouped = np.empty(len(rows), np.int32)
    for i in range(len(rows)):  # stable: keeps each row's features in file order
        grouped[pos[rows[i]]] = feats[i]
        pos[rows[i]] += 1
    indptr = np.zeros(n_rows + 1, np.int64)
    for r in range(n_rows):
        run = grouped[ptr[r] : ptr[r + 1]]
        _sort_run(run)
        u = 0
        for j in range(len(run)):
            if j == 0 or run[j] != run[j - 1]:
                u += 1
        indptr[r + 1] = indptr[r] + u
    indices = np.empty(indptr[-1], np.int32)
    data = np.zeros(indptr[-1], np.int32)
    for r in range(n_rows):
        run = grouped[ptr[r] : ptr[r + 1]]
        k = indptr[r] - 1
        for j in range(len(run)):
            if j == 0 or run[j] != run[j - 1]:
                k += 1
                indices[k] = run[j]
            data[k] += 1
    return indptr, indices, data


# --------------------------------------------------------------------------------------------
# feature maps: where a chunk's fragments land


class BinMap:
    """Consecutive bins of ``bin_size`` bp over every chromosome of ``chrom_sizes`` (in order)."""

    def __init__(self, chrom_sizes: dict[str, int], bin_size: int) -> None:
        if bin_size < 1:
            raise ValueError(f"bin_size must be >= 1, got {bin_size}")
        self.chrom_sizes = {str(k): int(v) for k, v in chrom_sizes.items()}
        self.bin_size = int(bin_size)
        sizes = np.fromiter(self.chrom_sizes.values(), np.int64, len(self.chrom_sizes))
        n_bins = (sizes + bin_size - 1) // bin_size
        self.bin_offset = np.concatenate([[0], np.cumsum(n_bins)[:-1]]).astype(np.int64)
        self.n_bins_per_chrom = n_bins
        self.n_features = int(n_bins.sum())
        if self.n_features >= np.iinfo(np.int32).max:
            raise ValueError(f"{self.n_features} bins do not fit int32 indices; raise bin_size")
        self.chroms = frozen_index(self.chrom_sizes)
        self._sizes = sizes

    def pairs(
        self, chunk: FragmentChunk, mode: int, n_counted: np.ndarray, n_hit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(cell, bin) pairs of a chunk whose chromosome codes refer to ``self.chroms``."""
        return _tile_pairs(
            chunk.chrom,
            chunk.start,
            chunk.end,
            chunk.barcode,
            self.bin_offset,
            self._sizes,
            self.bin_size,
            mode,
            n_counted,
            n_hit,
        )

    def var(self) -> BinVar:
        """``var`` of the bins: names ``chrom:start-end`` (0-based, half-open), chrom/start/end.

        Returned as a :class:`BinVar`, written by h5py: the names as fixed-width bytes (hg38 at
        500 bp is 6.2M names: as Python strings they cost seconds and ~0.8 GB per matrix), and
        the whole group cached once per genome and bin size.
        """
        return BinVar(self)

    def columns(self) -> pd.DataFrame:
        """``chrom`` (categorical), ``start``, ``end`` of every bin (RangeIndex)."""
        chrom_codes = np.repeat(np.arange(len(self._sizes)), self.n_bins_per_chrom)
        start = (np.arange(self.n_features, dtype=np.int64) - self.bin_offset[chrom_codes]) * (
            self.bin_size
        )
        end = np.minimum(start + self.bin_size, self._sizes[chrom_codes])
        chrom = pd.Categorical.from_codes(chrom_codes, categories=list(self.chrom_sizes))
        return pd.DataFrame({"chrom": chrom, "start": start, "end": end})

    def names(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Names of bins ``lo..hi-1`` as a fixed-width bytes array (``S<width>``)."""
        hi = self.n_features if hi is None else hi
        encoded = [c.encode() for c in self.chrom_sizes]
        name_off = np.zeros(len(encoded) + 1, np.int64)
        name_off[1:] = np.cumsum([len(b) for b in encoded])
        name_bytes = np.frombuffer(b"".join(encoded), np.uint8)
        width = max(len(b) for b in encoded) + 2 + 2 * len(str(int(self._sizes.max())))
        out = np.zeros((max(hi - lo, 0), width), np.uint8)
        _bin_names(lo, hi, self.bin_offset, self._sizes, self.bin_size, name_bytes, name_off, out)
        return out.view(f"S{width}").ravel()


VAR_CACHE_VERSION = 1  # bumped when the layout of a bins' var group changes


def var_cache_dir() -> Path | None:
    """Where bins' ``var`` groups are cached.

    ``$SCFM_CACHE_DIR`` (empty or ``none``: no cache), else ``$XDG_CACHE_HOME/scfm`` or
    ``~/.cache/scfm``.
    """
    env = os.environ.get("SCFM_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "none") else Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scfm"


class BinVar:
    """``var`` of genome bins, written straight into an h5ad by h5py (see :meth:`BinMap.var`).

    The group (anndata's dataframe encoding: ``chrom`` categorical, ``start``, ``end``, names as
    fixed-width bytes in ``_index``, which anndata reads back as ``str``) is the same for every
    matrix of one genome and bin size, so it is written once into a cache file
    (:func:`var_cache_dir`, named by a hash of the chromosome sizes, bin size, compression and
    :data:`VAR_CACHE_VERSION`) and HDF5-copied from there (compressed chunks copied as they are).
    Without a usable cache it is written directly.
    """

    block = 1 << 20  # names generated per block

    def __init__(self, bins: BinMap) -> None:
        self.bins = bins

    def __len__(self) -> int:
        return self.bins.n_features

    def frame(self) -> pd.DataFrame:
        """The same ``var`` as a DataFrame with ``str`` names (6.2M Python strings for hg38)."""
        names = self.bins.names().astype(str)
        return self.bins.columns().set_index(pd.Index(names.astype(object), dtype=object))

    def _cache_file(self, compression: str | None) -> Path | None:
        root = var_cache_dir()
        if root is None:
            return None
        key = json.dumps(
            [
                list(self.bins.chrom_sizes.items()),
                self.bins.bin_size,
                compression,
                VAR_CACHE_VERSION,
            ]
        )
        return root / "bin_var" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.h5"

    def write(self, f: h5py.File, compression: str | None) -> None:
        """Write the ``var`` group of ``f`` (from the cache when there is one)."""
        cache = self._cache_file(compression)
        if cache is not None:
            try:
                if not cache.is_file():
                    with atomic_path(cache, suffix=".tmp.h5") as tmp, h5py.File(tmp, "w") as c:
                        self._write(c, compression)
                with h5py.File(cache, "r") as c:
                    if c["var/_index"].shape == (len(self),):
                        c.copy(c["var"], f, "var")
                        return
                log.warning("bins var cache %s does not match; writing var directly", cache)
            except (OSError, KeyError) as exc:
                log.warning("bins var cache %s unusable (%s); writing var directly", cache, exc)
                if "var" in f:
                    del f["var"]
        self._write(f, compression)

    def _write(self, f: h5py.File, compression: str | None) -> None:
        kw: dict[str, Any] = {} if compression in (None, "none") else {"compression": compression}
        g = f.create_group("var")
        g.attrs["encoding-type"] = "dataframe"
        g.attrs["encoding-version"] = "0.2.0"
        g.attrs["_index"] = "_index"
        g.attrs["column-order"] = np.array(["chrom", "start", "end"], dtype=object)
        columns = self.bins.columns()
        for name in ("chrom", "start", "end"):
            ad.io.write_elem(
                g,
                name,
                columns[name].array if name == "chrom" else columns[name].to_numpy(),
                dataset_kwargs=kw,
            )
        del columns
        n = self.bins.n_features
        width = self.bins.names(0, 1).dtype.itemsize if n else 1
        ds = g.create_dataset(
            "_index", shape=(n,), dtype=f"S{width}", chunks=(min(max(n, 1), 1 << 16),), **kw
        )
        for lo in range(0, n, self.block):
            hi = min(lo + self.block, n)
            ds[lo:hi] = self.bins.names(lo, hi)
        ds.attrs["encoding-type"] = "string-array"
        ds.attrs["encoding-version"] = "0.2.0"


class _BinsH5adWriter(CsrH5adWriter):
    """:class:`CsrH5adWriter` whose ``var`` is a :class:`BinVar` (written by h5py, cached)."""

    def __init__(self, path: Path, *, var: BinVar, compression: str | None, **kw: Any) -> None:
        self._bin_var = var
        placeholder = pd.DataFrame(index=pd.RangeIndex(len(var)))  # sizes the matrix only
        super().__init__(path, var=placeholder, compression=compression, **kw)

    def _create(self, obs, var, uns, dtype, kw) -> None:
        super()._create(obs, var.iloc[:0], uns, dtype, kw)  # an empty var, then the real one
        del self._f["var"]
        self._bin_var.write(self._f, kw.get("compression"))


@njit(cache=True)
def _bin_names(lo, hi, bin_offset, sizes, bin_size, name_bytes, name_off, out) -> None:
    """``chrom:start-end`` of bins ``lo..hi-1`` into the rows of ``out`` (zero-padded)."""
    c = 0
    for b in range(lo, hi):
        while c + 1 < len(bin_offset) and b >= bin_offset[c + 1]:
            c += 1
        row = out[b - lo]
        p = 0
        for j in range(name_off[c], name_off[c + 1]):
            row[p] = name_bytes[j]
            p += 1
        row[p] = 58  # ':'
        s = (b - bin_offset[c]) * bin_size
        p = _put_int(row, p + 1, s)
        row[p] = 45  # '-'
        _put_int(row, p + 1, min(s + bin_size, sizes[c]))


class IntervalMap:
    """Features given as intervals (possibly overlapping) on named chromosomes."""

    def __init__(
        self, chroms: Sequence[str], starts: np.ndarray, ends: np.ndarray, chrom_index: Index
    ) -> None:
        self.chroms = chrom_index
        codes = chrom_index.encode(np.asarray(chroms, dtype=object)).astype(np.int64)
        if (codes < 0).any():
            raise ValueError("interval chromosome missing from the chromosome index")
        starts = np.asarray(starts, np.int64)
        ends = np.asarray(ends, np.int64)
        self.n_features = len(starts)
        base = codes << _POS_BITS
        lo, hi = base + starts, base + ends
        bounds = np.unique(np.concatenate([lo, hi]))
        first = np.searchsorted(bounds, lo)  # segments first..last-1 are covered
        last = np.searchsorted(bounds, hi)
        depth = np.zeros(len(bounds) + 1, np.int64)
        np.add.at(depth, first, 1)
        np.add.at(depth, last, -1)
        cover = np.cumsum(depth)[: max(len(bounds) - 1, 0)]
        seg_ptr = np.concatenate([[0], np.cumsum(cover)]).astype(np.int64)
        seg_feat = np.empty(int(seg_ptr[-1]), np.int32)
        _fill_segments(first, last, seg_ptr, seg_feat)
        self.bounds, self.seg_ptr, self.seg_feat = bounds, seg_ptr, seg_feat

    def pairs(
        self, chunk: FragmentChunk, mode: int, n_counted: np.ndarray, n_hit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(cell, feature) pairs of a chunk whose chromosome codes refer to ``self.chroms``."""
        return _interval_pairs(
            chunk.chrom,
            chunk.start,
            chunk.end,
            chunk.barcode,
            self.bounds,
            self.seg_ptr,
            self.seg_feat,
            self.n_features,
            mode,
            n_counted,
            n_hit,
        )


@njit(cache=True)
def _fill_segments(
    first: np.ndarray, last: np.ndarray, seg_ptr: np.ndarray, seg_feat: np.ndarray
) -> None:
    pos = seg_ptr[:-1].copy()
    for f in range(len(first)):
        for k in range(first[f], last[f]):
            seg_feat[pos[k]] = f
            pos[k] += 1


def interval_var(chrom: pd.Categorical | np.ndarray, start: np.ndarray, end: np.ndarray):
    """A ``var`` frame for genomic intervals: index ``chrom:start-end``, columns chrom/start/end."""
    chrom = pd.Categorical(chrom)
    start = np.asarray(start, np.int64)
    end = np.asarray(end, np.int64)
    names = (
        pd.Series(chrom.astype(str), dtype=object)
        + ":"
        + pd.Series(start).astype(str)
        + "-"
        + pd.Series(end).astype(str)
    )
    return pd.DataFrame(
        {"chrom": chrom, "start": start, "end": end}, index=pd.Index(names.to_numpy(), dtype=str)
    )


# --------------------------------------------------------------------------------------------
# accumulation: pairs -> buckets of consecutive cells -> CSR rows


class _Buckets:
    """(cell, feature) pairs grouped by buckets of consecutive cells, spilled to disk if big."""

    def __init__(self, n_cells: int, spill_dir: Path, buffer_pairs: int) -> None:
        self.n_cells = n_cells
        self.n_buckets = max(1, min(n_cells, _MAX_BUCKETS))
        self.cells_per_bucket = -(-n_cells // self.n_buckets)
        self.n_buckets = -(-n_cells // self.cells_per_bucket)
        self.spill_dir = spill_dir
        self.buffer_pairs = buffer_pairs
        self._pending: list[list[tuple[np.ndarray, np.ndarray]]] = [
            [] for _ in range(self.n_buckets)
        ]
        self._held = 0
        self.spilled_pairs = 0
        self.total_pairs = 0

    def add(self, cells: np.ndarray, feats: np.ndarray) -> None:
        if len(cells) == 0:
            return
        ptr, rows, fts = _scatter_by_bucket(cells, feats, self.cells_per_bucket, self.n_buckets)
        for b in np.flatnonzero(np.diff(ptr)):
            lo, hi = ptr[b], ptr[b + 1]
            self._pending[b].append((rows[lo:hi], fts[lo:hi]))
        self._held += len(cells)
        self.total_pairs += len(cells)
        if self._held > self.buffer_pairs:
            self._spill()

    def _files(self, b: int) -> tuple[Path, Path]:
        return self.spill_dir / f"rows{b:03d}.i32", self.spill_dir / f"feats{b:03d}.i32"

    def _spill(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        for b, parts in enumerate(self._pending):
            if not parts:
                continue
            for path, k in zip(self._files(b), (0, 1), strict=True):
                with path.open("ab") as fh:
                    for part in parts:
                        part[k].tofile(fh)
            self._pending[b] = []
        self.spilled_pairs += self._held
        self._held = 0

    def rows(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """CSR ``(indptr, indices, data)`` of consecutive cells, bucket by bucket, all rows."""
        for b in range(self.n_buckets):
            n_rows = min(self.cells_per_bucket, self.n_cells - b * self.cells_per_bucket)
            parts = self._pending[b]
            self._pending[b] = []
            row_parts = [p[0] for p in parts]
            feat_parts = [p[1] for p in parts]
            rows_file, feats_file = self._files(b)
            if rows_file.exists():
                row_parts.insert(0, np.fromfile(rows_file, np.int32))
                feat_parts.insert(0, np.fromfile(feats_file, np.int32))
                rows_file.unlink()
                feats_file.unlink()
            rows = np.concatenate(row_parts) if row_parts else np.zeros(0, np.int32)
            feats = np.concatenate(feat_parts) if feat_parts else np.zeros(0, np.int32)
            del row_parts, feat_parts, parts
            yield _pairs_to_csr(rows, feats, n_rows)


def _prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``items`` in a background thread.

    Parsing then overlaps the numba kernels (which release the GIL); exceptions are re-raised
    here, and the thread stops if the consumer stops early.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=work, name="scfm-fragments", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


# --------------------------------------------------------------------------------------------
# the engine


def frozen_index(names: Iterable[str]) -> Index:
    """A frozen :class:`Index` of ``names`` (codes in order; other names encode to -1)."""
    index = Index()
    for name in names:
        index.add(str(name))
    index.frozen = True  # set after filling: an Index frozen at construction stays empty
    return index


def check_barcodes(fragments: str | Path, barcodes: Sequence[str]) -> list[str]:
    """The cell barcodes as a list of str; empty or duplicated barcodes raise ScfmInputError."""
    cells = [str(b) for b in barcodes]
    if not cells:
        raise ScfmInputError(fragments, "barcodes", "no barcodes given", "at least one cell")
    if len(set(cells)) != len(cells):
        dup = pd.Index(cells)[pd.Index(cells).duplicated()][0]
        raise ScfmInputError(fragments, "barcodes", f"barcode {dup!r} repeated", "unique barcodes")
    return cells


def count_features(
    fragments: str | Path,
    feature_map: BinMap | IntervalMap,
    barcodes: Sequence[str],
    out_h5ad: str | Path,
    *,
    var: pd.DataFrame | BinVar | Callable[[], pd.DataFrame | BinVar],
    stage: str,
    params: dict[str, Any],
    counting: str = "insertion",
    binarize: bool = False,
    chunk_size: int = 2_000_000,
    compression: str | None = "lzf",
    buffer_pairs: int = 100_000_000,
    chrom_index: Index | None = None,
    obs_names: dict[str, str] | None = None,
) -> MatrixSummary:
    """Count a fragment file into a cells x features int32 CSR h5ad (see the module docstring).

    Parameters
    ----------
    fragments
        Fragment file (``chrom start end barcode [count]``), plain, gzip or BGZF.
    feature_map
        A :class:`BinMap` or :class:`IntervalMap`; its ``chroms`` index codes the chromosomes.
    barcodes
        The cells, in output row order; fragments of other barcodes are skipped.
    out_h5ad
        Output, written atomically.
    var
        ``var`` of the features (one row per feature, in feature order), or a function making
        it: then it is built only after counting (the 6.2M bin names of hg38 take ~0.8 GB).
    stage, params
        Provenance: the ``uns["scfm"]`` key and the parameters to record.
    counting
        ``"insertion"``, ``"paired-insertion"`` or ``"fragment"``.
    binarize
        Store 1 for every nonzero count.
    chunk_size
        Fragments per chunk (memory: ~250 bytes per fragment of a chunk, see module doc).
    compression
        HDF5 compression of ``X`` (``"lzf"``, ``"gzip"`` or None).
    buffer_pairs
        (cell, feature) pairs held in memory (8 bytes each) before spilling to disk.
    chrom_index
        Chromosome index for the reader (defaults to ``feature_map.chroms``).
    obs_names
        Renames of the per-cell metric columns (e.g. ``fraction_in_features`` -> ``frip``).

    Returns
    -------
    MatrixSummary
    """
    fragments = Path(fragments)
    if counting not in COUNTINGS:
        raise ValueError(f"counting must be one of {COUNTINGS}, got {counting!r}")
    mode = COUNTINGS.index(counting)
    cells = check_barcodes(fragments, barcodes)
    n_cells = len(cells)
    cell_index = frozen_index(cells)
    chroms = chrom_index if chrom_index is not None else feature_map.chroms
    n_fragment = np.zeros(n_cells, np.int64)
    n_counted = np.zeros(n_cells, np.int64)
    n_hit = np.zeros(n_cells, np.int64)
    n_read = 0
    t0 = time.perf_counter()
    out_h5ad = Path(out_h5ad)
    out_h5ad.parent.mkdir(parents=True, exist_ok=True)
    spill_dir = temp_dir_beside(out_h5ad, spill=True)
    try:
        buckets = _Buckets(n_cells, spill_dir, buffer_pairs)
        chunks = read_chunks(fragments, chroms=chroms, barcodes=cell_index, chunk_size=chunk_size)
        for chunk in _prefetch(chunks):
            n_read += len(chunk)
            ok = chunk.barcode >= 0
            n_fragment += np.bincount(chunk.barcode[ok], minlength=n_cells)
            c, f = feature_map.pairs(chunk, mode, n_counted, n_hit)
            buckets.add(c, f)
        t_read = time.perf_counter() - t0
        if n_fragment.sum() == 0:
            raise ScfmInputError(
                fragments,
                "barcode",
                f"none of the {n_cells} barcodes (e.g. {cells[0]!r}) occurs in {n_read} fragments",
                "barcodes spelled as in the fragment file's 4th column",
            )
        obs = pd.DataFrame(
            {
                "n_fragment": n_fragment,
                "n_counted": n_counted,
                "n_in_features": n_hit,
                "fraction_in_features": n_hit / np.maximum(n_counted, 1),
            },
            index=pd.Index(cells, dtype=str),
        ).rename(columns=obs_names or {})
        record = {
            "stage": stage,
            "created": created(),
            "fragments": str(fragments),
            "counting": counting,
            "binarize": binarize,
            **params,
            "n_cells": n_cells,
            "n_features": int(feature_map.n_features),
            "n_fragments_read": n_read,
            "n_fragments_of_cells": int(n_fragment.sum()),
            "units_counted": int(n_counted.sum()),
            "units_in_features": int(n_hit.sum()),
            "pairs": int(buckets.total_pairs),
            "pairs_spilled": int(buckets.spilled_pairs),
            "versions": versions("anndata", "numpy", "numba", "h5py"),
        }
        nnz = 0
        var_frame = var() if callable(var) else var
        if len(var_frame) != feature_map.n_features:
            raise ValueError(f"var has {len(var_frame)} rows for {feature_map.n_features} features")
        n_features = feature_map.n_features
        make_writer = _BinsH5adWriter if isinstance(var_frame, BinVar) else CsrH5adWriter
        with atomic_path(out_h5ad) as tmp:
            with make_writer(
                tmp, obs=obs, var=var_frame, uns=None, dtype=np.int32, compression=compression
            ) as writer:
                del var_frame
                for indptr, indices, data in buckets.rows():
                    if binarize:
                        data[:] = 1
                    block = sp.csr_matrix(
                        (data, indices, indptr), shape=(len(indptr) - 1, n_features)
                    )
                    block.has_sorted_indices = True
                    writer.append(block)
                    nnz += len(data)
                record["nnz"] = nnz
                record["seconds"] = round(time.perf_counter() - t0, 3)
                record["seconds_counting"] = round(t_read, 3)
                record["fragments_per_second"] = round(n_read / max(t_read, 1e-9))
            # the record (nnz) is complete only now: replace the empty uns. The timings stay
            # out of the file (logged and returned; see scfm.provenance)
            written = {k: v for k, v in record.items() if k not in _TIMINGS}
            with h5py.File(tmp, "a") as f:
                del f["uns"]
                ad.io.write_elem(f, "uns", {"scfm": {stage: json.dumps(written, default=str)}})
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    log.info(
        "%s: %d cells x %d features, nnz %d, %d fragments in %.1fs -> %s",
        stage,
        n_cells,
        feature_map.n_features,
        nnz,
        n_read,
        record["seconds"],
        out_h5ad,
    )
    return MatrixSummary(path=out_h5ad, record=record, cells=obs)


# --------------------------------------------------------------------------------------------
# public: genome tiles


def tile_matrix(
    fragments: str | Path,
    genome: Any,
    barcodes: Sequence[str],
    out_h5ad: str | Path,
    *,
    bin_size: int = default("qc.atac.bin_size"),
    counting: str = default("qc.atac.counting"),
    binarize: bool = default("qc.atac.binarize"),
    chunk_size: int = 2_000_000,
    compression: str | None = default("io.compression"),
    buffer_pairs: int = 100_000_000,
) -> MatrixSummary:
    """Cells x genome bins count matrix from a fragment file, streamed in bounded memory.

    Bin ``i`` of chromosome ``c`` covers ``[i * bin_size, min((i + 1) * bin_size, size_c))``;
    all bins of all chromosomes of ``genome.chrom_sizes`` are columns, in genome order
    (``var_names`` ``chr1:0-500``; ``var`` columns chrom, start, end). Rows are ``barcodes`` in
    the given order (``obs``: per-cell metrics, see :class:`MatrixSummary`). ``X`` is int32 CSR.
    Fragments on chromosomes absent from the genome, and insertions past a chromosome's end,
    are skipped (they count in ``n_counted`` only).

    Parameters
    ----------
    fragments
        Fragment file (``chrom start end barcode [count]``, 0-based half-open).
    genome
        A :class:`scfm.atac.genome.Genome` (only ``chrom_sizes`` and ``name`` are used).
    barcodes
        Cell barcodes, in output row order.
    out_h5ad
        Output h5ad, written atomically.
    bin_size
        Bin width in bp (500 default; 5,000 for very large atlases).
    counting
        ``"insertion"`` (default), ``"paired-insertion"`` or ``"fragment"``: see the module
        docstring (``"insertion"`` equals SnapATAC2's ``counting_strategy="insertion"``).
    binarize
        Store 1 instead of counts.
    chunk_size
        Fragments parsed per chunk.
    compression
        HDF5 compression of ``X``.
    buffer_pairs
        (cell, bin) pairs held in memory (8 bytes each) before spilling beside the output.

    Returns
    -------
    MatrixSummary
        ``record`` (also ``uns["scfm"]["tiles"]``) and the per-cell metrics.
    """
    bins = BinMap(genome.chrom_sizes, bin_size)
    return count_features(
        fragments,
        bins,
        barcodes,
        out_h5ad,
        var=bins.var,
        stage="tiles",
        params={"genome": getattr(genome, "name", None), "bin_size": int(bin_size)},
        counting=counting,
        binarize=binarize,
        chunk_size=chunk_size,
        compression=compression,
        buffer_pairs=buffer_pairs,
    )


__all__ = [
    "COUNTINGS",
    "BinMap",
    "IntervalMap",
    "MatrixSummary",
    "count_features",
    "interval_var",
    "tile_matrix",
]
