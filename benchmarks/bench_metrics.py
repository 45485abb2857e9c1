"""Benchmark: the metric suite of ``scfm.bench`` (scib-metrics + scGraph + annotation), issue 5.

The question: how long does the full metric suite take, and how much memory does it need, on
100k cells x 3 embeddings on 2 cores (goal <= 15 min), and how does it grow from 10k to 100k
cells? Beside it, the same metrics computed by their reference packages: the authors'
``scgraph-eval`` and scib-metrics' own ``Benchmarker`` (default pynndescent neighbours, all
embeddings in one call).

Input, per size (generated once, cached under ``benchmarks/out/metrics_<n>c/``):

* ``counts.h5ad``   ``scfm.io.simulate.simulate_counts`` (6 cell types in 3 lineages,
                    ``--n-batches`` batches with a multiplicative gene effect, 2 donors per
                    batch, negative-binomial counts), ``--n-genes`` genes;
* ``evalset.h5ad``  ``scfm.bench.evalset.prepare_evalset`` (label ``cell_type``, batch
                    ``batch``, split = batch, ``n_hvg`` 2000);
* ``emb_<m>.h5ad``  three embeddings written by ``scfm.bench.baselines.baseline_embedding``
                    (hence ``write_embedding``): ``pca`` (50 PCs), ``random`` (32 dims) and
                    ``scvi`` (``--scvi-epochs`` epochs; ``--third pca_bc`` replaces it with a
                    PCA of per-batch mean-centred log-normalised genes).

The suite is what the pipeline runs per evaluation set, each job in a fresh Python process
(``_harness.run_step``; peak RSS is the child's ``VmHWM``; imports are not timed, see the
``baseline`` row): ``scgraph_reference_job`` once, then per embedding ``scib_job`` (kBET and
Leiden off, 2 threads, the ``pca`` embedding as unintegrated), ``scgraph_job`` and
``annotation_job`` (logreg + kNN, 5 group folds by batch). Inside the scib children every
scib-metrics metric and the neighbour search are timed separately (by wrapping the functions
``Benchmarker`` looks up; nothing in ``src/`` changes), and so is the ``read_evalset`` of every
job.

Peers, same inputs:

* ``peer_scgraph``  ``scgraph.scGraph(path, "batch", "cell_type", only_umap=False,
                    trim_rate=0.05, thres_batch=100, thres_celltype=10).main()`` on an h5ad with
                    log-normalised ``X`` (normalize_total 1e4 + log1p) and the three embeddings
                    in ``obsm`` (float64 copies of the float32 files), beside scfm's
                    ``scgraph_reference_job`` + 3 ``scgraph_job``; the scores must agree;
* ``peer_scib``     ``scib_metrics.benchmark.Benchmarker`` with the same metrics (kBET and
                    Leiden off) and the same unintegrated embedding, default pynndescent
                    neighbours, ``n_jobs=2``, the three embeddings in one call, beside scfm's 3
                    ``scib_job``.

Quick check (~4 min)::

    .venv/bin/python benchmarks/bench_metrics.py --sizes 10000 --scvi-epochs 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness  # noqa: E402
from _harness import file_size, gib  # noqa: E402

DEFAULT_OUT = HERE / "out"
GOAL_SECONDS = 15 * 60  # the goal for 100k cells x 3 embeddings on 2 cores
THREADS = 2  # the pipeline's `threads: 2` for scib (rule scib)
SCIB_METRICS = (
    "isolated_labels",
    "nmi_ari_cluster_labels_kmeans",
    "silhouette_label",
    "clisi_knn",
    "bras",
    "ilisi_knn",
    "graph_connectivity",
    "pcr_comparison",
)
PACKAGES = (
    "scib-metrics",
    "jax",
    "pynndescent",
    "scikit-learn",
    "scvi-tools",
    "torch",
    "scgraph-eval",
)
SCGRAPH_SCORES = ("Rank-PCA", "Corr-PCA", "Corr-Weighted")
SUITE_KINDS = ("scib", "scgraph_reference", "scgraph", "annotation")


# --------------------------------------------------------------------------------------------
# Steps (each runs in a fresh child process)
# --------------------------------------------------------------------------------------------


def step_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Import what every other step imports; nothing else."""
    import anndata  # noqa: F401
    import scanpy  # noqa: F401
    import scib_metrics  # noqa: F401  (imports jax)
    import sklearn.linear_model
    import sklearn.neighbors  # noqa: F401

    import scfm.bench.annotation
    import scfm.bench.baselines
    import scfm.bench.jobs
    import scfm.bench.scgraph
    import scfm.bench.scib  # noqa: F401

    return {}


