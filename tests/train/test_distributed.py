"""DDP: two gloo processes equal one process at the same global batch; set-up without torchrun.

What is asserted, exactly. The loader deals blocks of cells to *global workers*
(``rank * workers_per_rank + worker``) and draws each batch's mask from (seed, epoch, global
worker, batch index). So one process with ``num_workers=2`` and two processes with one worker
each read the same two cell streams with the same masks: one process takes batch ``k`` of
worker 0 and of worker 1 as the two micro-batches of step ``k`` (``grad_accum=2``; the
DataLoader alternates workers), the two ranks take them as their ``grad_accum=1`` batches.
The trainer weighs each micro-batch by its share of the step's cells (times the world size,
which DDP's gradient average divides out), so both settings compute the same gradient from the
same batches; the scalings are powers of two and a two-term sum is commutative, so the final
weights are asserted *equal* (``torch.equal``), as are the logged train losses.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# pytest puts this directory on sys.path (rootdir-relative "prepend" import mode)
from test_trainer import cli, load_model_file, make_corpus, run_config

from scfm.train.distributed import all_reduce_sum, gather_objects, setup_distributed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _train_losses(out: Path) -> list[tuple[str, str, str]]:
    with (out / "metrics.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["step"], r["objective"], r["loss"]) for r in rows if r["split"] == "train"]


def test_ddp_two_gloo_processes_equal_one_process(corpus: Path, tmp_path: Path) -> None:
    common = {"batch_size": 16, "max_steps": 6, "val_every": 0, "checkpoint_every": 3}
    one = tmp_path / "one"
    cmd, env = cli(one, corpus, run_config(**common, grad_accum=2, num_workers=2))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    two = tmp_path / "two"
    cmd, env = cli(two, corpus, run_config(**common, grad_accum=1, num_workers=0))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "scfm.train", *cmd[3:]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    a, b = load_model_file(one / "model.pt"), load_model_file(two / "model.pt")
    assert a["step"] == b["step"] == 6
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert _train_losses(one) == _train_losses(two)
    # every rank's loader position and RNG state is in the checkpoint (rank 0 wrote it)
    state = torch.load(two / "checkpoints" / "step-00000006.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["loader"]) == len(state["rng"]) == 2
    assert [s["order"]["rank"] for s in state["loader"]] == [0, 1]


def test_setup_without_torchrun_is_a_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    env = setup_distributed("cpu")
    assert (env.rank, env.world_size, env.is_main, env.distributed) == (0, 1, True, False)
    assert env.device == torch.device("cpu") and not env.initialized_here
    assert all_reduce_sum(torch.tensor([2.0]), env).item() == 2.0
    assert gather_objects({"x": 1}, env) == [{"x": 1}]
    assert os.environ.get("WORLD_SIZE") is None
