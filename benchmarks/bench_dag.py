"""Benchmark: Snakemake dry-run of a lab-sized config, wall time and peak RSS (issue 8).

The question: does ``snakemake -n`` of a config with 1,000 datasets x 3 tokenizers x 5
evaluation sets finish in <= 30 s and <= 2 GB on this machine, and does the cost grow
linearly with the number of datasets?

The config (:func:`make_config`), as a lab with many datasets would write it:

* ``--sizes`` datasets (default 100, 300, 1000) of the ``local`` source, each an empty
  placeholder file ``data/dsNNNN.h5ad`` in the work directory (a dry run only stats inputs;
  ``rule download`` lists a local dataset's file as its input, so the file must exist);
* ``--corpora`` corpora (default 10) that split the datasets evenly, e.g. one corpus per
  tissue: every dataset is in exactly one corpus;
* 3 tokenizers (binned, rank, continuous), every corpus sharded with all three (rank adds a
  ``gene_stats`` job per corpus);
* 3 runs, one per tokenizer, on the first corpus (model preset tiny);
* 5 evaluation sets on 5 different datasets, methods pca, hvg, random, scvi and the 3 runs,
  every metric (scib, scgraph, annotation, masked) and UMAPs.

Each size gets a copy of the workflow (Snakefile, workflow/, scripts/, envs/, profiles/,
config/, as ``tests/pipeline/test_workflow.py`` ``copy_workflow`` makes it) under
``benchmarks/out/dag_<n>/``, and ``snakemake -n --quiet rules --profile profiles/local`` runs
there ``--rounds`` times (rounds interleaved over the sizes; the table shows the median) under
``/usr/bin/time -v`` for wall time and peak RSS (``Maximum resident set size``; without
``/usr/bin/time``: ``ru_maxrss`` of the child, measured in a fresh Python so no earlier child
counts). The job count per rule is read from Snakemake's job stats and checked against
:func:`expected_jobs`, a formula from the config. ``--profile`` runs the largest size once
more under cProfile and prints the top functions, and the workflow's own ones (``.smk``,
``scfm``).

Quick check (~15 s)::

    .venv/bin/python benchmarks/bench_dag.py --sizes 100 300 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness  # noqa: E402
from _harness import ROOT, md_header, md_row  # noqa: E402

DEFAULT_OUT = HERE / "out"
BIN = Path(sys.executable).parent
GOAL_SECONDS = 30.0
GOAL_RSS_GIB = 2.0
TOKENIZERS = {"binned": "binned", "rank": "rank", "continuous": "continuous"}
BASELINES = ("pca", "hvg", "scvi", "random", "lsi")
WORKFLOW_ITEMS = ("Snakefile", "workflow", "scripts", "envs", "profiles", "config")
PACKAGES = ("snakemake", "jsonschema")
SNAKEMAKE_ARGS = ("-n", "--quiet", "rules", "--profile", "profiles/local")


# --------------------------------------------------------------------------------------------
# Config and the job count it implies
# --------------------------------------------------------------------------------------------


def make_config(
    n_datasets: int, data_dir: Path, *, n_corpora: int = 10, n_benchmarks: int = 5
) -> dict[str, Any]:
    """The lab-sized config (see the module docstring); touches one placeholder per dataset."""
    data_dir.mkdir(parents=True, exist_ok=True)
    names = [f"ds{i:04d}" for i in range(n_datasets)]
    datasets = {}
    for name in names:
        path = data_dir / f"{name}.h5ad"
        path.touch()
        datasets[name] = {
            "source": "local",
            "path": str(path),
            "obs_map": {"cell_type": "celltype", "batch": "sample", "donor": "donor_id"},
        }
    n_corpora = min(n_corpora, n_datasets)
    corpora = {
        f"c{j:02d}": {
            "datasets": names[j * n_datasets // n_corpora : (j + 1) * n_datasets // n_corpora]
        }
        for j in range(n_corpora)
    }
    runs = {
        f"run_{tok}": {"corpus": "c00", "tokenizer": tok, "model": "tiny", "max_steps": 1000}
        for tok in TOKENIZERS
    }
    benchmarks = {
        f"eval{k}": {
            "dataset": names[k * n_datasets // n_benchmarks],
            "methods": ["pca", "hvg", "random", "scvi", *runs],
        }
        for k in range(n_benchmarks)
    }
    return {
        "datasets": datasets,
        "references": {
            "human": {
                "genes": {
                    "package": "celltypist/data/samples/GENCODEv44_Gene_id2name.csv",
                    "format": "csv",
                }
            }
        },
        "corpora": corpora,
        "tokenizers": {name: {"kind": kind} for name, kind in TOKENIZERS.items()},
        "models": {"tiny": {"preset": "tiny"}},
        "runs": runs,
        "benchmarks": benchmarks,
    }


def expected_jobs(config: dict[str, Any]) -> dict[str, int]:
    """Jobs per rule that ``snakemake -n`` must plan for a config made by :func:`make_config`.

    Every dataset: download, standardize, qc; one gene table (all datasets are human); every
    dataset of a corpus: checksum; per corpus: vocab, gene_stats (rank), one shard job per
    dataset and tokenizer, one manifest per tokenizer; per run: train; per evaluation set:
    bench_data, scgraph_reference, bench_summary, one job per method for scib, scgraph, umap,
    annotation (+ hvg, the annotation reference), baseline (its baselines, + hvg, + pca, scib's
    unintegrated reference), embed and masked (its runs); then bench_all and all.
    """
    n = len(config["datasets"])
    corpora = config["corpora"]
    toks = config["tokenizers"]
    runs = config["runs"]
    in_corpus = {d for c in corpora.values() for d in c["datasets"]}
    jobs = {
        "download": n,
        "reference_genes": 1,
        "standardize": n,
        "qc": n,
        "checksum": len(in_corpus),
        "vocab": len(corpora),
        "gene_stats": len(corpora) if any(t["kind"] == "rank" for t in toks.values()) else 0,
        "shard": sum(len(c["datasets"]) for c in corpora.values()) * len(toks),
        "corpus_manifest": len(corpora) * len(toks),
        "train": len(runs),
    }
    bench = {k: 0 for k in ("baseline", "embed", "scib", "scgraph", "annotation", "masked", "umap")}
    for b in config["benchmarks"].values():
        methods = set(b["methods"])
        bench["baseline"] += len((methods & set(BASELINES)) | {"hvg", "pca"})
        bench["embed"] += len(methods & set(runs))
        bench["masked"] += len(methods & set(runs))
        bench["annotation"] += len(methods | {"hvg"})
        for metric in ("scib", "scgraph", "umap"):
            bench[metric] += len(methods)
    n_bench = len(config["benchmarks"])
    jobs.update(bench)
    jobs.update(bench_data=n_bench, scgraph_reference=n_bench, bench_summary=n_bench)
    jobs.update(bench_all=1, all=1)
    return {k: v for k, v in jobs.items() if v}


def parse_job_stats(stdout: str) -> dict[str, int]:
    """``Job stats`` table of a dry run (``--quiet rules``) -> {rule: count}, without total."""
    counts: dict[str, int] = {}
    for line in stdout.split("Job stats:")[-1].splitlines():
        m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s+(\d+)\s*", line)
        if m:
            counts[m[1]] = int(m[2])
    counts.pop("total", None)
    return counts


# --------------------------------------------------------------------------------------------
# Work directories and timed dry runs
# --------------------------------------------------------------------------------------------


def copy_workflow(dst: Path, config: dict[str, Any]) -> Path:
    """A fresh copy of the workflow with ``config`` as config/config.yaml (like the tests)."""
    import yaml

    for item in WORKFLOW_ITEMS:
        target = dst / item
        if target.is_dir():
            shutil.rmtree(target)
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, target)
    (dst / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return dst


def prepare(n: int, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    work = args.out.resolve() / f"dag_{n}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    config = make_config(n, work / "data", n_corpora=args.corpora)
    copy_workflow(work, config)
    return work, config


_RUSAGE_CHILD = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); rc = subprocess.call(sys.argv[1:])\n"
    "w = time.perf_counter() - t\n"
    "print(f'Elapsed (wall clock) time (h:mm:ss or m:ss): 0:{w:.2f}', file=sys.stderr)\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(f'Maximum resident set size (kbytes): {r}', file=sys.stderr); sys.exit(rc)\n"
)


def dry_run(work: Path) -> dict[str, Any]:
    """One timed ``snakemake -n`` in ``work``: wall seconds, peak RSS bytes, jobs per rule."""
    cmd = [str(BIN / "snakemake"), *SNAKEMAKE_ARGS]
    if Path("/usr/bin/time").exists():
        cmd = ["/usr/bin/time", "-v", *cmd]
    else:
        cmd = [sys.executable, "-c", _RUSAGE_CHILD, *cmd]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
    wall_outer = time.perf_counter() - t0
    (work / "dryrun.stdout").write_text(proc.stdout)
    (work / "dryrun.stderr").write_text(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"dry run failed in {work} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    wall = re.search(
        r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", proc.stderr
    )
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    h, m, s = (float(x) if x else 0.0 for x in wall.groups())
    return {
        "wall_s": 3600 * h + 60 * m + s,
        "wall_outer_s": wall_outer,
        "peak_rss": int(rss[1]) * 1024,
        "jobs": parse_job_stats(proc.stdout),
        "loadavg_1min": [load0, os.getloadavg()[0]],
    }


def profile_run(work: Path, top: int = 25) -> str:
    """cProfile one dry run; the top functions by own time, and the workflow's own code."""
    out = work / "dryrun.pstats"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(out), str(BIN / "snakemake")]
    subprocess.run([*cmd, *SNAKEMAKE_ARGS], cwd=work, capture_output=True, check=True)
    import io

    buf = io.StringIO()
    stats = pstats.Stats(str(out), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    buf.write("\n--- the workflow's own code (.smk, scfm), by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(r"\.smk|/scfm/", top)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    works = {}
    for n in args.sizes:
        work, config = prepare(n, args)
        works[n] = (work, config, expected_jobs(config))
    rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
    for r in range(args.rounds):
        for n in args.sizes:
            print(f"  round {r + 1}: {n} datasets ...", end="", flush=True)
            res = dry_run(works[n][0])
            print(f" {res['wall_s']:.1f} s, {res['peak_rss'] / 2**20:.0f} MiB")
            if res["jobs"] != works[n][2]:
                diff = {
                    k: (res["jobs"].get(k), works[n][2].get(k))
                    for k in set(res["jobs"]) | set(works[n][2])
                    if res["jobs"].get(k) != works[n][2].get(k)
                }
                sys.exit(f"job counts differ from the formula (planned, expected): {diff}")
            rounds[n].append(res)
    rows = []
    for n in args.sizes:
        runs = rounds[n]
        walls = [x["wall_s"] for x in runs]
        jobs = sum(runs[0]["jobs"].values())
        rows.append(
            {
                "datasets": n,
                "jobs": jobs,
                "shard_jobs": runs[0]["jobs"]["shard"],
                "wall_s": statistics.median(walls),
                "wall_s_rounds": walls,
                "peak_rss": max(x["peak_rss"] for x in runs),
                "ms_per_job": 1000 * statistics.median(walls) / jobs,
                "loadavg_1min": [x["loadavg_1min"] for x in runs],
                "jobs_per_rule": runs[0]["jobs"],
            }
        )
    report: dict[str, Any] = {"args": _harness.report_args(args), "rows": rows}
    if args.profile:
        n = max(args.sizes)
        print(f"  cProfile: {n} datasets ...", flush=True)
        report["profile"] = profile_run(works[n][0])
    return report


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['nproc']} cores, {m['mem_total_gib']} GiB, Python {m['python']}, "
        f"commit {m['commit']}, {m['date']}; " + _harness.versions_line(m["versions"]),
        "",
        f"`snakemake {' '.join(SNAKEMAKE_ARGS)}`, median of {report['args']['rounds']} rounds; "
        f"{report['args']['corpora']} corpora, 3 tokenizers, 3 runs, 5 evaluation sets x 7 "
        "methods; marginal: the extra wall time per extra job since the previous size.",
        "",
        *md_header(
            [
                "datasets",
                "jobs",
                "shard jobs",
                "wall (s)",
                "ms / job",
                "marginal ms / job",
                "peak RSS (MiB)",
                "load (1 min)",
            ],
            "rrrrrrrl",
        ),
    ]
    prev = None
    for r in report["rows"]:
        marginal = "-"
        if prev and r["jobs"] > prev["jobs"]:
            marginal = f"{1000 * (r['wall_s'] - prev['wall_s']) / (r['jobs'] - prev['jobs']):.2f}"
        prev = r
        load = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in r["loadavg_1min"])
        lines.append(
            md_row(
                [
                    r["datasets"],
                    r["jobs"],
                    r["shard_jobs"],
                    f"{r['wall_s']:.1f}",
                    f"{r['ms_per_job']:.2f}",
                    marginal,
                    f"{r['peak_rss'] / 2**20:.0f}",
                    load,
                ]
            )
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000], help="datasets")
    ap.add_argument("--corpora", type=int, default=10, help="corpora splitting the datasets")
    ap.add_argument("--rounds", type=int, default=3, help="dry runs per size (median shown)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tag", default="", help="suffix of the results files")
    ap.add_argument("--profile", action="store_true", help="cProfile the largest size once")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = _harness.machine_info(_harness.BASE_PACKAGES[:1] + PACKAGES)
    _harness.print_machine(machine)
    t0 = time.perf_counter()
    report = run_all(args)
    report["machine"] = machine
    report["total_seconds"] = time.perf_counter() - t0
    md = markdown(report)
    print("\n" + md)
    if report.get("profile"):
        print(f"\n--- profile, {max(args.sizes)} datasets ---\n{report['profile']}")
    big = max(report["rows"], key=lambda r: r["datasets"])
    ok = big["wall_s"] <= GOAL_SECONDS and big["peak_rss"] <= GOAL_RSS_GIB * 2**30
    print(
        f"\n{big['datasets']} datasets: {big['wall_s']:.1f} s, {big['peak_rss'] / 2**30:.2f} GiB "
        f"(goal <= {GOAL_SECONDS:.0f} s, <= {GOAL_RSS_GIB:.0f} GB): {'met' if ok else 'NOT met'}"
    )
    stem = args.out.resolve() / f"results_dag{args.tag}"
    _harness.save_report(report, stem, md)
    print(json.dumps({r["datasets"]: round(r["wall_s"], 1) for r in report["rows"]}))


if __name__ == "__main__":
    main()
