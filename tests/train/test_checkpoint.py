"""CheckpointManager: atomic save, keep last k, fall back past damaged checkpoints; model.pt."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from scfm.train import CheckpointManager, export_model, load_model_file


def state(step: int) -> dict:
    return {
        "model": {"w": torch.full((3, 2), float(step))},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.95)}]},
        "loader": [{"epoch": 0, "batches_in_epoch": step, "order": {"seed": 1, "shards": "ab"}}],
        "rng": [{"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)}],
        "run_config": {"objectives": {"mse": {"weight": 1.0}}},
    }


def test_save_load_weights_only_and_keep_last(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path / "ck", keep=2)
    assert m.load_latest() is None and m.steps() == []
    for step in (2, 4, 6):
        m.save(step, state(step))
    assert m.steps() == [4, 6]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "step-00000004.json",
        "step-00000004.pt",
        "step-00000006.json",
        "step-00000006.pt",
    ]
    loaded = torch.load(m.path(6), weights_only=True)  # no pickled code
    assert loaded["step"] == 6 and torch.equal(loaded["model"]["w"], state(6)["model"]["w"])
    latest = m.load_latest()
    assert latest is not None and latest["step"] == 6
    assert latest["rng"][0]["python"] == (3, (1, 2, 3), None)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_record", "garbage"])
def test_damaged_latest_falls_back_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    m = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        m.save(step, state(step))
    path = m.path(3)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte changed: only the hash notices
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif damage == "no_record":  # killed between writing the .pt and its record
        path.with_suffix(".json").unlink()
    else:
        path.with_suffix(".json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="scfm.train.checkpoint"):
        latest = m.load_latest()
    assert latest is not None and latest["step"] == 2
    assert "skipping checkpoint of step 3" in caplog.text
    # the next save at step 3 replaces the damaged files
    m.save(3, state(3))
    assert m.load_latest()["step"] == 3  # type: ignore[index]


def test_all_damaged_means_fresh_start(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path)
    m.save(5, state(5))
    m.path(5).write_bytes(b"")
    assert m.load_latest() is None


def test_export_model_is_weights_only_loadable(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    path = export_model(
        tmp_path / "model.pt",
        state_dict=net.state_dict(),
        model_config={"kind": "transformer", "vocab_size": 7, "panel_genes": None},
        vocab={"token": ["<pad>", "<cls>", "G1"], "kind": ["special", "special", "gene"]},
        tokenizer={"name": "t", "kind": "binned", "n_bins": 7},
        vocab_hash="0123456789abcdef",
        extra={"step": 3},
    )
    raw = torch.load(path, weights_only=True)
    assert {"state_dict", "model_config", "vocab", "tokenizer", "vocab_hash"} <= raw.keys()
    m = load_model_file(path)
    restored = torch.nn.Linear(3, 2)
    restored.load_state_dict(m["state_dict"])
    assert torch.equal(restored.weight, net.weight) and m["step"] == 3
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an scfm-model/1 file"):
        load_model_file(tmp_path / "x.pt")


def test_model_files_from_before_max_len_counted_genes_are_read_in_genes() -> None:
    """model.pt files written while model_config.max_len counted <cls> too are converted."""
    from scfm.train.checkpoint import MAX_LEN_COUNTS, model_config_dict

    new = {"model_config": {"max_len": 24}, MAX_LEN_COUNTS: "genes"}
    old = {"model_config": {"max_len": 25}}
    assert model_config_dict(new)["max_len"] == model_config_dict(old)["max_len"] == 24
    assert old["model_config"]["max_len"] == 25  # the payload itself is left as it is


def test_resume_identity_and_stale_checkpoints(tmp_path: Path) -> None:
    from scfm.train.checkpoint import resume_identity

    run = {"optimizer": {"lr": 1.0}, "schedule": {"min_lr_ratio": 0.1}, "log_every": 5}
    corpus = {"vocab_hash": "v", "shards": "s"}
    a = resume_identity(run, {"d_model": 8}, corpus, max_steps=10)
    assert a == resume_identity({**run, "log_every": 1}, {"d_model": 8}, corpus, max_steps=10)
    assert a != resume_identity(run, {"d_model": 8}, corpus, max_steps=20)  # cosine length
    flat = {**run, "schedule": {"min_lr_ratio": 1.0}}
    assert resume_identity(flat, {}, corpus, max_steps=10) == resume_identity(
        flat, {}, corpus, max_steps=20
    )
    old = CheckpointManager(tmp_path, identity=a)
    for step in (2, 4):
        old.save(step, state(step))
    CheckpointManager(tmp_path).save(1, state(1))  # no identity recorded (an older scfm)
    b = resume_identity({**run, "optimizer": {"lr": 2.0}}, {"d_model": 8}, corpus, max_steps=10)
    new = CheckpointManager(tmp_path, identity=b)
    assert new.load_latest() is None
    stale = new.stale()
    assert stale[2] == stale[4] == ["run.optimizer.lr: 1.0 -> 2.0"]
    assert "no run config recorded" in stale[1][0]
    assert CheckpointManager(tmp_path, identity=a).load_latest(max_step=3)["step"] == 2  # type: ignore[index]
    new.set_aside(stale)
    assert new.steps() == [] and len(list((tmp_path / "stale").glob("*.pt"))) == 3
