"""The DAG of a large config (issue 8): every job planned, no per-job file I/O in our code.

A generated config with 200 local RNA datasets in 4 corpora x 3 tokenizers, 3 runs, 5
evaluation sets and 2 scATAC datasets dry-runs; the jobs planned per rule must equal a formula
from the config, and the workflow's own functions (input functions and helpers defined in the
.smk files) must touch no file while Snakemake builds the DAG: Snakemake stats every input
itself, our lookups are dictionary lookups. Timing lives in benchmarks/bench_dag.py (no timed
tests here); the figures are in docs/performance.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

BASELINES = {"pca", "hvg", "scvi", "random", "lsi"}
TOKENIZERS = {"binned": "binned", "rank": "rank", "continuous": "continuous"}

# Runs Snakemake in this interpreter and counts file-system calls (open, stat, lstat, listdir,
# scandir) made while a function defined in a .smk file or the Snakefile is on the stack (module
# level excluded: validating the config and reading the schema happen once). Writes
# {"<file>:<function>": calls} to $SCFM_IO_COUNTS when Snakemake exits.
IO_PROBE = r"""
import json, os, sys
from pathlib import Path

counts = {}

def workflow_function():
    f = sys._getframe(2)
    while f is not None:
        code = f.f_code
        if code.co_name != "<module>" and (
            code.co_filename.endswith(".smk") or code.co_filename.endswith("Snakefile")
        ):
            return f"{Path(code.co_filename).name}:{code.co_name}"
        f = f.f_back
    return None

def count(name):
    where = workflow_function()
    if where is not None:
        counts[f"{where} {name}"] = counts.get(f"{where} {name}", 0) + 1

def wrap(name):
    orig = getattr(os, name)
    def wrapper(*args, **kwargs):
        count(f"os.{name}")
        return orig(*args, **kwargs)
    setattr(os, name, wrapper)

for name in ("stat", "lstat", "listdir", "scandir"):
    wrap(name)

def audit(event, args):
    if event == "open":
        count("open")

sys.addaudithook(audit)
from snakemake.cli import main
try:
    main(sys.argv[1:])
finally:
    Path(os.environ["SCFM_IO_COUNTS"]).write_text(json.dumps(counts))
