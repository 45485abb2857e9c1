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


def _batched(sizes: list[int], seed: int = 0) -> ad.AnnData:
    a = _counts(n=sum(sizes), g=200, seed=seed)
    a.obs["batch"] = pd.Categorical(np.repeat([f"p{i:02d}" for i in range(len(sizes))], sizes))
    return a


def test_small_batches_are_pooled_for_the_hvg_fit_and_recorded(tmp_path, caplog):
    from scfm.bench.evalset import POOLED, highly_variable_by_batch

    a = _batched([100, 100, 5, 5, 5, 40])
    mask, record = highly_variable_by_batch(a, 30, "batch", min_batch_cells=50)
    assert mask.sum() == 30
    assert record == {
        "flavor": "seurat_v3",
        "batch_key": "batch",
        "min_batch_cells": 50,
        "pooled_batches": ["p02", "p03", "p04", "p05"],
        "n_groups": 3,  # p00, p01 and the pooled 55 cells
    }
    # the same as scanpy's per-batch fit on those three groups
    import scanpy as sc

    groups = a.obs["batch"].astype(str).where(lambda s: s.isin(["p00", "p01"]), POOLED)
    probe = ad.AnnData(X=a.X, obs=pd.DataFrame({"g": groups.to_numpy()}))
    want = sc.pp.highly_variable_genes(
        probe, flavor="seurat_v3", n_top_genes=30, batch_key="g", inplace=False
    )["highly_variable"].to_numpy()
    np.testing.assert_array_equal(mask, want)
    # pooled group still too small: all cells together, no batch key
    mask, record = highly_variable_by_batch(_batched([100, 100, 5, 5]), 30, "batch")
    assert record["batch_key"] == "none" and record["n_groups"] == 1 and mask.sum() == 30
    # written into the evaluation set's record, and logged
    src = tmp_path / "qc.h5ad"
    _batched([2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 20, 24, 28, 30]).write_h5ad(src)
    with caplog.at_level("WARNING", logger="scfm.bench"):
        prepare_evalset(
            src, tmp_path / "e.h5ad", label_key="cell_type", batch_key="batch", n_hvg=30
        )
    hvg = read_evalset(tmp_path / "e.h5ad", counts=False).uns["scfm_bench"]["hvg"]
    assert hvg["batch_key"] == "none" and len(hvg["pooled_batches"]) == 14
    assert "14 batch(es) have fewer than 50 cells" in caplog.text


def test_a_failing_hvg_fit_names_the_batch_sizes_and_the_option(tmp_path):
    src = tmp_path / "qc.h5ad"
    a = _batched([2, 2, 3, 60])
    a.X[1] = a.X[0]  # batch p00: two identical cells, no gene varies: loess has nothing to fit
    a.write_h5ad(src)
    out = tmp_path / "e.h5ad"
    with pytest.raises(ScfmInputError) as info:
        prepare_evalset(
            src, out, label_key="cell_type", batch_key="batch", n_hvg=30, hvg_min_batch_cells=2
        )
    err = info.value
    assert err.field == "obs['batch']" and "seurat_v3 HVG selection failed" in err.problem
    assert "only 0 gene(s) vary" in err.problem
    assert "cells per batch: p00=2, p01=2, p02=3, p03=60" in err.problem
    assert "hvg_min_batch_cells (now 2)" in err.expected
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["qc.h5ad"]


def test_real_data_with_14_small_batches(tmp_path, shared_data):
    """CellBench cells in 14 batches of 2-30: scanpy's per-batch seurat_v3 fails in loess."""
    import scanpy as sc

    from scfm.bench.evalset import highly_variable

    full = ad.read_h5ad(shared_data / "rna" / "cellbench_5batch.h5ad")
    sizes = [2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 20, 24, 28, 30]
    rows = np.random.default_rng(0).choice(full.n_obs, sum(sizes), replace=False)
    a = full[np.sort(rows)].copy()
    a.obs["batch"] = pd.Categorical(np.repeat([f"patient{i:02d}" for i in range(14)], sizes))
    with pytest.raises(ValueError):  # what bench_data ran into before the fallback
        highly_variable(a, 2000, a.obs["batch"].astype(str))
    src = tmp_path / "qc.h5ad"
    a.write_h5ad(src)
    got = prepare_evalset(src, tmp_path / "e.h5ad", label_key="cell_type", batch_key="batch")
    assert got.var["highly_variable"].sum() == 2000
    assert got.uns["scfm_bench"]["hvg"]["batch_key"] == "none"
    alone = sc.pp.highly_variable_genes(
        ad.AnnData(a.X), flavor="seurat_v3", n_top_genes=2000, inplace=False
    )["highly_variable"].to_numpy()
    np.testing.assert_array_equal(got.var["highly_variable"].to_numpy(), alone)
