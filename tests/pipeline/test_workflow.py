"""The real Snakemake DAG on tiny data: end to end, reruns, bad config, profiles, linters."""

from __future__ import annotations

import ast
import copy
import html as htmllib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

SMALL_CONFIG = {
    "datasets": {
        "pbmc_demo": {
            "source": "demo",
            "demo": "pbmc68k",
            "obs_map": {"cell_type": "bulk_labels"},
            "genes": {"id_type": "symbol"},
            "qc": {"min_genes": 50, "min_counts": 200},
        },
        "sim_demo": {
            "source": "demo",
            "demo": "simulated",
            "simulation": {"n_cells": 400, "n_genes": 500},
            "qc": {"min_genes": 50, "max_pct_mito": 50},
        },
    },
    "references": {
        "human": {
            "genes": {
                "package": "celltypist/data/samples/GENCODEv44_Gene_id2name.csv",
                "format": "csv",
            }
        }
    },
    "qc": {"rna": {"doublets": "none"}},
    "corpora": {
        "demo": {
            "datasets": ["pbmc_demo", "sim_demo"],
            "split": {"by": "donor", "val": 0.2, "test": 0.2},
        }
    },
    "tokenizers": {
        "binned": {"kind": "binned", "max_len": 300},
        "rank": {"kind": "rank", "max_len": 300},
    },
    "models": {"tiny": {"preset": "tiny", "d_model": 32, "n_heads": 2}},
    "runs": {
        "t": {
            "corpus": "demo",
            "tokenizer": "binned",
            "model": "tiny",
            "max_steps": 6,
            "batch_size": 8,
            "objectives": {"mse": 1.0},
            "log_every": 2,
            "val_every": 3,
            "val_batches": 2,
            "checkpoint_every": 3,
            "stats_batches": 2,
        }
    },
    "benchmarks": {
        "s": {
            "dataset": "sim_demo",
            "split_key": "donor",
            "methods": ["pca", "random", "t"],
            "scgraph": {"min_batch_cells": 50},
        }
    },
}


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def copy_workflow(dst: Path, config: dict) -> Path:
    """A copy of the workflow with its own config, as a lab would have it."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in ("Snakefile", "workflow", "scripts", "envs", "profiles", "config"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / item)
    (dst / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return dst


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf"), SMALL_CONFIG)


@pytest.fixture(scope="module")
def demo_run(workdir) -> subprocess.CompletedProcess:
    return snakemake(workdir, "--profile", "profiles/local", "--cores", "2")


def test_demo_runs_end_to_end(workdir, demo_run):
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    for name in ("pbmc_demo", "sim_demo"):
        adata = ad.read_h5ad(workdir / "results" / "qc" / f"{name}.h5ad")
        assert adata.n_obs > 0.9 * {"pbmc_demo": 700, "sim_demo": 400}[name]
        assert adata.var_names.name == "gene_id"
        assert {"cell_type", "batch", "donor", "tissue", "assay", "dataset"} <= set(adata.obs)
        metrics = pd.read_csv(workdir / "results" / "qc" / f"{name}.metrics.tsv", sep="\t")
        assert metrics[metrics["step"] == "genes"].iloc[-1]["reason"] == "min_cells_per_gene"
        assert (workdir / "results" / "qc" / f"{name}.qc.png").stat().st_size > 10_000
        for rule in ("download", "standardize", "qc"):
            log = workdir / "logs" / rule / f"{name}.log"
            assert log.exists() and log.stat().st_size > 0, log
    for tok in ("binned", "rank"):
        man = json.loads(
            (workdir / "results" / "corpus" / "demo" / tok / "manifest.json").read_text()
        )
        assert set(man["datasets"]) == {"pbmc_demo", "sim_demo"}
        assert sum(man["splits"].values()) == sum(d["n_cells"] for d in man["datasets"].values())
        assert all(
            (workdir / "results" / "corpus" / "demo" / tok / s["path"]).is_file()
            for s in man["shards"]
        )
    run = workdir / "results" / "train" / "t"
    metrics = pd.read_csv(run / "metrics.tsv", sep="\t")
    assert metrics["step"].max() == 6 and {"train", "val"} <= set(metrics["split"])
    assert (run / "loss.png").stat().st_size > 5_000 and (run / "model.pt").exists()
    assert (workdir / "logs" / "train" / "t.log").stat().st_size > 0
    # every run beside its trivial predictors, in one table for the report's Experiments section
    summary = pd.read_csv(workdir / "results" / "train" / "summary.tsv", sep="\t")
    assert list(summary["run"]) == ["t"] and list(summary["objective"]) == ["mse"]
    assert {"trivial_global_mean", "trivial_per_gene_mean", "ratio", "plateau_step"} <= set(summary)
    assert (workdir / "results" / "train" / "vs_trivial.png").stat().st_size > 5_000
    pbmc = ad.read_h5ad(workdir / "results" / "qc" / "pbmc_demo.h5ad")
    assert pbmc.var_names[0].startswith("ENSG")  # symbols were mapped through the gene table
    assert set(pbmc.obs["cell_type"]) >= {"CD14+ Monocyte", "CD19+ B"}


def test_second_run_does_nothing(workdir, demo_run):
    again = snakemake(workdir, "--profile", "profiles/local", "--cores", "2")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def scheduled(workdir: Path, config_text: str) -> set[str]:
    """Jobs (``rule[wildcards]``) a dry run schedules after config/config.yaml is replaced by
    ``config_text``, as a lab edits its config (the file is restored afterwards)."""
    path = workdir / "config" / "config.yaml"
    original = path.read_text()
    path.write_text(config_text)
    try:
        res = snakemake(workdir, "--profile", "profiles/local", "-n")
    finally:
        path.write_text(original)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    jobs = set()
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?:\n\n|\Z)", out, re.M | re.S):
        found = re.search(r"^\s+wildcards: (.*)$", body, re.M)
        wildcards = ", ".join(sorted(found.group(1).split(", "))) if found else ""
        jobs.add(f"{rule}[{wildcards}]" if found else rule)
    return jobs


def reordered(obj):
    """``obj`` with the keys of every mapping in reverse order (lists keep theirs)."""
    if isinstance(obj, dict):
        return {k: reordered(obj[k]) for k in reversed(list(obj))}
    return [reordered(v) for v in obj] if isinstance(obj, list) else obj


def edited(change) -> str:
    """SMALL_CONFIG with ``change(config)`` applied, as YAML."""
    config = copy.deepcopy(SMALL_CONFIG)
    change(config)
    return yaml.safe_dump(config)


def bench_jobs(rules, methods, evalset="s"):
    return {f"{r}[evalset={evalset}, method={m}]" for r in rules for m in methods}


SUMMARIES = {"bench_summary[evalset=s]", "bench_all", "all"}


def test_reformatting_the_config_reruns_nothing(workdir, demo_run):
    """Keys in another order, comments, flow style: the same config, so no job is scheduled."""
    text = "# the lab's copy, reformatted\n" + yaml.safe_dump(
        reordered(SMALL_CONFIG), sort_keys=False, default_flow_style=True, width=60
    )
    assert yaml.safe_load(text) == SMALL_CONFIG and text != yaml.safe_dump(SMALL_CONFIG)
    assert scheduled(workdir, text) == set()


def test_adding_a_method_schedules_only_its_jobs(workdir, demo_run):
    """Not the evaluation set, not the other methods' embeddings or metrics."""
    jobs = scheduled(workdir, edited(lambda c: c["benchmarks"]["s"]["methods"].append("scvi")))
    expected = bench_jobs(["baseline", "scib", "scgraph", "annotation", "umap"], ["scvi"])
    assert jobs == expected | SUMMARIES


