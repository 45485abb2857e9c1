"""FOSCTTM: 0 for identical pairs, ~0.5 for unrelated ones, matches a direct reading."""

from __future__ import annotations

import numpy as np
import pytest

from scfm.bench.multiome import foscttm


def _direct(a, b):
    n = len(a)
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    fa = [(d[i] < d[i, i]).sum() / (n - 1) for i in range(n)]
    fb = [(d[:, j] < d[j, j]).sum() / (n - 1) for j in range(n)]
    return (np.mean(fa) + np.mean(fb)) / 2


def test_matches_the_definition_and_its_bounds():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 5))
    noisy = a + rng.normal(scale=0.5, size=a.shape)
    assert foscttm(a, a) == 0.0
    assert foscttm(a, noisy, chunk=64) == pytest.approx(_direct(a, noisy), abs=1e-12)
    assert 0 < foscttm(a, noisy) < 0.1
    assert foscttm(a, rng.normal(size=a.shape)) == pytest.approx(0.5, abs=0.05)


def test_shapes_must_pair():
    with pytest.raises(ValueError, match="equal shapes"):
        foscttm(np.zeros((3, 2)), np.zeros((4, 2)))


@pytest.mark.shared_data
def test_pbmc_multiome_rna_and_atac_gene_activity_pair_up(shared_data, tmp_path):
    """The 10x PBMC multiome cells: RNA and scATAC gene activity of the same barcodes."""
    import warnings

    import anndata as ad

    from scfm.atac.activity import gene_activity
    from scfm.atac.genome import load_genome
    from scfm.bench.multiome import gene_space_foscttm

    mudata = pytest.importorskip("mudata", reason="mudata reads .h5mu (comes with scvi-tools)")
    path = shared_data / "atac" / "pbmc_multiome_1000cells.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rna = mudata.read_h5mu(path).mod["rna"]
    rna.var_names = rna.var["gene_ids"].astype(str)
    genome = load_genome(
        "hg38", shared_data / "reference" / "human_gencode_v22_genes_hg38.tsv.gz", name="hg38"
    )
    out = tmp_path / "activity.h5ad"
    gene_activity(
        shared_data / "atac" / "pbmc_multiome_fragments.tsv.gz",
        genome,
        list(rna.obs_names),
        out,
        upstream=2000,
    )
    activity = ad.read_h5ad(out)
    result = gene_space_foscttm(rna, activity, n_pcs=10)
    assert result["n_cells"] == 1000 and result["n_genes"] >= 30
    assert result["random"] == pytest.approx(0.5, abs=0.03)
    # ~27 fragments per cell in this excerpt: weak, but clearly better than chance
    assert result["foscttm"] < 0.35  # measured 0.22 (random pairing: 0.49)
