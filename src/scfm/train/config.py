"""Run configuration: one validated dataclass per ``runs.<name>`` block of the workflow config.

``RunConfig.from_dict`` takes the JSON/YAML block, rejects unknown keys and reports every
problem at once (:class:`~scfm.errors.ScfmConfigError`); ``to_dict`` gives the resolved block
back (stored in checkpoints, ``config.yaml`` and ``model.pt``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from scfm.errors import ScfmConfigError

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp32")
# LoaderConfig fields a run may set under ``loader``; split/batch_size/mask_ratio/seed come
# from the run itself.
LOADER_KEYS = (
    "block_size",
    "shuffle_buffer",
    "weighted",
    "pad_to",
    "max_len",
    "drop_last",
    "verify",
)


@dataclass(frozen=True)
class ObjectiveSpec:
    """One training objective: ``name`` (mse, ordinal, ce, contrastive), weight, parameters."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW settings (fused on CUDA)."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio*lr``."""

    warmup_steps: int = 0
    min_lr_ratio: float = 0.1


@dataclass(frozen=True)
class RunConfig:
    """A training run (``runs.<name>``).

    Batch arithmetic: every optimizer step consumes ``grad_accum`` micro-batches of
    ``batch_size`` cells on every rank, so the global batch is
    ``batch_size * grad_accum * world_size`` cells.

    Parameters
    ----------
    objectives
        ``{name: weight}`` or ``{name: {"weight": w, **params}}``; the loss is the weighted sum.
    max_steps, epochs
        Length of the run: give exactly one. ``epochs`` is converted to steps from the
        smallest rank's batches per epoch.
    clip_norm
        Gradient norm clipping threshold (``None``: no clipping; the norm is still checked).
    precision
        "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16" or "fp32" force it.
    deterministic
        ``torch.use_deterministic_algorithms(True)`` (and no TF32): bitwise reproducible
        resumes on CPU.
    log_every, val_every, checkpoint_every
        In optimizer steps; the last step always logs and checkpoints. ``val_every`` 0
        disables validation.
    val_batches
        Batches per rank of the val split per validation (the same ones each time).
    keep_checkpoints
        Checkpoints kept on disk (the newest).
    stats_batches
        Train batches sampled at start for the trivial predictors' statistics.
    loader
        Extra :class:`~scfm.data.LoaderConfig` fields (block_size, shuffle_buffer, weighted,
        pad_to, max_len, drop_last, verify); ``max_len`` counts genes per cell, like the
        tokenizer's (``<cls>`` is added on top).
    """

    objectives: tuple[ObjectiveSpec, ...] = (ObjectiveSpec("mse"),)
    corpus: str = ""
    tokenizer: str = ""
    model: str = ""
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float | None = None
    clip_norm: float | None = 1.0
    precision: Precision = "auto"
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    mask_ratio: float = 0.15
    num_workers: int = 0
    log_every: int = 10
    val_every: int = 100
    val_batches: int = 8
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    stats_batches: int = 16
    tensorboard: bool = False
    loader: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ScfmConfigError(problems, source="run config")

    @classmethod
    def from_dict(cls, block: dict[str, Any], *, source: str = "run config") -> RunConfig:
        """Build from a config block; unknown keys and bad values are all reported together."""
        block = dict(block)
        problems = [f"{k}: unknown key" for k in block if k not in _FIELDS]
        nested: dict[str, Any] = {}
        for key, klass in (("optimizer", OptimizerConfig), ("schedule", ScheduleConfig)):
            sub = block.pop(key, None) or {}
            if not isinstance(sub, dict):
                problems.append(f"{key}: {sub!r} is not a mapping")
                continue
            names = {f.name for f in dataclasses.fields(klass)}
            problems += [f"{key}.{k}: unknown key" for k in sub if k not in names]
            sub = {k: v for k, v in sub.items() if k in names}
            if "betas" in sub and isinstance(sub["betas"], list | tuple):
                sub["betas"] = tuple(sub["betas"])
            nested[key] = klass(**sub)
        if "objectives" in block:
            objectives, bad = _objectives(block.pop("objectives"))
            problems += bad
            nested["objectives"] = objectives
        if problems:
            raise ScfmConfigError(problems, source=source)
        known = {k: v for k, v in block.items() if k in _FIELDS}
        try:
            return cls(**known, **nested)
        except ScfmConfigError as e:
            raise ScfmConfigError(e.problems, source=source) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict that ``from_dict`` turns back into this config."""
        out = dataclasses.asdict(self)
        out["objectives"] = {o.name: {"weight": o.weight, **o.params} for o in self.objectives}
        out["optimizer"]["betas"] = list(self.optimizer.betas)
        return out

    @property
    def objective_weights(self) -> dict[str, float]:
        """Objective name -> weight, in config order."""
        return {o.name: o.weight for o in self.objectives}


