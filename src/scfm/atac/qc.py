"""Per-barcode QC of scATAC fragments, in one streaming pass.

Depth, duplicates, chrM, TSS enrichment, nucleosome signal and the fragment-length histogram.

Definitions (``F`` = the barcode's lines of the fragment file, each a unique fragment):

- ``n_fragment``: fragments of ``F`` on nuclear chromosomes (chrM/MT excluded), as
  SnapATAC2's ``n_fragment``; ``n_mito``: fragments on the mitochondrial chromosome.
- ``n_reads``: the sum of the count column over all of ``F`` (read pairs, duplicates included).
- ``frac_dup`` = 1 - (n_fragment + n_mito) / n_reads; ``frac_mito`` = n_mito /
  (n_fragment + n_mito) -- both as SnapATAC2 defines them.
- ``tsse``: **SnapATAC2's TSS enrichment** (``snapatac2.metrics.tsse``; read from its Rust
  core ``TSSe``/``TssRegions`` in ``snapatac2-core/src/preprocessing/qc.rs``, not copied):

  1. TSSs: the unique ``(chrom, position, strand)`` of :meth:`Genome.tss` (per transcript when
     the annotation is a GTF, as SnapATAC2 reads transcript records), TSSs on chrM excluded.
  2. Insertions: both ends of every nuclear fragment, ``start`` and ``end - 1``, with no
     further Tn5 shift (fragment files are already shifted); each unique fragment counts once
     whatever its count column.
  3. Window: each TSS gets 4001 positions, ``TSS - 2000 .. TSS + 2000``, oriented by strand
     (position ``i`` = ``2000 + (x - TSS)`` on ``+``, ``2000 - (x - TSS)`` on ``-``). An
     insertion adds 1 to every window it falls in (overlapping TSSs count it several times).
  4. Background: the mean count of the 100 outermost positions at each end (``|x - TSS|`` in
     1901..2000; 200 positions), plus a pseudo-count of **0.1**.
  5. Signal: a centred moving average of half-width **5** (11 bp) at the TSS position.
  6. ``tsse = (center / 11) / (flank / 200 + 0.1)``, where ``center`` and ``flank`` are the
     barcode's insertion counts with ``|x - TSS| <= 5`` and ``1901 <= |x - TSS| <= 2000``
     summed over all TSSs (columns ``tss_center``, ``tss_flank``).

  Both sets are symmetric in ``x - TSS``, so strand does not change the score. The one
  deliberate difference: SnapATAC2 clips a window that starts before position 0
  (``saturating_sub``), which shifts the positions of TSSs within 2 kb of a chromosome start;
  we keep windows centred. Other tools differ by up to 3x (Signac: ±1000 bp windows, ArchR:
  ±50 bp signal over ±1.9-2 kb flanks); compare scores only under one definition.
- ``nucleosome_signal``: Signac's ratio of mono-nucleosome fragments (147 <= length < 294) to
  nucleosome-free ones (length < 147), over nuclear fragments, length = ``end - start``
  (``inf`` when there are mono but no nucleosome-free fragments, ``NaN`` when neither).

The fragment-length histogram counts nuclear fragments by length ``0 .. max_length``; the last
bin holds every fragment of ``max_length`` bp or longer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm.atac.fragments import Index, iter_fragments
from scfm.atac.genome import Genome, harmonize_chrom
from scfm.atomic import atomic_path

log = logging.getLogger(__name__)

TSS_WINDOW = 2000  # bp each side of a TSS (SnapATAC2 TssRegions window_size)
TSS_FLANK = 100  # outermost positions at each end used as background
TSS_SMOOTH = 5  # half-width of the moving average at the TSS
TSS_PSEUDOCOUNT = 0.1  # added to the per-position background
NFR_MAX = 147  # nucleosome-free: length < 147
MONO_MAX = 294  # mono-nucleosome: 147 <= length < 294
# with a blacklist (prepare_fragments' blacklist=): fragments removed, and their share of all
# the barcode's fragments (removed + n_fragment + n_mito)
BLACKLIST_COLUMNS = ["n_blacklist", "frac_blacklist"]
QC_COLUMNS = [
    "n_fragment",
    "n_mito",
    "n_reads",
    "frac_dup",
    "frac_mito",
    "tsse",
    "tss_center",
    "tss_flank",
    "n_nfr",
    "n_mono",
    "nucleosome_signal",
]


def _grow(arrays: dict[str, np.ndarray], n: int) -> None:
    for k, a in arrays.items():
        if len(a) < n:
            arrays[k] = np.concatenate([a, np.zeros(max(n - len(a), len(a)), a.dtype)])


def _tss_hits(tss: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For insertion positions ``x``: TSSs within ±5 bp, and TSSs 1901..2000 bp away."""
    lo, hi = TSS_WINDOW - TSS_FLANK + 1, TSS_WINDOW

    def n_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # TSSs with a <= t <= b
        return np.searchsorted(tss, b, "right") - np.searchsorted(tss, a, "left")

    center = n_in(x - TSS_SMOOTH, x + TSS_SMOOTH)
    flank = n_in(x - hi, x - lo) + n_in(x + lo, x + hi)
    return center, flank


