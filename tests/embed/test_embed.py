"""embed_anndata: shape, determinism, chunking, equality with a direct forward pass, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _models import N_CELLS, RANK

from scfm.embed import embed_anndata, open_model_file
from scfm.errors import ScfmInputError
from scfm.tokenize import tokenize_anndata


@pytest.fixture(params=["transformer_trained", "mlp", "vae"])
def model_file(request: pytest.FixtureRequest, fresh, trained: Path) -> Path:
    if request.param == "transformer_trained":
        return trained
    return fresh(kind=request.param, objectives={"mse": 1.0})


def test_shape_finite_deterministic_and_chunking_invariant(adata, model_file: Path) -> None:
    emb, report = embed_anndata(adata, model_file, progress=False)
    dim = open_model_file(model_file).config.embedding_dim
    assert emb.shape == (N_CELLS, dim) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    assert np.abs(emb).sum() > 0 and not np.allclose(emb, emb[:1])  # cells differ
    again, _ = embed_anndata(adata, model_file, progress=False)
    np.testing.assert_array_equal(emb, again)
    # chunks of 7 rows, batches of 16 cells crossing chunk boundaries: identical
    chunked, report2 = embed_anndata(adata, model_file, chunk_cells=7, progress=False)
    np.testing.assert_array_equal(emb, chunked)
    assert report == report2
    assert report["n_cells"] == N_CELLS and report["dim"] == dim and report["device"] == "cpu"
    assert report["n_genes_missing"] == 0 and report["missing_count_fraction"] == 0.0


def test_equals_model_on_one_collated_batch(adata, trained: Path) -> None:
    """Streaming (chunks of 10, batches of 8) = the model on all cells in one training batch."""
    mf = open_model_file(trained)
    tokens, _ = tokenize_anndata(adata, mf.vocab, mf.tokenizer)
    cells = [tokens.slice(i, i + 1) for i in range(tokens.n_cells)]
    batch = mf.collator(mask_ratio=0.0)([c.genes for c in cells], [c.values for c in cells])
    model = mf.build(torch.device("cpu"))
    with torch.no_grad():
        direct = model(batch)["cell_embedding"].numpy()
    emb, _ = embed_anndata(adata, trained, batch_size=8, chunk_cells=10, progress=False)
    np.testing.assert_allclose(emb, direct, rtol=1e-5, atol=1e-5)


def test_backed_input_equals_in_memory(adata, corpus, trained: Path) -> None:
    backed = ad.read_h5ad(corpus["h5ad"], backed="r")
    try:
        emb, _ = embed_anndata(backed, trained, chunk_cells=32, progress=False)
    finally:
        backed.file.close()
    np.testing.assert_array_equal(emb, embed_anndata(adata, trained, progress=False)[0])


def test_dense_integer_valued_floats_are_counts(adata, trained: Path) -> None:
    dense = ad.AnnData(X=adata.X.toarray().astype(np.float32), obs=adata.obs, var=adata.var)
    np.testing.assert_allclose(
        embed_anndata(dense, trained, progress=False)[0],
        embed_anndata(adata, trained, progress=False)[0],
        atol=1e-6,
    )


def test_missing_genes_are_reported_and_warned(
    adata, trained: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = adata.var_names.tolist()
    names[:3] = ["NOTAGENE1", "NOTAGENE2", "NOTAGENE3"]
    adata.var_names = names
    per_gene = np.asarray(adata.X.sum(axis=0)).ravel()
    with caplog.at_level(logging.WARNING, logger="scfm.embed"):
        emb, report = embed_anndata(adata, trained, progress=False)
    assert report["n_genes_missing"] == int((per_gene[:3] > 0).sum()) > 0
    assert report["missing_count_fraction"] == pytest.approx(per_gene[:3].sum() / per_gene.sum())
    assert set(report["examples"]) <= {"NOTAGENE1", "NOTAGENE2", "NOTAGENE3"}
    assert "not in the model's vocabulary" in caplog.text and "NOTAGENE" in caplog.text
    assert np.isfinite(emb).all()


def test_non_integer_counts_are_rejected(adata, trained: Path) -> None:
    X = adata.X.astype(np.float32).tocsr()
    X.data[5] += 0.5
    adata.X = X
    with pytest.raises(ScfmInputError, match="non-integer value") as exc:
        embed_anndata(adata, trained, progress=False)
    assert exc.value.field == "X"


def test_no_gene_overlap_is_rejected(adata, trained: Path) -> None:
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    with pytest.raises(ScfmInputError, match="none of the 60 genes") as exc:
        embed_anndata(adata, trained, progress=False)
    assert exc.value.field == "var_names"


def test_too_many_counts_on_missing_genes_are_rejected(adata, trained: Path) -> None:
    per_gene = np.asarray(adata.X.sum(axis=0)).ravel()
    top = set(np.argsort(per_gene)[::-1][:20].tolist())  # the 20 highest carry > half
    assert per_gene[list(top)].sum() > 0.5 * per_gene.sum()
    adata.var_names = [f"OTHER{i}" if i in top else g for i, g in enumerate(adata.var_names)]
    with pytest.raises(ScfmInputError, match="missing from the model's vocabulary"):
        embed_anndata(adata, trained, progress=False)


def test_not_a_model_file(adata, corpus, tmp_path: Path) -> None:
    with pytest.raises(ScfmInputError, match=r"model\.pt written by scfm") as exc:
        embed_anndata(adata, corpus["h5ad"], progress=False)
    assert exc.value.path == str(corpus["h5ad"])
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ScfmInputError, match="'something-else'"):
        embed_anndata(adata, tmp_path / "other.pt", progress=False)
    with pytest.raises(ScfmInputError, match="does not exist"):
        embed_anndata(adata, tmp_path / "missing.pt", progress=False)


def test_rank_models_need_the_corpus_gene_stats(adata, corpus, fresh, tmp_path: Path) -> None:
    path = fresh(tokenizer=RANK, objectives={"ce": 1.0})
    with pytest.raises(ScfmInputError, match="gene_stats"):
        embed_anndata(adata, path, progress=False)
    emb, _ = embed_anndata(adata, path, gene_stats=corpus["gene_stats"], progress=False)
    assert emb.shape == (N_CELLS, 32) and np.isfinite(emb).all()
    wrong = tmp_path / "wrong_stats.tsv"
    text = corpus["gene_stats"].read_text().replace("SIMG00000", "SIMGXXXXX")
    wrong.write_text(text)
    with pytest.raises(ScfmInputError, match="do not match the model's vocabulary"):
        embed_anndata(adata, path, gene_stats=wrong, progress=False)


def test_cells_keep_their_embedding_when_rows_are_reordered(adata, trained: Path) -> None:
    emb, _ = embed_anndata(adata, trained, progress=False)
    order = np.random.default_rng(0).permutation(adata.n_obs)
    shuffled, _ = embed_anndata(adata[order].copy(), trained, batch_size=N_CELLS, progress=False)
    np.testing.assert_allclose(shuffled, emb[order], rtol=1e-5, atol=1e-5)


def test_empty_sparse_rows_are_embedded(adata, trained: Path) -> None:
    X = adata.X.tolil()
    X[3, :] = 0
    adata.X = sp.csr_matrix(X)
    emb, _ = embed_anndata(adata, trained, progress=False)
    assert np.isfinite(emb).all()