_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def _objectives(raw: Any) -> tuple[tuple[ObjectiveSpec, ...], list[str]]:
    if not isinstance(raw, dict) or not raw:
        return (), [f"objectives: {raw!r} is not a non-empty mapping of name -> weight or params"]
    specs, problems = [], []
    for name, value in raw.items():
        if isinstance(value, dict):
            params = dict(value)
            weight = params.pop("weight", 1.0)
        else:
            weight, params = value, {}
        specs.append(ObjectiveSpec(str(name), weight, params))
    return tuple(specs), problems


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _problems(c: RunConfig) -> list[str]:
    p: list[str] = []
    if not c.objectives:
        p.append("objectives: at least one objective is needed")
    names = [o.name for o in c.objectives]
    if len(set(names)) != len(names):
        p.append(f"objectives: duplicate names in {names}")
    for o in c.objectives:
        if not _is_num(o.weight) or o.weight < 0:
            p.append(f"objectives.{o.name}.weight: {o.weight!r} is not a number >= 0")
        if not isinstance(o.params, dict):
            p.append(f"objectives.{o.name}: params {o.params!r} are not a mapping")
    for name in ("corpus", "tokenizer", "model"):
        if not isinstance(getattr(c, name), str):
            p.append(f"{name}: {getattr(c, name)!r} is not a string")
    opt, sched = c.optimizer, c.schedule
    if not _is_num(opt.lr) or opt.lr <= 0:
        p.append(f"optimizer.lr: {opt.lr!r} is not a finite number > 0")
    if not _is_num(opt.weight_decay) or opt.weight_decay < 0:
        p.append(f"optimizer.weight_decay: {opt.weight_decay!r} is not a number >= 0")
    if not (
        isinstance(opt.betas, tuple)
        and len(opt.betas) == 2
        and all(_is_num(b) and 0 <= b < 1 for b in opt.betas)
    ):
        p.append(f"optimizer.betas: {opt.betas!r} is not two numbers in [0, 1)")
    if not _is_num(opt.eps) or opt.eps <= 0:
        p.append(f"optimizer.eps: {opt.eps!r} is not a number > 0")
    if not _is_int(sched.warmup_steps) or sched.warmup_steps < 0:
        p.append(f"schedule.warmup_steps: {sched.warmup_steps!r} is not an integer >= 0")
    if not _is_num(sched.min_lr_ratio) or not 0 <= sched.min_lr_ratio <= 1:
        p.append(f"schedule.min_lr_ratio: {sched.min_lr_ratio!r} is not a number in [0, 1]")
    for name, low in (
        ("batch_size", 1),
        ("grad_accum", 1),
        ("num_workers", 0),
        ("log_every", 1),
        ("val_every", 0),
        ("val_batches", 1),
        ("checkpoint_every", 1),
        ("keep_checkpoints", 1),
        ("stats_batches", 1),
    ):
        value = getattr(c, name)
        if not _is_int(value) or value < low:
            p.append(f"{name}: {value!r} is not an integer >= {low}")
    if (c.max_steps is None) == (c.epochs is None):
        p.append(f"max_steps/epochs: give exactly one (got {c.max_steps!r}, {c.epochs!r})")
    if c.max_steps is not None and (not _is_int(c.max_steps) or c.max_steps < 1):
        p.append(f"max_steps: {c.max_steps!r} is not an integer >= 1")
    if c.epochs is not None and (not _is_num(c.epochs) or c.epochs <= 0):
        p.append(f"epochs: {c.epochs!r} is not a number > 0")
    if c.clip_norm is not None and (not _is_num(c.clip_norm) or c.clip_norm <= 0):
        p.append(f"clip_norm: {c.clip_norm!r} is not null or a number > 0")
    if c.precision not in PRECISIONS:
        p.append(f"precision: {c.precision!r} is not one of {PRECISIONS}")
    for name in ("compile", "deterministic", "tensorboard"):
        if not isinstance(getattr(c, name), bool):
            p.append(f"{name}: {getattr(c, name)!r} is not a boolean")
    if not _is_int(c.seed) or not 0 <= c.seed < 2**31:
        p.append(f"seed: {c.seed!r} is not an integer in [0, 2**31)")
    if not _is_num(c.mask_ratio) or not 0 <= c.mask_ratio < 1:
        p.append(f"mask_ratio: {c.mask_ratio!r} is not a number in [0, 1)")
    if not isinstance(c.loader, dict):
        p.append(f"loader: {c.loader!r} is not a mapping")
    else:
        p += [
            f"loader.{k}: not a settable loader key {LOADER_KEYS}"
            for k in c.loader
            if k not in LOADER_KEYS
        ]
    return p