def test_one_metric_option_schedules_only_that_metric(workdir, demo_run):
    kbet = scheduled(workdir, edited(lambda c: c["benchmarks"]["s"].update(scib={"kbet": True})))
    assert kbet == bench_jobs(["scib"], ["pca", "random", "t"]) | SUMMARIES
    trim = scheduled(
        workdir, edited(lambda c: c["benchmarks"]["s"]["scgraph"].update(trim_rate=0.1))
    )
    # the reference graph of the set uses the trim rate too (scfm.bench.scgraph)
    assert trim == bench_jobs(["scgraph"], ["pca", "random", "t"]) | SUMMARIES | {
        "scgraph_reference[evalset=s]"
    }


def test_a_learning_rate_schedules_its_run_and_nothing_upstream(workdir, demo_run):
    jobs = scheduled(workdir, edited(lambda c: c["runs"]["t"].update(optimizer={"lr": 0.002})))
    metrics = ["embed", "scib", "scgraph", "annotation", "masked", "umap"]
    assert jobs == bench_jobs(metrics, ["t"]) | SUMMARIES | {"train[run=t]", "train_summary"}


# Params that may be a whole config block, because the job reads every key of it.
WHOLE_BLOCK_ALLOWED = {
    # the trainer's spec: run.json and model.json are the run and model blocks, every key read
    # by scfm.train (the names corpus/tokenizer/model also pick the train job's inputs)
    ("train", "runs"),
    ("train", "models"),
    # qc_rna reads every key of qc.rna (thresholds, doublets, warnings); a dataset's overrides
    # are merged on top
    ("qc", "qc"),
}


