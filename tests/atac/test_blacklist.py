"""Blacklist filtering and the interval code, checked against independent tools on real regions.

The blacklist is built from real hg38 regions (GENCODE v22 promoters, written as a sorted BED
the way ENCODE distributes its lists) and applied to the real PBMC fragments. Oracles: htslib
(pysam's tabix queries, always) and bedtools through pybedtools (``intersect -v/-u/-c``,
``merge``), skipped with the reason when the ``bedtools`` program is missing (``make test``
installs it with apt-get when run as root, as CI does).
"""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from scfm.atac.activity import gene_activity, gene_windows
from scfm.atac.blacklist import read_blacklist
from scfm.atac.fragments import prepare_fragments
from scfm.atac.genome import Genome, builtin_chrom_sizes
from scfm.atac.peaks import merge_summits, read_bed
from scfm.atac.qc import barcode_qc
from scfm.errors import ScfmInputError

BEDTOOLS = shutil.which("bedtools")
needs_bedtools = pytest.mark.skipif(
    BEDTOOLS is None,
    reason="the bedtools program is not installed (make test installs it with apt-get as root)",
)


def promoters(genome: Genome, up: int = 1000, down: int = 500) -> pd.DataFrame:
    """Real regions: every GENCODE v22 gene's promoter, sorted as ``sort -k1,1 -k2,2n``."""
    g = genome.genes
    tss = np.where(g["strand"] == "+", g["start"], g["end"] - 1)
    start = np.maximum(tss - np.where(g["strand"] == "+", up, down), 0)
    end = tss + np.where(g["strand"] == "+", down, up)
    bed = pd.DataFrame({"chrom": g["chrom"].to_numpy(), "start": start, "end": end})
    bed = bed[bed["chrom"].isin(genome.chrom_sizes)]
    bed["end"] = np.minimum(bed["end"], bed["chrom"].map(genome.chrom_sizes))
    return bed.sort_values(["chrom", "start", "end"], kind="stable").reset_index(drop=True)


def write_bed(bed: pd.DataFrame, path: Path) -> Path:
    text = "".join(f"{c}\t{s}\t{e}\n" for c, s, e in bed.itertuples(index=False))
    path.write_bytes(
        gzip.compress(text.encode(), mtime=0) if path.suffix == ".gz" else text.encode()
    )
    return path


@pytest.fixture(scope="module")
def blacklisted(pbmc_fragments, hg38_genome, tmp_path_factory):
    """PBMC fragments prepared with a promoter blacklist: (raw, out, bed path, bed, stats)."""
    d = tmp_path_factory.mktemp("blacklist")
    bed = promoters(hg38_genome)
    path = write_bed(bed, d / "hg38-promoters.bed.gz")
    out = d / "out" / "fragments.tsv.gz"
    stats = prepare_fragments(pbmc_fragments, out, genome=hg38_genome, blacklist=path)
    return pbmc_fragments, out, path, bed, stats


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt") as fh:
        return [ln.rstrip("\n") for ln in fh if not ln.startswith("#")]


@pytest.mark.shared_data
def test_blacklist_removes_what_tabix_finds_in_its_regions(blacklisted, hg38_genome):
    raw, out, _, bed, stats = blacklisted
    hit: set[str] = set()
    with pysam.TabixFile(str(raw)) as tbx:  # htslib's query region by region, then half-open
        for c, s, e in bed.itertuples(index=False):  # overlap (tabix also returns a fragment
            if c in tbx.contigs:  # that starts exactly where the region ends)
                for line in tbx.fetch(c, s, e):
                    fs, fe = (int(x) for x in line.split("\t")[1:3])
                    if fs < e and fe > s:
                        hit.add(line)
    assert 1000 < len(hit) < stats["n_fragments_in"] // 2
    assert stats["n_blacklisted"] == len(hit)
    assert stats["n_fragments_out"] == stats["n_fragments_in"] - len(hit)
    kept = {"\t".join(x.split("\t")[:4]) for x in lines(out)}
    assert not kept & {"\t".join(x.split("\t")[:4]) for x in hit}
    # per-barcode QC columns from the same pass
    table, _ = barcode_qc(out, hg38_genome)
    per_barcode = Counter(x.split("\t")[3] for x in hit)
    assert table["n_blacklist"].sum() == len(hit)
    removed = table["n_blacklist"][table["n_blacklist"] > 0]
    assert removed.to_dict() == {b: n for b, n in per_barcode.items() if b in table.index}
    unique = table["n_fragment"] + table["n_mito"]
    expected = table["n_blacklist"] / (table["n_blacklist"] + unique)
    np.testing.assert_allclose(table["frac_blacklist"], expected)


