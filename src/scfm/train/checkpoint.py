"""Training checkpoints (resume) and the inference export ``model.pt``.

A checkpoint is ``step-NNNNNNNN.pt`` (``torch.save`` of plain containers and tensors only, so
it loads with ``weights_only=True``) plus ``step-NNNNNNNN.json`` recording its size and
sha256. Both are written atomically, the JSON last: a checkpoint without a matching JSON is
incomplete or damaged and is skipped, with a warning, in favour of the one before it.

A checkpoint resumes only the run that made it. The JSON record also holds the run's
*identity* (:func:`resume_identity`: every setting that decides the weights at a given step --
run, model, corpus and vocabulary -- and its canonical hash). A manager given an identity
resumes only from checkpoints recording the same one; :meth:`CheckpointManager.set_aside`
moves the others to ``stale/`` (replacing an older stale set) after logging which settings
differ, and the run starts from step 0.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from scfm.atomic import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

MODEL_FORMAT = "scfm-model/1"
#: model.pt entry saying that ``model_config.max_len`` counts genes (without ``<cls>``); files
#: without it were written when it counted tokens including ``<cls>`` (before scfm 0.2's one
#: meaning of ``max_len``): :func:`model_config_dict` converts them.
MAX_LEN_COUNTS = "max_len_counts"
CHECKPOINT_FORMAT = "scfm-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8,})\.pt$")
#: Where :meth:`CheckpointManager.set_aside` moves checkpoints of another config.
STALE_DIR = "stale"

#: ``runs.<name>`` fields that do not change the weights a run computes up to a given step, so a
#: checkpoint made under other values of them still resumes: names (the blocks they point to
#: are part of the identity by content), logging/validation/checkpoint cadence, and how the
#: work is run. ``max_steps``/``epochs`` enter only through the learning-rate schedule (see
#: :func:`resume_identity`). ``num_workers`` is *not* here: it decides the batch order.
RESUME_INDEPENDENT = (
    "corpus",
    "tokenizer",
    "model",
    "max_steps",
    "epochs",
    "log_every",
    "val_every",
    "val_batches",
    "checkpoint_every",
    "keep_checkpoints",
    "stats_batches",
    "tensorboard",
    "compile",
    "deterministic",
)
#: ``runs.<name>.loader`` keys of the same kind (hashing the shards does not change them).
RESUME_INDEPENDENT_LOADER = ("verify",)


@runtime_checkable
class Stateful(Protocol):
    """What a checkpoint component has (``torch.nn.Module``, optimizers, the loader...)."""

    def state_dict(self) -> Any:
        """The component's state: plain containers and tensors."""
        ...

    def load_state_dict(self, state: Any, /) -> Any:
        """Restore what ``state_dict`` returned."""
        ...


def resume_identity(
    run_config: Mapping[str, Any],
    model_config: Mapping[str, Any],
    corpus: Mapping[str, Any],
    *,
    max_steps: int,
) -> dict[str, Any]:
    """Everything that decides a run's weights at a given step, as a plain dict.

    ``run_config`` is ``RunConfig.to_dict()`` (fields in :data:`RESUME_INDEPENDENT` are
    dropped), ``model_config`` the resolved ``ModelConfig.to_dict()``, ``corpus`` the corpus'
    content identity (vocabulary hash, tokenizer, shards' hashes). ``max_steps`` (resolved
    from ``epochs`` when that is given) is part of it only when the learning rate decays after
    warm-up (``schedule.min_lr_ratio < 1``): the cosine's length then changes the rate of every
    step, so a longer run is a different run from its first step; with a constant rate after
    warm-up, raising ``max_steps`` continues the run exactly as a fresh longer run would go.
    """
    run = {k: v for k, v in run_config.items() if k not in RESUME_INDEPENDENT}
    loader = run.get("loader") or {}
    run["loader"] = {k: v for k, v in loader.items() if k not in RESUME_INDEPENDENT_LOADER}
    decays = run_config.get("schedule", {}).get("min_lr_ratio", 0.0) < 1
    return {
        "run": run,
        "schedule_steps": max_steps if decays else None,
        "model": dict(model_config),
        "corpus": dict(corpus),
    }


def identity_hash(identity: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``identity`` (sorted keys, no whitespace)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def identity_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key.path: old -> new`` for every leaf that differs between two identities."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{where}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{where}: {old[key]!r} -> (absent)")
            else:
                out += identity_diff(old[key], new[key], where)
        return out
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        old, new = list(old), list(new)
    return [] if old == new else [f"{prefix or '(all)'}: {old!r} -> {new!r}"]