def step_simulate(spec: dict[str, Any]) -> dict[str, Any]:
    """``simulate_counts`` at this size, written as the "QC'd" input of the evaluation set."""
    from scfm.io.simulate import simulate_counts

    adata = simulate_counts(
        n_cells=spec["n_cells"],
        n_genes=spec["n_genes"],
        n_batches=spec["n_batches"],
        seed=spec["seed"],
    )
    adata.uns.pop("simulation")  # nested dict of a frozen dataclass: not needed downstream
    adata.write_h5ad(spec["output"])
    return {"nnz": int(adata.X.nnz), "n_genes": int(adata.n_vars)}


def step_evalset(spec: dict[str, Any]) -> dict[str, Any]:
    """``prepare_evalset`` as the pipeline's ``bench_data`` rule runs it."""
    from scfm.bench.evalset import prepare_evalset

    adata = prepare_evalset(
        spec["input"],
        spec["output"],
        label_key="cell_type",
        batch_key="batch",
        n_hvg=spec["n_hvg"],
        name=f"sim{spec['n_cells']}",
    )
    obs = adata.obs
    return {
        "n_types": int(obs["scfm_label"].nunique()),
        "n_batches": int(obs["scfm_batch"].nunique()),
        "n_hvg": int(adata.var["highly_variable"].sum()),
        "type_sizes": {str(k): int(v) for k, v in obs["scfm_label"].value_counts().items()},
    }


def step_embed(spec: dict[str, Any]) -> dict[str, Any]:
    """One embedding file: a scfm baseline, or the per-batch mean-centred PCA."""
    method = spec["method"]
    if method != "pca_bc":
        from scfm.bench.baselines import baseline_embedding

        emb = baseline_embedding(method, spec["evalset"], spec["output"], spec["params"])
        return {"dims": int(emb.shape[1])}
    import scanpy as sc

    from scfm.bench.evalset import log_normalized, read_evalset
    from scfm.io.embedding import write_embedding

    adata = read_evalset(spec["evalset"])
    x = log_normalized(adata, genes=adata.var["highly_variable"].to_numpy()).toarray()
    batches = adata.obs["scfm_batch"].to_numpy()
    for b in np.unique(batches):
        rows = batches == b
        x[rows] -= x[rows].mean(axis=0)
    emb = sc.pp.pca(x, n_comps=50, svd_solver="arpack", random_state=0)
    write_embedding(
        spec["output"],
        adata.obs[["scfm_label", "scfm_batch", "scfm_split"]],
        "X_pca_bc",
        emb,
        {"method": "pca_bc"},
    )
    return {"dims": int(emb.shape[1])}


