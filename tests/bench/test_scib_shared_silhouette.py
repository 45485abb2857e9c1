"""scib_scores computes the full-data silhouette once for two metrics: its scores must equal
scib-metrics' own Benchmarker (which computes it twice) on the same embedding."""

from __future__ import annotations

import os
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm.bench import scib
from scfm.bench.scib import neighbors, scib_scores


def _data(seed: int, n: int = 700):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["T", "B", "NK", "Mono", "rare"], n, p=[0.3, 0.25, 0.2, 0.2, 0.05])
    batches = rng.choice(["b1", "b2", "b3"], n)
    batches[labels == "rare"] = "b2"  # present in one batch: the isolated label
    batches[labels == "NK"] = np.where(rng.random((labels == "NK").sum()) < 0.5, "b1", "b3")
    centres = {lab: rng.normal(0, 3, 12) for lab in np.unique(labels)}
    shift = {b: rng.normal(0, 1, 12) for b in np.unique(batches)}
    emb = np.stack([centres[lab] + shift[b] for lab, b in zip(labels, batches, strict=True)])
    emb = emb + rng.normal(0, 1.0, emb.shape)
    pre = emb + rng.normal(0, 0.5, emb.shape)
    return emb, labels, batches, pre


def _benchmarker(emb, labels, batches, pre) -> pd.Series:
    """scib-metrics' Benchmarker, every default metric on, as scib_scores configures it."""
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    obs = pd.DataFrame({"label": labels.astype(str), "batch": batches.astype(str)})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(
        obs=obs, obsm={"X_emb": emb.astype(np.float32), "X_pre": pre.astype(np.float32)}
    )
    bench = Benchmarker(
        adata,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=["X_emb"],
        pre_integrated_embedding_obsm_key="X_pre",
        bio_conservation_metrics=BioConservation(),
        batch_correction_metrics=BatchCorrection(kbet_per_label=False),
        n_jobs=1,
        progress_bar=False,
    )
    bench.prepare(neighbor_computer=partial(neighbors, n_jobs=1))
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    return table.loc["X_emb"].astype(float)


@pytest.mark.parametrize("seed", [0])
def test_scores_equal_benchmarker_with_silhouette_computed_once(seed, tmp_path, monkeypatch):
    monkeypatch.setenv("SCFM_JAX_CACHE", str(tmp_path / "jax"))
    emb, labels, batches, pre = _data(seed)
    calls = []
    real = scib.silhouette_metrics
    monkeypatch.setattr(scib, "silhouette_metrics", lambda *a: calls.append(1) or real(*a))
    ours = scib_scores(emb, labels, batches, pre, method="m", n_jobs=1)
    theirs = _benchmarker(emb, labels, batches, pre)
    assert calls == [1]
    assert list(ours["metric"]) == list(theirs.index)  # same metrics, same order
    got = ours.set_index("metric")["value"]
    for metric, value in theirs.items():
        assert got[metric] == value, metric  # exactly: the same arithmetic on the same arrays
    assert 0.3 < got["Isolated labels"] < 1 and 0.3 < got["Silhouette label"] < 1
    assert set(ours["type"]) == {"Bio conservation", "Batch correction", "Aggregate score"}


def test_jax_cache_is_written_under_the_given_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("SCFM_JAX_CACHE", raising=False)
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        scib.use_jax_cache(tmp_path / "cache")
        assert jax.config.jax_compilation_cache_dir == str((tmp_path / "cache").resolve())
        assert (tmp_path / "cache").is_dir()
        scib.use_jax_cache("")  # off: nothing changes
        assert jax.config.jax_compilation_cache_dir == str((tmp_path / "cache").resolve())
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert os.environ.get("SCFM_JAX_CACHE") is None