_ACCUMULATORS = ("n_fragment", "n_mito", "n_reads", "tss_center", "tss_flank", "n_nfr", "n_mono")


class QcAccumulator:
    """The per-barcode QC sums of :func:`barcode_qc`, fed chunk by chunk.

    One instance serves both :func:`barcode_qc`'s own pass and the validating pass of
    :func:`scfm.atac.fragments.prepare_fragments` (which stores the sums in the fragment file's
    sidecar, so the QC stage need not read the fragments again). ``key`` identifies everything
    the sums depend on besides the fragments (chromosomes, mitochondrial ones, the TSS set,
    ``max_length``): stored sums are used only under the same key.
    """

    def __init__(
        self, genome: Genome, *, tss: pd.DataFrame | None = None, max_length: int = 1000
    ) -> None:
        self.gnames = list(genome.chrom_sizes)
        self.mito = np.array([c in set(genome.mito_chroms) for c in self.gnames] + [False])
        tss = genome.tss() if tss is None else tss
        self.tss_by_chrom = {
            self.gnames.index(c): np.sort(g["position"].to_numpy(np.int64))
            for c, g in tss.groupby("chrom", sort=False)
            if c in genome.chrom_sizes and c not in genome.mito_chroms
        }
        self.max_length = int(max_length)
        self.acc = {k: np.zeros(1024, np.int64) for k in _ACCUMULATORS}
        self.n_blacklist: np.ndarray | None = None  # fragments removed by a blacklist
        self.hist = np.zeros(self.max_length + 1, np.int64)
        h = hashlib.sha256()
        h.update(
            json.dumps([self.gnames, self.mito.tolist(), self.max_length, _DEFINITION]).encode()
        )
        for c in sorted(self.tss_by_chrom):
            h.update(np.int64(c).tobytes() + self.tss_by_chrom[c].tobytes())
        self.key = h.hexdigest()

    def add(
        self, g: np.ndarray, bc: np.ndarray, start: np.ndarray, end: np.ndarray, count: np.ndarray
    ) -> None:
        """Fragments on genome chromosome ``g`` (index, >= 0) of barcode code ``bc`` (>= 0)."""
        n_bc = int(bc.max()) + 1 if len(bc) else 0
        _grow(self.acc, n_bc)
        acc, n_bc = self.acc, len(self.acc["n_reads"])
        is_mito = self.mito[g]
        nuclear = ~is_mito
        acc["n_reads"] += np.bincount(bc, count, n_bc).astype(np.int64)
        acc["n_mito"] += np.bincount(bc[is_mito], minlength=n_bc)
        bc_n, start, end, g_n = bc[nuclear], start[nuclear], end[nuclear], g[nuclear]
        acc["n_fragment"] += np.bincount(bc_n, minlength=n_bc)
        length = end - start
        self.hist += np.bincount(np.minimum(length, self.max_length), minlength=self.max_length + 1)
        acc["n_nfr"] += np.bincount(bc_n[length < NFR_MAX], minlength=n_bc)
        mono = (length >= NFR_MAX) & (length < MONO_MAX)
        acc["n_mono"] += np.bincount(bc_n[mono], minlength=n_bc)
        for c in np.unique(g_n):
            positions = self.tss_by_chrom.get(int(c))
            if positions is None or not len(positions):
                continue
            m = g_n == c
            x = np.concatenate([start[m], end[m] - 1])
            b = np.concatenate([bc_n[m], bc_n[m]])
            center, flank = _tss_hits(positions, x)
            acc["tss_center"] += np.bincount(b, center, n_bc).astype(np.int64)
            acc["tss_flank"] += np.bincount(b, flank, n_bc).astype(np.int64)

    def add_blacklisted(self, bc: np.ndarray) -> None:
        """Fragments of barcode codes ``bc`` removed because they overlap a blacklisted region."""
        if self.n_blacklist is None:
            self.n_blacklist = np.zeros(1024, np.int64)
        n = int(bc.max()) + 1 if len(bc) else 0
        if n > len(self.n_blacklist):
            self.n_blacklist = np.r_[
                self.n_blacklist, np.zeros(max(n, len(self.n_blacklist)), np.int64)
            ]
        self.n_blacklist += np.bincount(bc, minlength=len(self.n_blacklist))

    def arrays(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """The sums of barcode ``codes`` (in that order) and the length histogram."""
        n = int(codes.max()) + 1 if len(codes) else 0
        _grow(self.acc, n)
        out = {**{k: v[codes] for k, v in self.acc.items()}, "length_hist": self.hist.copy()}
        if self.n_blacklist is not None:
            if n > len(self.n_blacklist):
                self.n_blacklist = np.r_[self.n_blacklist, np.zeros(n, np.int64)]
            out["n_blacklist"] = self.n_blacklist[codes]
        return out


# bumped when a definition in this module changes (stored sums are then recomputed)
_DEFINITION = "qc-v1"


def _table(
    names: Sequence[str], arrays: Mapping[str, np.ndarray], barcodes: Sequence[str] | None
) -> pd.DataFrame:
    columns = [*_ACCUMULATORS, *(["n_blacklist"] if "n_blacklist" in arrays else [])]
    table = pd.DataFrame({k: arrays[k] for k in columns}, index=pd.Index(names))
    if barcodes is None:
        table = table.sort_index()  # codes follow chunking; sorted names do not
    else:
        table = table.reindex(pd.Index(list(barcodes)), fill_value=0)
    table.index.name = "barcode"
    return _derive(table)


def stored_qc(
    fragments: str | Path, acc: QcAccumulator
) -> tuple[list[str], dict[str, np.ndarray]] | None:
    """Barcodes and QC sums stored in the sidecar of ``fragments`` under ``acc.key``, or None."""
    from scfm.atac.sidecar import Sidecar

    side = Sidecar.open(fragments)
    if side is None or side.meta.get("qc_key") != acc.key:
        return None
    arrays = {k: side.array(f"qc.{k}") for k in (*_ACCUMULATORS, "length_hist")}
    if any(a is None for a in arrays.values()):
        return None
    blacklisted = side.array("qc.n_blacklist")
    if blacklisted is not None:
        arrays["n_blacklist"] = blacklisted
    return side.barcodes, arrays


def barcode_qc(
    fragments: str | Path,
    genome: Genome,
    *,
    chunk_size: int = 2_000_000,
    barcodes: Sequence[str] | None = None,
    chrom_map: Mapping[str, str | None] | None = None,
    tss: pd.DataFrame | None = None,
    max_length: int = 1000,
) -> tuple[pd.DataFrame, pd.Series]:
    """Per-barcode QC table and the fragment-length histogram, in one pass over ``fragments``.

    A file written by :func:`scfm.atac.fragments.prepare_fragments` carries these sums in its
    sidecar (computed in prepare's validating pass): they are used, without reading the
    fragments, when the sidecar matches the file and was computed with the same genome, TSS
    set and ``max_length`` (and ``chrom_map`` is not given).

    Parameters
    ----------
    fragments
        A fragment file (any layout :func:`scfm.atac.fragments.iter_fragments` reads; sorting
        is not required).
    genome
        Chromosomes (names are harmonised, alt contigs ignored) and TSSs (``genome.tss()``).
    chunk_size
        Fragments per chunk; memory is one chunk plus a few numbers per barcode.
    barcodes
        Only these barcodes (others are skipped); all barcodes when ``None``.
    chrom_map
        Extra chromosome-name mapping, as for :func:`scfm.atac.genome.harmonize_chrom`.
    tss
        TSS table (``chrom, position``) instead of ``genome.tss()``.
    max_length
        Fragment lengths at or beyond this share the histogram's last bin.

    Returns
    -------
    ``(table, length_hist)``: the table is indexed by barcode (sorted, or in the order of
    ``barcodes``) with columns :data:`QC_COLUMNS` (definitions in the module docstring);
    ``length_hist`` is a Series of fragment counts indexed by length ``0..max_length``.
    """
    qc = QcAccumulator(genome, tss=tss, max_length=max_length)
    stored = stored_qc(fragments, qc) if chrom_map is None else None
    if stored is not None:
        names, arrays = stored
        table = _table(names, arrays, barcodes)
        hist = arrays["length_hist"]
        log.info("%s: QC of %d barcodes from the sidecar", fragments, len(table))
    else:
        table, hist = _qc_pass(fragments, genome, qc, chunk_size, barcodes, chrom_map)
    length_hist = pd.Series(hist, index=pd.RangeIndex(max_length + 1, name="length"), name="n")
    extra = BLACKLIST_COLUMNS if "n_blacklist" in table else []
    return table[QC_COLUMNS + extra], length_hist


def _qc_pass(
    fragments: str | Path,
    genome: Genome,
    qc: QcAccumulator,
    chunk_size: int,
    barcodes: Sequence[str] | None,
    chrom_map: Mapping[str, str | None] | None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`barcode_qc` by reading the fragments."""
    gnames = qc.gnames
    chroms = Index()
    bc_index = Index(barcodes, frozen=True) if barcodes is not None else Index()
    lut = np.zeros(0, np.int64)
    n_read = n_skipped = 0
    for chunk in iter_fragments(fragments, chroms=chroms, barcodes=bc_index, chunk_size=chunk_size):
        n_read += len(chunk)
        if len(lut) < len(chroms):
            cm = harmonize_chrom(chroms.names, genome, chrom_map)
            lut = np.array(
                [gnames.index(cm.mapping[n]) if n in cm.mapping else -1 for n in chroms.names],
                np.int64,
            )
        g = lut[chunk.chrom]
        valid = (g >= 0) & (chunk.barcode >= 0)
        n_skipped += int((g < 0).sum())
        qc.add(
            g[valid],
            chunk.barcode[valid],
            chunk.start[valid],
            chunk.end[valid],
            chunk.count[valid],
        )
    if n_skipped:
        log.info("%s: %d fragments on contigs outside the genome ignored", fragments, n_skipped)
    n = len(bc_index)
    table = _table(bc_index.names, qc.arrays(np.arange(n)), barcodes)
    log.info("%s: QC of %d barcodes from %d fragments", fragments, len(table), n_read)
    return table, qc.hist


def _derive(t: pd.DataFrame) -> pd.DataFrame:
    """Ratios from the raw per-barcode counts (definitions in the module docstring)."""
    unique = (t["n_fragment"] + t["n_mito"]).to_numpy(float)
    reads = t["n_reads"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t["frac_dup"] = np.where(reads > 0, 1 - unique / reads, np.nan)
        t["frac_mito"] = np.where(unique > 0, t["n_mito"] / unique, np.nan)
        center = t["tss_center"].to_numpy(float) / (2 * TSS_SMOOTH + 1)
        background = t["tss_flank"].to_numpy(float) / (2 * TSS_FLANK) + TSS_PSEUDOCOUNT
        t["tsse"] = center / background
        t["nucleosome_signal"] = t["n_mono"].to_numpy(float) / t["n_nfr"].to_numpy(float)
        if "n_blacklist" in t:
            removed = t["n_blacklist"].to_numpy(float)
            t["frac_blacklist"] = np.where(
                removed + unique > 0, removed / (removed + unique), np.nan
            )
    return t


def filter_barcodes(
    qc: pd.DataFrame,
    *,
    min_fragments: int | None = None,
    min_tsse: float | None = None,
    max_frac_mito: float | None = None,
    max_nucleosome_signal: float | None = None,
) -> pd.Series:
    """Boolean mask (indexed like ``qc``) of barcodes passing every given threshold.

    ``None`` leaves a criterion out. Comparisons are inclusive (``n_fragment >= min_fragments``,
    ``tsse >= min_tsse``, ``frac_mito <= max_frac_mito``, ``nucleosome_signal <=
    max_nucleosome_signal``); a NaN metric fails its criterion.
    """
    keep = pd.Series(True, index=qc.index, name="pass_qc")
    if min_fragments is not None:
        keep &= qc["n_fragment"] >= min_fragments
    if min_tsse is not None:
        keep &= qc["tsse"] >= min_tsse
    if max_frac_mito is not None:
        keep &= qc["frac_mito"].fillna(0) <= max_frac_mito  # NaN: no fragments at all
    if max_nucleosome_signal is not None:
        keep &= qc["nucleosome_signal"] <= max_nucleosome_signal
    return keep


def qc_figure(
    qc: pd.DataFrame,
    length_hist: pd.Series | np.ndarray,
    thresholds: Mapping[str, Any],
    out_png: str | Path,
    *,
    title: str = "",
    max_points: int = 50_000,
) -> Path:
    """TSSe vs fragments per barcode (log x, thresholds drawn) and the fragment-length ladder.

    Barcodes with at least one fragment are drawn (a seeded sample of ``max_points`` when
    there are more), kept ones in blue, removed ones in red. Written atomically.
    """
    from matplotlib.figure import Figure

    keep = filter_barcodes(qc, **{k: thresholds.get(k) for k in _THRESHOLDS})
    data = qc.assign(keep=keep.to_numpy())
    data = data[data["n_fragment"] > 0]
    if len(data) > max_points:
        data = data.sample(max_points, random_state=0)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for flag, color, label in ((False, "#d62728", "removed"), (True, "#3b75af", "kept")):
        sub = data[data["keep"] == flag]
        ax1.scatter(
            sub["n_fragment"],
            sub["tsse"],
            s=3,
            c=color,
            alpha=0.5,
            lw=0,
            label=f"{label} ({int((keep == flag).sum()):,})",
        )
    ax1.set_xscale("log")
    ax1.set_xlabel("unique nuclear fragments per barcode")
    ax1.set_ylabel("TSS enrichment (SnapATAC2 definition)")
    if thresholds.get("min_fragments"):
        ax1.axvline(thresholds["min_fragments"], color="k", ls="--", lw=1)
    if thresholds.get("min_tsse") is not None:
        ax1.axhline(thresholds["min_tsse"], color="k", ls="--", lw=1)
    ax1.legend(loc="upper left", markerscale=4, frameon=False)
    hist = np.asarray(length_hist, dtype=float)
    lengths = np.arange(len(hist))
    ax2.fill_between(lengths[:-1], hist[:-1], step="mid", color="#555555", alpha=0.8)
    for x in (NFR_MAX, MONO_MAX):
        ax2.axvline(x, color="#d62728", ls=":", lw=1)
    top = hist[:-1].max() if len(hist) > 1 else 1
    for x, text in ((70, "NFR"), (220, "mono"), (400, "di"), (600, "tri")):
        if x < len(hist) - 1:
            ax2.text(x, top * 0.95, text, ha="center", va="top", fontsize=8)
    ax2.set_xlim(0, len(hist) - 1)
    ax2.set_xlabel("fragment length (bp)")
    ax2.set_ylabel("fragments")
    ax2.set_title("fragment-length distribution (nucleosome ladder)", fontsize=10)
    if title:
        fig.suptitle(title)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return Path(out_png)


_THRESHOLDS = ("min_fragments", "min_tsse", "max_frac_mito", "max_nucleosome_signal")
