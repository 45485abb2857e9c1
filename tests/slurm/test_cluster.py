"""The pipeline on a real Slurm cluster (tests/slurm/cluster.sh): preemption and resume, jobs
that fit no node, unset profile variables, one-rule overrides.

Training runs through `--profile profiles/slurm-cpu` (the test node has no CUDA device) on the
tiny DAG of tests/_dag.py, with a run long enough to be interrupted twice; the upstream rules run
locally first, and the same config trained without interruption (local profile, the same
threads) is the reference the Slurm run must equal.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _dag import RUN, metrics_rows, run_env, snakemake, workdir

from scfm.train import load_model_file

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
MODEL = f"results/train/{RUN}/model.pt"
CKPT = f"results/train/{RUN}/checkpoints"
# long enough to interrupt twice (a step of the tiny model takes ~1-2 s on this loaded 2-core
# machine), a checkpoint every 4 steps
LONG_RUN = {
    "max_steps": 28,
    "checkpoint_every": 4,
    "keep_checkpoints": 20,
    "log_every": 2,
    "val_every": 8,
}
# the test node has 2 CPUs and ~22 GB: the rules' cluster-sized requests are scaled down here
# train takes the whole node (2 CPUs): a retry cannot start beside the cancelled job while it
# still writes its stop-checkpoint (its CPUs stay allocated until its processes have exited)
SMALL = ["--set-threads", "train=2", "--set-resources", "train:mem_mb=2000"]


def _slurm(*args: str) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "--profile",
        "profiles/slurm-cpu",
        "--slurm-init-seconds-before-status-checks",
        "2",
        *args,
    ]


def _env(cluster) -> dict[str, str]:
    return {**run_env(), **{k: v for k, v in cluster.env.items() if "SLURM" in k}}


def _running_job(cluster) -> str | None:
    out = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
    return out[0] if out else None


def _steps(wd: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (wd / CKPT).glob("step-*.json"))


def _wait(what: str, cond, proc: subprocess.Popen, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended while waiting for {what}: {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """A workdir with everything up to the corpus manifest, built locally."""
    wd = workdir(tmp_path_factory.mktemp("slurm_up") / "wd", tmp_path_factory)
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    cfg["runs"][RUN].update(LONG_RUN)
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    done = snakemake(wd, "results/corpus/demo/binned/manifest.json")
    assert done.returncode == 0, done.stderr[-4000:]
    return wd


def test_scancel_and_requeue_of_training_resume_to_the_uninterrupted_model(
    slurm_cluster, upstream: Path, tmp_path: Path
) -> None:
    ref = tmp_path / "ref"
    shutil.copytree(upstream, ref, symlinks=True)
    done = snakemake(ref, MODEL, *SMALL)
    assert done.returncode == 0, done.stderr[-4000:]

    wd = tmp_path / "slurm"
    shutil.copytree(upstream, wd, symlinks=True)
    log = (tmp_path / "snakemake.log").open("w")
    proc = subprocess.Popen(
        _slurm(MODEL, *SMALL),
        cwd=wd,
        env=_env(slurm_cluster),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # 1. scancel while training (after its first checkpoint): sacct says "CANCELLED by 0",
        # the status shim makes it a failure, retries: 1 resubmits, the retry resumes
        first = _wait("a running train job", lambda: _running_job(slurm_cluster), proc)
        _wait("the first checkpoint", lambda: _steps(wd), proc)
        slurm_cluster.run("scancel", first)
        second = _wait(
            "the resubmitted train job",
            lambda: (j := _running_job(slurm_cluster)) and j != first and j,
            proc,
        )
        state = slurm_cluster.run("sacct", "-X", "-n", "-P", "-j", first, "-o", "State")
        assert state.stdout.strip().startswith("CANCELLED by"), state.stdout
        stop = max(_steps(wd))
        assert stop < LONG_RUN["max_steps"]
        # 2. scontrol requeue of the resubmitted job once it has gone further: the same job
        # id runs again and resumes from the checkpoint written on SIGTERM
        _wait("a checkpoint of the retry", lambda: max(_steps(wd)) > stop, proc)
        slurm_cluster.run("scontrol", "requeue", second)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            slurm_cluster.run("scancel", "-u", "root", check=False)
        log.close()
    out = (tmp_path / "snakemake.log").read_text()
    assert proc.returncode == 0, out[-6000:]
    restarts = slurm_cluster.run("sacct", "-X", "-n", "-P", "-D", "-j", second, "-o", "State")
    assert "REQUEUED" in restarts.stdout, restarts.stdout
    # the cancelled job wrote a stop-checkpoint at SIGTERM (its Slurm log is kept: it failed);
    # the requeued job did too, and its last start resumed from that one
    cancelled = (wd / f".snakemake/slurm_logs/rule_train/{RUN}/{first}.log").read_text()
    assert "received SIGTERM" in cancelled, cancelled[-3000:]
    s1 = int(re.search(r"stopped by signal after step (\d+)", cancelled).group(1))
    train_log = (wd / f"logs/train/{RUN}.log").read_text()
    s2 = int(re.search(r"resuming from step (\d+)", train_log).group(1))
    assert s2 > s1, (s1, s2)
    assert {s1, s2} <= set(_steps(wd))
    a = load_model_file(wd / MODEL)["state_dict"]
    b = load_model_file(ref / MODEL)["state_dict"]
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    metrics = f"results/train/{RUN}/metrics.tsv"
    assert metrics_rows(wd / metrics) == metrics_rows(ref / metrics)


def test_a_job_that_fits_no_node_is_refused_at_submission(slurm_cluster, upstream, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(upstream, wd, symlinks=True)
    done = subprocess.run(
        _slurm(MODEL, "--set-threads", "train=1", "--set-resources", "train:mem_mb=10000000"),
        cwd=wd,
        env=_env(slurm_cluster),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "SLURM sbatch failed" in out and "Memory specification can not be satisfied" in out
    assert not slurm_cluster.run("squeue", "-h").stdout.strip()  # nothing left pending