@pytest.mark.shared_data
@needs_bedtools
def test_blacklist_equals_bedtools_intersect(blacklisted):
    import pybedtools

    raw, out, path, _, stats = blacklisted
    frags = pybedtools.BedTool(str(raw))
    black = pybedtools.BedTool(str(path))
    try:
        outside = frags.intersect(black, v=True)
        inside = frags.intersect(black, u=True)
        ours = Counter("\t".join(x.split("\t")[:4]) for x in lines(out))
        theirs = Counter("\t".join(f.fields[:4]) for f in outside)
        assert ours == theirs
        assert inside.count() == stats["n_blacklisted"]
    finally:
        pybedtools.cleanup()


@pytest.mark.shared_data
def test_merged_blacklist_covers_what_bedtools_merge_covers(blacklisted, hg38_genome):
    _, _, path, bed, _ = blacklisted
    bl = read_blacklist(path, hg38_genome)
    assert bl.n_regions == len(bed) and len(bl.starts) < len(bed)
    if BEDTOOLS is None:
        pytest.skip("the bedtools program is not installed (make test installs it as root)")
    import pybedtools

    try:
        merged = pybedtools.BedTool(str(path)).merge()
        assert bl.bases == sum(f.length for f in merged)
        assert len(bl.starts) == merged.count()
    finally:
        pybedtools.cleanup()


@pytest.mark.shared_data
@needs_bedtools
def test_gene_window_overlaps_equal_bedtools_counts(pbmc_fragments, hg38_genome, tmp_path):
    """Region overlaps (IntervalMap, 'fragment' counting): each window's total = bedtools -c."""
    import pybedtools

    cells = pd.read_csv(pbmc_fragments, sep="\t", header=None, usecols=[3])[3].unique().tolist()
    s = gene_activity(pbmc_fragments, hg38_genome, cells, tmp_path / "g.h5ad", counting="fragment")
    import anndata as ad

    totals = np.asarray(ad.read_h5ad(s.path).X.sum(axis=0)).ravel()
    windows = gene_windows(hg38_genome)
    bed = windows[["chrom", "start", "end"]].astype({"chrom": str})
    bed = bed[bed["end"] > bed["start"]]
    try:
        counted = pybedtools.BedTool.from_dataframe(bed).intersect(
            pybedtools.BedTool(str(pbmc_fragments)), c=True
        )
        theirs = np.array([int(f.fields[-1]) for f in counted])
    finally:
        pybedtools.cleanup()
    ours = pd.Series(totals, index=windows.index)[bed.index].to_numpy()
    assert theirs.sum() > 10_000 and (ours == theirs).all()


@needs_bedtools
@pytest.mark.shared_data
def test_peak_merging_checked_by_bedtools(hg38_genome, tmp_path):
    """merge_summits on real positions (GENCODE TSSs as summits): bedtools finds no overlap among
    the kept peaks, and every summit's peak overlaps a kept peak at least as significant."""
    import pybedtools

    g = hg38_genome.genes
    g = g[g["chrom"].isin(["chr1", "chr2", "chr19"])]
    tss = np.where(g["strand"] == "+", g["start"], g["end"] - 1)
    rng = np.random.default_rng(3)
    summits = pd.DataFrame(
        {
            "chrom": g["chrom"].to_numpy(),
            "start": tss,
            "end": tss + 1,
            "name": "p",
            "score": rng.gamma(2.0, 5.0, len(g)).round(3),
        }
    ).sort_values(["chrom", "start"])
    path = tmp_path / "summits.bed"
    summits.to_csv(path, sep="\t", header=False, index=False)
    out = merge_summits(path, tmp_path / "peaks.bed", width=500, genome=hg38_genome)
    peaks = read_bed(out, score=True)
    try:
        kept = pybedtools.BedTool(str(out)).sort()
        assert kept.merge(d=-1).count() == len(peaks)  # no two kept peaks share a base
        s = summits.assign(start=(summits["start"] - 250).clip(lower=0), end=summits["start"] + 250)
        score = dict(
            zip(peaks["chrom"] + ":" + peaks["start"].astype(str), peaks["score"], strict=True)
        )
        total = summits["score"].sum()
        joined = pybedtools.BedTool.from_dataframe(s).intersect(kept, wa=True, wb=True)
        best: dict[tuple, float] = {}
        for f in joined:
            key = (f.fields[0], int(f.fields[1]))
            best[key] = max(best.get(key, 0.0), score[f"{f.fields[5]}:{f.fields[6]}"])
        # every summit's window touches a kept peak at least as significant (score per million)
        per_million = (
            s.assign(score=s["score"] / total * 1e6)
            .groupby(["chrom", "start"])["score"]
            .max()
            .to_dict()
        )
        assert best.keys() == per_million.keys()
        assert all(best[k] >= per_million[k] * (1 - 1e-7) for k in best)  # 8 digits in the BED
    finally:
        pybedtools.cleanup()