def _timed(fn: Callable[..., Any], name: str, sink: dict[str, float]) -> Callable[..., Any]:
    """``fn`` that adds its run time to ``sink[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink[name] = sink.get(name, 0.0) + time.perf_counter() - t0

    return wrapper


def _time_reads(parts: dict[str, float]) -> None:
    """Time every ``read_evalset`` / ``read_embedding`` of a ``scfm.bench.jobs`` function."""
    import scfm.bench.jobs as jobs

    jobs.read_evalset = _timed(jobs.read_evalset, "read_evalset", parts)
    jobs.read_embedding = _timed(jobs.read_embedding, "read_embedding", parts)


def _time_scib_metrics(parts: dict[str, float]) -> None:
    """Time each metric that ``Benchmarker.benchmark`` looks up on the ``scib_metrics`` module."""
    import scib_metrics

    for name in SCIB_METRICS:
        setattr(scib_metrics, name, _timed(getattr(scib_metrics, name), name, parts))


def _read_table(path: str) -> dict[str, float]:
    import pandas as pd

    table = pd.read_csv(path, sep="\t")
    return {str(m): float(v) for m, v in zip(table["metric"], table["value"], strict=True)}


def step_scib(spec: dict[str, Any]) -> dict[str, Any]:
    """``scib_job`` of one embedding (kBET, Leiden off; 2 threads), with a per-metric breakdown."""
    import scfm.bench.scib as scib
    from scfm.bench.jobs import scib_job

    parts: dict[str, float] = {}
    _time_reads(parts)
    _time_scib_metrics(parts)
    if hasattr(scib, "silhouette_metrics"):  # isolated labels + silhouette label, one silhouette
        scib.silhouette_metrics = _timed(scib.silhouette_metrics, "shared_silhouette", parts)
    choice: dict[str, Any] = {}
    exact_nn = scib.neighbors

    def neighbors(x: np.ndarray, n_neighbors: int, **kwargs: Any) -> Any:
        n, d = x.shape
        choice.update(
            n=n,
            d=d,
            k=n_neighbors,
            work=float(n) * n * d,
            kind="pynndescent" if float(n) * n * d > scib.EXACT_KNN_WORK else "exact",
        )
        return exact_nn(x, n_neighbors, **kwargs)

    scib.neighbors = _timed(neighbors, "neighbors", parts)
    scib_job(
        spec["evalset"],
        spec["embedding"],
        spec["unintegrated"],
        spec["output"],
        method=spec["method"],
        threads=spec["threads"],
    )
    return {"parts": parts, "neighbors": choice, "scores": _read_table(spec["output"])}


def step_scgraph_reference(spec: dict[str, Any]) -> dict[str, Any]:
    """``scgraph_reference_job`` (defaults = config: min_batch_cells 100)."""
    from scfm.bench.jobs import scgraph_reference_job

    parts: dict[str, float] = {}
    _time_reads(parts)
    import scfm.bench.jobs as jobs
    import scfm.bench.scgraph as scgraph

    jobs.log_normalized = _timed(jobs.log_normalized, "log_normalized", parts)
    scgraph._batch_pca = _timed(scgraph._batch_pca, "batch_hvg+pca", parts)
    ref = scgraph_reference_job(spec["evalset"], spec["output"], {})
    return {"parts": parts, "n_types": int(ref.shape[0])}


def step_scgraph(spec: dict[str, Any]) -> dict[str, Any]:
    """``scgraph_job`` of one embedding against the reference graph."""
    from scfm.bench.jobs import scgraph_job

    parts: dict[str, float] = {}
    _time_reads(parts)
    import scfm.bench.scgraph as scgraph

    scgraph._centroid_graph = _timed(scgraph._centroid_graph, "centroid_graph", parts)
    scgraph_job(
        spec["evalset"],
        spec["embedding"],
        spec["reference"],
        spec["output"],
        spec["output_types"],
        method=spec["method"],
    )
    return {"parts": parts, "scores": _read_table(spec["output"])}


def step_annotation(spec: dict[str, Any]) -> dict[str, Any]:
    """``annotation_job`` of one embedding: logreg + kNN, 5 group folds by batch."""
    import scfm.bench.annotation as annotation
    from scfm.bench.jobs import annotation_job

    parts: dict[str, float] = {}
    _time_reads(parts)
    fit_predict = annotation._fit_predict

    def timed_fit_predict(name: str, *args: Any) -> Any:
        return _timed(fit_predict, name, parts)(name, *args)

    annotation._fit_predict = timed_fit_predict
    annotation_job(spec["evalset"], spec["embedding"], spec["output"], method=spec["method"])
    return {"parts": parts, "scores": _read_table(spec["output"])}


def step_peer_scgraph_input(spec: dict[str, Any]) -> dict[str, Any]:
    """The h5ad scgraph-eval reads: log-normalised X (scanpy), embeddings (float64) in obsm."""
    import anndata as ad
    import scanpy as sc

    from scfm.bench.evalset import read_evalset
    from scfm.io.embedding import read_embedding

    adata = read_evalset(spec["evalset"])
    out = ad.AnnData(
        X=adata.X.astype(np.float32),
        obs=adata.obs[["scfm_label", "scfm_batch"]].set_axis(["cell_type", "batch"], axis=1),
        var=adata.var[[]],
    )
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    for method, path in spec["embeddings"].items():
        out.obsm[f"X_{method}"] = read_embedding(path, obs_names=out.obs_names).astype(np.float64)
    out.write_h5ad(spec["output"])
    return {}


def step_peer_scgraph(spec: dict[str, Any]) -> dict[str, Any]:
    """scgraph-eval 0.1.2 (the authors' package): reference graph + every obsm embedding."""
    from scgraph import scGraph

    with contextlib.redirect_stdout(sys.stderr):  # its progress prints go to the log
        sg = scGraph(
            spec["input"],
            "batch",
            "cell_type",
            only_umap=False,
            trim_rate=0.05,
            thres_batch=100,
            thres_celltype=10,
        )
        res = sg.main()
    return {
        "scores": {
            str(key).removeprefix("X_"): {s: float(res.loc[key, s]) for s in SCGRAPH_SCORES}
            for key in res.index
        }
    }


def step_peer_scib(spec: dict[str, Any]) -> dict[str, Any]:
    """scib-metrics' Benchmarker, all embeddings in one call, its default pynndescent kNN."""
    import anndata as ad
    import scib_metrics.benchmark._core as core
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    from scfm.bench.evalset import read_evalset
    from scfm.io.embedding import read_embedding

    parts: dict[str, float] = {}
    _time_scib_metrics(parts)
    core.pynndescent = _timed(core.pynndescent, "neighbors", parts)
    t0 = time.perf_counter()
    ev = read_evalset(spec["evalset"])
    obs = ev.obs[["scfm_label", "scfm_batch"]].astype(str)
    obsm = {
        f"X_{m}": read_embedding(p, obs_names=ev.obs_names) for m, p in spec["embeddings"].items()
    }
    del ev
    adata = ad.AnnData(obs=obs, obsm=obsm)
    parts["read"] = time.perf_counter() - t0
    keys = [f"X_{m}" for m in spec["methods"]]
    bench = Benchmarker(
        adata,
        batch_key="scfm_batch",
        label_key="scfm_label",
        embedding_obsm_keys=keys,
        pre_integrated_embedding_obsm_key="X_pca",
        bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=False),
        batch_correction_metrics=BatchCorrection(kbet_per_label=False),
        n_jobs=spec["threads"],
        progress_bar=False,
    )
    bench.prepare()
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    scores = {
        key.removeprefix("X_"): {str(m): float(table.loc[key, m]) for m in table.columns}
        for key in keys
    }
    return {"parts": parts, "scores": scores}


