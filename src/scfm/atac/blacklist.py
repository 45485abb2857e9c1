"""Blacklisted regions: fragments overlapping them are removed before QC and counting.

A blacklist is a BED file of regions with anomalous, unstructured signal in every experiment
(repeats, satellites, rDNA: the ENCODE lists of Amemiya, Kundaje & Boyle 2019 for hg38 and
mm10, as SnapATAC2 and ArchR users pass them). ``qc.atac.blacklist`` (a path, or a URL with
its SHA-256) makes :func:`scfm.atac.fragments.prepare_fragments` drop every fragment that
overlaps a blacklisted region by at least one base -- bedtools' ``intersect -v`` on the
fragment span, which tests/atac/test_blacklist.py checks against pybedtools on real regions --
so QC, tiles, peaks and gene activity never see them; the number removed per barcode is a QC
column (``n_blacklist``, ``frac_blacklist``).

The file is checked against the genome before any fragment is read, each problem an
:class:`scfm.errors.ScfmInputError` naming the file: lines out of order (a BED sorted by
chromosome, then start, as ``sort -k1,1 -k2,2n`` and the ENCODE files are), chromosome names
in another style than the genome's (``1`` for ``chr1``: a list for another naming), names the
genome lacks, and regions past a chromosome's end (a list for another assembly). Regions on
alt/unplaced contigs are dropped (logged), as prepare_fragments drops such fragments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scfm.errors import ScfmInputError

log = logging.getLogger(__name__)

_SHIFT = 32  # keys: genome chromosome index << 32 | position


@dataclass
class Blacklist:
    """Merged, sorted regions as keys ``chrom_index << 32 | position`` (half-open)."""

    path: Path
    starts: np.ndarray
    ends: np.ndarray
    n_regions: int  # lines read (before merging overlapping regions)
    bases: int  # bases covered after merging

    def overlaps(self, chrom: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """True for fragments ``[start, end)`` on genome chromosome ``chrom`` touching a region."""
        if not len(self.starts) or not len(start):
            return np.zeros(len(start), bool)
        base = np.asarray(chrom, np.int64) << _SHIFT
        k = np.searchsorted(self.ends, base + start, side="right")  # first region ending after
        k_ok = np.minimum(k, len(self.starts) - 1)
        return (k < len(self.starts)) & (self.starts[k_ok] < base + end)


def read_blacklist(path: str | Path, genome: Any) -> Blacklist:
    """Read and check a blacklist BED (plain or gzip) against ``genome`` (module docstring)."""
    from scfm.atac.genome import _NON_PRIMARY, harmonize_chrom
    from scfm.atac.peaks import read_bed

    path = Path(path)
    bed = read_bed(path)
    if len(bed) == 0:
        raise ScfmInputError(path, "contents", "no regions", "a BED file of blacklisted regions")
    chrom = bed["chrom"].astype(str).to_numpy()
    start, end = bed["start"].to_numpy(np.int64), bed["end"].to_numpy(np.int64)
    # sorted: each chromosome one block, starts non-decreasing within it
    new_block = np.r_[True, chrom[1:] != chrom[:-1]]
    back = np.flatnonzero(~new_block & (np.r_[0, start[:-1]] > start))
    names_in_order = chrom[new_block]
    repeated = len(set(names_in_order)) != len(names_in_order)
    if len(back) or repeated:
        if len(back):
            i = int(back[0])
        else:  # the first block of a chromosome seen before
            seen: set[str] = set()
            i = next(
                j
                for j in np.flatnonzero(new_block)
                if chrom[j] in seen or seen.add(chrom[j])  # type: ignore[func-returns-value]
            )
        raise ScfmInputError(
            path,
            f"line {i + 1}",
            f"{chrom[i]}:{start[i]}-{end[i]} comes after {chrom[i - 1]}:{start[i - 1]}-"
            f"{end[i - 1]}: the file is not sorted",
            "a BED sorted by chromosome, then start (sort -k1,1 -k2,2n)",
        )
    gnames = list(genome.chrom_sizes)
    names = list(dict.fromkeys(chrom))
    unknown = [n for n in names if n not in genome.chrom_sizes]
    contigs = [n for n in unknown if _NON_PRIMARY.search(n)]
    unknown = [n for n in unknown if n not in contigs]
    if unknown:
        mapped = harmonize_chrom(unknown, genome, None).mapping
        styled = [n for n in unknown if mapped.get(n) not in (None, n)]
        if styled:
            raise ScfmInputError(
                path,
                "column 1 (chrom)",
                f"chromosome names in another style than genome {genome.name!r}: "
                f"{styled[:3]} where the genome has {[mapped[n] for n in styled[:3]]}",
                "a blacklist with the genome's chromosome names (e.g. ENCODE's hg38 list, "
                "chr1...; Ensembl-named lists use 1...)",
            )
        raise ScfmInputError(
            path,
            "column 1 (chrom)",
            f"{len(unknown)} chromosome name(s) not in genome {genome.name!r}, e.g. {unknown[:5]}",
            f"chromosomes of the genome (e.g. {gnames[:3]})",
        )
    if contigs:
        log.info(
            "blacklist %s: regions on %d contig(s) outside the genome dropped", path, len(contigs)
        )
    keep = ~np.isin(chrom, contigs)
    rows = np.flatnonzero(keep)
    gidx = np.array([gnames.index(c) for c in names if c not in contigs])
    code = dict(zip([c for c in names if c not in contigs], gidx, strict=True))
    g = np.array([code[c] for c in chrom[keep]], np.int64)
    sizes = np.array([genome.chrom_sizes[c] for c in gnames], np.int64)
    past = np.flatnonzero(end[keep] > sizes[g])
    if len(past):
        i = int(rows[past[0]])
        raise ScfmInputError(
            path,
            f"line {i + 1}",
            f"{chrom[i]}:{start[i]}-{end[i]} reaches past {chrom[i]}'s end "
            f"({genome.chrom_sizes[chrom[i]]:,} bp in genome {genome.name!r}; "
            f"{len(past)} region(s) do)",
            "regions of the genome's assembly (is the blacklist for another one, e.g. hg19?)",
        )
    lo = (g << _SHIFT) + start[keep]
    hi = (g << _SHIFT) + end[keep]
    order = np.lexsort((lo, g))  # the file's chromosome order need not be the genome's
    lo, hi = lo[order], hi[order]
    # merge overlapping or touching regions: a region opens a new run when it starts past
    # every earlier end
    run_end = np.maximum.accumulate(hi)
    opens = np.r_[True, lo[1:] > run_end[:-1]]
    starts = lo[opens]
    ends = np.maximum.reduceat(hi, np.flatnonzero(opens)) if len(lo) else hi
    bl = Blacklist(path, starts, ends, len(bed), int((ends - starts).sum()))
    log.info(
        "blacklist %s: %d regions, %d after merging, %d bp", path, len(bed), len(starts), bl.bases
    )
    return bl
