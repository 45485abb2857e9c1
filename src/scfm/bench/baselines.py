"""Baseline embeddings: the simple methods every foundation model is scored next to.

- ``pca``: PCA of the log-normalised highly variable genes (scanpy), the standard first step of
  every single-cell analysis and the unintegrated reference of scib's PCR comparison.
- ``hvg``: the log-normalised highly variable genes themselves (no model at all).
- ``scvi``: scVI (Lopez et al. 2018, scvi-tools) on the HVG counts with the batch as covariate:
  a small VAE that corrects batches, the baseline integration method.
- ``random``: seeded Gaussian noise, the negative control (batch-mixing metrics reward it;
  scGraph and annotation rank it last).
- ``lsi``: TF-IDF + truncated SVD, the scATAC baseline (works on any counts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scanpy as sc

from scfm.bench.evalset import log_normalized, read_evalset
from scfm.io.embedding import write_embedding
from scfm.paths import check_outputs_not_inputs
from scfm.provenance import versions

log = logging.getLogger("scfm.bench")


def pca_embedding(adata: ad.AnnData, *, n_pcs: int = 50, seed: int = 0, **_: Any) -> np.ndarray:
    """PCA (scanpy, arpack) of log-normalised HVGs, ``n_pcs`` components."""
    X = log_normalized(adata, genes=adata.var["highly_variable"].to_numpy())
    n_pcs = min(n_pcs, min(X.shape) - 1)
    return sc.pp.pca(X, n_comps=n_pcs, svd_solver="arpack", random_state=seed)


def hvg_embedding(adata: ad.AnnData, **_: Any) -> np.ndarray:
    """The log-normalised HVG matrix, dense float32 (cells x n_hvg)."""
    X = log_normalized(adata, genes=adata.var["highly_variable"].to_numpy())
    return X.toarray().astype(np.float32)


def random_embedding(adata: ad.AnnData, *, seed: int = 0, dim: int = 32, **_: Any) -> np.ndarray:
    """Standard normal noise, seeded: carries no information about cells."""
    return np.random.default_rng(seed).standard_normal((adata.n_obs, dim)).astype(np.float32)


def scvi_embedding(
    adata: ad.AnnData,
    *,
    seed: int = 0,
    n_latent: int = 10,
    n_layers: int = 1,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    **_: Any,
) -> np.ndarray:
    """The scVI latent means on the HVG counts, batch (``obs["scfm_batch"]``) as covariate."""
    try:
        import scvi
    except ImportError as exc:  # an optional extra: say how to get it
        raise RuntimeError(
            "the scvi baseline needs scvi-tools: pip install 'scfm[scvi]' "
            "(or remove 'scvi' from benchmarks.<name>.methods)"
        ) from exc
    scvi.settings.seed = seed
    counts = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    counts.obs = counts.obs[["scfm_batch"]].copy()
    scvi.model.SCVI.setup_anndata(counts, batch_key="scfm_batch")
    model = scvi.model.SCVI(counts, n_latent=n_latent, n_layers=n_layers)
    model.train(
        max_epochs=max_epochs,
        accelerator=accelerator,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    history = model.history.get("elbo_train")
    if history is not None and len(history):
        log.info("scVI: %d epochs, final ELBO %.2f", len(history), float(history.iloc[-1, 0]))
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def lsi_embedding(
    adata: ad.AnnData, *, n_pcs: int = 50, seed: int = 0, drop_first: bool = True, **_: Any
) -> np.ndarray:
    """Latent semantic indexing, the standard scATAC baseline: TF-IDF, then truncated SVD.

    TF-IDF as Signac's default (Stuart et al. 2021): ``log1p(tf * idf * 1e4)`` with
    ``tf = count / cell total`` and ``idf = n_cells / n_cells with the feature``, on all features;
    scikit-learn's randomized truncated SVD (seeded). The first component follows sequencing
    depth in scATAC and is dropped (``drop_first``), as in Signac and ArchR.
    """
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    X = sp.csr_matrix(adata.X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    totals[totals == 0] = 1
    n_with = np.asarray((X > 0).sum(axis=0)).ravel()
    idf = X.shape[0] / np.maximum(n_with, 1)
    tfidf = sp.diags(1.0 / totals) @ X @ sp.diags(idf)
    tfidf.data = np.log1p(tfidf.data * 1e4)
    k = min(n_pcs + int(drop_first), min(X.shape) - 1)
    z = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed).fit_transform(tfidf)
    return np.asarray(z[:, int(drop_first) :], dtype=np.float32)


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "lsi": lsi_embedding,
    "pca": pca_embedding,
    "hvg": hvg_embedding,
    "scvi": scvi_embedding,
    "random": random_embedding,
}


def baseline_embedding(
    method: str, evalset: str | Path, output: str | Path, params: dict[str, Any] | None = None
) -> np.ndarray:
    """Compute one baseline on an evaluation set and write ``obsm["X_<method>"]``."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; expected one of {', '.join(BASELINES)}")
    check_outputs_not_inputs({"output": output}, {"evalset": evalset})
    adata = read_evalset(evalset)
    params = dict(params or {})
    log.info("%s on %d cells x %d HVGs", method, adata.n_obs, adata.var["highly_variable"].sum())
    emb = BASELINES[method](adata, **params)
    write_embedding(
        output,
        adata.obs[["scfm_label", "scfm_batch", "scfm_split"]],
        f"X_{method}",
        emb,
        {"method": method, "evalset": str(evalset), "params": params, "versions": versions()},
        stage="baseline",
    )
    log.info("%s: embedding %d x %d written to %s", method, *emb.shape, output)
    return emb
