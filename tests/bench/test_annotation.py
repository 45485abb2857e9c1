"""Cross-group annotation: separable cell lines score high, noise scores at chance, honest folds."""

from __future__ import annotations

import functools
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from scfm.bench.annotation import annotation_scores
from scfm.errors import ScfmInputError

COLUMNS = ["classifier", "accuracy", "macro_f1", "n_folds", "n_test", "n_train_mean"]


@functools.cache
def _cellbench(path: Path) -> ad.AnnData:
    a = ad.read_h5ad(path)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=30, random_state=0)
    return a


@pytest.fixture
def cellbench(shared_data) -> ad.AnnData:
    """Log-normalised cellbench with 30 PCs (computed once; each test gets a copy)."""
    return _cellbench(shared_data / "rna" / "cellbench_5batch.h5ad").copy()


def _clusters(n_per=30, n_groups=3, n_types=3, d=6, seed=0):
    """Well separated Gaussian clusters, every type in every group."""
    rng = np.random.default_rng(seed)
    types = np.tile(np.repeat([f"t{i}" for i in range(n_types)], n_per), n_groups)
    groups = np.repeat([f"g{i}" for i in range(n_groups)], n_per * n_types)
    x = rng.normal(size=(len(types), d))
    x[:, 0] += 10 * np.array([int(t[1]) for t in types])
    return x, types, groups


@pytest.mark.shared_data
def test_cell_lines_are_easy_across_batches(cellbench):
    res = annotation_scores(
        cellbench.obsm["X_pca"], cellbench.obs["cell_type"], cellbench.obs.batch
    )
    assert list(res.columns) == COLUMNS
    assert list(res["classifier"]) == ["logreg", "knn"]
    # measured: logreg 0.997, knn 1.0 (five cell lines, five batches held out one at a time)
    assert (res["accuracy"] > 0.95).all() and (res["macro_f1"] > 0.95).all()
    assert (res["n_folds"] == 5).all() and (res["n_test"] == cellbench.n_obs).all()
    assert res["n_train_mean"].iloc[0] == pytest.approx(cellbench.n_obs * 4 / 5)


@pytest.mark.shared_data
def test_noise_scores_near_chance(cellbench):
    noise = np.random.default_rng(0).normal(size=(cellbench.n_obs, 30))
    res = annotation_scores(noise, cellbench.obs["cell_type"], cellbench.obs["batch"])
    assert (res["accuracy"] < 0.5).all()  # five classes, the largest is 27% of cells


@pytest.mark.shared_data
def test_sparse_hvg_features_not_densified(cellbench, monkeypatch):
    sc.pp.highly_variable_genes(cellbench, n_top_genes=300)
    x = sp.csr_matrix(cellbench[:, cellbench.var["highly_variable"].to_numpy()].X)

    def refuse(*args, **kwargs):
        raise AssertionError("sparse features were densified")

    monkeypatch.setattr(sp.csr_matrix, "toarray", refuse)
    monkeypatch.setattr(sp.csr_matrix, "todense", refuse)
    res = annotation_scores(x, cellbench.obs["cell_type"], cellbench.obs["batch"])
    assert (res["accuracy"] > 0.95).all()


def test_separable_clusters_score_one():
    x, y, g = _clusters()
    res = annotation_scores(x, y, g, k=5)
    assert res["accuracy"].tolist() == [1.0, 1.0] and res["macro_f1"].tolist() == [1.0, 1.0]
    assert res["n_folds"].tolist() == [3, 3]  # n_splits=5 capped at three groups
    assert res["n_train_mean"].tolist() == [180.0, 180.0]


def test_sparse_and_dense_agree():
    x, y, g = _clusters()
    x = np.abs(x)
    dense = annotation_scores(x, y, g, classifiers=("knn",), k=5)
    sparse = annotation_scores(sp.csr_matrix(x), y, g, classifiers=("knn",), k=5)
    pd.testing.assert_frame_equal(dense, sparse)


def test_label_seen_in_one_group_only_counts_as_errors():
    x, y, g = _clusters()
    y = y.copy()
    novel = (g == "g0") & (y == "t0")  # now a cell type no other group has
    y[novel] = "new"
    res = annotation_scores(x, y, g, k=5).set_index("classifier")
    # when g0 is held out, no training group has "new": those cells must be wrong
    assert (res["accuracy"] <= 1 - novel.sum() / len(y) + 1e-12).all()
    # "new" is only ever predicted for held-out g1/g2 cells, so its F1 is 0: one of four labels
    assert (res["macro_f1"] <= 0.75 + 1e-12).all()


def test_single_class_training_fold():
    x, y, g = _clusters(n_groups=2)
    y = np.where(g == "g0", "only", y)  # g1's training set (g0) holds one label
    res = annotation_scores(x, y, g, k=5)
    assert (res["accuracy"] == 0.0).all()


def test_deterministic():
    x, y, g = _clusters(seed=2)
    x += np.random.default_rng(5).normal(scale=8, size=x.shape)  # make it hard, so it varies
    first = annotation_scores(x, y, g, seed=3)
    pd.testing.assert_frame_equal(first, annotation_scores(x, y, g, seed=3))


def test_errors_name_the_problem():
    x, y, g = _clusters()
    with pytest.raises(ScfmInputError, match="at least two batches/donors"):
        annotation_scores(x, y, np.full(len(y), "one"))
    with pytest.raises(ScfmInputError, match=r"labels: 269 values for 270 cells"):
        annotation_scores(x, y[1:], g)
    with pytest.raises(ScfmInputError, match=r"groups: 2 of 270 missing"):
        annotation_scores(x, y, pd.Series(g).where(np.arange(len(g)) > 1))
    labels = y.astype(object)
    labels[[3, 7, 9]] = None
    with pytest.raises(ScfmInputError, match=r"f\.h5ad: labels: 3 of 270 missing"):
        annotation_scores(x, labels, g, path="f.h5ad")
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ScfmInputError, match="NaN or inf"):
        annotation_scores(bad, y, g)
    with pytest.raises(ScfmInputError, match="NaN or inf"):
        annotation_scores(sp.csr_matrix(bad), y, g)
    with pytest.raises(ValueError, match="unknown classifier"):
        annotation_scores(x, y, g, classifiers=("svm",))