def assert_params_are_projections(workdir: Path, config: dict, rules: set[str]) -> None:
    """No finished job's params (as Snakemake recorded them for its rerun check) is a whole
    block of the validated config, except :data:`WHOLE_BLOCK_ALLOWED`; every rule of ``rules``
    has a record."""
    from scfm.config import load_schema, validate_config

    cfg = validate_config(copy.deepcopy(config), schema=load_schema())
    blocks = [(f"qc.{m}", ("qc", m), b) for m, b in cfg["qc"].items()]
    for top in ("datasets", "corpora", "tokenizers", "runs", "models", "benchmarks"):
        blocks += [(f"{top}.{n}", (top, n), b) for n, b in cfg[top].items()]
    seen, whole = set(), []
    for record in (workdir / ".snakemake" / "metadata").iterdir():
        meta = json.loads(record.read_text())
        seen.add(meta["rule"])
        for text in meta["params"]:
            value = ast.literal_eval(text)
            for name, (top, _), block in blocks:
                if value == block and (meta["rule"], top) not in WHOLE_BLOCK_ALLOWED:
                    whole.append(f"rule {meta['rule']} gets all of {name}")
    assert not whole, sorted(set(whole))
    assert rules <= seen, rules - seen


def test_no_rule_gets_a_whole_config_block(workdir, demo_run):
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    rules = {"download", "standardize", "qc", "vocab", "gene_stats", "shard", "corpus_manifest"}
    rules |= {"train", "bench_data", "bench_leakage", "baseline", "embed", "masked", "umap"}
    rules |= {"scib", "scgraph_reference", "scgraph", "annotation"}
    assert_params_are_projections(workdir, SMALL_CONFIG, rules)


def test_benchmark_tables_put_runs_next_to_baselines(workdir, demo_run):
    bench = workdir / "results" / "bench" / "s"
    long = pd.read_csv(bench / "summary.tsv", sep="\t")
    assert set(long["method"]) == {"pca", "random", "t", "hvg"}  # hvg: annotation reference
    assert set(long["type"]) == {
        "Bio conservation",
        "Batch correction",
        "Aggregate score",
        "scGraph",
        "Annotation",
        "Masked prediction",
    }
    wide = pd.read_csv(bench / "summary.wide.tsv", sep="\t", index_col="method")
    # the simulated cell types are easy: PCA keeps them, noise does not
    assert wide.loc["pca", "Bio conservation"] > wide.loc["random", "Bio conservation"] + 0.2
    assert wide.loc["pca", "LogReg accuracy"] > 0.9 > 0.6 > wide.loc["random", "LogReg accuracy"]
    assert wide.loc["pca", "Corr-Weighted"] > wide.loc["random", "Corr-Weighted"]
    masked = long[long["type"] == "Masked prediction"]
    assert set(masked["method"]) == {"t"} and "mse loss" in set(masked["metric"])
    assert (bench / "results_table.png").stat().st_size > 20_000
    emb = ad.read_h5ad(workdir / "results" / "embed" / "t" / "s.h5ad")
    data = ad.read_h5ad(bench / "data.h5ad", backed="r")
    assert list(emb.obsm) == ["X_t"] and emb.obs_names.equals(data.obs_names)
    overall = pd.read_csv(workdir / "results" / "bench" / "summary.tsv", sep="\t")
    assert set(overall["evalset"]) == {"s"} and len(overall) == len(long)
    # negative control: every aggregate where random ties or beats a method is logged (and
    # marked in the figure), none other
    from scfm.bench.plots import gamed_aggregates

    types = long.drop_duplicates("metric").set_index("metric")["type"]
    log = (workdir / "logs" / "bench_summary" / "s.log").read_text()
    for column in types.index[types == "Aggregate score"]:
        gamed = column in gamed_aggregates(wide, types)
        assert (f"on the aggregate {column!r}" in log) == gamed, (column, log)


