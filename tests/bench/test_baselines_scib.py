"""Baselines and scib metrics on real data: the metrics move the right way.

cellbench_5batch: 5 lung-cancer cell lines measured by 2 protocols on 3 plates (5 batches). PCA
of log-normalised HVGs must keep the cell lines apart (high bio conservation), Gaussian noise must
not, and an embedding that encodes the batch must score poorly on batch correction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scfm.bench.baselines import baseline_embedding, hvg_embedding, pca_embedding, scvi_embedding
from scfm.bench.scib import scib_scores
from scfm.io.embedding import read_embedding
from scfm.io.h5ad import provenance

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def scores(cellbench) -> dict[str, pd.Series]:
    _, adata = cellbench
    pca = pca_embedding(adata, n_pcs=30)
    rng = np.random.default_rng(0)
    batches = adata.obs["scfm_batch"].cat.codes.to_numpy()
    # one-hot batch, scaled, plus a little noise: cells cluster by batch, not by cell line
    batchy = 5.0 * np.eye(batches.max() + 1)[batches] + rng.normal(0, 0.3, (adata.n_obs, 5))
    embeddings = {"pca": pca, "random": rng.normal(size=(adata.n_obs, 30)), "batch": batchy}
    out = {}
    for name, emb in embeddings.items():
        table = scib_scores(
            emb, adata.obs["scfm_label"], adata.obs["scfm_batch"], pca, method=name, n_jobs=2
        )
        assert list(table.columns) == ["method", "type", "metric", "value"]
        out[name] = table.set_index("metric")["value"]
    return out


def test_pca_conserves_biology_and_noise_does_not(scores):
    assert scores["pca"]["Bio conservation"] > 0.75
    assert scores["random"]["Bio conservation"] < 0.45
    assert scores["pca"]["Bio conservation"] > scores["random"]["Bio conservation"] + 0.3
    assert scores["pca"]["KMeans ARI"] > 0.8 > 0.1 > scores["random"]["KMeans ARI"]


def test_batch_encoding_embedding_scores_poorly_on_batch_correction(scores):
    assert scores["batch"]["Batch correction"] < scores["pca"]["Batch correction"] - 0.15
    assert scores["batch"]["iLISI"] < 0.1 and scores["batch"]["Graph connectivity"] < 0.6
    assert scores["random"]["iLISI"] > 0.5  # noise mixes batches perfectly: why bio is needed too


def test_aggregates_are_scib_weights_not_rescaled(scores):
    for s in scores.values():
        assert s["Total"] == pytest.approx(
            0.6 * s["Bio conservation"] + 0.4 * s["Batch correction"]
        )
    # the pca embedding is its own unintegrated reference: no batch variance removed
    assert scores["pca"]["PCR comparison"] == pytest.approx(0.0, abs=1e-6)


def test_baselines_shapes_and_files(cellbench, tmp_path):
    path, adata = cellbench
    hvg = hvg_embedding(adata)
    assert hvg.shape == (adata.n_obs, 1000) and hvg.dtype == np.float32 and hvg.max() < 15
    out = tmp_path / "random.h5ad"
    a = baseline_embedding("random", path, out, {"seed": 1, "dim": 8})
    b = read_embedding(out, "X_random", obs_names=adata.obs_names)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (adata.n_obs, 8)
    assert not np.array_equal(
        a, baseline_embedding("random", path, tmp_path / "r2.h5ad", {"seed": 2})
    )
    assert provenance(out)["baseline"]["params"] == {"seed": 1, "dim": 8}
    with pytest.raises(ValueError, match="unknown baseline 'umap'"):
        baseline_embedding("umap", path, tmp_path / "x.h5ad")


def test_scvi_removes_batch_and_keeps_cell_lines(cellbench):
    pytest.importorskip("scvi", reason="scvi-tools is the optional [scvi] extra")
    _, adata = cellbench
    z = scvi_embedding(adata, max_epochs=40, n_latent=8, accelerator="cpu")
    assert z.shape == (adata.n_obs, 8) and np.isfinite(z).all()
    # a cell line's cells sit nearer each other than other lines' (centroid distance ratio)
    labels = adata.obs["scfm_label"].to_numpy()
    cent = np.stack([z[labels == t].mean(0) for t in np.unique(labels)])
    within = np.mean(
        [
            np.linalg.norm(z[labels == t] - c, axis=1).mean()
            for t, c in zip(np.unique(labels), cent, strict=True)
        ]
    )
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(cent) for b in cent[i + 1 :]])
    assert between > 1.5 * within