STEPS = {
    "baseline": step_baseline,
    "simulate": step_simulate,
    "evalset": step_evalset,
    "embed": step_embed,
    "scib": step_scib,
    "scgraph_reference": step_scgraph_reference,
    "scgraph": step_scgraph,
    "annotation": step_annotation,
    "peer_scgraph_input": step_peer_scgraph_input,
    "peer_scgraph": step_peer_scgraph,
    "peer_scib": step_peer_scib,
}


def run_child(step: str, spec: dict[str, Any]) -> None:
    """Entry point inside the child: run one step, write its timings as JSON."""
    _harness.run_child(
        step,
        spec,
        STEPS,
        step_baseline,
        no_baseline={"baseline"},
        ignore_warnings=Warning,
        seconds_key="seconds",
        loadavg=True,
    )


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def run_step(
    step: str, label: str, spec: dict[str, Any], work: Path, **extra: Any
) -> dict[str, Any]:
    """Run ``step`` in a fresh interpreter; return its result with peak RSS and process wall."""
    result, spec, wall = _harness.run_step(
        __file__, step, label, spec, work=work, announce="  {label} ..."
    )
    result.update(label=label, step=step, wall_process=wall, **extra)
    print(
        f" {result['seconds']:.1f} s (process {wall:.1f} s), "
        f"peak RSS {gib(result['peak_rss']):.2f} GiB",
        flush=True,
    )
    return result