"""


def make_config(data: Path, n_rna: int, n_corpora: int, n_atac: int = 2) -> dict:
    """Local RNA datasets (empty placeholder files) split over corpora, simulated scATAC."""
    data.mkdir(parents=True, exist_ok=True)
    names = [f"ds{i:04d}" for i in range(n_rna)]
    datasets: dict = {}
    for name in names:
        (data / f"{name}.h5ad").touch()
        datasets[name] = {"source": "local", "path": str(data / f"{name}.h5ad")}
    for i in range(n_atac):
        datasets[f"atac{i}"] = {
            "source": "demo",
            "demo": "simulated_atac",
            "modality": "atac",
            "genome": "sim_genome",
        }
    corpora = {
        f"c{j}": {"datasets": names[j * n_rna // n_corpora : (j + 1) * n_rna // n_corpora]}
        for j in range(n_corpora)
    }
    runs = {
        f"run_{tok}": {"corpus": "c0", "tokenizer": tok, "model": "tiny", "max_steps": 10}
        for tok in TOKENIZERS
    }
    runs["run_rank"]["objectives"] = {"ce": 1.0}  # rank tokens have no values to regress (mse)
    benchmarks = {
        f"eval{k}": {
            "dataset": names[k * n_rna // 5],
            "methods": ["pca", "hvg", "random", "scvi", *runs],
        }
        for k in range(5)
    }
    benchmarks["eval0"]["umap"] = False
    benchmarks["eval1"]["metrics"] = ["scib", "annotation"]  # no masked, no scgraph
    return {
        "datasets": datasets,
        "references": {
            "human": {
                "genes": {
                    "package": "celltypist/data/samples/GENCODEv44_Gene_id2name.csv",
                    "format": "csv",
                }
            },
            "sim_genome": {"genome": {"simulated": {"seed": 0, "n_chroms": 3}}},
        },
        "corpora": corpora,
        "tokenizers": {name: {"kind": kind} for name, kind in TOKENIZERS.items()},
        "models": {"tiny": {"preset": "tiny"}},
        "runs": runs,
        "benchmarks": benchmarks,
    }


def expected_jobs(config: dict) -> dict[str, int]:
    """Jobs per rule of a config made by make_config, derived from the config alone."""
    rna = [n for n, d in config["datasets"].items() if d.get("modality", "rna") == "rna"]
    atac = [n for n, d in config["datasets"].items() if d.get("modality") == "atac"]
    corpora, toks, runs = config["corpora"], config["tokenizers"], config["runs"]
    in_corpus = {d for c in corpora.values() for d in c["datasets"]}
    jobs = {
        "download": len(rna) + len(atac),
        "reference_genes": 1,
        "standardize": len(rna),
        "qc": len(rna),
        "checksum": len(in_corpus),
        "vocab": len(corpora),
        "gene_stats": len(corpora),  # every corpus has the rank tokenizer
        "shard": sum(len(c["datasets"]) for c in corpora.values()) * len(toks),
        "corpus_manifest": len(corpora) * len(toks),
        "train": len(runs),
        "train_summary": 1 if runs else 0,
        # scATAC: one genome, peaks features; final targets are qc.h5ad, qc.png, tiles, genes
        "reference_genome": 1,
        "atac_peakset": 1,
        **dict.fromkeys(
            [
                "atac_fragments",
                "atac_qc",
                "atac_tiles",
                "atac_summits",
                "atac_peak_matrix",
                "atac_activity",
                "atac_features",
            ],
            len(atac),
        ),
    }
    per_set = "bench_data bench_leakage scgraph_reference bench_summary baseline embed"
    per_method = "scib scgraph annotation masked umap"
    bench = dict.fromkeys(f"{per_set} {per_method}".split(), 0)
    for b in config["benchmarks"].values():
        methods = set(b["methods"])
        metrics = set(b.get("metrics", ["scib", "scgraph", "annotation", "masked"]))
        trained = methods & set(runs)
        bench["bench_data"] += 1
        bench["bench_leakage"] += 1
        bench["bench_summary"] += 1
        bench["scgraph_reference"] += "scgraph" in metrics
        for metric in ("scib", "scgraph"):
            bench[metric] += len(methods) if metric in metrics else 0
        with_hvg = methods | {"hvg"} if "annotation" in metrics else methods
        bench["annotation"] += len(with_hvg) if "annotation" in metrics else 0
        bench["masked"] += len(trained) if "masked" in metrics else 0
        bench["umap"] += len(methods) if b.get("umap", True) else 0
        # embeddings: every method scored, hvg for annotation, pca as scib's reference
        embedded = with_hvg | ({"pca"} if "scib" in metrics else set())
        bench["baseline"] += len(embedded & BASELINES)
        bench["embed"] += len(embedded & trained)
    jobs.update(bench, bench_all=1, all=1)
    return {k: v for k, v in jobs.items() if v}


def job_stats(stdout: str) -> dict[str, int]:
    """The `Job stats` table of `snakemake -n --quiet rules` -> {rule: count} (no total)."""
    rows = re.findall(r"^([A-Za-z_]\w*)\s+(\d+)$", stdout.split("Job stats:")[-1], re.M)
    return {rule: int(n) for rule, n in rows if rule != "total"}


def dry_run(workdir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Dry-run the copy under the I/O probe: (jobs per rule, workflow file-system calls)."""
    counts = workdir / "io_counts.json"
    proc = subprocess.run(
        [sys.executable, "-c", IO_PROBE, "-n", "--quiet", "rules", "--profile", "profiles/local"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, "SCFM_IO_COUNTS": str(counts)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return job_stats(proc.stdout), json.loads(counts.read_text())


def copy_workflow(dst: Path, config: dict) -> Path:
    """A copy of the workflow with its own config (as tests/pipeline/test_workflow.py)."""
    for item in ("Snakefile", "workflow", "scripts", "envs", "profiles", "config"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / item)
    (dst / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return dst


def test_large_config_plans_every_job_without_file_io_in_input_functions(tmp_path):
    config = make_config(tmp_path / "data", n_rna=200, n_corpora=4)
    jobs, io_calls = dry_run(copy_workflow(tmp_path, config))
    expected = expected_jobs(config)
    assert jobs == expected, {
        k: (jobs.get(k), expected.get(k))
        for k in set(jobs) | set(expected)
        if jobs.get(k) != expected.get(k)
    }
    assert sum(jobs.values()) > 1500  # a DAG of thousands of jobs
    # The qc / atac_features and baseline / embed constraints kept the rules apart (an
    # ambiguity would have failed the run); scATAC datasets got no RNA QC job.
    assert jobs["qc"] == 200 and jobs["atac_features"] == 2
    assert io_calls == {}, f"file-system calls from the workflow's functions: {io_calls}"


def test_probe_sees_file_io_in_an_input_function(tmp_path):
    """The probe above can fail: an input function that stats its file per job is caught."""
    config = make_config(tmp_path / "data", n_rna=12, n_corpora=2, n_atac=0)
    workdir = copy_workflow(tmp_path, config)
    common = workdir / "workflow" / "rules" / "common.smk"
    # common.smk is included before the rules, so the download rule gets this version
    common.write_text(
        common.read_text() + "\n\n_get_download_input = get_download_input\n\n\n"
        "def get_download_input(wildcards):\n"
        "    import os\n\n"
        "    os.path.exists(DATASETS[wildcards.dataset]['path'])\n"
        "    return _get_download_input(wildcards)\n"
    )
    jobs, io_calls = dry_run(workdir)
    assert jobs["download"] == 12
    assert io_calls.get("common.smk:get_download_input os.stat", 0) >= 12, io_calls
