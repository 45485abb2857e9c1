"""One parse per dataset: prepare_fragments' sidecar gives the same QC and counts as the text.

Every stage after prepare_fragments reads the binary sidecar instead of parsing the BGZF text;
these tests compare each stage's result through the sidecar with the same stage reading the
text (the sidecar deleted, or the unprepared input), value for value, and check that a
sidecar that does not describe the file is not used and a corrupt one is an error.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm.atac import sidecar as sc
from scfm.atac.activity import gene_activity
from scfm.atac.fragments import BgzfWriter, iter_fragments, prepare_fragments, read_chunks
from scfm.atac.genome import Genome
from scfm.atac.peaks import peak_matrix
from scfm.atac.qc import barcode_qc
from scfm.atac.tiles import tile_matrix
from scfm.errors import ScfmInputError


@pytest.fixture(scope="module")
def prepared(sim_atac, tmp_path_factory):
    """The simulated dataset through prepare_fragments, and a copy without its sidecar."""
    d = tmp_path_factory.mktemp("sidecar")
    out = d / "with" / "fragments.tsv.gz"
    prepare_fragments(sim_atac.fragments, out, genome=sim_atac.genome)
    bare = d / "without" / "fragments.tsv.gz"
    bare.parent.mkdir()
    shutil.copy(out, bare)
    shutil.copy(f"{out}.tbi", f"{bare}.tbi")
    return out, bare


def same_matrix(a: Path, b: Path) -> None:
    x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    assert x.shape == y.shape and (x.X != y.X).nnz == 0
    assert x.X.nnz > 0
    pd.testing.assert_frame_equal(x.var, y.var)
    pd.testing.assert_frame_equal(x.obs, y.obs)


def test_sidecar_written_beside_and_describes_the_file(prepared):
    out, bare = prepared
    side = sc.Sidecar.open(out)
    assert side is not None and sc.sidecar_path(out).name == "fragments.tsv.gz.scfm"
    assert sc.Sidecar.open(bare) is None  # no sidecar: the text is parsed
    text = pd.concat(
        pd.DataFrame({"chrom": c.chrom, "start": c.start, "end": c.end, "barcode": c.barcode})
        for c in iter_fragments(bare)
    )
    binary = pd.concat(
        pd.DataFrame({"chrom": c.chrom, "start": c.start, "end": c.end, "barcode": c.barcode})
        for c in read_chunks(out, chunk_size=777)
    )
    assert side.n_fragments == len(text) == len(binary) > 100_000
    assert (text.to_numpy() == binary.to_numpy()).all()


def test_qc_from_sidecar_equals_qc_from_text(prepared, sim_atac):
    out, bare = prepared
    table, hist = barcode_qc(out, sim_atac.genome)
    table_text, hist_text = barcode_qc(bare, sim_atac.genome)
    pd.testing.assert_frame_equal(table, table_text)
    pd.testing.assert_series_equal(hist, hist_text)
    some = [*table.index[:5], "NOT-A-BARCODE"]
    pd.testing.assert_frame_equal(
        barcode_qc(out, sim_atac.genome, barcodes=some)[0],
        barcode_qc(bare, sim_atac.genome, barcodes=some)[0],
    )
    # another TSS set: the stored sums do not apply, the text is read
    tss = sim_atac.genome.tss().iloc[::2]
    pd.testing.assert_frame_equal(
        barcode_qc(out, sim_atac.genome, tss=tss)[0], barcode_qc(bare, sim_atac.genome, tss=tss)[0]
    )


def test_counts_from_sidecar_equal_counts_from_text(prepared, sim_atac, tmp_path):
    out, bare = prepared
    cells = sim_atac.metadata["barcode"].tolist()[::3]
    for name, run in {
        "tiles": lambda f, o: tile_matrix(f, sim_atac.genome, cells, o, bin_size=500),
        "genes": lambda f, o: gene_activity(f, sim_atac.genome, cells, o),
    }.items():
        run(out, tmp_path / f"{name}.side.h5ad")
        run(bare, tmp_path / f"{name}.text.h5ad")
        same_matrix(tmp_path / f"{name}.side.h5ad", tmp_path / f"{name}.text.h5ad")
    peaks = tmp_path / "peaks.bed"
    genes = sim_atac.genome.genes.iloc[::5]
    pd.DataFrame(
        {
            "c": genes["chrom"],
            "s": genes["start"],
            "e": np.minimum(genes["start"] + 700, genes["end"]),
        }
    ).to_csv(peaks, sep="\t", header=False, index=False)
    peak_matrix(out, peaks, cells, tmp_path / "p.side.h5ad", counting="fragment")
    peak_matrix(bare, peaks, cells, tmp_path / "p.text.h5ad", counting="fragment")
    same_matrix(tmp_path / "p.side.h5ad", tmp_path / "p.text.h5ad")


def test_sidecar_of_another_file_is_not_used(prepared, tmp_path):
    out, _ = prepared
    other = tmp_path / "fragments.tsv.gz"
    with BgzfWriter(other) as fh:  # same name pattern, other content
        fh.write(b"chr1\t10\t100\tA\t1\n")
    shutil.copy(sc.sidecar_path(out), sc.sidecar_path(other))
    assert sc.Sidecar.open(other) is None
    chunks = list(read_chunks(other))
    assert [len(c) for c in chunks] == [1] and chunks[0].count.tolist() == [1]


def test_corrupt_sidecar_is_an_error_naming_it(prepared, sim_atac, tmp_path):
    out, _ = prepared
    copy = tmp_path / "fragments.tsv.gz"
    shutil.copy(out, copy)
    side = sc.sidecar_path(copy)
    data = bytearray(sc.sidecar_path(out).read_bytes())
    data[1000] ^= 0xFF  # inside the first chromosome's records
    side.write_bytes(bytes(data))
    with pytest.raises(ScfmInputError, match=r"fragments\.tsv\.gz\.scfm: chromosome .*CRC-32"):
        list(read_chunks(copy))
    cells = sim_atac.metadata["barcode"].tolist()[:10]
    with pytest.raises(ScfmInputError, match="CRC-32"):
        tile_matrix(copy, sim_atac.genome, cells, tmp_path / "o" / "t.h5ad")
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_rewriting_replaces_or_removes_the_sidecar(sim_atac, tmp_path):
    from scfm.atac.fragments import FragmentBlock, write_fragments

    toy = Genome("toy", {"chr1": 10_000})
    raw = tmp_path / "raw.tsv"
    raw.write_text("chr1\t10\t100\tA\t3\nchr1\t20\t90\tB\t1\n")
    out = tmp_path / "o" / "f.tsv.gz"
    prepare_fragments(raw, out, genome=toy)
    first = sc.Sidecar.open(out)
    assert first is not None and first.barcodes == ["A", "B"]
    assert first.array("qc.n_reads").tolist() == [3, 1]
    block = FragmentBlock("chr1", np.array([5]), np.array([50]), np.array([0]), np.array([1]))
    write_fragments(out, [block], ["C"])  # no sidecar asked: the stale one goes
    assert not sc.sidecar_path(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.tsv.gz", "f.tsv.gz.tbi"]