def prepare_inputs(args: argparse.Namespace, n: int, work: Path) -> dict[str, Any]:
    """Counts, evaluation set and embeddings of one size, generated once and cached.

    The step results of the generation are kept in ``inputs.json`` beside the files, so a
    rerun that reuses them still reports how long they took.
    """
    record = work / "inputs.json"
    methods = ["pca", "random", args.third]
    key = {
        "n_cells": n,
        "n_genes": args.n_genes,
        "n_batches": args.n_batches,
        "seed": args.seed,
        "n_hvg": args.n_hvg,
        "scvi_epochs": args.scvi_epochs,
        "methods": methods,
    }
    paths = {
        "counts": work / "counts.h5ad",
        "evalset": work / "evalset.h5ad",
        **{m: work / f"emb_{m}.h5ad" for m in methods},
    }
    if not args.regenerate and record.exists():
        old = json.loads(record.read_text())
        if old["key"] == key and all(p.exists() for p in paths.values()):
            print(f"  reusing inputs in {work}")
            return {**old, "cached": True}
    base = {**key, "profile": False}
    results = [
        run_step("simulate", "simulate", {**base, "output": str(paths["counts"])}, work),
        run_step(
            "evalset",
            "evalset",
            {**base, "input": str(paths["counts"]), "output": str(paths["evalset"])},
            work,
        ),
    ]
    params = {
        "pca": {"n_pcs": 50, "seed": 0},
        "random": {"dim": 32, "seed": 0},
        "scvi": {"max_epochs": args.scvi_epochs, "seed": 0, "accelerator": "cpu"},
        "pca_bc": {},
    }
    for m in methods:
        spec = {
            **base,
            "method": m,
            "evalset": str(paths["evalset"]),
            "output": str(paths[m]),
            "params": params[m],
        }
        results.append(run_step("embed", f"embed_{m}", spec, work, method=m))
    info = {
        "key": key,
        "paths": {k: str(v) for k, v in paths.items()},
        "sizes": {k: file_size(v) for k, v in paths.items()},
        "results": results,
    }
    record.write_text(json.dumps(info, indent=2))
    return {**info, "cached": False}


