"""kill -9 each long rule mid-work, rerun the DAG: nothing partial looks complete, and the
final outputs equal an uninterrupted run's byte for byte.

Each stage (download, standardize, shard, train, embed, scATAC binning) is targeted in turn:
Snakemake is asked for that stage's output, and a watcher kills it with SIGKILL once the job
is writing (its temporary file or directory has appeared; for training, once a checkpoint
exists) after a seeded random delay. Half of the kills hit only the job's processes (an OOM
kill: Snakemake sees the job fail and removes its outputs); the other half hit Snakemake and
the job together (a preempted allocation: nothing cleans up, the next run starts with
``--rerun-incomplete`` from the profile after ``--unlock``). After every kill, every file
that looks finished must equal the uninterrupted run's; after the final rerun, every file,
and no temporary path may be left.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from _dag import (
    differences,
    hidden,
    outputs,
    reference_run,
    run_env,
    snakemake,
    snakemake_cmd,
    workdir,
)

pytestmark = pytest.mark.slow

SEED = 20261203
ATTEMPTS = 4  # a kill can land after the job finished; try again with a shorter delay


def _temp_of(directory: str, name: str) -> Callable[[Path], bool]:
    """Trigger: a temporary path of output ``name`` exists in ``directory`` (it is writing)."""

    def seen(wd: Path) -> bool:
        d = wd / directory
        return d.is_dir() and any(p.name.startswith(f".{name}.") for p in d.iterdir())

    return seen


def _checkpoint(wd: Path) -> bool:
    d = wd / "results/train/t/checkpoints"
    return d.is_dir() and any(d.glob("step-*.json"))


@dataclass(frozen=True)
class Stage:
    rule: str
    target: str  # the output asked for
    writing: Callable[[Path], bool]
    max_delay: float  # seconds after the trigger


STAGES = [
    Stage(
        "download",
        "resources/raw/rna/manifest.json",
        _temp_of("resources/raw/rna", "rna_counts.h5ad"),
        0.05,
    ),
    Stage(
        "standardize", "results/standard/rna.h5ad", _temp_of("results/standard", "rna.h5ad"), 0.01
    ),
    Stage(
        "shard",
        "results/corpus/demo/binned/datasets/rna",
        _temp_of("results/corpus/demo/binned/datasets", "rna"),
        0.005,
    ),
    Stage("train", "results/train/t/model.pt", _checkpoint, 0.2),
    Stage("embed", "results/embed/t/s.h5ad", _temp_of("results/embed/t", "s.h5ad"), 0.005),
    Stage(
        "atac_tiles",
        "results/atac/sim_atac.tiles.h5ad",
        _temp_of("results/atac", "sim_atac.tiles.h5ad"),
        0.01,
    ),
]


@dataclass
class Kill:
    stage: str
    mode: str
    attempt: int
    delay: float


def _kill_while_writing(wd: Path, stage: Stage, mode: str, delay: float, force: bool) -> bool:
    """Ask Snakemake for ``stage.target``; SIGKILL once it writes. True if the kill landed."""
    args = [stage.target, *(["--forcerun", stage.rule] if force else [])]
    proc = subprocess.Popen(
        snakemake_cmd(*args),
        cwd=wd,
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not stage.writing(wd):
            if proc.poll() is not None:
                return False  # finished (or failed) before the watcher saw it writing
            assert time.monotonic() < deadline, f"{stage.rule} never started writing"
            time.sleep(0.001)
        time.sleep(delay)
        snake = psutil.Process(proc.pid)
        victims = snake.children(recursive=True) + ([snake] if mode == "all" else [])
        jobs_alive = any(v.is_running() for v in victims if v.pid != proc.pid)
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    landed = jobs_alive and not (wd / stage.target).exists()
    if mode == "job" and landed:
        assert proc.returncode != 0, stderr[-2000:]
    return landed


def test_kill9_at_random_points_then_rerun_equals_an_uninterrupted_run(tmp_path_factory):
    ref = reference_run(tmp_path_factory)
    wd = workdir(tmp_path_factory.mktemp("killed"), tmp_path_factory)
    rng = random.Random(SEED)
    kills: list[Kill] = []
    for stage in STAGES:
        mode = rng.choice(["job", "all"])
        for attempt in range(ATTEMPTS):
            delay = rng.uniform(0, stage.max_delay) / 4**attempt
            if _kill_while_writing(wd, stage, mode, delay, force=attempt > 0):
                kills.append(Kill(stage.rule, mode, attempt, delay))
                break
        else:
            pytest.fail(f"{stage.rule}: the job finished before every one of {ATTEMPTS} kills")
        # whatever looks finished now is exactly what the uninterrupted run made
        bad = differences(wd, ref, outputs(wd), prefix_ok=True)
        assert not bad, (kills[-1], bad)
        if mode == "all":  # Snakemake itself was killed: its lock stays until --unlock
            unlocked = snakemake(wd, "--unlock")
            assert unlocked.returncode == 0, unlocked.stderr[-2000:]

    done = snakemake(wd)
    assert done.returncode == 0, done.stderr[-4000:]
    assert outputs(wd) == outputs(ref)
    assert differences(wd, ref, outputs(wd)) == []
    # the killed writers' temporary files and directories were removed by the reruns
    leftovers = [p for p in hidden(wd) if not p.endswith(".snakemake_timestamp")]
    assert leftovers == [], (kills, leftovers)
    assert {k.stage for k in kills} == {s.rule for s in STAGES}
    print("kills:", kills)
