"""The registry through the real Snakemake DAG: parallel jobs, lineage, reuse, disabled."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
import yaml

from scfm.io.download import hash_file
from scfm.registry import RegistrySettings, lineage, list_records, show

pytest.importorskip("lamindb", reason="the registry tests need pip install 'scfm[registry]'")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QC = {"min_genes": 20, "min_counts": 50, "max_pct_mito": 50}


def sim(seed: int) -> dict:
    return {
        "source": "demo",
        "demo": "simulated",
        "simulation": {"n_cells": 250, "n_genes": 300, "seed": seed},
        "qc": QC,
    }


CONFIG = {
    "datasets": {"sim_a": sim(1), "sim_b": sim(2)},
    "qc": {"rna": {"doublets": "none"}},
    "corpora": {"c": {"datasets": ["sim_a", "sim_b"], "split": {"by": "donor"}}},
    "tokenizers": {
        "binned": {"kind": "binned", "max_len": 100},
        "rank": {"kind": "rank", "max_len": 100},
    },
    "benchmarks": {
        "s": {
            "dataset": "sim_a",
            "split_key": "donor",
            "methods": ["pca"],
            "metrics": ["annotation"],
            "umap": False,
        }
    },
    "registry": {"enabled": True},
}


def workflow(dst: Path, config: dict) -> Path:
    """A copy of the workflow with its own config (as in tests/pipeline)."""
    dst.mkdir(parents=True)
    for item in ("Snakefile", "workflow", "scripts", "envs", "profiles", "config"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / item)
    (dst / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return dst


def snakemake(workdir: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "--profile", "profiles/local", "--cores", "2", *targets],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        timeout=600,
    )


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    wd = workflow(tmp_path_factory.mktemp("dag") / "first", CONFIG)
    res = snakemake(wd)
    assert res.returncode == 0, res.stderr[-4000:]
    return wd


def chain(node: dict) -> list[str]:
    """Keys down the first input of every node."""
    keys = []
    while node:
        keys.append(node["key"])
        node = node["inputs"][0] if node["inputs"] else None
    return keys


def test_lineage_from_a_benchmark_table_to_its_raw_dataset(first):
    settings = RegistrySettings.from_config({}, workdir=first)
    tree = lineage(settings, "results/bench/s/summary.tsv")
    assert {n["key"] for n in tree["inputs"]} == {
        "results/bench/s/pca/annotation.tsv",
        "results/bench/s/hvg/annotation.tsv",
    }
    assert chain(tree) == [
        "results/bench/s/summary.tsv",
        "results/bench/s/hvg/annotation.tsv",
        "results/embed/hvg/s.h5ad",
        "results/qc/sim_a.h5ad",
        "results/standard/sim_a.h5ad",
        "resources/raw/sim_a/manifest.json",
    ]
    raw = show(settings, "resources/raw/sim_a/manifest.json")
    assert raw["run"]["info"]["source"] == "demo" and raw["run"]["wildcards"] == {
        "dataset": "sim_a"
    }
    assert raw["run"]["config_hash"] == tree["config_hash"]


def test_the_corpus_is_a_collection_of_its_shards(first):
    settings = RegistrySettings.from_config({}, workdir=first)
    coll = show(settings, "results/corpus/c/binned")
    assert coll["type"] == "collection"
    assert coll["meta_artifact"] == "results/corpus/c/binned/manifest.json"
    assert coll["artifacts"] and all(k.endswith(".arrow") for k in coll["artifacts"])
    assert {i["key"] for i in coll["inputs"]} == {"results/qc/sim_a.h5ad", "results/qc/sim_b.h5ad"}


def test_parallel_jobs_left_a_sound_instance(first):
    settings = RegistrySettings.from_config({}, workdir=first)
    kinds = {r["kind"] for r in list_records(settings)}
    assert kinds == {"raw", "standard", "qc", "vocab", "corpus", "embedding", "benchmark"}
    db = first / ".scfm-registry" / "storage" / ".lamindb" / "lamin.db"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    log = (first / "logs" / "download" / "sim_b.log").read_text()
    assert "registry: rule download registered 2 files" in log


def test_a_second_run_starts_from_a_registered_dataset(first, tmp_path):
    """Another working directory reuses sim_a's QC'd data through the shared registry."""
    config = {
        "datasets": {"reused": {"source": "lamindb", "key": "results/qc/sim_a.h5ad", "qc": QC}},
        "qc": {"rna": {"doublets": "none"}},
        "registry": {"enabled": True, "path": str(first / ".scfm-registry")},
    }
    wd = workflow(tmp_path / "second", config)
    res = snakemake(wd, "results/qc/reused.h5ad")
    assert res.returncode == 0, res.stderr[-4000:]
    before = ad.read_h5ad(first / "results" / "qc" / "sim_a.h5ad")
    after = ad.read_h5ad(wd / "results" / "qc" / "reused.h5ad")
    assert after.var_names.equals(before.var_names) and after.n_obs == before.n_obs
    assert (after.obs["cell_type"].values == before.obs["cell_type"].values).all()
    settings = RegistrySettings.from_config({"path": str(first / ".scfm-registry")}, workdir=wd)
    assert chain(lineage(settings, "results/qc/reused.h5ad")) == [
        "results/qc/reused.h5ad",
        "results/standard/reused.h5ad",
        "resources/raw/reused/manifest.json",
        "results/qc/sim_a.h5ad",
        "results/standard/sim_a.h5ad",
        "resources/raw/sim_a/manifest.json",
    ]


def keys_of(node: dict) -> set[str]:
    """Every key in a lineage tree."""
    return {node["key"]}.union(*(keys_of(n) for n in node["inputs"]))


def corpus_config(first: Path, tokenizers: dict) -> dict:
    """A working directory that trains on the corpus `c` registered by `first`."""
    run = {"max_steps": 4, "batch_size": 8, "log_every": 2, "val_every": 0, "stats_batches": 1}
    return {
        "datasets": {},
        "corpora": {
            "reused": {
                "source": "lamindb",
                "collections": {
                    "binned": "results/corpus/c/binned",
                    "rank": "results/corpus/c/rank",
                },
            }
        },
        "tokenizers": tokenizers,
        "models": {"tiny": {"preset": "tiny", "d_model": 32, "n_heads": 2}},
        "runs": {
            "r": {
                "corpus": "reused",
                "tokenizer": "binned",
                "model": "tiny",
                "objectives": {"mse": 1.0},
                **run,
            }
        },
        "registry": {"enabled": True, "path": str(first / ".scfm-registry")},
    }


def test_a_second_run_trains_on_a_registered_corpus(first, tmp_path):
    """Another working directory trains on corpus `c` without rebuilding it."""
    wd = workflow(tmp_path / "second", corpus_config(first, CONFIG["tokenizers"]))
    targets = ["results/train/r/model.pt", "results/corpus/reused/rank/manifest.json"]
    res = snakemake(wd, *targets, "results/corpus/reused/gene_stats.tsv")
    assert res.returncode == 0, res.stderr[-4000:]
    assert not (wd / "results" / "qc").exists()  # nothing was downloaded, QC'd or sharded here
    theirs = json.loads((first / "results/corpus/c/binned/manifest.json").read_text())
    ours = json.loads((wd / "results/corpus/reused/binned/manifest.json").read_text())
    assert ours["shards"] == theirs["shards"] and ours["vocab_hash"] == theirs["vocab_hash"]
    base = wd / "results/corpus/reused/binned"
    for shard in ours["shards"]:
        assert hash_file(base / shard["path"]) == shard["sha256"], shard["path"]
    for name in ("vocab.tsv", "gene_stats.tsv"):  # gene statistics: rank tokens need them
        assert filecmp.cmp(wd / "results/corpus/reused" / name, first / "results/corpus/c" / name)
    settings = RegistrySettings.from_config({"path": str(first / ".scfm-registry")}, workdir=wd)
    coll = show(settings, "results/corpus/c/binned")
    assert ours["registry"]["uid"] == coll["uid"]
    keys = keys_of(lineage(settings, "results/train/r/model.pt"))
    assert {
        "results/corpus/reused/binned/manifest.json",
        "results/corpus/c/binned/manifest.json",
        "results/qc/sim_b.h5ad",
        "resources/raw/sim_a/manifest.json",
    } <= keys


def test_a_registered_corpus_with_other_tokenizer_settings_is_refused(first, tmp_path):
    tokenizers = {**CONFIG["tokenizers"], "binned": {"kind": "binned", "max_len": 64}}
    wd = workflow(tmp_path / "other", corpus_config(first, tokenizers))
    res = snakemake(wd, "results/corpus/reused/binned/manifest.json")
    assert res.returncode != 0
    log = (wd / "logs" / "registry_corpus" / "reused.binned.log").read_text()
    assert (
        "results/corpus/c/binned: tokenizer_params.max_len: the registered corpus was "
        "tokenized with max_len=100, tokenizers.binned says 64" in log
    ), log[-2000:]
    assert not (wd / "results/corpus/reused/binned/manifest.json").exists()
    assert not (wd / "results/corpus/reused/binned/datasets").exists()


def test_the_pipeline_runs_with_the_registry_disabled(tmp_path):
    config = {**CONFIG, "registry": {"enabled": False}}
    wd = workflow(tmp_path / "off", config)
    res = snakemake(wd, "results/standard/sim_a.h5ad")
    assert res.returncode == 0, res.stderr[-4000:]
    assert not (wd / ".scfm-registry").exists() and not (wd / ".lamindb").exists()
    assert "registry" not in (wd / "logs" / "standardize" / "sim_a.log").read_text()