def run_size(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Inputs, the suite, and (for ``--peer-sizes``) the peers of one size."""
    work = args.out.resolve() / f"metrics_{n}c"
    work.mkdir(parents=True, exist_ok=True)
    # jax's persistent compilation cache, as the pipeline's scib jobs use it: empty at the start
    # of the suite (the first scib job compiles, the later ones load); scfm before the shared
    # silhouette and the cache ignores the variable
    cache = work / f".jax_cache{args.tag}"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["SCFM_JAX_CACHE"] = str(cache)
    print(f"\n== {n:,} cells ==", flush=True)
    inputs = prepare_inputs(args, n, work)
    paths = inputs["paths"]
    methods = inputs["key"]["methods"]
    evalset = paths["evalset"]
    base = {"n_cells": n, "profile": args.profile, "evalset": evalset, "threads": THREADS}
    results = []
    reference = str(work / "scgraph_reference.tsv")
    results.append(
        run_step(
            "scgraph_reference",
            "scgraph_reference",
            {**base, "output": reference},
            work,
            kind="scgraph_reference",
            method="-",
        )
    )
    for m in methods:
        emb = {**base, "embedding": paths[m], "method": m}
        results.append(
            run_step(
                "scib",
                f"scib_{m}",
                {**emb, "unintegrated": paths["pca"], "output": str(work / f"scib_{m}.tsv")},
                work,
                kind="scib",
                method=m,
            )
        )
        spec = {
            **emb,
            "reference": reference,
            "output": str(work / f"scgraph_{m}.tsv"),
            "output_types": str(work / f"scgraph_types_{m}.tsv"),
        }
        results.append(run_step("scgraph", f"scgraph_{m}", spec, work, kind="scgraph", method=m))
        spec = {**emb, "output": str(work / f"annotation_{m}.tsv")}
        results.append(
            run_step("annotation", f"annotation_{m}", spec, work, kind="annotation", method=m)
        )
    peers = []
    if n in args.peer_sizes:
        embeddings = {m: paths[m] for m in methods}
        peer_input = work / "peer_scgraph_input.h5ad"
        spec = {**base, "embeddings": embeddings, "output": str(peer_input), "profile": False}
        peers.append(run_step("peer_scgraph_input", "peer_scgraph_input", spec, work, kind="prep"))
        spec = {"input": str(peer_input), "profile": False}
        peers.append(run_step("peer_scgraph", "peer_scgraph", spec, work, kind="peer_scgraph"))
        peer_input.unlink(missing_ok=True)
        spec = {**base, "embeddings": embeddings, "methods": methods, "profile": False}
        peers.append(run_step("peer_scib", "peer_scib", spec, work, kind="peer_scib"))
    return {
        "n_cells": n,
        "inputs": inputs,
        "methods": methods,
        "results": results,
        "peers": peers,
    }


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Baseline row, then every size."""
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print("baseline (imports only):", flush=True)
    baseline = run_step("baseline", "metrics_baseline", {"profile": False}, work)
    sizes = [run_size(args, n) for n in args.sizes]
    return {
        "args": _harness.report_args(args),
        "machine": _harness.machine_info((*_harness.BASE_PACKAGES, *PACKAGES)),
        "baseline": baseline,
        "sizes": sizes,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "wall_seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def suite_totals(size: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per kind of job and in total: summed step time, summed process wall, max peak RSS."""
    totals: dict[str, dict[str, float]] = {}
    for r in size["results"]:
        for kind in (r["kind"], "total"):
            t = totals.setdefault(kind, {"seconds": 0.0, "wall": 0.0, "peak_rss": 0.0, "jobs": 0})
            t["seconds"] += r["seconds"]
            t["wall"] += r["wall_process"]
            t["peak_rss"] = max(t["peak_rss"], r["peak_rss"])
            t["jobs"] += 1
    return totals


def scib_parts(size: dict[str, Any]) -> dict[str, float]:
    """The scib breakdown summed over the embeddings."""
    out: dict[str, float] = {}
    for r in size["results"]:
        if r["kind"] == "scib":
            for k, v in r["parts"].items():
                out[k] = out.get(k, 0.0) + v
    return out


def growth(sizes: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> float | None:
    """Exponent b of a least-squares fit value ~ a * n^b over the sizes (None: < 2 sizes)."""
    if len(sizes) < 2:
        return None
    n = np.log([s["n_cells"] for s in sizes])
    y = np.log([max(value(s), 1e-9) for s in sizes])
    return float(np.polyfit(n, y, 1)[0])


def _fmt_parts(parts: dict[str, float]) -> str:
    items = sorted(parts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.1f}" for k, v in items if v >= 0.05)


def size_table(size: dict[str, Any]) -> str:
    """One row per job of one size, then the totals per kind of job."""
    rows = [f"**{size['n_cells']:,} cells** ({', '.join(size['methods'])})", ""]
    rows += _harness.md_header(
        ["job", "time (s)", "process (s)", "peak RSS (GiB)", "load", "breakdown (s) / note"],
        "lrrrrl",
    )
    for r in size["results"]:
        note = _fmt_parts(r.get("parts", {}))
        if r.get("neighbors"):
            nb = r["neighbors"]
            note = f"kNN {nb['kind']} (n²d = {nb['work']:.1e}, k {nb['k']}); " + note
        load = "–".join(f"{x:.1f}" for x in r.get("loadavg_1min", []))
        rows.append(
            _harness.md_row(
                [
                    r["label"],
                    f"{r['seconds']:.1f}",
                    f"{r['wall_process']:.1f}",
                    f"{gib(r['peak_rss']):.2f}",
                    load,
                    note,
                ]
            )
        )
    totals = suite_totals(size)
    for kind in (*SUITE_KINDS, "total"):
        if kind in totals:
            t = totals[kind]
            name = f"**{kind} (all {t['jobs']} jobs)**" if kind == "total" else f"Σ {kind}"
            rows.append(
                _harness.md_row(
                    [
                        name,
                        f"{t['seconds']:.1f}",
                        f"{t['wall']:.1f}",
                        f"{gib(t['peak_rss']):.2f} (max)",
                        "",
                        "",
                    ]
                )
            )
    return "\n".join(rows) + "\n"


def inputs_table(report: dict[str, Any]) -> str:
    """Generation of the inputs (not part of the suite)."""
    rows = _harness.md_header(["cells", "step", "time (s)", "peak RSS (GiB)", "note"], "rlrrl")
    for size in report["sizes"]:
        inp = size["inputs"]
        for r in inp["results"]:
            note = ""
            if r["step"] == "simulate":
                note = f"{r['nnz']:,} nonzeros, {gib(inp['sizes']['counts']):.2f} GiB on disk"
            elif r["step"] == "evalset":
                note = f"{r['n_types']} types, {r['n_batches']} batches, {r['n_hvg']} HVGs"
            elif r["step"] == "embed":
                note = f"{r['dims']} dims"
            cached = " (cached)" if inp["cached"] else ""
            rows.append(
                _harness.md_row(
                    [
                        f"{size['n_cells']:,}",
                        r["label"] + cached,
                        f"{r['seconds']:.1f}",
                        f"{gib(r['peak_rss']):.2f}",
                        note,
                    ]
                )
            )
    return "\n".join(rows) + "\n"


def growth_table(report: dict[str, Any]) -> str:
    """Per kind of job across sizes, with the fitted exponent."""
    sizes = report["sizes"]
    cols = ["job (3 embeddings)", *(f"{s['n_cells'] // 1000}k (s)" for s in sizes), "exponent"]
    rows = _harness.md_header(cols, "l" + "r" * (len(cols) - 1))

    def row(name: str, value: Callable[[dict[str, Any]], float]) -> None:
        b = growth(sizes, value)
        vals = [f"{value(s):.1f}" for s in sizes]
        rows.append(_harness.md_row([name, *vals, "-" if b is None else f"{b:.2f}"]))

    for kind in (*SUITE_KINDS, "total"):
        row(f"{kind} (time)", lambda s, k=kind: suite_totals(s).get(k, {}).get("seconds", 0.0))
    row("total (process wall)", lambda s: suite_totals(s)["total"]["wall"])
    for part in ("neighbors", "shared_silhouette", *SCIB_METRICS, "read_evalset"):
        row(f"scib: {part}", lambda s, p=part: scib_parts(s).get(p, 0.0))
    rss = [
        "peak RSS max (GiB)",
        *(f"{gib(suite_totals(s)['total']['peak_rss']):.2f}" for s in sizes),
    ]
    b = growth(sizes, lambda s: suite_totals(s)["total"]["peak_rss"])
    rows.append(_harness.md_row([*rss, "-" if b is None else f"{b:.2f}"]))
    return "\n".join(rows) + "\n"


def _max_abs_diff(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
    common = sorted(set(a) & set(b))
    if not common:
        return float("nan"), "-"
    diffs = {k: abs(a[k] - b[k]) for k in common}
    worst = max(diffs, key=lambda k: diffs[k])
    return diffs[worst], worst


def peer_lines(report: dict[str, Any]) -> list[str]:
    """Time ratios peer/scfm (> 1: scfm faster) and the largest score differences."""
    lines = []
    for size in report["sizes"]:
        if not size["peers"]:
            continue
        n = size["n_cells"]
        by = {r["kind"]: r for r in size["peers"]}
        totals = suite_totals(size)
        ours_sg = totals["scgraph_reference"]["seconds"] + totals["scgraph"]["seconds"]
        ours_sg_wall = totals["scgraph_reference"]["wall"] + totals["scgraph"]["wall"]
        ours_sg_rss = max(totals["scgraph_reference"]["peak_rss"], totals["scgraph"]["peak_rss"])
        peer = by["peer_scgraph"]
        ours_scores = {r["method"]: r["scores"] for r in size["results"] if r["kind"] == "scgraph"}
        diff = max(
            (_max_abs_diff(ours_scores[m], peer["scores"][m]) for m in ours_scores),
            key=lambda t: t[0],
        )
        lines.append(
            f"{n:,} cells, scGraph: scgraph-eval {peer['seconds']:.1f} s "
            f"(peak RSS {gib(peer['peak_rss']):.2f} GiB) vs scfm reference + 3 jobs "
            f"{ours_sg:.1f} s (processes {ours_sg_wall:.1f} s, peak RSS "
            f"{gib(ours_sg_rss):.2f} GiB): time ratio peer/scfm = {peer['seconds'] / ours_sg:.2f}"
            f" (process wall {peer['wall_process'] / ours_sg_wall:.2f}); "
            f"max |score difference| {diff[0]:.2g} ({diff[1]})"
        )
        peer = by["peer_scib"]
        ours = totals["scib"]
        ours_scores = {r["method"]: r["scores"] for r in size["results"] if r["kind"] == "scib"}
        diffs = {m: _max_abs_diff(ours_scores[m], peer["scores"][m]) for m in ours_scores}
        lines.append(
            f"{n:,} cells, scib: Benchmarker (pynndescent, 3 embeddings, 1 process) "
            f"{peer['seconds']:.1f} s (peak RSS {gib(peer['peak_rss']):.2f} GiB) vs scfm 3 "
            f"scib_job {ours['seconds']:.1f} s (processes {ours['wall']:.1f} s, peak RSS "
            f"{gib(ours['peak_rss']):.2f} GiB): time ratio peer/scfm = "
            f"{peer['seconds'] / ours['seconds']:.2f} "
            f"(process wall {peer['wall_process'] / ours['wall']:.2f}); "
            "max |score difference| "
            + ", ".join(f"{m} {d:.2g} ({k})" for m, (d, k) in diffs.items())
        )
        ours_parts, peer_parts = scib_parts(size), peer["parts"]
        lines.append(
            "  scib breakdown, scfm (3 jobs) / peer (s): "
            + ", ".join(
                f"{p} {ours_parts.get(p, 0.0):.1f}/{peer_parts.get(p, 0.0):.1f}"
                for p in ("neighbors", *SCIB_METRICS)
            )
        )
    return lines


def goal_line(report: dict[str, Any]) -> str:
    """The 15-minute goal at the largest size measured."""
    size = max(report["sizes"], key=lambda s: s["n_cells"])
    t = suite_totals(size)["total"]
    verdict = "met" if t["wall"] <= GOAL_SECONDS else "NOT met"
    return (
        f"goal <= 15 min at {size['n_cells']:,} cells x {len(size['methods'])} embeddings: "
        f"suite {t['seconds']:.0f} s of step time, {t['wall']:.0f} s of process wall "
        f"({t['wall'] / 60:.1f} min; {verdict}), peak RSS {gib(t['peak_rss']):.2f} GiB"
    )


def scores_table(report: dict[str, Any]) -> str:
    """The scores (sanity: random must rank last)."""
    lines = []
    for size in report["sizes"]:
        for r in size["results"]:
            if r.get("scores"):
                vals = ", ".join(f"{k} {v:.3f}" for k, v in r["scores"].items())
                lines.append(f"- {size['n_cells']:,} {r['label']}: {vals}")
    return "\n".join(lines) + "\n"


def markdown(report: dict[str, Any]) -> str:
    """Every table and line of the report."""
    parts = [
        f"baseline (imports only): peak RSS {gib(report['baseline']['peak_rss']):.2f} GiB, "
        f"process {report['baseline']['wall_process']:.1f} s\n",
        "Inputs (not part of the suite):\n",
        inputs_table(report),
    ]
    for size in report["sizes"]:
        parts.append(size_table(size))
    parts += ["Growth (least-squares exponent of time ~ n^b):\n", growth_table(report)]
    parts.append(goal_line(report) + "\n")
    lines = peer_lines(report)
    if lines:
        parts.append("Peers:\n\n" + "\n".join(f"- {x}" for x in lines) + "\n")
    parts.append("Scores:\n\n" + scores_table(report))
    return "\n".join(parts)


def print_report(report: dict[str, Any]) -> None:
    """Machine, tables, ratios."""
    m = report["machine"]
    print()
    _harness.print_machine(m)
    print(
        f"load average at start {report['loadavg_start']}, end {report['loadavg_end']}; "
        f"benchmark wall {report['wall_seconds'] / 60:.1f} min"
    )
    print()
    print(markdown(report))
    _harness.print_profiles(
        [r for s in report["sizes"] for r in s["results"]], title=" (top by own time)"
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = _harness.arg_parser(__doc__, STEPS)
    ap.add_argument("--sizes", type=_ints, default=[10_000, 30_000, 100_000], help="cells")
    ap.add_argument(
        "--peer-sizes",
        type=_ints,
        default=[10_000, 30_000],
        help="sizes at which the peers run too ('' for none)",
    )
    ap.add_argument("--n-genes", type=int, default=2000)
    ap.add_argument("--n-batches", type=int, default=8)
    ap.add_argument("--n-hvg", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--third",
        choices=["scvi", "pca_bc"],
        default="scvi",
        help="third embedding: scVI, or PCA of per-batch mean-centred log-normalised genes",
    )
    ap.add_argument("--scvi-epochs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache and work directory")
    ap.add_argument("--tag", default="", help="suffix of the results files")
    ap.add_argument("--regenerate", action="store_true", help="rebuild the cached inputs")
    ap.add_argument(
        "--profile", action="store_true", help="cProfile the suite's jobs; print the top functions"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, internally, one step of it)."""
    args = parse_args(argv)
    if _harness.child_dispatch(args, run_child):
        return
    report = run_all(args)
    print_report(report)
    _harness.save_report(
        report, args.out.resolve() / f"results_metrics{args.tag}", markdown(report)
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
