"""The scATAC simulator: deterministic, a valid sorted+indexed file, and real structure
(cell types, batches, low-quality barcodes, mitochondrial fragments)."""

from __future__ import annotations

import gzip

import numpy as np
import pysam
import pytest

from scfm.atac.fragments import Index, iter_fragments, prepare_fragments
from scfm.atac.simulate import simulate_fragments, simulate_genome


def text(path) -> bytes:
    with gzip.open(path) as fh:
        return fh.read()


def test_genome_is_deterministic_and_sane():
    g = simulate_genome(seed=0)
    assert g.chroms == ["chr1", "chr2", "chr3", "chrM"] and g.mito_chroms == ["chrM"]
    assert simulate_genome(seed=0).genes.equals(g.genes)
    assert not simulate_genome(seed=1).genes.equals(g.genes)
    genes = g.genes
    assert len(genes) == 300 and genes["gene_id"].iloc[0] == "SIMATAC00001"
    assert genes["gene_id"].is_unique and set(genes["strand"]) == {"+", "-"}
    size = genes["chrom"].map(g.chrom_sizes)
    assert ((genes["start"] >= 5_000) & (genes["end"] <= size - 5_000)).all()
    for _, grp in genes.groupby("chrom"):
        assert (grp["start"].to_numpy()[1:] > grp["end"].to_numpy()[:-1]).all()  # disjoint
    small = simulate_genome(n_chroms=1, chrom_size=200_000, n_genes=10, mito=False)
    assert small.chroms == ["chr1"] and len(small.genes) == 10
    with pytest.raises(ValueError, match="do not fit"):
        simulate_genome(n_chroms=1, chrom_size=50_000, n_genes=100)


def test_fragments_deterministic_and_valid(sim_atac, tmp_path):
    again = tmp_path / "again.tsv.gz"
    meta = simulate_fragments(
        sim_atac.genome, again, n_cells=300, n_types=4, n_batches=2, seed=0, fragments_per_cell=1500
    )
    assert meta.equals(sim_atac.metadata)
    assert text(again) == text(sim_atac.fragments)
    # a clean file: prepare_fragments finds it sorted and changes nothing
    out = tmp_path / "prepared.tsv.gz"
    stats = prepare_fragments(sim_atac.fragments, out, genome=sim_atac.genome)
    assert stats["sorted_input"] and stats["n_fragments_in"] == stats["n_fragments_out"]
    assert stats["n_barcodes"] == len(meta) == 330
    assert text(out) == text(sim_atac.fragments)
    with pysam.TabixFile(str(sim_atac.fragments)) as tbx:
        assert list(tbx.contigs) == ["chr1", "chr2", "chrM"]
        assert sum(1 for _ in tbx.fetch("chrM")) > 0
    keys = set()
    for chunk in iter_fragments(sim_atac.fragments):
        keys.update(zip(chunk.chrom, chunk.start, chunk.end, chunk.barcode, strict=True))
    assert len(keys) == stats["n_fragments_in"]  # no repeated fragment of a barcode
    other = simulate_fragments(sim_atac.genome, tmp_path / "s1.tsv.gz", n_cells=50, seed=1)
    assert not other["barcode"].isin(meta["barcode"]).all()


def test_metadata_and_structure(sim_atac):
    meta = sim_atac.metadata
    assert list(meta.columns) == ["barcode", "cell_type", "batch", "donor", "is_cell"]
    assert meta["barcode"].is_unique and meta["is_cell"].sum() == 300
    assert set(meta.loc[meta["is_cell"], "cell_type"]) == {"type0", "type1", "type2", "type3"}
    assert set(meta.loc[~meta["is_cell"], "cell_type"]) == {"low_quality"}
    assert meta.groupby("donor")["batch"].nunique().max() == 1  # donors nested in batches
    # cell x 10 kb bin counts -> pseudobulks: types differ, halves of one type agree
    chroms, barcodes = Index(), Index(meta["barcode"], frozen=True)
    n_bins = {c: -(-s // 10_000) for c, s in sim_atac.genome.chrom_sizes.items()}
    offset = dict(zip(n_bins, np.cumsum([0, *n_bins.values()])[:-1], strict=True))
    counts = np.zeros((len(meta), sum(n_bins.values())))
    n_frag = np.zeros(len(meta))
    for chunk in iter_fragments(sim_atac.fragments, chroms=chroms, barcodes=barcodes):
        off = np.array([offset[c] for c in chroms.names])[chunk.chrom]
        np.add.at(counts, (chunk.barcode, off + chunk.start // 10_000), 1)
        n_frag += np.bincount(chunk.barcode, minlength=len(meta))
    good = meta["is_cell"].to_numpy()
    types = meta["cell_type"].to_numpy()
    prof = counts / counts.sum(axis=1, keepdims=True)

    def corr(a, b):
        return np.corrcoef(prof[a].mean(axis=0), prof[b].mean(axis=0))[0, 1]

    idx = np.arange(len(meta))
    t0, t1 = good & (types == "type0"), good & (types == "type1")
    within = min(corr(t & (idx % 2 == 0), t & (idx % 2 == 1)) for t in (t0, t1))
    assert within > corr(t0, t1) + 0.05
    # batch effect on depth; low-quality barcodes are shallow
    batch = meta["batch"].to_numpy()
    assert np.median(n_frag[good & (batch == "batch1")]) > 1.2 * np.median(
        n_frag[good & (batch == "batch0")]
    )
    assert np.quantile(n_frag[~good], 0.9) < np.quantile(n_frag[good], 0.05)
