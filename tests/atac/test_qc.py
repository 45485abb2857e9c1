"""Per-barcode QC: a hand-computed table, SnapATAC2's TSSe computed literally (brute force), the
simulator's structure (TSSe, ladder), thresholds and the figure."""

from __future__ import annotations

import bisect
import gzip
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from scfm.atac.fragments import Index, iter_fragments
from scfm.atac.genome import Genome
from scfm.atac.qc import barcode_qc, filter_barcodes, qc_figure

HAND_GENOME = Genome(
    "hand",
    {"chr1": 10_000, "chrM": 1_000},
    pd.DataFrame(
        {
            "chrom": ["chr1", "chr1"],
            "start": [5_000, 1_000],
            "end": [7_000, 8_001],
            "strand": ["+", "-"],
            "gene_id": ["G1", "G2"],
            "gene_name": ["g1", "g2"],
        }
    ),
)  # TSSs: G1 at 5000 (+), G2 at 8000 (-)
HAND_FRAGMENTS = [  # deliberately unsorted; comments: insertions relative to the TSSs
    ("chr1", 4_995, 5_100, "A", 2),  # 4995: -5 from G1 -> centre; 5099: nothing. NFR
    ("chrM", 10, 110, "A", 3),  # mitochondrial
    ("chr1", 3_000, 3_200, "A", 1),  # 3000: -2000 from G1 -> flank; 3199: nothing. mono
    ("chr1", 6_950, 8_003, "A", 1),  # 6950: +1950 from G1 -> flank; 8002: +2 from G2 -> centre
    ("chrUn_KI270302v1", 1, 50, "A", 5),  # alt contig: ignored
    ("chr1", 7_990, 8_010, "B", 1),  # -10 and +9 from G2: neither. NFR
    ("chr1", 9_950, 9_999, "B", 1),  # 9950, 9998: 1950, 1998 from G2 -> 2 flank. NFR
    ("chrM", 0, 100, "C", 1),  # only mitochondrial
    ("chr1", 100, 300, "D", 1),  # only a mono-nucleosome fragment
]
EXPECTED = pd.DataFrame(
    {
        "n_fragment": [3, 2, 0, 1],
        "n_mito": [1, 0, 1, 0],
        "n_reads": [7, 2, 1, 1],
        "frac_dup": [3 / 7, 0, 0, 0],
        "frac_mito": [1 / 4, 0, 1, 0],
        "tsse": [(2 / 11) / (2 / 200 + 0.1), 0, 0, 0],
        "tss_center": [2, 0, 0, 0],
        "tss_flank": [2, 2, 0, 0],
        "n_nfr": [1, 2, 0, 0],
        "n_mono": [1, 0, 0, 1],
        "nucleosome_signal": [1.0, 0.0, np.nan, np.inf],
    },
    index=pd.Index(list("ABCD"), name="barcode"),
)


@pytest.fixture
def hand_file(tmp_path):
    path = tmp_path / "hand.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines("\t".join(map(str, f)) + "\n" for f in HAND_FRAGMENTS)
    return path


def test_hand_computed_table(hand_file):
    table, hist = barcode_qc(hand_file, HAND_GENOME, chunk_size=2)
    pd.testing.assert_frame_equal(table, EXPECTED, check_dtype=False)
    assert hist.index[0] == 0 and hist.index[-1] == 1000 and hist.sum() == 6
    assert hist[[20, 49, 105, 200, 1000]].tolist() == [1, 1, 1, 2, 1]  # 1053 bp -> last bin
    only, _ = barcode_qc(hand_file, HAND_GENOME, barcodes=["B", "Z"])
    pd.testing.assert_frame_equal(only.loc[["B"]], EXPECTED.loc[["B"]], check_dtype=False)
    assert only.loc["Z", "n_reads"] == 0


def test_filter_barcodes():
    keep = filter_barcodes(EXPECTED)
    assert keep.all() and keep.name == "pass_qc"
    assert filter_barcodes(EXPECTED, min_fragments=2).tolist() == [True, True, False, False]
    assert filter_barcodes(EXPECTED, min_tsse=1.0).tolist() == [True, False, False, False]
    assert filter_barcodes(EXPECTED, max_frac_mito=0.25).tolist() == [True, True, False, True]
    # NaN and inf nucleosome signal fail a limit
    assert filter_barcodes(EXPECTED, max_nucleosome_signal=1).tolist() == [True, True, False, False]


