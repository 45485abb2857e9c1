"""Benchmark: scfm standardize + QC on a synthetic h5ad, beside anndata/scanpy whole-file reads.

Generates (and caches under ``benchmarks/out/``) a synthetic raw-count h5ad of ``--n-cells``
cells x ``--n-genes`` genes, written chunk by chunk so that generating it needs bounded memory.
Then runs each step in its own fresh Python subprocess and records its wall time and peak RSS
(the child's ``VmHWM``, see :func:`_harness.peak_rss`):

* ``baseline``      import scfm, anndata and scanpy only: the RSS floor of every step (each
                    child imports them before its timer starts);
* ``standardize``   scfm ``fetch_dataset`` (local source, hashes the file) + ``standardize``;
* ``qc``            scfm ``qc_rna`` on the standardized file (doublets: none);
* ``peer_whole``    ``anndata.read_h5ad`` whole + ``scanpy.pp.calculate_qc_metrics`` +
                    ``filter_cells``/``filter_genes`` with the same thresholds + ``write_h5ad``;
* ``peer_backed``   ``anndata.read_h5ad(backed="r")`` + reading ``X[start:stop]`` chunk by
                    chunk (reference for raw chunked read speed; scanpy has no backed QC).

Prints one table, the ratios scfm/peer for peak RSS and throughput, and saves the results as
JSON (and a Markdown table) under the output directory. Not part of the test suite.

Quick check::

    .venv/bin/python benchmarks/bench_standardize_qc.py --n-cells 20000
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness  # noqa: E402
from _harness import file_size, gib  # noqa: E402

DEFAULT_OUT = HERE / "out"
DATASET = "bench"
N_MITO = 13
N_RIBO = 80


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def synthetic_path(out: Path, n_cells: int, n_genes: int, nnz_per_cell: int, seed: int) -> Path:
    """Cache file name: one file per (size, density, seed)."""
    return out / f"synthetic_{n_cells}c_{n_genes}g_{nnz_per_cell}nnz_s{seed}.h5ad"


def synthetic_var(n_genes: int) -> pd.DataFrame:
    """Ensembl-like IDs with a ``gene_symbol`` column: 13 ``MT-`` genes, 80 ribosomal genes."""
    if n_genes < N_MITO + N_RIBO + 1:
        raise ValueError(f"--n-genes must be at least {N_MITO + N_RIBO + 1}")
    symbols = [f"MT-G{i}" for i in range(N_MITO)]
    symbols += [f"RP{'SL'[i % 2]}{i}" for i in range(N_RIBO)]
    symbols += [f"GENE{i:05d}" for i in range(n_genes - len(symbols))]
    ids = pd.Index([f"ENSG{i:011d}" for i in range(n_genes)], name="gene_id")
    return pd.DataFrame({"gene_symbol": symbols}, index=ids)


def synthetic_obs(n_cells: int, n_batches: int) -> pd.DataFrame:
    """Cell names and a ``batch`` column (contiguous captures, as files usually are)."""
    batch = np.repeat(np.arange(n_batches), -(-n_cells // n_batches))[:n_cells]
    return pd.DataFrame(
        {"batch": pd.Categorical([f"b{b}" for b in batch])},
        index=pd.Index([f"cell{i:08d}" for i in range(n_cells)]),
    )


def gene_cdf(n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """Cumulative gene sampling weights: Zipf-like popularity, MT genes among the most common."""
    w = 1.0 / (np.arange(n_genes) + 20.0) ** 0.8
    w[N_MITO:] = rng.permutation(w[N_MITO:])
    w[:N_MITO] = w[0] * 3  # every cell sees most MT genes
    return np.cumsum(w) / w.sum()


def synthetic_chunk(
    rng: np.random.Generator, n: int, n_genes: int, nnz_per_cell: int, cdf: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of CSR rows (data float32, indices int32, indptr int64), fully vectorised.

    Genes per cell ~ lognormal around ``nnz_per_cell`` (so some cells fail ``min_genes``),
    counts ~ geometric (mean 2.5); MT counts are scaled per cell and 2% of cells are
    "dying" (high mitochondrial fraction).
    """
    per_cell = np.maximum(1, rng.lognormal(np.log(nnz_per_cell), 0.35, n)).astype(np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), per_cell)
    cols = np.searchsorted(cdf, rng.random(rows.size), side="right")
    cols = np.minimum(cols, n_genes - 1)
    keys = np.sort(rows * n_genes + cols)  # rows in order, genes sorted within a row
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]]  # drop repeats (np.unique hashes: slower)
    rows = keys // n_genes
    indices = (keys - rows * n_genes).astype(np.int32)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    data = rng.geometric(0.4, keys.size).astype(np.float32)
    mito_scale = rng.lognormal(np.log(1.5), 0.4, n)
    mito_scale[rng.random(n) < 0.02] = 25.0
    is_mt = indices < N_MITO
    data[is_mt] = np.ceil(data[is_mt] * mito_scale[rows[is_mt]]).astype(np.float32)
    return data, indices, indptr


