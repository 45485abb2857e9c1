"""Fragment files: reading the real files, prepare_fragments (sorting, contigs, renaming), every
bad input -> its error with nothing written, and counts checked independently with pysam."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pysam
import pytest

from scfm.atac.fragments import (
    BgzfWriter,
    Index,
    count_columns,
    count_in_region,
    iter_fragments,
    prepare_fragments,
)
from scfm.atac.genome import Genome
from scfm.errors import ScfmInputError

# hg19 primary chromosome sizes (UCSC): the BPCells test file is on hg19
HG19 = dict(
    zip(
        [f"chr{i}" for i in [*range(1, 23), "X", "Y"]],
        [
            249250621,
            243199373,
            198022430,
            191154276,
            180915260,
            171115067,
            159138663,
            146364022,
            141213431,
            135534747,
            135006516,
            133851895,
            115169878,
            107349540,
            102531392,
            90354753,
            81195210,
            78077248,
            59128983,
            63025520,
            48129895,
            51304566,
            155270560,
            59373566,
        ],
        strict=True,
    )
)
TOY = Genome("toy", {"chr1": 10_000, "chr2": 5_000, "chrM": 1_000})


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt") as fh:
        return [ln.rstrip("\n") for ln in fh if not ln.startswith("#")]


def write_text(path: Path, text: str, *, compress: bool = True) -> Path:
    if compress:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- real files
@pytest.mark.shared_data
def test_read_all_shared_files(
    pbmc_fragments, signac_fragments, bpcells_fragments, unsorted_fragments, multiome_h5mu
):
    expected = {
        pbmc_fragments: (367_439, 24_508, 16),
        signac_fragments: (100, 54, 1),
        bpcells_fragments: (14_678, 2_065, 24),
        unsorted_fragments: (37_249, None, 39),
    }
    for path, (n, n_bc, n_chrom) in expected.items():
        chroms, barcodes = Index(), Index()
        chunks = list(iter_fragments(path, chroms=chroms, barcodes=barcodes, chunk_size=50_000))
        assert sum(len(c) for c in chunks) == n
        assert len(chroms) == n_chrom and (n_bc is None or len(barcodes) == n_bc)
        assert all((c.end > c.start).all() and (c.count >= 1).all() for c in chunks)
    assert count_columns(bpcells_fragments) == 4
    with h5py.File(multiome_h5mu, "r") as h5:
        atac_cells = [b.decode() for b in h5["mod/atac/obs/_index"][:]]
    pbmc_barcodes = Index()
    for _ in iter_fragments(pbmc_fragments, barcodes=pbmc_barcodes):
        pass
    # the MuData's cells are (980 of 1,000) barcodes of the fragment file
    assert len(atac_cells) == 1_000 and len(set(atac_cells) & set(pbmc_barcodes.names)) >= 950


@pytest.mark.shared_data
def test_pbmc_prepared_counts_match_pysam(pbmc_fragments, hg38_genome, tmp_path):
    out = tmp_path / "pbmc.tsv.gz"
    stats = prepare_fragments(pbmc_fragments, out, genome=hg38_genome, chunk_size=100_000)
    assert stats["sorted_input"] and stats["n_fragments_in"] == stats["n_fragments_out"] == 367_439
    assert stats["n_barcodes"] == 24_508 and stats["dropped_chroms"] == {}
    assert Path(f"{out}.tbi").is_file() and leftovers(tmp_path) == []
    assert lines(out) == lines(pbmc_fragments)  # already clean: same lines, same order
    # region counts: htslib on the raw file vs htslib on ours vs numpy over our reader
    chroms = Index()
    chunks = list(iter_fragments(out, chroms=chroms))
    chrom = np.concatenate([c.chrom for c in chunks])
    start = np.concatenate([c.start for c in chunks])
    end = np.concatenate([c.end for c in chunks])
    rng = np.random.default_rng(0)
    for name in ["chr1", "chr4", "chr14", "chr20"]:
        code = chroms.names.index(name)
        lo_all, hi_all = start[chrom == code].min(), end[chrom == code].max()
        for _ in range(5):
            lo = int(rng.integers(lo_all, hi_all))
            hi = lo + int(rng.integers(1, 20_000))
            ours = int(((chrom == code) & (start < hi) & (end > lo)).sum())
            assert count_in_region(pbmc_fragments, name, lo, hi) == ours
            assert count_in_region(out, name, lo, hi) == ours
    bc = "TTATCCGTCTTCAATC-1"
    assert count_in_region(out, "chr1", 0, 10**9, barcode=bc) == count_in_region(
        pbmc_fragments, "chr1", 0, 10**9, barcode=bc
    )


@pytest.mark.shared_data
def test_unsorted_file_is_sorted_and_alt_contigs_dropped(unsorted_fragments, hg38_genome, tmp_path):
    out = tmp_path / "sorted.tsv.gz"
    stats = prepare_fragments(unsorted_fragments, out, genome=hg38_genome, chunk_size=5_000)
    assert stats["sorted_input"] is False
    raw = lines(unsorted_fragments)
    contig = Counter(ln.split("\t")[0] for ln in raw)
    dropped = {c: n for c, n in contig.items() if c not in hg38_genome.chrom_sizes}
    assert stats["dropped_chroms"] == dropped and len(dropped) == 15
    assert all(c.startswith(("GL", "KI")) for c in dropped)
    kept = [ln for ln in raw if ln.split("\t")[0] in hg38_genome.chrom_sizes]
    got = lines(out)
    assert Counter(got) == Counter(kept) and stats["n_fragments_out"] == len(kept)  # multiset
    order = {c: i for i, c in enumerate(hg38_genome.chrom_sizes)}
    keys = [(order[f[0]], int(f[1])) for f in (ln.split("\t") for ln in got)]
    assert keys == sorted(keys)  # genome chromosome order, then start
    with pysam.TabixFile(str(out)) as tbx:
        assert list(tbx.contigs) == [c for c in hg38_genome.chrom_sizes if c in contig]
        assert sum(1 for _ in tbx.fetch("chr7")) == contig["chr7"]


@pytest.mark.shared_data
def test_bpcells_four_columns_and_assembly_check(bpcells_fragments, hg38_genome, tmp_path):
    with pytest.raises(ScfmInputError, match="another assembly"):
        prepare_fragments(bpcells_fragments, tmp_path / "x.tsv.gz", genome=hg38_genome)
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "bp.tsv.gz"
    stats = prepare_fragments(bpcells_fragments, out, genome=Genome("hg19", HG19))
    assert stats["n_columns"] == 4 and stats["n_fragments_out"] == 14_678
    got = lines(out)
    assert all(ln.endswith("\t1") and ln.count("\t") == 4 for ln in got)
    assert Counter(ln.rsplit("\t", 1)[0] for ln in got) == Counter(lines(bpcells_fragments))


@pytest.mark.shared_data
def test_signac_and_whitelist(signac_fragments, hg38_genome, tmp_path):
    raw = lines(signac_fragments)
    keep = sorted({ln.split("\t")[3] for ln in raw})[:10]
    wl = write_text(tmp_path / "wl.txt", "\n".join(keep) + "\n", compress=False)
    out = tmp_path / "wl.tsv.gz"
    stats = prepare_fragments(signac_fragments, out, genome=hg38_genome, whitelist=wl)
    assert lines(out) == [ln for ln in raw if ln.split("\t")[3] in keep]
    assert stats["n_not_whitelisted"] == len(raw) - len(lines(out)) and stats["n_barcodes"] == 10


# ----------------------------------------------------------------------------- small files
def test_ensembl_names_order_and_chunks(tmp_path):
    # sorted within chromosomes, blocks in a different order than the genome, Ensembl names
    text = "# a header line\n" + "".join(
        f"{c}\t{s}\t{s + 50 + s % 7}\tBC{s % 5}\t{1 + s % 3}\n"
        for c in ("2", "1", "MT")
        for s in range(0, 900, 9)
    )
    raw = write_text(tmp_path / "raw.tsv.gz", text)
    outs = []
    for chunk in (7, 10_000):
        out = tmp_path / f"out{chunk}.tsv.gz"
        stats = prepare_fragments(raw, out, genome=TOY, chunk_size=chunk)
        assert stats["sorted_input"] is True
        assert stats["renamed_chroms"] == {"2": "chr2", "1": "chr1", "MT": "chrM"}
        outs.append(lines(out))
    assert outs[0] == outs[1]
    assert [ln.split("\t")[0] for ln in outs[0][::100]] == ["chr1", "chr2", "chrM"]
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    renamed = {"2": "chr2", "1": "chr1", "MT": "chrM"}
    assert Counter(outs[0]) == Counter(
        renamed[ln.split("\t")[0]] + ln[ln.index("\t") :] for ln in body
    )


def test_unsorted_small_chunks_and_chrom_map(tmp_path):
    rng = np.random.default_rng(3)
    rows = [
        (str(rng.choice(["chr1", "chr2", "myMito"])), int(s), f"B{rng.integers(9)}")
        for s in rng.integers(0, 900, 500)
    ]
    text = "".join(f"{c}\t{s}\t{s + 60}\t{b}\n" for c, s, b in rows)  # 4 columns, unsorted
    raw = write_text(tmp_path / "raw.tsv", text, compress=False)
    out = tmp_path / "out.tsv.gz"
    stats = prepare_fragments(raw, out, genome=TOY, chunk_size=64, chrom_map={"myMito": "chrM"})
    assert stats["sorted_input"] is False and stats["n_fragments_out"] == 500
    got = [ln.split("\t") for ln in lines(out)]
    order = {"chr1": 0, "chr2": 1, "chrM": 2}
    keys = [(order[f[0]], int(f[1]), int(f[2])) for f in got]
    assert keys == sorted(keys)
    name = {"chr1": "chr1", "chr2": "chr2", "myMito": "chrM"}
    assert Counter((f[0], int(f[1]), f[3]) for f in got) == Counter(
        (name[c], s, b) for c, s, b in rows
    )


def test_replaces_existing_output_atomically(tmp_path):
    raw = write_text(tmp_path / "raw.tsv.gz", "chr1\t10\t100\tA\t1\n")
    out = tmp_path / "out.tsv.gz"
    out.write_text("old")
    prepare_fragments(raw, out, genome=TOY)
    assert lines(out) == ["chr1\t10\t100\tA\t1"] and leftovers(tmp_path) == []


BAD = {
    "three columns": ("chr1\t10\t100\n", "line 1", "3 tab-separated column"),
    "non-integer start": ("chr1\t10\t100\tA\t1\nchr1\t1.5\t100\tA\t1\n", "line 2", "integer"),
    "text coordinate": ("chr1\t10\t100\tA\t1\nchr1\t10\tabc\tA\t1\n", "line 2", "integer"),
    "negative start": ("# hdr\nchr1\t10\t100\tA\t1\nchr1\t-5\t100\tA\t1\n", "line 3", "negative"),
    "end <= start": ("chr1\t10\t100\tA\t1\nchr1\t100\t100\tA\t1\n", "line 2", "end <= start"),
    "empty barcode": ("chr1\t10\t100\tA\t1\nchr1\t20\t100\t\t1\n", "line 2", "empty barcode"),
    "missing field": ("chr1\t10\t100\tA\t1\nchr1\t20\n", "line 2", "2 tab-separated field"),
    "count column appears": (
        "chr1\t10\t100\tA\nchr1\t20\t100\tA\nchr1\t30\t100\tA\t7\n",
        "line 3",
        r"5 tab-separated field\(s\) in 'chr1\\t30\\t100\\tA\\t7', but 4 on line 1",
    ),
    "count column stops": (
        "chr1\t10\t100\tA\t2\nchr1\t20\t100\tB\n",
        "line 2",
        r"4 tab-separated field\(s\) in 'chr1\\t20\\t100\\tB', but 5 on line 1",
    ),
    "tab inside a barcode": (
        "# hdr\nchr1\t10\t100\tAC\t1\nchr1\t20\t100\tAC\tGT\t1\n",
        "line 3",
        r"6 tab-separated field\(s\).*a barcode cannot contain a tab",
    ),
    "zero count": ("chr1\t10\t100\tA\t1\nchr1\t20\t100\tA\t0\n", "line 2", "positive integer"),
    "unknown chromosome": ("chr1\t10\t100\tA\t1\nscaffold_7\t1\t50\tA\t1\n", "chrom", "chrom_map"),
    "too few fragments": ("chr1\t10\t100\tA\t1\n", "fragments", "min_fragments=5"),
    "all on alt contigs": ("GL000218.1\t10\t100\tA\t1\n", "fragments", "GL000218.1"),
}


@pytest.mark.parametrize("chunk_size", [1, 10_000])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_and_writes_nothing(tmp_path, case, chunk_size):
    text, where, message = BAD[case]
    (tmp_path / "in").mkdir()
    raw = write_text(tmp_path / "in" / "raw.tsv.gz", text)
    out_dir = tmp_path / "out"
    min_fragments = 5 if case == "too few fragments" else 1
    with pytest.raises(ScfmInputError, match=message) as err:
        prepare_fragments(
            raw,
            out_dir / "f.tsv.gz",
            genome=TOY,
            min_fragments=min_fragments,
            chunk_size=chunk_size,
        )
    assert where in str(err.value) and str(raw) in str(err.value)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_whitelist_matching_nothing(tmp_path):
    raw = write_text(tmp_path / "raw.tsv.gz", "chr1\t10\t100\tAAAC-1\t1\n")
    with pytest.raises(ScfmInputError, match=r"whitelist.*matches none.*AAAC-1"):
        prepare_fragments(raw, tmp_path / "o" / "f.tsv.gz", genome=TOY, whitelist=["AAAC"])
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("kind", ["bgzf", "gzip"])
def test_truncated_compressed_input(tmp_path, kind):
    text = "".join(f"chr1\t{s}\t{s + 80}\tBC{s % 97}\t1\n" for s in range(0, 9_000, 3)) * 3
    full = tmp_path / "full.tsv.gz"
    if kind == "bgzf":
        with BgzfWriter(full) as fh:
            fh.write(text.encode())
    else:
        write_text(full, text)
    cut = tmp_path / "cut.tsv.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    match = "end-of-file marker" if kind == "bgzf" else "truncated or corrupt"
    with pytest.raises(ScfmInputError, match=match):
        prepare_fragments(cut, tmp_path / "o" / "f.tsv.gz", genome=TOY)
    with pytest.raises(ScfmInputError, match=match):
        list(iter_fragments(cut))
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_missing_file_and_missing_index_is_fine(tmp_path):
    with pytest.raises(ScfmInputError, match="does not exist"):
        prepare_fragments(tmp_path / "nope.tsv.gz", tmp_path / "o.tsv.gz", genome=TOY)
    raw = tmp_path / "raw.tsv.gz"  # BGZF, sorted, but no .tbi
    with BgzfWriter(raw) as fh:
        fh.write(b"chr1\t10\t100\tA\t2\nchr2\t5\t50\tB\t1\n")
    stats = prepare_fragments(raw, tmp_path / "o.tsv.gz", genome=TOY)
    assert stats["sorted_input"] and Path(tmp_path / "o.tsv.gz.tbi").is_file()
    assert count_in_region(tmp_path / "o.tsv.gz", "chr1", 0, 50, sum_counts=True) == 2


def test_index_encode():
    idx = Index(["a", "b"], frozen=True)
    assert idx.encode(np.array(["b", "x", "a"])).tolist() == [1, -1, 0]
    grow = Index()
    assert grow.encode(np.array(["q", "r", "q"])).tolist() == [0, 1, 0] and "r" in grow


def test_header_lines_blank_lines_and_hash_in_data(tmp_path):
    text = "# id=x\n# pipeline_name=cellranger-arc\nchr1\t10\t100\tA#1\t2\n\nchr1\t20\t90\tB\t1\n"
    raw = write_text(tmp_path / "raw.tsv.gz", text)
    barcodes = Index()
    assert sum(len(c) for c in iter_fragments(raw, barcodes=barcodes)) == 2
    assert barcodes.names == ["A#1", "B"]
    late = write_text(tmp_path / "late.tsv.gz", "chr1\t10\t100\tA\t1\n\n# late comment\n")
    with pytest.raises(ScfmInputError, match="line 3"):
        list(iter_fragments(late))
