"""Genome: chromosome sizes, annotation readers (GTF, GENCODE TSV, our genes.tsv), TSSs, names."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from scfm.atac.genome import (
    Genome,
    builtin_chrom_sizes,
    harmonize_chrom,
    load_genome,
    read_chrom_sizes,
    read_gene_annotation,
    read_genome,
    write_genome,
    write_tss_gtf,
)
from scfm.errors import ScfmInputError

GTF = """\
#!genome-build GRCh38.p14
##description: hand-made
1\tENSEMBL\tgene\t101\t200\t.\t+\t.\tgene_id "ENSG00000000001.3"; gene_name "AAA";
1\tENSEMBL\ttranscript\t101\t200\t.\t+\t.\tgene_id "ENSG00000000001.3"; transcript_id "ENST01.1";
1\tENSEMBL\ttranscript\t121\t200\t.\t+\t.\tgene_id "ENSG00000000001.3"; transcript_id "ENST02.1";
1\tENSEMBL\texon\t101\t150\t.\t+\t.\tgene_id "ENSG00000000001.3"; transcript_id "ENST01.1";
1\tENSEMBL\tgene\t301\t500\t.\t-\t.\tgene_id "ENSG00000000002.1"; gene_name "BBB";
1\tENSEMBL\ttranscript\t301\t500\t.\t-\t.\tgene_id "ENSG00000000002.1"; transcript_id "ENST03.2";
1\tENSEMBL\ttranscript\t301\t450\t.\t-\t.\tgene_id "ENSG00000000002.1"; transcript_id "ENST04.2";
Y\tENSEMBL\tgene\t11\t60\t.\t+\t.\tgene_id "ENSG00000000009.4_PAR_Y"; gene_name "PARGENE";
KI270706.1\tENSEMBL\tgene\t11\t60\t.\t+\t.\tgene_id "ENSG00000000010.1"; gene_name "ALT";
"""


@pytest.fixture
def small_genome() -> Genome:
    return Genome("toy", {"chr1": 1_000, "chrY": 100, "chrM": 50})


@pytest.fixture
def gtf(tmp_path: Path) -> Path:
    path = tmp_path / "toy.gtf.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(GTF)
    return path


def test_builtin_chrom_sizes():
    hg38 = builtin_chrom_sizes("hg38")
    assert list(hg38)[:2] == ["chr1", "chr2"] and list(hg38)[-3:] == ["chrX", "chrY", "chrM"]
    assert len(hg38) == 25 and hg38["chr1"] == 248_956_422 and hg38["chrM"] == 16_569
    mm10 = builtin_chrom_sizes("mm10")
    assert len(mm10) == 22 and mm10["chr1"] == 195_471_971 and mm10["chrX"] == 171_031_299
    with pytest.raises(ValueError, match="hg19"):
        builtin_chrom_sizes("hg19")
    assert load_genome("mm10").name == "mm10"


def test_read_chrom_sizes(tmp_path):
    good = tmp_path / "good.sizes"
    good.write_text("# comment\nchr2\t50\tx\nchr1\t100\n")
    assert read_chrom_sizes(good) == {"chr2": 50, "chr1": 100}
    for i, text in enumerate(["chr1\tabc\n", "chr1\t10\nchr1\t10\n", "chr1\t0\n", ""]):
        bad = tmp_path / f"bad{i}.sizes"
        bad.write_text(text)
        with pytest.raises(ScfmInputError):
            read_chrom_sizes(bad)


def test_gtf_genes_transcripts_and_tss(gtf, small_genome):
    genes, tx = read_gene_annotation(gtf)
    assert genes["gene_id"].tolist()[:2] == ["ENSG00000000001", "ENSG00000000002"]
    assert "ENSG00000000009_PAR_Y" in set(genes["gene_id"])  # version gone, PAR suffix kept
    first = genes.iloc[0]
    assert (first.start, first.end, first.strand, first.gene_name) == (100, 200, "+", "AAA")
    assert tx["transcript_id"].tolist()[0] == "ENST01"
    genome = load_genome(small_genome.chrom_sizes, gtf, name="toy")
    # Ensembl names mapped onto the genome; the alt contig's gene left out
    assert genome.genes["chrom"].tolist() == ["chr1", "chr1", "chrY"]
    gene_tss = genome.tss(level="gene")
    assert gene_tss[["chrom", "position", "strand"]].values.tolist() == [
        ["chr1", 100, "+"],
        ["chr1", 499, "-"],
        ["chrY", 10, "+"],
    ]
    # transcripts (auto when present): + starts 100, 120; - ends 500, 450 -> 499, 449
    assert genome.tss()["position"].tolist() == [100, 120, 449, 499]


def test_gencode_tsv(gencode_v22_tsv, tmp_path):
    genome = load_genome("hg38", gencode_v22_tsv)
    genes = genome.genes.set_index("gene_name")
    ddx = genes.loc["DDX11L1"]  # TSV: chr1 11869 14409 + (1-based)
    assert (ddx.chrom, ddx.start, ddx.end, ddx.strand, ddx.gene_id) == (
        "chr1",
        11_868,
        14_409,
        "+",
        "ENSG00000223972",
    )
    wash = genome.tss(level="gene").set_index("gene_id").loc["ENSG00000227232"]  # WASH7P, -
    assert wash.position == 29_570 - 1
    assert len(genome.genes) > 58_000 and genome.transcripts is None
    assert set(genome.genes["chrom"]) <= set(genome.chrom_sizes)
    raw = pd.read_csv(gencode_v22_tsv, sep="\t", usecols=["chrom"])
    assert len(genome.genes) == raw["chrom"].isin(genome.chrom_sizes).sum()


def test_real_gtf_excerpt(gencode_gtf):
    genome = load_genome("hg38", gencode_gtf)
    assert len(genome.genes) > 100 and len(genome.transcripts) == 470
    assert not genome.genes["gene_id"].str.contains(r"\.").any()
    assert genome.tss().groupby(["chrom", "position", "strand"]).size().max() == 1


def test_write_and_read_back(gtf, small_genome, tmp_path):
    genome = load_genome(small_genome.chrom_sizes, gtf, name="toy")
    out = write_genome(genome, tmp_path / "g")
    assert sorted(p.name for p in out.iterdir()) == ["chrom.sizes", "genes.tsv", "transcripts.tsv"]
    assert (out / "genes.tsv").read_text().startswith("# scfm genes.tsv v1: 0-based")
    back = load_genome(out / "chrom.sizes", out / "genes.tsv", name="toy")
    pd.testing.assert_frame_equal(back.genes, genome.genes)
    pd.testing.assert_frame_equal(back.tss(), genome.tss())  # transcripts.tsv picked up
    assert read_genome(out).chrom_sizes == genome.chrom_sizes
    gtf_out = write_tss_gtf(genome, tmp_path / "tss.gtf")
    again = load_genome(genome.chrom_sizes, gtf_out)
    pd.testing.assert_frame_equal(
        again.tss()[["chrom", "position", "strand"]], genome.tss()[["chrom", "position", "strand"]]
    )


def test_harmonize_chrom(small_genome):
    names = [
        "1",
        "MT",
        "Y",
        "GL000218.1",
        "chr1_KI270706v1_random",
        "chrUn_GL000220v1",
        "chr22_KI270879v1_alt",
        "chrEBV",
        "KI270711.1",
        "scaffold_9",
    ]
    cm = harmonize_chrom(names, small_genome)
    assert cm.mapping == {"1": "chr1", "MT": "chrM", "Y": "chrY"}
    assert cm.dropped == names[3:9] and cm.unknown == ["scaffold_9"]
    assert cm["1"] == "chr1" and cm["GL000218.1"] is None
    cm = harmonize_chrom(
        ["chr1", "scaffold_9", "chrY"], small_genome, {"scaffold_9": "chrM", "chrY": None}
    )
    assert cm.mapping == {"chr1": "chr1", "scaffold_9": "chrM"} and cm.dropped == ["chrY"]
    with pytest.raises(ValueError, match="same chromosome"):
        harmonize_chrom(["chrM", "MT"], small_genome)
    with pytest.raises(ValueError, match="not in genome"):
        harmonize_chrom(["x"], small_genome, {"x": "chr99"})
    # a genome that has an alt contig keeps it (exact match comes first)
    alt = Genome("alt", {"chr1": 10, "GL000218.1": 10})
    assert harmonize_chrom(["GL000218.1"], alt).mapping == {"GL000218.1": "GL000218.1"}


def test_bad_annotation(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ScfmInputError, match="unrecognised annotation"):
        read_gene_annotation(bad)
    neg = tmp_path / "neg.tsv"
    neg.write_text("chrom\tstart\tend\tgene_id\tgene_name\tstrand\nchr1\t10\t5\tG\tg\t+\n")
    with pytest.raises(ScfmInputError, match="invalid records"):
        read_gene_annotation(neg)
