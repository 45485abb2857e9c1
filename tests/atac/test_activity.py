"""Gene activity: strand-aware gene body + promoter windows, counts checked by hand and pysam."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm.atac.activity import gene_activity, gene_windows
from scfm.atac.genome import Genome, load_genome
from scfm.errors import ScfmInputError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PBMC = SHARED_DATA / "atac" / "pbmc_multiome_fragments.tsv.gz"
GENES = SHARED_DATA / "reference" / "human_gencode_v22_genes_hg38.tsv.gz"

GENE_TABLE = pd.DataFrame(
    [  # chrom, start, end, strand, gene_id, gene_name
        ("chrA", 3_000, 4_000, "+", "ENSG01", "PLUS"),
        ("chrA", 5_000, 6_000, "-", "ENSG02", "MINUS"),
        ("chrA", 3_500, 3_600, "-", "ENSG03", "NESTED"),
        ("chrA", 500, 900, "+", "ENSG04", "EDGE"),  # promoter clipped at 0
        ("chrB", 4_000, 4_900, "-", "ENSG05", "END"),  # promoter clipped at the chrom end
        ("chrZ", 10, 20, "+", "ENSG06", "ELSEWHERE"),  # not on the genome: left out
    ],
    columns=["chrom", "start", "end", "strand", "gene_id", "gene_name"],
)
TOY = Genome(name="toy", chrom_sizes={"chrA": 10_000, "chrB": 5_000}, genes=GENE_TABLE)


def test_windows_are_strand_aware():
    w = gene_windows(TOY)
    assert w.index.tolist() == ["ENSG01", "ENSG02", "ENSG03", "ENSG04", "ENSG05"]
    assert list(zip(w["start"], w["end"], strict=True)) == [
        (1_000, 4_000),  # + : 2 kb upstream of the TSS (start), gene end unchanged
        (5_000, 8_000),  # - : TSS is the end, upstream lies to the right
        (3_500, 5_600),
        (0, 900),
        (4_000, 5_000),
    ]
    w2 = gene_windows(TOY, upstream=100, downstream=50)
    assert (w2.loc["ENSG01", ["start", "end"]] == [2_900, 4_050]).all()
    assert (w2.loc["ENSG02", ["start", "end"]] == [4_950, 6_100]).all()
    assert w["gene_symbol"].tolist()[0] == "PLUS"


def brute_force(frags, windows, barcodes, counting):
    row = {b: i for i, b in enumerate(barcodes)}
    out = np.zeros((len(barcodes), len(windows)), np.int64)
    for chrom, s, e, bc in frags:
        for j, w in enumerate(windows.itertuples()):
            if bc not in row or w.chrom != chrom:
                continue
            if counting == "fragment":
                out[row[bc], j] += s < w.end and e > w.start
            else:
                out[row[bc], j] += sum(w.start <= p < w.end for p in (s, e - 1))
    return out


@pytest.mark.parametrize("counting", ["insertion", "fragment"])
def test_toy_gene_activity(tmp_path, counting):
    rng = np.random.default_rng(5)
    cells = ["c1", "c2", "c3"]
    frags = sorted(
        (str(c), int(s), int(s + n), str(b))
        for c, s, n, b in zip(
            rng.choice(["chrA", "chrB"], 800),
            rng.integers(0, 9_000, 800),
            rng.integers(1, 800, 800),
            rng.choice(cells, 800),
            strict=True,
        )
    )
    frags += [("chrA", 999, 1_001, "c1")]  # by hand: one cut site (1000) in PLUS's window
    path = tmp_path / "f.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(f"{c}\t{s}\t{e}\t{b}\t1\n" for c, s, e, b in sorted(frags))
    s = gene_activity(path, TOY, cells, tmp_path / "g.h5ad", counting=counting, chunk_size=100)
    a = ad.read_h5ad(s.path)
    assert a.var_names.tolist() == ["ENSG01", "ENSG02", "ENSG03", "ENSG04", "ENSG05"]
    assert a.var["gene_symbol"].tolist() == ["PLUS", "MINUS", "NESTED", "EDGE", "END"]
    expected = brute_force(frags, gene_windows(TOY), cells, counting)
    np.testing.assert_array_equal(a.X.toarray(), expected)
    one = gene_activity(
        tmp_path / "f.tsv.gz", TOY, ["c1"], tmp_path / "one.h5ad", counting=counting
    )
    assert one.record["upstream"] == 2_000 and one.record["downstream"] == 0


def test_no_annotation(tmp_path):
    bare = Genome(name="bare", chrom_sizes={"chrA": 100})
    with pytest.raises(ScfmInputError, match="no genes"):
        gene_activity(tmp_path / "f.tsv.gz", bare, ["c1"], tmp_path / "g.h5ad")


@pytest.mark.shared_data
@pytest.mark.parametrize("counting", ["insertion", "fragment"])
def test_pbmc_gene_activity_equals_hand_count(tmp_path, counting):
    pysam = pytest.importorskip("pysam")
    if not PBMC.exists():
        pytest.skip("shared data absent")
    genome = load_genome("hg38", GENES)
    barcodes = pd.read_csv(PBMC, sep="\t", header=None, usecols=[3])[3].unique()
    s = gene_activity(PBMC, genome, barcodes, tmp_path / "g.h5ad", counting=counting)
    a = ad.read_h5ad(s.path)
    assert a.shape == (len(barcodes), len(genome.genes["gene_id"].unique()))
    symbol = pd.Series(a.var_names, index=a.var["gene_symbol"])
    windows = gene_windows(genome)
    with pysam.TabixFile(str(PBMC)) as tbx:
        for gene in ("CD74", "LYZ", "CD14", "MS4A1", "IL7R"):  # - + - + + strands
            gid = symbol[gene]
            w = windows.loc[gid]
            lo, hi = int(w["start"]), int(w["end"])
            expected = Counter()
            for line in tbx.fetch(str(w["chrom"]), lo, hi):
                _, b, e, bc = line.split("\t")[:4]
                b, e = int(b), int(e)
                if counting == "fragment":
                    expected[bc] += 1
                else:
                    expected[bc] += (lo <= b < hi) + (lo <= e - 1 < hi)
            col = a[:, gid].X.tocsc()
            got = dict(zip(a.obs_names[col.indices], col.data.tolist(), strict=True))
            assert got == {k: v for k, v in expected.items() if v}, gene
            assert sum(got.values()) > 100, gene