def test_leakage_counts_the_known_overlap_and_held_out_leaves_it_out(workdir, demo_run):
    """The run trains on sim_demo's train donors: exactly those evaluation cells are counted."""
    from scfm.shard import assign_splits

    qc = ad.read_h5ad(workdir / "results" / "qc" / "sim_demo.h5ad", backed="r")
    split = SMALL_CONFIG["corpora"]["demo"]["split"]
    splits = assign_splits(qc.obs, dataset="sim_demo", **split, seed=0)
    expected = int((splits == "train").sum())
    assert 0 < expected < qc.n_obs
    bench = workdir / "results" / "bench" / "s"
    leak = pd.read_csv(bench / "leakage.tsv", sep="\t")
    assert leak[["method", "corpus", "n_cells", "n_train"]].values.tolist() == [
        ["t", "demo", qc.n_obs, expected]
    ]
    long = pd.read_csv(bench / "summary.tsv", sep="\t")
    assert (long.loc[long["method"] == "t", "train_overlap"] == expected).all()
    assert long.loc[long["method"] != "t", "train_overlap"].isna().all()
    log = (workdir / "logs" / "bench_leakage" / "s.log").read_text()
    assert f"run t trained on {expected} of the {qc.n_obs} cells of evaluation set s" in log
    # the same workdir with a held-out evaluation set of the same dataset added
    extra = workdir / "held_out.yaml"
    held = {**SMALL_CONFIG["benchmarks"]["s"], "held_out": True, "metrics": ["annotation"]}
    extra.write_text(yaml.safe_dump({"benchmarks": {"h": held}}))
    res = snakemake(
        workdir,
        "--profile",
        "profiles/local",
        "--cores",
        "2",
        "--configfile",
        "config/config.yaml",
        str(extra),
        "--",
        "results/bench/h/leakage.tsv",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    data = ad.read_h5ad(workdir / "results" / "bench" / "h" / "data.h5ad", backed="r")
    assert data.n_obs == qc.n_obs - expected
    assert set(data.obs_names) == set(qc.obs_names[splits != "train"])
    leak = pd.read_csv(workdir / "results" / "bench" / "h" / "leakage.tsv", sep="\t")
    assert leak["n_train"].tolist() == [0] and leak["n_cells"].tolist() == [data.n_obs]


def test_one_metric_job_is_rebuilt_alone(workdir, demo_run):
    target = workdir / "results" / "bench" / "s" / "pca" / "scgraph.tsv"
    before = target.read_text()
    target.unlink()
    res = snakemake(
        workdir, "--profile", "profiles/local", "--cores", "1", str(target.relative_to(workdir))
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert out.count("rule scgraph:") == 1 and "rule scib:" not in out and "rule embed:" not in out
    assert target.read_text() == before


def test_forcing_one_metric_rule_reruns_only_its_jobs(workdir, demo_run):
    res = snakemake(
        workdir, "--profile", "profiles/local", "--cores", "2", "-n", "--forcerun", "annotation"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], re.M))
    # 4 annotation jobs (pca, random, t, hvg), then only what reads their tables
    assert jobs == {
        "annotation": "4",
        "bench_summary": "1",
        "bench_all": "1",
        "all": "1",
        "total": "7",
    }


def test_rerun_one_output_runs_only_its_rule(workdir, demo_run):
    res = snakemake(
        workdir,
        "--profile",
        "profiles/local",
        "--cores",
        "1",
        "-f",
        "results/qc/sim_demo.metrics.tsv",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "rule qc:" in out or "localrule qc:" in out
    assert "rule standardize:" not in out and "rule download:" not in out


def _chromium() -> str | None:
    return next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(b)
        ),
        None,
    )


def test_report_renders_in_a_headless_browser(workdir, demo_run, tmp_path):
    """`snakemake --report` as one HTML file, opened in a real browser and clicked through."""
    res = snakemake(workdir, "--profile", "profiles/local", "--report", "report.html")
    assert res.returncode == 0, res.stderr[-2000:]
    html = (workdir / "report.html").read_text()
    assert "sim_demo.qc.png" in html and "results_table.png" in html and "umap.png" in html
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium: `apt-get install chromium` (make test installs it as root)")
    plan = [
        [["Benchmarks"], "results table"],
        [["Benchmarks"], "UMAP"],
        [["QC", "sim_demo"], "QC metrics"],
        [["Training"], "loss curves"],
    ]
    probe = (Path(__file__).parent / "report_probe.js").read_text()
    probe = probe.replace("PLAN", json.dumps(plan))
    i = html.rfind("</body>")
    page = tmp_path / "report_probed.html"
    page.write_text(html[:i] + probe + html[i:])
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=60000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    found = re.findall(r'<pre id="scfm-probe">(.*?)</pre>', dom, re.S)
    assert found, "the report did not render (no probe output)"
    results = json.loads(htmllib.unescape(found[-1]))
    assert len(results) == len(plan)
    for r in results:
        assert "error" not in r, r
        assert r["images"] and all(w > 300 and h > 200 for w, h in r["images"]), r