def snapatac2_tsse_literal(fragments, tss):
    """SnapATAC2's TSSe as its Rust core computes it, one insertion at a time (the reference)."""
    by_chrom = defaultdict(list)
    for chrom, pos, strand in tss:
        by_chrom[chrom].append((pos, strand))
    for v in by_chrom.values():
        v.sort()
    profiles = defaultdict(lambda: np.zeros(4001, np.int64))
    for chrom, start, end, bc in fragments:
        sites = by_chrom.get(chrom, [])
        keys = [p for p, _ in sites]
        for x in (start, end - 1):
            lo = bisect.bisect_left(keys, x - 2000)
            hi = bisect.bisect_right(keys, x + 2000)
            for pos, strand in sites[lo:hi]:
                w0 = max(pos - 2000, 0)
                i = x - w0 if strand == "+" else (pos + 2000) - x
                profiles[bc][i] += 1
    out = {}
    for bc, prof in profiles.items():
        background = (prof[:100].sum() + prof[-100:].sum()) / 200 + 0.1
        out[bc] = prof[1995:2006].sum() / 11 / background
    return out


def test_tsse_equals_snapatac2_definition_brute_force(sim_atac):
    genome = sim_atac.genome
    table, _ = barcode_qc(sim_atac.fragments, genome, chunk_size=50_000)
    rng = np.random.default_rng(0)
    chosen = set(rng.choice(table.index, 25, replace=False))
    frags = []
    chroms, barcodes = Index(), Index()
    for chunk in iter_fragments(sim_atac.fragments, chroms=chroms, barcodes=barcodes):
        names = np.array(barcodes.names, dtype=object)
        keep = np.isin(names[chunk.barcode], list(chosen))
        for c, s, e, b in zip(
            chunk.chrom[keep], chunk.start[keep], chunk.end[keep], chunk.barcode[keep], strict=True
        ):
            if chroms.names[c] != "chrM":
                frags.append((chroms.names[c], int(s), int(e), names[b]))
    tss = genome.tss()[["chrom", "position", "strand"]].itertuples(index=False)
    expected = snapatac2_tsse_literal(frags, list(tss))
    for bc in chosen:
        assert math.isclose(table.loc[bc, "tsse"], expected.get(bc, 0.0), rel_tol=1e-12)


def test_simulated_tsse_and_ladder(sim_atac):
    table, hist = barcode_qc(sim_atac.fragments, sim_atac.genome)
    meta = sim_atac.metadata.set_index("barcode")
    assert set(table.index) == set(meta.index)
    good = meta.loc[table.index, "is_cell"].to_numpy()
    tsse = table["tsse"].to_numpy()
    assert np.median(tsse[good]) > 7 and np.mean(tsse[good] > 4) > 0.95
    assert np.median(tsse[~good]) < 2 and np.quantile(tsse[~good], 0.9) < np.median(tsse[good])
    ns = table["nucleosome_signal"].to_numpy()
    assert np.median(ns[good]) < np.median(ns[~good])
    assert np.median(table["frac_mito"][good]) < 0.05 < np.median(table["frac_mito"][~good])
    # the ladder: a peak in each class, troughs between them
    h = np.convolve(hist.to_numpy()[:-1], np.ones(9) / 9, mode="same")
    nfr, mono, di = (int(np.argmax(h[a:b])) + a for a, b in ((20, 147), (150, 290), (300, 500)))
    assert 40 < nfr < 100 and 180 < mono < 230 and 360 < di < 440
    assert h[150:170].min() < 0.3 * h[mono] and h[280:320].min() < 0.5 * h[di]
    again, hist2 = barcode_qc(sim_atac.fragments, sim_atac.genome, chunk_size=7_777)
    pd.testing.assert_frame_equal(again, table)
    pd.testing.assert_series_equal(hist2, hist)


@pytest.mark.shared_data
def test_pbmc_qc_totals(pbmc_fragments, hg38_genome):
    table, hist = barcode_qc(pbmc_fragments, hg38_genome, chunk_size=100_000)
    n, reads = 0, 0
    for chunk in iter_fragments(pbmc_fragments):
        n += len(chunk)
        reads += int(chunk.count.sum())
    assert len(table) == 24_508 and table["n_fragment"].sum() + table["n_mito"].sum() == n
    assert table["n_reads"].sum() == reads and hist.sum() == table["n_fragment"].sum()
    assert (table["tsse"] >= 0).all() and table["tsse"].max() > 1
    assert hist[147:294].sum() > 0 and hist[:147].sum() > 0


def test_qc_figure(hand_file, tmp_path, sim_atac):
    table, hist = barcode_qc(sim_atac.fragments, sim_atac.genome)
    out = tmp_path / "fig" / "qc.png"
    thresholds = {
        "min_fragments": 500,
        "min_tsse": 4,
        "max_frac_mito": 0.2,
        "max_nucleosome_signal": None,
    }
    assert qc_figure(table, hist, thresholds, out, title="sim") == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["qc.png"]
    small, small_hist = barcode_qc(hand_file, HAND_GENOME)
    qc_figure(small, small_hist.to_numpy(), {}, tmp_path / "small.png")
    assert (tmp_path / "small.png").stat().st_size > 1000