# ----------------------------------------------------------------------------- bad blacklists
HG38 = Genome("hg38", builtin_chrom_sizes("hg38"))
REGIONS = [("chr1", 10_000, 10_500), ("chr1", 50_000, 51_000), ("chr2", 7_000, 7_200)]
BAD = {
    "unsorted": (
        [("chr1", 50_000, 51_000), ("chr1", 10_000, 10_500)],
        "line 2",
        r"chr1:10000-10500 comes after chr1:50000-51000: the file is not sorted",
        r"sort -k1,1 -k2,2n",
    ),
    "chromosome split in two blocks": (
        [("chr1", 10_000, 10_500), ("chr2", 7_000, 7_200), ("chr1", 60_000, 60_100)],
        "line 3",
        r"not sorted",
        r"sorted by chromosome",
    ),
    "Ensembl names": (
        [("1", 10_000, 10_500), ("2", 7_000, 7_200)],
        "column 1 (chrom)",
        r"another style than genome 'hg38': \['1', '2'\] where the genome has \['chr1', 'chr2'\]",
        r"the genome's chromosome names",
    ),
    "unknown chromosome": (
        [("chrQ", 1, 100)],
        "column 1 (chrom)",
        r"not in genome 'hg38', e\.g\. \['chrQ'\]",
        r"chromosomes of the genome",
    ),
    "another assembly": (
        [*REGIONS, ("chr21", 46_800_000, 46_900_000)],  # hg19's chr21 is 48.1 Mb, hg38's 46.7 Mb
        "line 4",
        r"chr21:46800000-46900000 reaches past chr21's end \(46,709,983 bp in genome 'hg38'",
        r"another one, e\.g\. hg19",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_blacklist_is_named_and_nothing_is_written(tmp_path, case):
    regions, where, problem, expected = BAD[case]
    path = write_bed(pd.DataFrame(regions, columns=["chrom", "start", "end"]), tmp_path / "bl.bed")
    raw = tmp_path / "raw.tsv"
    raw.write_text("chr1\t10\t100\tA\t1\n")
    out = tmp_path / "out" / "f.tsv.gz"
    with pytest.raises(ScfmInputError, match=problem) as err:
        prepare_fragments(raw, out, genome=HG38, blacklist=path)
    assert str(path) in str(err.value) and err.value.field == where
    assert re_search(expected, err.value.expected)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_alt_contigs_dropped_and_overlaps_exact(tmp_path):
    regions = [*REGIONS, ("chr1_KI270706v1_random", 0, 100), ("chr3", 0, 10)]
    path = write_bed(pd.DataFrame(regions, columns=["chrom", "start", "end"]), tmp_path / "b.bed")
    bl = read_blacklist(path, HG38)
    assert len(bl.starts) == 4 and bl.bases == 500 + 1000 + 200 + 10
    g = np.array([0, 0, 0, 0, 1, 1, 2])
    start = np.array([9_000, 9_501, 10_499, 10_500, 7_199, 7_200, 9])
    end = np.array([10_001, 10_000, 10_600, 11_000, 7_300, 7_300, 20])
    assert bl.overlaps(g, start, end).tolist() == [True, False, True, False, True, False, True]