def test_bad_config_stops_before_any_job(tmp_path):
    bad = copy.deepcopy(SMALL_CONFIG)
    bad["datasets"]["sim_demo"]["simulaton"] = bad["datasets"]["sim_demo"].pop("simulation")
    bad["datasets"]["pbmc_demo"]["source"] = "zenodo"
    d = copy_workflow(tmp_path / "bad", bad)
    res = snakemake(d, "--profile", "profiles/local", "--cores", "1")
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "datasets.sim_demo.simulaton: unknown key (did you mean 'simulation'?)" in err
    assert "datasets.pbmc_demo.source: 'zenodo' is not allowed" in err
    assert not (d / "results").exists() and not (d / "resources").exists()


def test_slurm_profile_dry_run_without_slurm(workdir):
    res = snakemake(
        workdir,
        "--profile",
        "profiles/slurm",
        "-n",
        "-F",
        env={
            "SCFM_SLURM_ACCOUNT": "mylab",
            "SCFM_SLURM_PARTITION": "short",
            "SCFM_SLURM_GPU_PARTITION": "gpu",
        },
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "slurm_account=mylab" in out and "slurm_partition=short" in out
    assert "runtime=720" in out  # the download rule's own resources
    assert "mem_mb=32000" in out  # qc


def test_snakemake_lint_and_snakefmt_are_clean():
    lint = snakemake(REPO, "--lint", "--profile", "profiles/local")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_ruff_is_clean():
    res = subprocess.run(
        [str(BIN / "ruff"), "check", "src", "scripts", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-3000:]


def test_real_datasets_through_the_dag(tmp_path, shared_data):
    """The two real RNA datasets in ../shared/data, as local sources, through download→QC."""
    config = {
        "datasets": {
            "cellbench": {
                "source": "local",
                "path": str(shared_data / "rna" / "cellbench_5batch.h5ad"),
                "obs_map": {"cell_type": "cell_type", "batch": "batch"},
                "obs_values": {"tissue": "cell line"},
            },
            "baron": {
                "source": "local",
                "path": str(shared_data / "rna" / "baron_pancreas_350.h5ad"),
                "obs_map": {"cell_type": "cell_type", "batch": "batch", "donor": "donor"},
                "genes": {"id_type": "symbol", "max_unmapped_fraction": 0.3},
            },
        },
        "references": {
            "human": {
                "genes": {
                    "path": str(shared_data / "reference" / "human_gencode_v44_gene_id2name.csv"),
                    "format": "csv",
                }
            }
        },
        "qc": {"rna": {"doublets": "scrublet"}},
        "corpora": {
            "real": {
                "datasets": ["cellbench", "baron"],
                "split": {"by": "dataset", "val": 0.5, "test": 0},
            }
        },
        "tokenizers": {"binned": {"kind": "binned"}},
    }
    d = copy_workflow(tmp_path / "real", config)
    res = snakemake(d, "--profile", "profiles/local", "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    src = ad.read_h5ad(shared_data / "rna" / "cellbench_5batch.h5ad")
    got = ad.read_h5ad(d / "results" / "qc" / "cellbench.h5ad")
    assert 0.8 * src.n_obs < got.n_obs <= src.n_obs
    assert set(got.obs["batch"]) == set(src.obs["batch"]) and got.obs["batch"].nunique() == 5
    # counts are carried unchanged: compare a few kept cells on kept genes
    src.obs_names_make_unique()
    cells = [c for c in got.obs_names[:20] if c in src.obs_names]
    assert cells
    assert (src[cells, got.var_names].X != got[cells].X).nnz == 0
    baron = ad.read_h5ad(d / "results" / "qc" / "baron.h5ad")
    assert baron.var_names.str.startswith("ENSG").all()
    assert set(baron.obs["cell_type"]) >= {"alpha", "beta"}
    assert "doublet_score" in baron.obs
    man = json.loads((d / "results" / "corpus" / "real" / "binned" / "manifest.json").read_text())
    assert man["datasets"]["cellbench"]["n_cells"] == got.n_obs
    assert man["datasets"]["baron"]["missing_count_fraction"] < 0.05
    table = pd.read_csv(d / "results" / "qc" / "baron.metrics.tsv", sep="\t")
    assert table.loc[table.reason == "doublets", "n_failed"].iloc[0] >= 0
