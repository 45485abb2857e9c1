"""The .tbi written while the BGZF file is written equals htslib's (pysam.tabix_index) bin for bin.

Both indexes are decoded (names, every bin's chunks, the pseudo-bin, the linear index) and
compared as structures (bin order in the file is htslib's hash order, so it is not compared);
then pysam queries random regions through ours and compares them with a scan of the text.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pysam
import pytest

from scfm.atac.fragments import FragmentBlock, prepare_fragments, write_fragments


def read_tbi(path: Path) -> dict:
    data = gzip.decompress(path.read_bytes())
    assert data[:4] == b"TBI\x01"
    pos = 4

    def take(fmt: str, n: int = 1) -> np.ndarray:
        nonlocal pos
        a = np.frombuffer(data, fmt, n, pos)
        pos += a.nbytes
        return a

    n_ref = int(take("<i4")[0])
    conf = take("<i4", 7).tolist()
    names = data[pos : pos + conf[6]].split(b"\0")[:-1]
    pos += conf[6]
    refs = []
    for _ in range(n_ref):
        bins = {}
        for _ in range(int(take("<i4")[0])):
            key, n_chunk = (int(x) for x in take("<u4", 2))
            bins[key] = take("<u8", 2 * n_chunk).reshape(-1, 2).tolist()
        linear = take("<u8", int(take("<i4")[0])).tolist()
        refs.append({"bins": bins, "linear": linear})
    rest = data[pos:]
    return {"conf": conf, "names": names, "refs": refs, "n_no_coor": rest}


def htslib_index(path: Path, tmp: Path) -> Path:
    copy = tmp / f"htslib.{path.name}"
    shutil.copy(path, copy)
    pysam.tabix_index(str(copy), preset="bed", force=True)
    return Path(f"{copy}.tbi")


def assert_same_index(path: Path, tmp: Path) -> dict:
    ours, theirs = read_tbi(Path(f"{path}.tbi")), read_tbi(htslib_index(path, tmp))
    assert ours["conf"] == theirs["conf"] and ours["names"] == theirs["names"]
    assert ours["n_no_coor"] == theirs["n_no_coor"]
    for i, (a, b) in enumerate(zip(ours["refs"], theirs["refs"], strict=True)):
        assert a["linear"] == b["linear"], ours["names"][i]
        assert a["bins"].keys() == b["bins"].keys(), ours["names"][i]
        for key in a["bins"]:
            assert a["bins"][key] == b["bins"][key], (ours["names"][i], key)
    return ours


def scan(path: Path, chrom: str, start: int, end: int) -> list[str]:
    out = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            c, s, e = line.split("\t")[:3]
            if c == chrom and int(s) < end and int(e) > start:
                out.append(line.rstrip("\n"))
    return out


def test_index_of_long_and_short_fragments_equals_htslib(tmp_path):
    """Fragments from 20 bp to 300 kb (every bin level), ~150 BGZF blocks, 3 chromosomes."""
    rng = np.random.default_rng(7)
    sizes = {"chr1": 3_000_000, "chr2": 700_000, "chr3": 40_000}
    blocks = []
    for name, size in sizes.items():
        n = {"chr1": 200_000, "chr2": 30_000, "chr3": 50}[name]
        length = np.where(
            rng.random(n) < 0.02, rng.integers(16_000, 300_000, n), rng.integers(20, 900, n)
        )
        start = np.sort(rng.integers(0, size - 300_000 if size > 300_000 else size // 2, n))
        end = np.minimum(start + length, size)
        bc = rng.integers(0, 50, n)
        blocks.append(FragmentBlock(name, start, end, bc, np.ones(n, np.int64)))
    path = tmp_path / "f.tsv.gz"
    write_fragments(path, blocks, [f"BC{i}" for i in range(50)], chrom_sizes=sizes)
    index = assert_same_index(path, tmp_path)
    levels = {
        max(lv for lv, first in enumerate([0, 1, 9, 73, 585, 4681]) if k >= first)
        for ref in index["refs"]
        for k in ref["bins"]
        if k < 37450
    }
    assert levels >= {2, 3, 4}  # leaves merged into parents; long fragments in upper bins
    with pysam.TabixFile(str(path)) as tbx:
        for chrom, start, end in [
            ("chr1", 0, 50),
            ("chr1", 1_234_567, 1_300_000),
            ("chr2", 650_000, 700_000),
            ("chr3", 0, 40_000),
        ]:
            assert list(tbx.fetch(chrom, start, end)) == scan(path, chrom, start, end)


def test_prepared_files_index_equals_htslib(sim_atac, tmp_path):
    out = tmp_path / "o" / "fragments.tsv.gz"
    prepare_fragments(sim_atac.fragments, out, genome=sim_atac.genome)
    assert_same_index(out, tmp_path)


@pytest.mark.shared_data
def test_pbmc_index_equals_htslib(pbmc_fragments, hg38_genome, tmp_path):
    out = tmp_path / "o" / "fragments.tsv.gz"
    prepare_fragments(pbmc_fragments, out, genome=hg38_genome)
    assert_same_index(out, tmp_path)
