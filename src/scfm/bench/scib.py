"""scib metrics of one embedding through scib-metrics' ``Benchmarker`` (not re-implemented).

Bio conservation (isolated labels, KMeans NMI/ARI, silhouette of labels, cLISI; Leiden NMI/ARI
optional) and batch correction (BRAS, iLISI, graph connectivity, PCR comparison; kBET optional)
as in Luecken et al. 2022, with their aggregate 0.6 x bio + 0.4 x batch. Each method is scored in
its own job, so scores are never min-max scaled across methods (that would make one method's
score depend on which others ran).

Two of those metrics, isolated labels and the silhouette of labels, each compute the same
O(cells^2) silhouette of every cell; ``Benchmarker`` would compute it twice (three quarters of
a 100k-cell job). Here it is computed once with scib-metrics' own public ``silhouette_samples``
and both scores are taken from it with scib-metrics' formulas (:func:`silhouette_metrics`);
``Benchmarker`` runs every other metric. The values equal ``Benchmarker``'s own (a test runs
both). jax's persistent compilation cache is on for these jobs (:func:`use_jax_cache`).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

log = logging.getLogger("scfm.bench")

#: The long format of every metric table: one row per (method, metric).
COLUMNS = ["method", "type", "metric", "value"]

#: scib-metrics' type of the aggregate columns (Bio conservation, Batch correction, Total).
AGGREGATE = "Aggregate score"

#: jax's persistent compilation cache of metric jobs, relative to the run's directory (the
#: working directory of Snakemake's jobs); ``SCFM_JAX_CACHE`` overrides it ("" turns it off).
JAX_CACHE = ".snakemake/scfm-jax-cache"

#: scib-metrics' names of the two scores taken from the shared silhouette, and their type.
SILHOUETTE_METRICS = {"isolated_labels": "Isolated labels", "silhouette_label": "Silhouette label"}
BIO = "Bio conservation"


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
    jax_cache: str | Path | None = JAX_CACHE,
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
    jax_cache
        Directory of jax's persistent compilation cache (default :data:`JAX_CACHE`; None: off).
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
    use_jax_cache(os.environ.get("SCFM_JAX_CACHE", jax_cache))
    adata = ad.AnnData(
        obs=obs,
        obsm={key: np.asarray(embedding, np.float32), pre: np.asarray(unintegrated, np.float32)},
    )
    # the two silhouette metrics come from one shared silhouette (silhouette_metrics)
    no_silhouette = dict.fromkeys(SILHOUETTE_METRICS, False)
    bench = Benchmarker(
        adata,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=[key],
        pre_integrated_embedding_obsm_key=pre,
        bio_conservation_metrics=BioConservation(
            nmi_ari_cluster_labels_leiden=leiden, **no_silhouette
        ),
        batch_correction_metrics=BatchCorrection(kbet_per_label=kbet),
        n_jobs=n_jobs or os.cpu_count() or 1,
        progress_bar=True,
    )
    bench.prepare(neighbor_computer=partial(neighbors, n_jobs=n_jobs or os.cpu_count() or 1))
    bench.benchmark()
    shared = silhouette_metrics(adata.obsm[key], adata.obs["label"], adata.obs["batch"])
    table = _with_silhouette_metrics(bench.get_results(min_max_scale=False), key, shared)
    return _long(table, key, method)


def silhouette_metrics(X: np.ndarray, labels: Any, batches: Any) -> dict[str, Any]:
    """Isolated labels and silhouette label (scib-metrics' names) from one silhouette.

    ``scib_metrics.utils.silhouette_samples`` once, then scib-metrics 0.5's formulas: the
    silhouette label is ``(mean(s) + 1) / 2``; the isolated labels score is the mean, over the
    labels present in the fewest batches, of the mean of ``(s + 1) / 2`` over that label's cells.
    Values keep numpy's float32, as scib-metrics returns them.
    """
    from scib_metrics.utils import silhouette_samples

    sil = silhouette_samples(X, labels)
    labels, batches = np.asarray(labels), np.asarray(batches)
    pairs = pd.DataFrame({"label": labels, "batch": batches}).drop_duplicates()
    n_batches = pairs.groupby("label")["batch"].count()
    isolated = n_batches.index[n_batches <= n_batches.min()]
    rescaled = (sil + 1) / 2
    per_label = pd.Series({lab: np.mean(rescaled[labels == lab]) for lab in isolated})
    return {"isolated_labels": per_label.mean(), "silhouette_label": (np.mean(sil) + 1) / 2}


def _with_silhouette_metrics(table: pd.DataFrame, key: str, shared: dict[str, Any]) -> pd.DataFrame:
    """Benchmarker's wide results with the shared-silhouette metrics added.

    They go where Benchmarker puts them (isolated labels first, silhouette label before cLISI),
    and the aggregates (mean per type; Total = 0.6 x bio + 0.4 x batch) are recomputed over all
    metrics on the same values, so they equal Benchmarker's own.
    """
    types = table.loc["Metric Type"]
    metrics = [c for c in table.columns if types[c] != AGGREGATE]
    bio = [c for c in metrics if types[c] == BIO]
    names = list(SILHOUETTE_METRICS.values())
    order = [names[0], *[c for c in bio if c != "cLISI"], names[1]]
    order += [c for c in metrics if c not in order]
    values = {c: table.loc[key, c] for c in metrics}
    values.update({SILHOUETTE_METRICS[m]: v for m, v in shared.items()})
    kind = {c: types[c] for c in metrics} | dict.fromkeys(names, BIO)
    out = pd.DataFrame(
        {key: pd.Series(values, dtype=object)[order], "Metric Type": pd.Series(kind)[order]}
    )
    means = out.groupby("Metric Type")[key].mean()
    if {BIO, "Batch correction"} <= set(means.index):
        means["Total"] = 0.4 * means["Batch correction"] + 0.6 * means[BIO]
    wide = pd.concat([out[key], means]).to_frame(key).T
    wide.loc["Metric Type"] = [*out["Metric Type"], *[AGGREGATE] * len(means)]
    return wide


def use_jax_cache(directory: str | Path | None) -> None:
    """Turn on jax's persistent compilation cache in ``directory`` (None or "": leave it off).

    Each metric job is a new process, and jax compiles its kernels again in each (BRAS alone
    ~6 s per job at any size); with the cache, later jobs load them. Every compiled kernel is
    kept, however small or quick. jax's own ``JAX_COMPILATION_CACHE_DIR`` wins if set.
    """
    if not directory or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(Path(directory).resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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
