"""Training checkpoints (resume) and the inference export ``model.pt``.

A checkpoint is ``step-NNNNNNNN.pt`` (``torch.save`` of plain containers and tensors only, so
it loads with ``weights_only=True``) plus ``step-NNNNNNNN.json`` recording its size and
sha256. Both are written atomically, the JSON last: a checkpoint without a matching JSON is
incomplete or damaged and is skipped, with a warning, in favour of the one before it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from scfm.atomic import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

MODEL_FORMAT = "scfm-model/1"
CHECKPOINT_FORMAT = "scfm-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8,})\.pt$")


class CheckpointManager:
    """Save, list, prune and restore the checkpoints of one run directory.

    Parameters
    ----------
    directory
        Where the checkpoints live (created on first save).
    keep
        How many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def path(self, step: int) -> Path:
        """The checkpoint file of ``step``."""
        return self.directory / f"step-{step:08d}.pt"

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` (plain containers and tensors) as the checkpoint of ``step``."""
        data = save_bytes({"format": CHECKPOINT_FORMAT, "step": step, **state})
        path = self.path(step)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        meta = {"step": step, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        write_text_atomic(path.with_suffix(".json"), json.dumps(meta) + "\n")
        self.prune()
        return path

    def steps(self) -> list[int]:
        """Steps that have a checkpoint file (valid or not), ascending."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def prune(self) -> None:
        """Delete all but the ``keep`` newest checkpoints."""
        for step in self.steps()[: -self.keep]:
            path = self.path(step)
            path.with_suffix(".json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)

    def load(self, step: int, *, map_location: Any = "cpu") -> dict[str, Any]:
        """Load and verify one checkpoint; ``ValueError`` says what is wrong with it."""
        path = self.path(step)
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: no readable size/hash record ({e}); incomplete") from None
        data = path.read_bytes()
        if len(data) != meta.get("size"):
            raise ValueError(f"{path}: {len(data)} bytes, expected {meta.get('size')} (truncated)")
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise ValueError(f"{path}: sha256 differs from its record (corrupt)")
        try:
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as e:  # unpickling errors come in many types
            raise ValueError(f"{path}: not loadable with weights_only=True ({e})") from None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("step") != step:
            raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint of step {step}")
        return state

    def load_latest(self, *, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The newest valid checkpoint, falling back past damaged ones with a warning.

        Returns ``None`` when there is no valid checkpoint (a fresh run).
        """
        for step in reversed(self.steps()):
            try:
                return self.load(step, map_location=map_location)
            except (OSError, ValueError) as e:
                log.warning("skipping checkpoint of step %d: %s; trying the previous one", step, e)
        return None


def export_model(
    path: str | Path,
    *,
    state_dict: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    vocab: dict[str, list[Any]],
    tokenizer: dict[str, Any],
    vocab_hash: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the inference file: weights (on CPU), model config, vocabulary, tokenizer.

    Everything is a tensor or a plain container, so ``torch.load(path, weights_only=True)``
    reads it without executing pickled code.
    """
    payload = {
        "format": MODEL_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "model_config": model_config,
        "vocab": vocab,
        "tokenizer": tokenizer,
        "vocab_hash": vocab_hash,
        **(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(save_bytes(payload))
    return path


def save_bytes(obj: Any) -> memoryview:
    """``torch.save`` of ``obj`` into memory.

    Saving to a path would put the (temporary, random) file name into the zip archive's member
    names, so the same weights would give different bytes in every run; in memory the archive
    is always named ``archive``.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()


def load_model_file(path: str | Path) -> dict[str, Any]:
    """Read a ``model.pt`` written by :func:`export_model` (``weights_only=True``).

    A file that needs more than tensors and plain containers (a pickled object, which could
    run code when unpickled) raises ``ValueError``; nothing in it is executed.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # unpickling errors come in many types
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = type(e).__name__ + (f": a pickled {found.group(1)}" if found else "")
        raise ValueError(
            f"{path}: not loadable with torch.load(weights_only=True) ({what})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not an {MODEL_FORMAT} file")
    return payload
