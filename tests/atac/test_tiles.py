"""Genome tiles: exact counts against independent counts (brute force, pysam on real data)."""

from __future__ import annotations

import gzip
import random
from collections import Counter
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm.atac.genome import Genome, builtin_chrom_sizes
from scfm.atac.tiles import tile_matrix
from scfm.errors import ScfmInputError
from scfm.io.h5ad import provenance

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PBMC = SHARED_DATA / "atac" / "pbmc_multiome_fragments.tsv.gz"


# ------------------------------------------------------------------ brute-force reference
def brute_force(frags, chrom_sizes, barcodes, bin_size, counting):
    """Dense cells x bins counts, one fragment at a time in Python."""
    offsets, total = {}, 0
    for chrom, size in chrom_sizes.items():
        offsets[chrom] = total
        total += -(-size // bin_size)
    row = {b: i for i, b in enumerate(barcodes)}
    out = np.zeros((len(barcodes), total), np.int64)
    for chrom, start, end, bc in frags:
        if bc not in row or chrom not in chrom_sizes:
            continue
        size = chrom_sizes[chrom]
        if counting == "fragment":
            s, e = max(start, 0), min(end, size)
            for b in range(s // bin_size, (e - 1) // bin_size + 1) if s < e else ():
                out[row[bc], offsets[chrom] + b] += 1
            continue
        bins = [offsets[chrom] + p // bin_size for p in (start, end - 1) if 0 <= p < size]
        if counting == "paired-insertion":
            bins = sorted(set(bins))
        for b in bins:
            out[row[bc], b] += 1
    return out


def write_fragments(path: Path, frags, *, shuffle: bool = False) -> Path:
    rows = list(frags)
    if shuffle:
        random.Random(0).shuffle(rows)
    with gzip.open(path, "wt") as fh:
        for chrom, start, end, bc in rows:
            fh.write(f"{chrom}\t{start}\t{end}\t{bc}\t{random.Random(start).randint(1, 3)}\n")
    return path


@pytest.fixture
def toy():
    """A tiny genome and fragments hitting every edge: bin borders, partial last bins,
    chromosome ends, chromosomes absent from the genome, unknown barcodes."""
    genome = Genome(name="toy", chrom_sizes={"chrA": 2_000, "chrB": 1_234, "chrC": 50})
    rng = np.random.default_rng(1)
    cells = [f"C{i}" for i in range(7)]
    frags = []
    for _ in range(3_000):
        chrom = rng.choice(["chrA", "chrB", "chrC", "chrZ"], p=[0.5, 0.3, 0.1, 0.1])
        size = genome.chrom_sizes.get(chrom, 900)
        start = int(rng.integers(0, size))
        end = start + int(rng.integers(1, 700))  # may run past the chromosome end
        frags.append((str(chrom), start, end, str(rng.choice([*cells, "OTHER"]))))
    frags += [("chrA", 99, 100, "C0"), ("chrA", 100, 101, "C0"), ("chrA", 0, 2_000, "C1")]
    frags.sort(key=lambda f: (f[0], f[1]))
    return genome, frags, cells


def read_x(path: Path) -> sp.csr_matrix:
    adata = ad.read_h5ad(path)
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.int32
    return adata.X


@pytest.mark.parametrize("counting", ["insertion", "paired-insertion", "fragment"])
@pytest.mark.parametrize("bin_size", [100, 333])
def test_toy_equals_brute_force(tmp_path, toy, counting, bin_size):
    genome, frags, cells = toy
    path = write_fragments(tmp_path / "f.tsv.gz", frags)
    order = [*cells[::-1], "ABSENT"]  # output rows follow the given order; absent -> zeros
    s = tile_matrix(
        path,
        genome,
        order,
        tmp_path / "t.h5ad",
        bin_size=bin_size,
        counting=counting,
        chunk_size=257,  # many chunks: pairs of one cell and bin meet across chunk borders
    )
    expected = brute_force(frags, genome.chrom_sizes, order, bin_size, counting)
    x = read_x(s.path)
    np.testing.assert_array_equal(x.toarray(), expected)
    assert s.record["nnz"] == np.count_nonzero(expected)
    assert (s.cells.index == order).all()
    n_frag = Counter(bc for *_, bc in frags)
    assert s.cells["n_fragment"].tolist() == [n_frag.get(c, 0) for c in order]
    per = 1 if counting == "fragment" else 2
    assert (s.cells["n_counted"] == s.cells["n_fragment"] * per).all()
    assert (s.cells["n_in_features"] <= s.cells["n_counted"]).all()


def test_spill_unsorted_and_binarize(tmp_path, toy):
    genome, frags, cells = toy
    path = write_fragments(tmp_path / "f.tsv.gz", frags)
    shuffled = write_fragments(tmp_path / "u.tsv.gz", frags, shuffle=True)
    ref = tile_matrix(path, genome, cells, tmp_path / "ref.h5ad", bin_size=100)
    # any input order (the per-row sort falls back from insertion sort) and a spilled buffer
    spilled = tile_matrix(
        shuffled,
        genome,
        cells,
        tmp_path / "s.h5ad",
        bin_size=100,
        chunk_size=100,
        buffer_pairs=50,
    )
    assert spilled.record["pairs_spilled"] > 0
    a, b = read_x(ref.path), read_x(spilled.path)
    assert (a != b).nnz == 0
    assert not list(tmp_path.glob(".*spill*"))  # spill directory removed
    binary = tile_matrix(path, genome, cells, tmp_path / "b.h5ad", bin_size=100, binarize=True)
    xb = read_x(binary.path)
    assert set(np.unique(xb.data)) == {1}
    assert (xb != (a > 0).astype(np.int32)).nnz == 0


def test_var_layout_and_provenance(tmp_path, toy):
    genome, frags, cells = toy
    path = write_fragments(tmp_path / "f.tsv.gz", frags)
    s = tile_matrix(path, genome, cells, tmp_path / "t.h5ad", bin_size=500)
    adata = ad.read_h5ad(s.path)
    assert adata.var_names.tolist() == [
        "chrA:0-500",
        "chrA:500-1000",
        "chrA:1000-1500",
        "chrA:1500-2000",
        "chrB:0-500",
        "chrB:500-1000",
        "chrB:1000-1234",
        "chrC:0-50",
    ]
    assert adata.var["chrom"].tolist() == ["chrA"] * 4 + ["chrB"] * 3 + ["chrC"]
    assert adata.var["end"].tolist()[-2:] == [1234, 50]
    assert (adata.var["end"] - adata.var["start"]).max() == 500
    rec = provenance(s.path)["tiles"]
    assert rec["bin_size"] == 500 and rec["counting"] == "insertion"
    assert rec["nnz"] == adata.X.nnz and rec["genome"] == "toy"
    assert rec["n_fragments_read"] == len(frags)


def test_bad_barcodes(tmp_path, toy):
    genome, frags, _ = toy
    path = write_fragments(tmp_path / "f.tsv.gz", frags)
    with pytest.raises(ScfmInputError, match="no barcodes"):
        tile_matrix(path, genome, [], tmp_path / "t.h5ad")
    with pytest.raises(ScfmInputError, match="repeated"):
        tile_matrix(path, genome, ["C1", "C1"], tmp_path / "t.h5ad")
    with pytest.raises(ScfmInputError, match="none of the 2 barcodes"):
        tile_matrix(path, genome, ["X-1", "Y-1"], tmp_path / "t.h5ad")
    assert not (tmp_path / "t.h5ad").exists()
    assert not list(tmp_path.glob(".t.h5ad*"))  # nothing half-written
    with pytest.raises(ValueError, match="counting"):
        tile_matrix(path, genome, ["C1"], tmp_path / "t.h5ad", counting="reads")


# ------------------------------------------------------------------ real data vs pysam
REGIONS = [  # (chrom, start, end) with many fragments, aligned to and across 500 bp bins
    ("chr11", 65_415_000, 65_425_000),
    ("chr5", 150_410_000, 150_415_000),
    ("chr4", 140_150_000, 140_152_000),
    ("chr1", 100_350_000, 100_353_000),
    ("chr19", 41_870_000, 41_880_000),
]


def pysam_counts(path: Path, chrom: str, start: int, end: int, bin_size: int, counting: str):
    """Counter[(barcode, bin start)] over [start, end) from a tabix fetch, in pure Python."""
    pysam = pytest.importorskip("pysam")
    counts: Counter = Counter()
    with pysam.TabixFile(str(path)) as tbx:
        # tabix returns every fragment overlapping [start, end), hence every fragment with an
        # insertion site (start or end - 1) in the region
        for line in tbx.fetch(chrom, start, end):
            _, s, e, bc = line.split("\t")[:4]
            s, e = int(s), int(e)
            if counting == "fragment":
                lo, hi = max(s, start), min(e, end)
                for b in range(lo // bin_size, (hi - 1) // bin_size + 1):
                    counts[bc, b * bin_size] += 1
                continue
            bins = [p // bin_size * bin_size for p in (s, e - 1) if start <= p < end]
            for b in set(bins) if counting == "paired-insertion" else bins:
                counts[bc, b] += 1
    return counts


def matrix_counts(path: Path):
    """Counter[(barcode, bin start)] of the bins inside a region, from the written h5ad."""
    with h5py.File(path) as f:  # not ad.read_h5ad: skip the 6.2M bin names of hg38
        x = sp.csc_matrix(ad.io.read_elem(f["X"]))
        var = pd.DataFrame({k: ad.io.read_elem(f["var"][k]) for k in ("chrom", "start", "end")})
        bc = ad.io.read_elem(f["obs"]).index.to_numpy()

    def region(chrom: str, start: int, end: int) -> Counter:
        cols = np.flatnonzero(
            (var["chrom"] == chrom).to_numpy()
            & (var["start"] >= start).to_numpy()
            & (var["end"] <= end).to_numpy()
        )
        sub = sp.coo_matrix(x[:, cols])
        starts = var["start"].to_numpy()[cols]
        return Counter(
            {
                (bc[r], int(starts[c])): int(v)
                for r, c, v in zip(sub.row, sub.col, sub.data, strict=True)
            }
        )

    return region


@pytest.fixture(scope="module")
def pbmc_tiles(tmp_path_factory):
    path = PBMC
    if not path.exists():
        pytest.skip(f"{path} not present (only CI and developer machines have ../shared)")
    barcodes = pd.read_csv(path, sep="\t", header=None, usecols=[3])[3].unique().tolist()
    genome = Genome(name="hg38", chrom_sizes=builtin_chrom_sizes("hg38"))
    out = tmp_path_factory.mktemp("tiles") / "pbmc.tiles.h5ad"
    return path, genome, barcodes, tile_matrix(path, genome, barcodes, out)


@pytest.mark.shared_data
def test_pbmc_whole_genome_tiles(pbmc_tiles):
    path, genome, barcodes, s = pbmc_tiles
    with h5py.File(s.path) as f:
        shape = tuple(f["X"].attrs["shape"])
        first = f["var/_index"][0].decode()
    n_bins = sum(-(-n // 500) for n in genome.chrom_sizes.values())
    assert shape == (len(barcodes), n_bins) == (24_508, n_bins)
    assert first == "chr1:0-500"
    assert s.record["n_fragments_read"] == 367_439
    # every fragment lies on an hg38 chromosome: all insertions are counted in bins
    assert s.record["units_in_features"] == 2 * 367_439 == s.cells["n_counted"].sum()
    counts = matrix_counts(s.path)
    for chrom, start, end in REGIONS:
        expected = pysam_counts(path, chrom, start, end, 500, "insertion")
        assert sum(expected.values()) > 100
        assert counts(chrom, start, end) == expected, (chrom, start, end)


@pytest.mark.shared_data
@pytest.mark.parametrize("counting", ["fragment", "paired-insertion"])
def test_pbmc_other_countings_match_pysam(pbmc_tiles, tmp_path, counting):
    path, _, barcodes, _ = pbmc_tiles
    chroms = {c for c, *_ in REGIONS}
    genome = Genome(name="sub", chrom_sizes={c: builtin_chrom_sizes("hg38")[c] for c in chroms})
    s = tile_matrix(path, genome, barcodes, tmp_path / "t.h5ad", bin_size=1_000, counting=counting)
    counts = matrix_counts(s.path)
    for chrom, start, end in REGIONS:
        assert counts(chrom, start, end) == pysam_counts(
            path, chrom, start, end, 1_000, counting
        ), (chrom, start, end)


def test_reader_errors_propagate_and_leave_nothing(tmp_path, toy):
    genome, frags, cells = toy
    bad = tmp_path / "bad.tsv"
    lines = [f"{c}\t{s}\t{e}\t{b}\t1\n" for c, s, e, b in frags[:500]]
    lines[300] = "chrA\t500\t400\tC1\t1\n"  # end <= start, raised by the reader thread
    bad.write_text("".join(lines))
    with pytest.raises(ScfmInputError, match="end <= start"):
        tile_matrix(bad, genome, cells, tmp_path / "t.h5ad", chunk_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv"]


def test_bin_names_equal_python_strings():
    from scfm.atac.tiles import BinMap

    sizes = {"chr1": 248_956_422, "chrUn_KI270302v1": 2_274, "chrM": 16_569, "x": 500, "y": 999}
    bins = BinMap(sizes, 500)
    expected = [f"{c}:{s}-{min(s + 500, n)}" for c, n in sizes.items() for s in range(0, n, 500)]
    names = bins.names()
    assert names.dtype.kind == "S" and len(names) == bins.n_features == len(expected)
    assert [b.decode() for b in names] == expected
    assert [b.decode() for b in bins.names(497_912, 497_915)] == expected[497_912:497_915]


def test_bins_var_cached_once_and_copied(tmp_path, toy, monkeypatch):
    genome, frags, cells = toy
    path = write_fragments(tmp_path / "f.tsv.gz", frags)
    monkeypatch.setenv("SCFM_CACHE_DIR", str(tmp_path / "cache"))
    first = tile_matrix(path, genome, cells, tmp_path / "a.h5ad", bin_size=100)
    cached = list((tmp_path / "cache" / "bin_var").glob("*.h5"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = tile_matrix(path, genome, cells, tmp_path / "b.h5ad", bin_size=100)
    assert cached[0].stat().st_mtime_ns == stamp  # copied, not rebuilt
    monkeypatch.setenv("SCFM_CACHE_DIR", "none")
    direct = tile_matrix(path, genome, cells, tmp_path / "c.h5ad", bin_size=100)
    a, b, c = (ad.read_h5ad(s.path) for s in (first, second, direct))
    pd.testing.assert_frame_equal(a.var, b.var)
    pd.testing.assert_frame_equal(a.var, c.var)
    from scfm.atac.tiles import BinMap

    pd.testing.assert_frame_equal(
        a.var, BinMap(genome.chrom_sizes, 100).var().frame(), check_names=False
    )
    assert a.var_names[0] == "chrA:0-100" and (a.X != c.X).nnz == 0
    cached[0].write_bytes(b"not hdf5")  # a broken cache: written directly, with a warning
    monkeypatch.setenv("SCFM_CACHE_DIR", str(tmp_path / "cache"))
    broken = tile_matrix(path, genome, cells, tmp_path / "d.h5ad", bin_size=100)
    pd.testing.assert_frame_equal(a.var, ad.read_h5ad(broken.path).var)