class CheckpointManager:
    """Save, list, prune and restore the checkpoints of one run directory.

    Parameters
    ----------
    directory
        Where the checkpoints live (created on first save).
    keep
        How many of the newest checkpoints to keep.
    identity
        The run's :func:`resume_identity`: recorded in every checkpoint; only checkpoints
        recording the same one are loaded. ``None``: no check (and none recorded).
    writer
        Whether this process writes (rank 0 of a distributed run; the others only take part
        in the components' collective ``state_dict`` calls).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int = 3,
        identity: Mapping[str, Any] | None = None,
        writer: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.identity = dict(identity) if identity is not None else None
        self.identity_hash = identity_hash(identity) if identity is not None else None
        self.writer = writer

    def path(self, step: int) -> Path:
        """The checkpoint file of ``step``."""
        return self.directory / f"step-{step:08d}.pt"

    def save(self, step: int, components: Mapping[str, Any]) -> Path | None:
        """Write the checkpoint of ``step``: each component's ``state_dict()``, other values as is.

        Every process calls it (a component's ``state_dict`` may gather from all ranks); only
        the writer writes, and returns the path. Values must be plain containers and tensors.
        """
        state = {k: v.state_dict() if isinstance(v, Stateful) else v for k, v in components.items()}
        if not self.writer:
            return None
        data = save_bytes({"format": CHECKPOINT_FORMAT, "step": step, **state})
        path = self.path(step)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        meta: dict[str, Any] = {
            "step": step,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        if self.identity is not None:
            meta.update(identity_hash=self.identity_hash, identity=self.identity)
        write_text_atomic(path.with_suffix(".json"), json.dumps(meta) + "\n")
        self.prune()
        return path

    @staticmethod
    def restore(state: Mapping[str, Any], components: Mapping[str, Stateful]) -> None:
        """Load ``state[name]`` into each component, in the order given."""
        for name, component in components.items():
            component.load_state_dict(state[name])

    def record(self, step: int) -> dict[str, Any] | None:
        """The JSON record of ``step`` (size, hash, identity), ``None`` if unreadable."""
        try:
            meta = json.loads(self.path(step).with_suffix(".json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return meta if isinstance(meta, dict) else None

    def stale(self, *, max_step: int | None = None) -> dict[int, list[str]]:
        """Checkpoints this run must not resume from: step -> why (the settings that differ).

        Those whose record holds another identity (or none: written before identities were
        recorded), and those past ``max_step``. Checkpoints without a readable record are
        damaged, not stale: :meth:`load_latest` skips them and pruning removes them.
        """
        out: dict[int, list[str]] = {}
        for step in self.steps():
            meta = self.record(step)
            if meta is None:
                continue
            if max_step is not None and step > max_step:
                out[step] = [f"step {step} is past max_steps {max_step}"]
            elif self.identity is not None and meta.get("identity_hash") != self.identity_hash:
                old = meta.get("identity")
                out[step] = (
                    identity_diff(old, self.identity)
                    if isinstance(old, dict)
                    else ["no run config recorded (a checkpoint from an older scfm)"]
                ) or ["identity hash differs"]
        return out

    def set_aside(self, stale: Mapping[int, list[str]]) -> Path | None:
        """Move the ``stale`` checkpoints to ``<directory>/stale/`` (replacing an older set).

        Logs which settings differ. Returns the directory, or ``None`` when there was nothing.
        """
        if not stale:
            return None
        dest = self.directory / STALE_DIR
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        reasons: dict[tuple[str, ...], list[int]] = {}
        for step, why in stale.items():
            reasons.setdefault(tuple(why), []).append(step)
            for path in (self.path(step), self.path(step).with_suffix(".json")):
                if path.exists():
                    path.replace(dest / path.name)
        for why, steps in reasons.items():
            log.warning(
                "checkpoints of steps %s were made under another run config and will not be "
                "resumed (moved to %s): %s",
                ", ".join(map(str, sorted(steps))),
                dest,
                "; ".join(why),
            )
        return dest

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

    def load_latest(
        self, *, max_step: int | None = None, map_location: Any = "cpu"
    ) -> dict[str, Any] | None:
        """The newest valid checkpoint, falling back past damaged ones with a warning.

        Checkpoints of :meth:`stale` (another identity, or past ``max_step``) are not
        considered. Returns ``None`` when there is no valid checkpoint (a fresh run).
        """
        stale = self.stale(max_step=max_step)
        for step in reversed(self.steps()):
            if step in stale:
                continue
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
        MAX_LEN_COUNTS: "genes",
        **(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(save_bytes(payload))
    return path


def model_config_dict(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model_config`` of a model.pt payload, ``max_len`` in genes per cell.

    Files written before ``max_len`` had one meaning stored tokens including ``<cls>``.
    """
    config = dict(payload["model_config"])
    if payload.get(MAX_LEN_COUNTS) != "genes" and isinstance(config.get("max_len"), int):
        config["max_len"] -= 1
    return config


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
