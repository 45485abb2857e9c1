"""Experiment configs (config/experiments/): valid, and their DAGs are the experiment alone.

`--configfile` makes the experiment's file the whole config: none of the demo's datasets or runs
are scheduled beside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scfm.config import load_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXPERIMENTS = REPO / "config" / "experiments"
SLURM_ENV = {
    "SCFM_SLURM_ACCOUNT": "lab",
    "SCFM_SLURM_PARTITION": "cpu",
    "SCFM_SLURM_GPU_PARTITION": "gpu",
}


def dry_run(config: Path, profile: str, env: dict | None = None) -> dict[str, int]:
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--quiet", "rules", "--profile", profile,
         "--configfile", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^([A-Za-z_]\w*)\s+(\d+)$", proc.stdout.split("Job stats:")[-1], re.M)
    return {rule: int(n) for rule, n in rows}


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.glob("*.yaml")))
def test_experiment_configs_are_valid(name):
    config = load_config(EXPERIMENTS / name)
    assert config["runs"] and config["benchmarks"]
    for run in config["runs"].values():
        assert run["corpus"] in config["corpora"]


@pytest.mark.slow
def test_count_tokens_cpu_dag_is_the_experiment_alone(shared_data):
    jobs = dry_run(EXPERIMENTS / "count_tokens.yaml", "profiles/local")
    assert jobs["download"] == 3 and jobs["train"] == 5 and jobs["masked"] == 5
    assert jobs["train_summary"] == 1 and jobs["shard"] == 6  # 3 datasets x 2 tokenizers


@pytest.mark.slow
def test_cluster_count_tokens_passes_a_slurm_dry_run():
    jobs = dry_run(EXPERIMENTS / "count_tokens_cluster.yaml", "profiles/slurm", SLURM_ENV)
    assert jobs["download"] == 1 and jobs["train"] == 5 and jobs["embed"] == 5


@pytest.mark.slow
def test_baselines_dag(shared_data):
    jobs = dry_run(EXPERIMENTS / "baselines.yaml", "profiles/local")
    assert jobs["train"] == 2 and jobs["bench_summary"] == 2 and jobs["baseline"] == 8