def generate(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write the synthetic h5ad chunk by chunk with ``CsrH5adWriter`` (float32, uncompressed)."""
    import scipy.sparse as sp

    from scfm.atomic import atomic_path
    from scfm.io.h5ad import CsrH5adWriter

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    var = synthetic_var(args.n_genes)
    obs = synthetic_obs(args.n_cells, args.n_batches)
    cdf = gene_cdf(args.n_genes, rng)
    nnz = 0
    with (
        atomic_path(path, suffix=".tmp.h5ad") as tmp,
        CsrH5adWriter(tmp, obs=obs, var=var, dtype=np.float32, compression=None) as writer,
    ):
        for start in range(0, args.n_cells, args.chunk_cells):
            n = min(args.chunk_cells, args.n_cells - start)
            data, indices, indptr = synthetic_chunk(rng, n, args.n_genes, args.nnz_per_cell, cdf)
            writer.append(sp.csr_matrix((data, indices, indptr), shape=(n, args.n_genes)))
            nnz += data.size
    return {"seconds": time.perf_counter() - t0, "nnz": nnz}


# --------------------------------------------------------------------------------------------
# Steps (each runs in a fresh child process)
# --------------------------------------------------------------------------------------------


def qc_params() -> dict[str, Any]:
    """The validated ``qc.rna`` defaults, without doublet detection."""
    from scfm.config import validate_config

    cfg = validate_config({"datasets": {DATASET: {"source": "local", "path": "-"}}})
    return {**cfg["qc"]["rna"], "doublets": "none"}


def step_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Import the libraries every other step imports; nothing else."""
    import anndata  # noqa: F401
    import scanpy  # noqa: F401

    import scfm.io.standardize
    import scfm.qc.rna  # noqa: F401

    return {"cells": 0}


def step_standardize(spec: dict[str, Any]) -> dict[str, Any]:
    """scfm: fetch_dataset (local source) + standardize."""
    from scfm.config import validate_config
    from scfm.io.sources import fetch_dataset
    from scfm.io.standardize import standardize

    work = Path(spec["work"])
    cfg = {
        "source": "local",
        "path": spec["input"],
        "genes": {"symbol_column": "gene_symbol"},
        "obs_map": {"batch": "batch"},
    }
    cfg = validate_config({"datasets": {DATASET: cfg}})["datasets"][DATASET]
    t0 = time.perf_counter()
    fetch_dataset(DATASET, cfg, work / "raw", chunk_cells=spec["chunk_cells"])
    t1 = time.perf_counter()
    standardize(
        work / "raw" / "manifest.json",
        spec["output"],
        dataset=DATASET,
        cfg=cfg,
        chunk_cells=spec["chunk_cells"],
        compression=spec["compression"],
    )
    t2 = time.perf_counter()
    return {"parts": {"fetch_dataset": t1 - t0, "standardize": t2 - t1}}


def step_qc(spec: dict[str, Any]) -> dict[str, Any]:
    """scfm: qc_rna on the standardized file."""
    from scfm.qc.rna import qc_rna

    work = Path(spec["work"])
    table = qc_rna(
        spec["input"],
        spec["output"],
        work / f"qc_{spec['compression']}.tsv",
        work / f"qc_{spec['compression']}.png",
        params=qc_params(),
        organism="human",
        chunk_cells=spec["chunk_cells"],
        compression=spec["compression"],
    )
    last = table.groupby("step")["n_remaining"].last()
    return {"kept_cells": int(last["cells"]), "kept_genes": int(last["genes"])}


def _mad_outlier(values: pd.Series, groups: pd.Series, n_mads: float, upper_only: bool) -> Any:
    med = values.groupby(groups, observed=True).transform("median")
    dev = values - med
    mad = dev.abs().groupby(groups, observed=True).transform("median")
    z = (dev / mad).where(mad > 0, 0.0)
    return z > n_mads if upper_only else z.abs() > n_mads


def step_peer_whole(spec: dict[str, Any]) -> dict[str, Any]:
    """anndata/scanpy: read whole, QC with the same thresholds, write."""
    import anndata as ad
    import scanpy as sc

    p = qc_params()
    parts = {}
    t0 = time.perf_counter()
    adata = ad.read_h5ad(spec["input"])
    # CsrH5adWriter stores int64 indptr beside int32 indices; scipy's in-place kernels
    # (eliminate_zeros in calculate_qc_metrics) reject that mix, so align them (8 bytes/cell).
    x = adata.X
    if x.indptr.dtype != x.indices.dtype and x.nnz < np.iinfo(np.int32).max:
        x.indptr = x.indptr.astype(x.indices.dtype)
    t1 = time.perf_counter()
    parts["read_h5ad"] = t1 - t0
    adata.var["mt"] = adata.var["gene_symbol"].str.upper().str.startswith("MT-")
    adata.var["ribo"] = adata.var["gene_symbol"].str.upper().str.startswith(("RPS", "RPL"))
    sc.pp.calculate_qc_metrics(
        adata, qc_vars=["mt", "ribo"], percent_top=None, log1p=False, inplace=True
    )
    t2 = time.perf_counter()
    parts["calculate_qc_metrics"] = t2 - t1
    # Same rules as scfm's qc.rna: MAD outliers per batch on the unfiltered metrics.
    o, n_mads = adata.obs, p["mad_outliers"]
    bad = o["pct_counts_mt"] > p["max_pct_mito"]
    bad |= _mad_outlier(np.log1p(o["total_counts"]), o["batch"], n_mads, False)
    bad |= _mad_outlier(np.log1p(o["n_genes_by_counts"]), o["batch"], n_mads, False)
    bad |= _mad_outlier(o["pct_counts_mt"], o["batch"], n_mads, True)
    sc.pp.filter_cells(adata, min_genes=p["min_genes"])
    sc.pp.filter_cells(adata, min_counts=p["min_counts"])
    adata = adata[~bad.loc[adata.obs_names].to_numpy()].copy()
    sc.pp.filter_genes(adata, min_cells=p["min_cells_per_gene"])
    t3 = time.perf_counter()
    parts["filter_cells/genes"] = t3 - t2
    comp = None if spec["compression"] == "none" else spec["compression"]
    adata.write_h5ad(spec["output"], compression=comp)
    parts["write_h5ad"] = time.perf_counter() - t3
    return {"parts": parts, "kept_cells": adata.n_obs, "kept_genes": adata.n_vars}


def step_peer_backed(spec: dict[str, Any]) -> dict[str, Any]:
    """anndata: open backed and read X in row chunks (no QC: scanpy has no backed QC)."""
    import anndata as ad

    adata = ad.read_h5ad(spec["input"], backed="r")
    nnz = 0
    for start in range(0, adata.n_obs, spec["chunk_cells"]):
        nnz += adata.X[start : start + spec["chunk_cells"]].nnz
    adata.file.close()
    return {"nnz_read": nnz}


STEPS = {
    "baseline": step_baseline,
    "standardize": step_standardize,
    "qc": step_qc,
    "peer_whole": step_peer_whole,
    "peer_backed": step_peer_backed,
}


def run_child(step: str, spec: dict[str, Any]) -> None:
    """Entry point inside the child: run one step, write its timings as JSON."""
    # imports are not timed: every step starts from the same floor
    _harness.run_child(
        step, spec, STEPS, step_baseline, no_baseline={"baseline"}, seconds_key="seconds"
    )


def run_step(step: str, label: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run ``step`` in a fresh interpreter; return its result with peak RSS and wall time."""
    result, spec, wall = _harness.run_step(
        __file__, step, label, spec, work=work, announce="  running {label} ..."
    )
    result.update(label=label, step=step, output=spec.get("output"), wall_process=wall)
    print(f" {result['seconds']:.1f} s, peak RSS {gib(result['peak_rss']):.2f} GiB")
    return result


# --------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the input, run every step, return all results."""
    out = args.out.resolve()
    work = out / f"run_{args.n_cells}c{args.tag}"
    work.mkdir(parents=True, exist_ok=True)
    src = synthetic_path(out, args.n_cells, args.n_genes, args.nnz_per_cell, args.seed)
    gen: dict[str, Any] = {"cached": src.exists() and not args.regenerate}
    if not gen["cached"]:
        print(f"generating {src.name} ...", flush=True)
        gen.update(generate(src, args))
        print(f"  {gen['seconds']:.1f} s")
    else:
        print(f"reusing {src}")
    gen.update(path=str(src), size=file_size(src), nnz=_harness.h5ad_nnz(src))
    base = {"chunk_cells": args.chunk_cells, "profile": args.profile}
    results = [run_step("baseline", "baseline", base, work)]
    for comp in args.compression:
        std = work / f"standardized_{comp}.h5ad"
        spec = {**base, "input": str(src), "output": str(std), "compression": comp}
        results.append(run_step("standardize", f"scfm_standardize_{comp}", spec, work))
        spec = {**base, "input": str(std), "output": str(work / f"qc_{comp}.h5ad")}
        results.append(run_step("qc", f"scfm_qc_{comp}", {**spec, "compression": comp}, work))
    if not args.skip_peer:
        for comp in args.compression:
            spec = {
                **base,
                "input": str(src),
                "output": str(work / f"peer_{comp}.h5ad"),
                "compression": comp,
                "profile": False,
            }
            results.append(run_step("peer_whole", f"peer_whole_{comp}", spec, work))
        spec = {**base, "input": str(src), "profile": False}
        results.append(run_step("peer_backed", "peer_backed", spec, work))
    for r in results:
        r["cells"] = 0 if r["step"] == "baseline" else args.n_cells
        r["out_size"] = file_size(r["output"]) if r.get("output") else 0
    return {
        "args": _harness.report_args(args),
        "machine": _harness.machine_info(),
        "input": gen,
        "results": results,
    }


def ratios(report: dict[str, Any]) -> list[str]:
    """scfm (standardize + QC) vs the whole-file peer, per compression."""
    by = {r["label"]: r for r in report["results"]}
    lines = []
    for comp in report["args"]["compression"]:
        std, qc, peer = (
            by.get(f"{k}_{comp}") for k in ("scfm_standardize", "scfm_qc", "peer_whole")
        )
        if not (std and qc):
            continue
        n = std["cells"]
        scfm_s = std["seconds"] + qc["seconds"]
        scfm_rss = max(std["peak_rss"], qc["peak_rss"])
        lines.append(
            f"scfm standardize+QC ({comp}): {scfm_s:.1f} s = {n / scfm_s:,.0f} cells/s, "
            f"peak RSS {gib(scfm_rss):.2f} GiB"
        )
        if peer:
            lines.append(
                f"  vs anndata/scanpy whole read ({comp}): {peer['seconds']:.1f} s = "
                f"{n / peer['seconds']:,.0f} cells/s, peak RSS {gib(peer['peak_rss']):.2f} GiB; "
                f"peak RSS ratio scfm/peer = {scfm_rss / peer['peak_rss']:.2f}, "
                f"throughput ratio scfm/peer = {peer['seconds'] / scfm_s:.2f}"
            )
    return lines


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    rows = _harness.md_header(
        ["step", "time (s)", "cells/s", "peak RSS (GiB)", "output (GiB)", "detail"], "lrrrrl"
    )
    for r in report["results"]:
        rate = f"{r['cells'] / r['seconds']:,.0f}" if r["cells"] else "-"
        detail = ", ".join(f"{k} {v:.1f} s" for k, v in r.get("parts", {}).items())
        if "kept_cells" in r:
            detail += f"; kept {r['kept_cells']:,} cells x {r['kept_genes']:,} genes"
        out = f"{gib(r['out_size']):.2f}" if r["out_size"] else "-"
        rss = f"{gib(r['peak_rss']):.2f}"
        rows.append(
            _harness.md_row([r["label"], f"{r['seconds']:.1f}", rate, rss, out, detail.strip("; ")])
        )
    return "\n".join(rows) + "\n"


def print_report(report: dict[str, Any]) -> None:
    """Table, ratios and (with --profile) the top of each scfm profile."""
    gen, m = report["input"], report["machine"]
    print()
    print(f"input: {gen['path']}")
    print(
        f"  {report['args']['n_cells']} cells x {report['args']['n_genes']} genes, "
        f"{gen['nnz']:,} nonzeros, {gib(gen['size']):.2f} GiB on disk"
        + ("" if gen["cached"] else f", generated in {gen['seconds']:.1f} s")
    )
    _harness.print_machine(m)
    print()
    print(markdown_table(report))
    for line in ratios(report):
        print(line)
    _harness.print_profiles(report["results"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = _harness.arg_parser(__doc__, STEPS)
    ap.add_argument("--n-cells", type=int, default=1_000_000)
    ap.add_argument("--n-genes", type=int, default=20_000)
    ap.add_argument("--nnz-per-cell", type=int, default=300, help="mean genes detected per cell")
    ap.add_argument("--n-batches", type=int, default=8)
    ap.add_argument("--chunk-cells", type=int, default=20_000)
    ap.add_argument(
        "--compression",
        nargs="+",
        default=["gzip", "none"],
        choices=["gzip", "lzf", "none"],
        help="HDF5 compression of the written files; one run per value",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache and work directory")
    ap.add_argument("--tag", default="", help="suffix of the work directory and results files")
    ap.add_argument("--regenerate", action="store_true", help="rewrite the cached input")
    ap.add_argument("--skip-peer", action="store_true", help="run the scfm steps only")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the scfm steps; print the top functions (slower)",
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
        report,
        args.out.resolve() / f"results_standardize_qc_{args.n_cells}c{args.tag}",
        markdown_table(report) + "\n" + "\n".join(ratios(report)),
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
