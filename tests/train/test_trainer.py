"""Trainer: outputs, metrics, kill -9 / SIGTERM resume equality, NaN stop, run config.

The corpus is built through the real pipeline code (simulated h5ad -> vocab -> shards ->
merged manifest). Subprocess runs use ``python -m scfm.train`` with deterministic settings and
one thread, so an interrupted-and-resumed run must equal an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from _simcorpus import one_dataset_corpus, simulated

from scfm.config import validate_config
from scfm.errors import ScfmConfigError
from scfm.train import (
    CheckpointManager,
    RunConfig,
    Schedule,
    TrainingDivergedError,
    load_model_file,
    train,
)
from scfm.train import trainer as trainer_mod

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MODEL = {"preset": "tiny", "d_model": 32, "n_heads": 2, "n_layers": 1}


def make_corpus(root: Path, *, n_cells: int = 256, n_genes: int = 60) -> Path:
    """Simulated dataset -> vocab -> shards -> corpus manifest; returns the manifest path."""
    tok = validate_config(
        {
            "datasets": {"a": {"source": "demo", "demo": "simulated"}},
            "tokenizers": {"t": {"kind": "binned", "n_bins": 7, "max_len": 24}},
        }
    )["tokenizers"]["t"]
    return one_dataset_corpus(root, simulated(n_cells, n_genes), tok, "t")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def run_config(**kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "objectives": {"mse": 1.0},
        "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2},
        "batch_size": 16,
        "max_steps": 12,
        "seed": 3,
        "deterministic": True,
        "log_every": 2,
        "val_every": 4,
        "val_batches": 2,
        "checkpoint_every": 2,
        "keep_checkpoints": 3,
        "stats_batches": 4,
        "loader": {"block_size": 16, "shuffle_buffer": 32},
    }
    cfg.update(kw)
    return cfg


def cli(out: Path, corpus: Path, run: dict[str, Any], model: dict[str, Any] | None = None):
    """Command line and environment of a one-thread ``python -m scfm.train`` run."""
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.run.json").write_text(json.dumps(run))
    (out.parent / f"{out.name}.model.json").write_text(json.dumps(model or MODEL))
    args = [
        "--run-config",
        str(out.parent / f"{out.name}.run.json"),
        "--model-config",
        str(out.parent / f"{out.name}.model.json"),
        "--manifest",
        str(corpus),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [PYTHON, "-m", "scfm.train", *args], env


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_model_file(out / "model.pt")["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def wait_for_checkpoint(ckpt: Path, proc: subprocess.Popen, at_least: int) -> int:
    """Poll until a checkpoint of step >= ``at_least`` is complete; return its step."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = sorted(int(p.stem.split("-")[1]) for p in ckpt.glob("step-*.json"))
        if done and done[-1] >= at_least:
            return done[-1]
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        time.sleep(0.005)
    raise AssertionError("no checkpoint in time")


# --------------------------------------------------------------------------- outputs


