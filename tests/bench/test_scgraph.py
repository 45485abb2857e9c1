"""scGraph: equal to the authors' scgraph-eval on real data, sensible direction, clear errors."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy.stats import pearsonr, spearmanr

from scfm.bench.scgraph import SCORES, scgraph_reference, scgraph_scores
from scfm.errors import ScfmInputError

RNA = "rna/{}.h5ad"


def _lognorm(path) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Observation names are not unique")
        a = ad.read_h5ad(path)
    a.obs_names_make_unique()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def _add_embeddings(a: ad.AnnData) -> None:
    """PCA of all cells, its first two PCs, and Gaussian noise, all float64.

    float64 because scgraph-eval averages an embedding in its own dtype: on float32 input its
    centroids carry float32 rounding and the scores differ from ours by up to ~7e-7.
    """
    pcs = sc.pp.pca(a.X, n_comps=20, random_state=0).astype(np.float64)
    a.obsm["X_pca"] = pcs
    a.obsm["X_2d"] = pcs[:, :2].copy()
    a.obsm["X_rand"] = np.random.default_rng(0).normal(size=(a.n_obs, 8))


def _never_together(a: ad.AnnData) -> ad.AnnData:
    """cellbench cut so that A549 and H838 share no batch and HCC827 misses one batch."""
    ct, b = a.obs["cell_type"].astype(str), a.obs["batch"].astype(str)
    drop = (
        ((ct == "A549") & (b != "sc_celseq2_5cl_p1"))
        | ((ct == "H838") & (b != "sc_celseq2_5cl_p2"))
        | ((ct == "HCC827") & (b == "sc_dropseq"))
    )
    return a[~drop.to_numpy()].copy()


# (file, min_batch_cells, min_type_cells, cut). cellbench lacks A549 and H838 in two batches.
CASES = {
    "cellbench": ("cellbench_5batch", 100, 10, None),
    "cellbench_skip_batch_and_type": ("cellbench_5batch", 150, 150, None),  # p1 149, H838 137
    "cellbench_pair_never_together": ("cellbench_5batch", 100, 10, _never_together),
    "baron": ("baron_pancreas_350", 100, 10, None),
}


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore::FutureWarning")  # scgraph-eval's pandas/scanpy calls
@pytest.mark.parametrize("case", list(CASES))
def test_equals_scgraph_eval(shared_data, tmp_path, case):
    from scgraph import scGraph

    name, min_batch, min_type, cut = CASES[case]
    a = _lognorm(shared_data / RNA.format(name))
    if cut is not None:
        a = cut(a)
    _add_embeddings(a)
    a.write_h5ad(tmp_path / "a.h5ad")
    theirs = scGraph(
        str(tmp_path / "a.h5ad"),
        "batch",
        "cell_type",
        only_umap=False,
        thres_batch=min_batch,
        thres_celltype=min_type,
    )
    their_scores = theirs.main()

    ref = scgraph_reference(
        a, "cell_type", "batch", min_batch_cells=min_batch, min_type_cells=min_type
    )
    their_ref = theirs.concensus_df_pca.loc[ref.index, ref.columns]
    assert sorted(theirs.concensus_df_pca.columns) == list(ref.columns)
    np.testing.assert_array_equal(their_ref.isna().to_numpy(), ref.isna().to_numpy())
    np.testing.assert_allclose(ref.to_numpy(), their_ref.to_numpy(), atol=1e-6, equal_nan=True)
    if case == "cellbench_pair_never_together":
        assert np.isnan(ref.loc["A549", "H838"])
    if case == "cellbench_skip_batch_and_type":
        assert "H838" not in ref.columns

    assert sorted(their_scores.index) == ["X_2d", "X_pca", "X_rand"]
    for key in their_scores.index:
        ours, table = scgraph_scores(a.obsm[key], a.obs["cell_type"], ref)
        assert list(table.index) == list(ref.columns)
        for score in SCORES:
            assert ours[score] == pytest.approx(their_scores.loc[key, score], abs=1e-6), (
                key,
                score,
            )


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["cellbench_5batch", "baron_pancreas_350"])
def test_pca_beats_random(shared_data, name):
    a = _lognorm(shared_data / RNA.format(name))
    _add_embeddings(a)
    ref = scgraph_reference(a, "cell_type", "batch")
    pca, _ = scgraph_scores(a.obsm["X_pca"], a.obs["cell_type"], ref)
    # Five cell types make one random draw noisy: compare with the mean of ten.
    rng = np.random.default_rng(1)
    rand = pd.DataFrame(
        [
            scgraph_scores(rng.normal(size=(a.n_obs, 20)), a.obs["cell_type"], ref)[0]
            for _ in range(10)
        ]
    ).mean()
    assert pca["Corr-Weighted"] > rand["Corr-Weighted"] + 0.3
    assert pca["Rank-PCA"] > rand["Rank-PCA"] + 0.15
    assert pca["Corr-PCA"] > rand["Corr-PCA"]


@pytest.mark.shared_data
def test_caller_adata_untouched(shared_data):
    a = _lognorm(shared_data / RNA.format("cellbench_5batch"))
    before = a.copy()
    scgraph_reference(a, "cell_type", "batch")
    assert list(a.var.columns) == list(before.var.columns)
    assert list(a.obsm) == list(before.obsm) and set(a.uns) == set(before.uns)
    assert (a.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, before.obs)


# --- synthetic data: no ../shared needed ---------------------------------------------------


def _synthetic(n_per=40, n_batches=3, n_types=4, n_genes=300, seed=0) -> ad.AnnData:
    """Log-normalised Poisson counts; each cell type raises its own block of genes."""
    rng = np.random.default_rng(seed)
    n = n_per * n_batches * n_types
    types = np.tile(np.repeat([f"t{i}" for i in range(n_types)], n_per), n_batches)
    batches = np.repeat([f"b{i}" for i in range(n_batches)], n_per * n_types)
    rate = np.full((n, n_genes), 0.5)
    block = n_genes // n_types
    for i in range(n_types):
        rate[types == f"t{i}", i * block : (i + 1) * block] += 2.0 + i  # unequal distances
    a = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(rate).astype(np.float32)),
        obs=pd.DataFrame({"cell_type": types, "batch": batches}, index=[f"c{i}" for i in range(n)]),
    )
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


@pytest.fixture(scope="module")
def synth():
    a = _synthetic()
    return a, scgraph_reference(a, "cell_type", "batch", n_hvg=200, min_batch_cells=50)


def test_synthetic_reference_shape(synth):
    _, ref = synth
    assert list(ref.index) == list(ref.columns) == ["t0", "t1", "t2", "t3"]
    np.testing.assert_array_equal(np.diag(ref), 0.0)
    np.testing.assert_allclose(ref.max(axis=0), 1.0)


def test_scores_match_scipy_per_cell_type(synth):
    a, ref = synth
    emb = np.random.default_rng(3).normal(size=(a.n_obs, 5))
    emb[:, 0] += a.obs["cell_type"].str[1].astype(int).to_numpy()
    ref = ref.copy()
    ref.loc["t0", "t3"] = np.nan  # a pair of cell types with no shared batch
    _, table = scgraph_scores(emb, a.obs["cell_type"], ref)
    # the embedding graph, built independently
    labels = a.obs["cell_type"].to_numpy()
    types = list(ref.columns)
    from scipy.stats import trim_mean

    cent = np.array([trim_mean(emb[labels == t], 0.05, axis=0) for t in types])
    dist = np.linalg.norm(cent[:, None] - cent[None], axis=-1)
    graph = dist / dist.max(axis=0)
    for j, t in enumerate(types):
        ok = ~np.isnan(ref[t].to_numpy())
        e, r = graph[ok, j], ref[t].to_numpy()[ok]
        assert table.loc[t, "Rank-PCA"] == pytest.approx(spearmanr(e, r).statistic)
        assert table.loc[t, "Corr-PCA"] == pytest.approx(pearsonr(e, r).statistic)
        w = np.where(r > 0, 1 / np.where(r > 0, r, 1), 0)
        w /= w.sum()
        de, dr = e - w @ e, r - w @ r
        expected = (w @ (de * dr)) / np.sqrt((w @ de**2) * (w @ dr**2))
        assert table.loc[t, "Corr-Weighted"] == pytest.approx(expected)


def test_true_structure_scores_high(synth):
    a, ref = synth
    truth = sc.pp.pca(a.X, n_comps=5, random_state=0)
    scores, table = scgraph_scores(truth, a.obs["cell_type"], ref)
    assert scores["Corr-PCA"] > 0.95 and scores["Rank-PCA"] > 0.7
    assert list(table.columns) == list(SCORES)
    assert scores["Rank-PCA"] == pytest.approx(table["Rank-PCA"].mean())


def test_reference_decides_cell_types(synth):
    a, ref = synth
    emb = np.random.default_rng(4).normal(size=(a.n_obs, 3))
    labels = a.obs["cell_type"].astype(str).to_numpy().copy()
    base, _ = scgraph_scores(emb, labels, ref)
    extra = np.vstack([emb, np.full((7, 3), 50.0)])  # cells of a type the reference lacks
    got, table = scgraph_scores(extra, [*labels, *["other"] * 7], ref)
    assert got == pytest.approx(base)
    assert "other" not in table.index


def test_errors_name_the_problem(synth):
    a, ref = synth
    with pytest.raises(ScfmInputError, match=r"obs/donor.*no such column.*cell_type"):
        scgraph_reference(a, "cell_type", "donor", path="x.h5ad")
    with pytest.raises(ScfmInputError, match=r"x\.h5ad.*min_batch_cells=500.*b0=160"):
        scgraph_reference(a, "cell_type", "batch", min_batch_cells=500, path="x.h5ad")
    with pytest.raises(ScfmInputError, match=r"0 cell type\(s\) with >= 1000 cells"):
        scgraph_reference(a, "cell_type", "batch", min_type_cells=1000)
    emb = np.zeros((a.n_obs, 2))
    with pytest.raises(ScfmInputError, match=r"479 rows but 480 labels"):
        scgraph_scores(emb[1:], a.obs["cell_type"], ref)
    emb[5, 1] = np.inf
    with pytest.raises(ScfmInputError, match=r"1 row\(s\) contain NaN or inf"):
        scgraph_scores(emb, a.obs["cell_type"], ref)
    with pytest.raises(ScfmInputError, match=r"2 cell type\(s\) shared"):
        scgraph_scores(np.zeros((3, 2)), ["t0", "t1", "t1"], ref)
