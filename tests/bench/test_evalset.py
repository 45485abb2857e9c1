"""Evaluation sets: keys checked with clear errors, seeded subsets, HVGs, embedding files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm.bench.evalset import prepare_evalset, read_evalset
from scfm.errors import ScfmInputError
from scfm.io.embedding import read_embedding, write_embedding
from scfm.io.h5ad import provenance


def _counts(n=300, g=60, n_batches=3, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n)
    means = rng.gamma(2, 2, (3, g))
    X = rng.poisson(means[types]).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": [f"t{t}" for t in types],
            "batch": [f"b{i % n_batches}" for i in range(n)],
            "donor": [f"d{i % 4}" for i in range(n)],
        },
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(
        X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)])
    )


def test_prepare_writes_counts_keys_and_hvgs(tmp_path):
    src = tmp_path / "qc.h5ad"
    _counts().write_h5ad(src)
    out = tmp_path / "bench" / "data.h5ad"
    prepare_evalset(src, out, label_key="cell_type", batch_key="batch", split_key="donor", n_hvg=20)
    got = read_evalset(out)
    assert got.shape == (300, 60) and sp.issparse(got.X)
    assert got.var["highly_variable"].sum() == 20
    assert list(got.obs["scfm_split"].cat.categories) == ["d0", "d1", "d2", "d3"]
    assert set(got.obs["scfm_batch"]) == {"b0", "b1", "b2"}
    assert got.uns["scfm_bench"]["split_key"] == "donor"
    np.testing.assert_array_equal(got.X.toarray(), _counts().X.toarray())  # still raw counts
    light = read_evalset(out, counts=False)  # what the metric jobs read: no matrix
    assert light.X is None and light.obs.equals(got.obs) and light.var_names.equals(got.var_names)


def test_subset_is_seeded_and_drops_cells_without_batch(tmp_path):
    adata = _counts()
    adata.obs.loc[adata.obs_names[:10], "batch"] = np.nan
    src = tmp_path / "qc.h5ad"
    adata.write_h5ad(src)
    kw = {"label_key": "cell_type", "batch_key": "batch", "max_cells": 100, "seed": 3}
    a = prepare_evalset(src, tmp_path / "a.h5ad", **kw)
    b = prepare_evalset(src, tmp_path / "b.h5ad", **kw)
    c = prepare_evalset(src, tmp_path / "c.h5ad", **{**kw, "seed": 4})
    assert a.obs_names.equals(b.obs_names) and not a.obs_names.equals(c.obs_names)
    assert a.n_obs <= 100 and not a.obs["batch"].isna().any()


def test_unlabelled_cells_stay_missing_and_label_metrics_exclude_them(tmp_path, caplog):
    """NaN and 'unknown' labels: kept as missing, counted, never scored as a cell type."""
    from scfm.bench.jobs import EXCLUDED, annotation_job

    adata = _counts()
    adata.obs.loc[adata.obs_names[:10], "cell_type"] = np.nan
    adata.obs.loc[adata.obs_names[10:15], "cell_type"] = "unknown"
    src = tmp_path / "qc.h5ad"
    adata.write_h5ad(src)
    out = tmp_path / "data.h5ad"
    prepare_evalset(src, out, label_key="cell_type", batch_key="batch", n_hvg=20)
    got = read_evalset(out, counts=False)
    assert got.n_obs == 300  # kept: embeddings and label-free metrics use them
    assert got.obs["scfm_label"].isna().sum() == 15
    assert set(got.obs["scfm_label"].cat.categories) == {"t0", "t1", "t2"}
    assert got.uns["scfm_bench"]["n_unlabelled"] == 15
    emb_path = tmp_path / "emb.h5ad"
    rng = np.random.default_rng(0)
    write_embedding(emb_path, got.obs, "X_r", rng.normal(size=(300, 4)))
    with caplog.at_level("INFO", logger="scfm.bench"):
        table = annotation_job(out, emb_path, tmp_path / "ann.tsv", method="r", n_splits=3)
    assert (table[EXCLUDED] == 15).all()
    written = pd.read_csv(tmp_path / "ann.tsv", sep="\t")
    assert (written[EXCLUDED] == 15).all()
    assert "annotation: 15 of 300 cells have no label and are excluded" in caplog.text


def test_missing_key_names_the_column_and_writes_nothing(tmp_path):
    src = tmp_path / "qc.h5ad"
    _counts().write_h5ad(src)
    out = tmp_path / "data.h5ad"
    with pytest.raises(ScfmInputError, match=r"obs\['celltype'\].*label_key.*cell_type, batch"):
        prepare_evalset(src, out, label_key="celltype", batch_key="batch")
    with pytest.raises(ScfmInputError, match=r"obs\['sample'\].*batch_key"):
        prepare_evalset(src, out, label_key="cell_type", batch_key="sample")
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_one_batch_is_an_error_only_for_metrics_that_need_groups(tmp_path):
    src = tmp_path / "qc.h5ad"
    _counts(n_batches=1).write_h5ad(src)
    with pytest.raises(ScfmInputError, match=r"one group only.*'scib'"):
        prepare_evalset(src, tmp_path / "a.h5ad", label_key="cell_type", batch_key="batch")
    ok = prepare_evalset(
        src, tmp_path / "b.h5ad", label_key="cell_type", batch_key="batch", metrics=["scgraph"]
    )
    assert ok.n_obs == 300


def test_embedding_files_check_cells_and_values(tmp_path):
    obs = pd.DataFrame(index=["a", "b", "c"])
    path = tmp_path / "e.h5ad"
    write_embedding(path, obs, "X_m", np.eye(3), {"method": "m"}, stage="baseline")
    np.testing.assert_array_equal(read_embedding(path, obs_names=obs.index), np.eye(3))
    assert provenance(path)["baseline"] == {"key": "X_m", "method": "m"}
    with pytest.raises(ScfmInputError, match="cells differ from the evaluation set"):
        read_embedding(path, obs_names=pd.Index(["a", "c", "b"]))
    with pytest.raises(ScfmInputError, match=r"obsm\['X_other'\]: no such embedding"):
        read_embedding(path, "X_other")
    with pytest.raises(ValueError, match="NaN"):
        write_embedding(tmp_path / "nan.h5ad", obs, "X_m", np.full((3, 2), np.nan))
    assert not (tmp_path / "nan.h5ad").exists()