def test_train_writes_metrics_checkpoints_model_and_figure(corpus: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "run"
    summary = train(run_config(max_steps=6), MODEL, corpus, out, device="cpu")
    assert summary["status"] == "completed" and summary["step"] == 6
    assert summary["resumed_from"] is None and summary["global_batch"] == 16
    lines = (out / "metrics.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:5] == ["step", "split", "objective", "loss", "n"]
    assert header[-5:] == ["lr", "grad_norm", "tokens_per_s", "cells_per_s", "mfu"]
    trivial = [c for c in header if c.startswith("trivial_")]
    assert trivial, header
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert sorted({int(r["step"]) for r in train_rows}) == [2, 4, 6]
    assert sorted({int(r["step"]) for r in rows if r["split"] == "val"}) == [0, 4, 6]
    mse = [r for r in train_rows if r["objective"] == "mse"]
    assert all(float(r["loss"]) > 0 and int(r["n"]) > 0 for r in mse)
    assert all(r[c] != "" for r in mse for c in trivial)
    total = [r for r in train_rows if r["objective"] == "total"]
    assert all(float(r["lr"]) > 0 and float(r["cells_per_s"]) > 0 for r in total)
    assert all(r["mfu"] == "" for r in total)  # CPU
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file()
    model = torch.load(out / "model.pt", weights_only=True)
    assert {"state_dict", "model_config", "vocab", "tokenizer", "vocab_hash"} <= model.keys()
    assert model["model_config"]["vocab_size"] == len(model["vocab"]["token"])
    assert model["vocab"]["token"][:2] == ["<pad>", "<cls>"]
    assert model["tokenizer"]["kind"] == "binned"
    manager = CheckpointManager(out / "checkpoints")
    assert manager.steps() == [2, 4, 6]  # keep_checkpoints=3
    for step in manager.steps():  # loadable without unpickling code
        torch.load(manager.path(step), weights_only=True)
    # a rerun of a finished run resumes at the end and changes nothing
    again = train(run_config(max_steps=6), MODEL, corpus, out, device="cpu")
    assert again["resumed_from"] == 6 and again["step"] == 6
    assert (out / "metrics.tsv").read_text().splitlines() == lines


@pytest.mark.parametrize("kill_after", [[2, 6], [4]])
def test_kill9_and_rerun_equals_uninterrupted(
    corpus: Path, tmp_path: Path, kill_after: list[int], request: pytest.FixtureRequest
) -> None:
    """SIGKILL after random checkpoints (one or two kills), rerun: final weights are equal."""
    reference = _reference_run(corpus, tmp_path_factory=request.getfixturevalue("tmp_path_factory"))
    out = tmp_path / "killed"
    cmd, env = cli(out, corpus, KILL_RUN, KILL_MODEL)
    rng = random.Random(sum(kill_after))
    for at in kill_after:
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        # kill a random few milliseconds after the checkpoint: inside a later step
        wait_for_checkpoint(out / "checkpoints", proc, at)
        time.sleep(rng.uniform(0, 0.04))
        proc.kill()
        proc.wait()
        assert not (out / "model.pt").exists(), "the run finished before it was killed"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "resuming from step" in done.stderr
    assert_same_weights(weights(out), weights(reference))
    # the metrics were cut back to the checkpoint on resume: no step logged twice
    lines = (out / "metrics.tsv").read_text().splitlines()[1:]
    keys = [tuple(line.split("\t")[:3]) for line in lines]
    assert len(keys) == len(set(keys))


_REFERENCE: dict[str, Path] = {}
# slow enough (~40 ms a step on one thread) to be killed mid-run
KILL_RUN = run_config(max_steps=16, batch_size=32, grad_accum=2)
KILL_MODEL = {"preset": "tiny"}


def _reference_run(corpus: Path, *, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (computed once per session)."""
    if "out" not in _REFERENCE:
        out = tmp_path_factory.mktemp("reference") / "run"
        cmd, env = cli(out, corpus, KILL_RUN, KILL_MODEL)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        _REFERENCE["out"] = out
    return _REFERENCE["out"]


def test_sigterm_checkpoints_and_exits_with_requeue_code(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "term"
    cmd, env = cli(out, corpus, run_config(max_steps=400, checkpoint_every=200))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    # wait for the loop to run (metrics rows appear every 2 steps)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        metrics = out / "metrics.tsv"
        if metrics.exists() and "\ttrain\t" in metrics.read_text():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)  # promptly: within a step
    finally:
        proc.kill()
    assert proc.returncode == trainer_mod.REQUEUE_EXIT_CODE, proc.stderr.read()  # type: ignore[union-attr]
    steps = CheckpointManager(out / "checkpoints").steps()
    assert len(steps) == 1 and 0 < steps[0] < 200  # written at the signal, not by schedule
    assert not (out / "model.pt").exists()
    state = CheckpointManager(out / "checkpoints").load_latest()
    assert state is not None and state["step"] == steps[0]


def test_adapter_forwards_sigterm_and_the_stop_survives_a_deleted_metrics_file(
    corpus: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The Slurm chain: SIGTERM reaches the adapter (scripts/train.py's launcher), Snakemake
    deletes metrics.tsv as a possibly corrupted output; the trainer still writes its
    stop-checkpoint, exit 75 comes back through the adapter, and the resumed run ends with the
    uninterrupted run's weights and metrics rows."""
    reference = _reference_run(corpus, tmp_path_factory=request.getfixturevalue("tmp_path_factory"))
    out = tmp_path / "adapter"
    cmd, env = cli(out, corpus, KILL_RUN, KILL_MODEL)
    adapter = [
        PYTHON,
        "-c",
        "import sys; from scfm.train.launch import run_forwarding_signals as r; "
        "sys.exit(r(sys.argv[1:]))",
        *cmd,
    ]
    proc = subprocess.Popen(adapter, env=env, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(out / "checkpoints", proc, 4)
    (out / "metrics.tsv").unlink()
    proc.send_signal(signal.SIGTERM)  # to the adapter only: it must pass it on
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.returncode == trainer_mod.REQUEUE_EXIT_CODE, stderr
    assert "received SIGTERM" in stderr
    assert not (out / "model.pt").exists()
    state = CheckpointManager(out / "checkpoints").load_latest()
    assert state is not None and 4 <= state["step"] < KILL_RUN["max_steps"]
    last_logged = state["step"] // KILL_RUN["log_every"] * KILL_RUN["log_every"]
    assert f"\n{last_logged}\ttrain\t" in state["metrics"]  # rows up to the stop are kept
    (out / "metrics.tsv").unlink(missing_ok=True)  # the retry starts without it, as under Snakemake
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"resuming from step {state['step']}" in done.stderr
    assert_same_weights(weights(out), weights(reference))
    speed = {"tokens_per_s", "cells_per_s", "mfu"}

    def rows(path: Path) -> list[list[str]]:
        lines = path.read_text().splitlines()
        keep = [i for i, c in enumerate(lines[0].split("\t")) if c not in speed]
        return [[line.split("\t")[i] for i in keep] for line in lines]

    assert rows(out / "metrics.tsv") == rows(reference / "metrics.tsv")


def test_adapter_passes_the_exit_status_of_a_signalled_child_like_a_shell() -> None:
    from scfm.train.launch import run_forwarding_signals

    assert run_forwarding_signals([PYTHON, "-c", "import sys; sys.exit(75)"]) == 75
    killed = [PYTHON, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert run_forwarding_signals(killed) == 128 + signal.SIGKILL


def test_nan_loss_stops_with_step_and_objective(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    build = trainer_mod.build_objectives

    def poisoned(run: RunConfig, mcfg: Any) -> Any:
        objectives = build(run, mcfg)
        mse = objectives["mse"]
        forward = mse.forward

        def nan_on_fifth_micro_batch(*args: Any, **kw: Any) -> Any:
            result = forward(*args, **kw)
            if mse.training:
                calls["n"] += 1
                if calls["n"] == 5:
                    result.loss = result.loss * float("nan")
            return result

        mse.forward = nan_on_fifth_micro_batch
        return objectives

    monkeypatch.setattr(trainer_mod, "build_objectives", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDivergedError, match=r"step 5: objective mse \(rank 0"):
        train(run_config(checkpoint_every=2), MODEL, corpus, out, device="cpu")
    manager = CheckpointManager(out / "checkpoints")
    assert manager.steps() == [2, 4]  # nothing written for or after the bad step
    state = manager.load_latest()
    assert state is not None and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "model.pt").exists()


# --------------------------------------------------------------------------- config


def test_run_config_validation_and_round_trip() -> None:
    cfg = RunConfig.from_dict(
        run_config(objectives={"mse": 1.0, "contrastive": {"weight": 0.5, "temperature": 0.1}})
    )
    assert cfg.objective_weights == {"mse": 1.0, "contrastive": 0.5}
    assert cfg.objectives[1].params == {"temperature": 0.1}
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ScfmConfigError) as e:
        RunConfig.from_dict(
            {
                "objectives": {"mse": -1},
                "optimizer": {"lr": 0, "nope": 1},
                "batch_size": 0,
                "max_steps": 10,
                "epochs": 2,
                "precision": "fp16",
                "typo": 1,
                "loader": {"split": "val"},
            }
        )
    text = str(e.value)
    for key in ("typo", "optimizer.nope"):
        assert key in text
    with pytest.raises(ScfmConfigError) as e:
        RunConfig.from_dict(
            {
                "objectives": {"mse": -1},
                "batch_size": 0,
                "epochs": 2,
                "precision": "fp16",
                "loader": {"split": "val"},
            }
        )
    text = str(e.value)
    for key in ("objectives.mse.weight", "batch_size", "precision", "loader.split"):
        assert key in text
    with pytest.raises(ScfmConfigError, match="max_steps/epochs"):
        RunConfig.from_dict({"objectives": {"mse": 1}})


def test_schedule_warmup_then_cosine_to_min() -> None:
    s = Schedule(1.0, warmup=4, total=14, min_ratio=0.1)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0 and s(14) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)
    assert s(9) == pytest.approx(0.55)


# --------------------------------------------------------------------------- resume identity


def test_rerun_after_a_config_change_trains_afresh_not_from_the_old_checkpoints(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The train rule's command (``python -m scfm.train``) rerun in a finished run's directory.

    After the learning rate changed, the rerun must not resume at max_steps and export the
    old weights: it sets the old checkpoints aside (naming the changed field), trains from
    step 0 and ends with the weights of a fresh run of the new config. After the model's size
    changed, the same (no ``size mismatch``). Only a rerun of the same config resumes.
    """
    torch.set_num_threads(1)
    out = tmp_path / "run"
    first = run_config(max_steps=4, checkpoint_every=2)
    train(first, MODEL, corpus, out, device="cpu")
    old = weights(out)

    changed = run_config(max_steps=4, checkpoint_every=2, optimizer={"lr": 1e-3})
    cmd, env = cli(out, corpus, changed)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming from step" not in done.stderr
    assert "made under another run config" in done.stderr
    assert "run.optimizer.lr: 0.003 -> 0.001" in done.stderr
    assert sorted(p.name for p in (out / "checkpoints" / "stale").glob("*.pt")) == [
        "step-00000002.pt",
        "step-00000004.pt",
    ]
    model = load_model_file(out / "model.pt")
    assert model["run_config"]["optimizer"]["lr"] == 1e-3 and model["step"] == 4
    assert any(not torch.equal(model["state_dict"][k], old[k]) for k in old)
    fresh = tmp_path / "fresh"
    train(changed, MODEL, corpus, fresh, device="cpu")
    assert_same_weights(weights(out), weights(fresh))
    rows = [line.split("\t")[:3] for line in (out / "metrics.tsv").read_text().splitlines()]
    assert rows == [
        line.split("\t")[:3] for line in (fresh / "metrics.tsv").read_text().splitlines()
    ]

    # an architecture change: trains afresh too (no `size mismatch` from load_state_dict)
    with caplog.at_level(logging.INFO, logger="scfm.train"):
        summary = train(changed, {**MODEL, "d_model": 16}, corpus, out, device="cpu")
    assert summary["resumed_from"] is None and "model.d_model: 32 -> 16" in caplog.text
    assert load_model_file(out / "model.pt")["model_config"]["d_model"] == 16

    # the same config again: resumes at the end, trains nothing, keeps the weights
    before = weights(out)
    summary = train(changed, {**MODEL, "d_model": 16}, corpus, out, device="cpu")
    assert summary["resumed_from"] == 4 and summary["step"] == 4
    assert_same_weights(weights(out), before)


def test_what_invalidates_a_checkpoint(corpus: Path, tmp_path: Path) -> None:
    """Logging and checkpoint cadence do not; a longer run resumes only with a constant rate
    after warm-up (and then equals a fresh longer run); a longer cosine run, other objectives,
    mask ratio or corpus start afresh."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    base = run_config(max_steps=4, checkpoint_every=2, val_every=0)
    assert train(base, MODEL, corpus, out, device="cpu")["resumed_from"] is None
    cadence = {**base, "log_every": 1, "keep_checkpoints": 5, "stats_batches": 2}
    assert train(cadence, MODEL, corpus, out, device="cpu")["resumed_from"] == 4
    # cosine decay: the schedule's length changes every step's rate -> afresh
    longer = {**base, "max_steps": 6}
    assert train(longer, MODEL, corpus, out, device="cpu")["resumed_from"] is None
    for change in ({"mask_ratio": 0.3}, {"objectives": {"mse": 1.0, "ce": 1.0}}):
        assert train({**base, **change}, MODEL, corpus, out, device="cpu")["resumed_from"] is None
    other = make_corpus(tmp_path / "other", n_cells=200)
    assert train(base, MODEL, other, out, device="cpu")["resumed_from"] is None

    # a constant rate after warm-up: a longer run continues, exactly as a fresh one would run
    flat = {**base, "schedule": {"warmup_steps": 2, "min_lr_ratio": 1.0}}
    assert train(flat, MODEL, corpus, out, device="cpu")["resumed_from"] is None
    summary = train({**flat, "max_steps": 6}, MODEL, corpus, out, device="cpu")
    assert summary["resumed_from"] == 4 and summary["step"] == 6
    fresh = tmp_path / "fresh"
    train({**flat, "max_steps": 6}, MODEL, corpus, fresh, device="cpu")
    assert_same_weights(weights(out), weights(fresh))
    # shorter than the newest checkpoint: those past it are set aside, the rest resumes
    summary = train({**flat, "max_steps": 5}, MODEL, corpus, out, device="cpu")
    assert summary["resumed_from"] == 4 and summary["step"] == 5
    assert (out / "checkpoints" / "stale" / "step-00000006.pt").is_file()
