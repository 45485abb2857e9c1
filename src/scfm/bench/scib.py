"""scib metrics of one embedding through scib-metrics' ``Benchmarker`` (not re-implemented).

Bio conservation (isolated labels, KMeans NMI/ARI, silhouette of labels, cLISI; Leiden NMI/ARI
optional) and batch correction (BRAS, iLISI, graph connectivity, PCR comparison; kBET optional)
as in Luecken et al. 2022, with their aggregate 0.6 x bio + 0.4 x batch. Each method is scored in
its own job, so scores are never min-max scaled across methods (that would make one method's
score depend on which others ran).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

log = logging.getLogger("scfm.bench")

#: The long format of every metric table: one row per (method, metric).
COLUMNS = ["method", "type", "metric", "value"]


def scib_scores(
    embedding: np.ndarray,
    labels: np.ndarray,
    batches: np.ndarray,
    unintegrated: np.ndarray,
    *,
    method: str = "embedding",
    kbet: bool = False,
    leiden: bool = False,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """scib-metrics scores of one embedding, long format (see :data:`COLUMNS`).

    Parameters
    ----------
    embedding
        Cells x dimensions.
    labels, batches
        Cell types and batches, one per cell.
    unintegrated
        The unintegrated embedding (the pca baseline) for the PCR comparison.
    method
        The method's name in the output rows.
    kbet, leiden
        Also run kBET per label / Leiden NMI and ARI (both slow on large data).
    n_jobs
        Threads of the neighbour search (default: all cores).
    """
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    n = embedding.shape[0]
    if not (len(labels) == len(batches) == unintegrated.shape[0] == n):
        raise ValueError(
            f"{n} embedded cells but {len(labels)} labels, {len(batches)} batches and "
            f"{unintegrated.shape[0]} unintegrated rows"
        )
    key, pre = "X_emb", "X_unintegrated"
    obs = pd.DataFrame(
        {"label": np.asarray(labels, dtype=str), "batch": np.asarray(batches, dtype=str)}
    )
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(
        obs=obs,
        obsm={key: np.asarray(embedding, np.float32), pre: np.asarray(unintegrated, np.float32)},
    )
    bench = Benchmarker(
        adata,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=[key],
        pre_integrated_embedding_obsm_key=pre,
        bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=leiden),
        batch_correction_metrics=BatchCorrection(kbet_per_label=kbet),
        n_jobs=n_jobs or os.cpu_count() or 1,
        progress_bar=True,
    )
    bench.prepare(neighbor_computer=partial(neighbors, n_jobs=n_jobs or os.cpu_count() or 1))
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    return _long(table, key, method)


#: Exact neighbours while cells^2 x dimensions stays below this (about a minute on 2 cores).
EXACT_KNN_WORK = 1e12


def neighbors(X: np.ndarray, n_neighbors: int, *, n_jobs: int = 1) -> Any:
    """The k nearest neighbours for scib-metrics: exact (scikit-learn) or pynndescent on big data.

    pynndescent, scib-metrics' default, spends ~35 s compiling its numba kernels in every new
    process; each metric job is a new process, so below :data:`EXACT_KNN_WORK` the exact search
    is both faster and free of approximation. Each cell is its own first neighbour, as
    scib-metrics expects.
    """
    from scib_metrics.nearest_neighbors import NeighborsResults, pynndescent
    from sklearn.neighbors import NearestNeighbors

    n, d = X.shape
    k = min(n_neighbors, n)
    if float(n) * n * d > EXACT_KNN_WORK:
        log.info("neighbours: pynndescent (%d cells x %d dims)", n, d)
        return pynndescent(X, n_neighbors=k, random_state=0, n_jobs=n_jobs)
    log.info("neighbours: exact (%d cells x %d dims)", n, d)
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=n_jobs).fit(X)
    distances, indices = nn.kneighbors(X)
    return NeighborsResults(indices=indices, distances=distances.astype(np.float32))


def _long(table: pd.DataFrame, key: str, method: str) -> pd.DataFrame:
    """Benchmarker's wide results (embeddings x metrics + a 'Metric Type' row) as long rows."""
    types = table.loc["Metric Type"]
    values = table.loc[key]
    rows: list[dict[str, Any]] = [
        {"method": method, "type": str(types[m]), "metric": str(m), "value": float(values[m])}
        for m in table.columns
    ]
    return pd.DataFrame(rows, columns=COLUMNS)
