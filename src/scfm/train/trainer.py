"""The training loop: one function, :func:`train`, readable top to bottom.

Per step: learning rate -> ``grad_accum`` micro-batches (forward, loss, backward; DDP syncs
gradients on the last one) -> clip (and check the norm is finite) -> AdamW step -> log ->
validate -> checkpoint. Everything that must survive a restart (model and objective heads,
optimizer, schedule, every rank's loader position and RNG states, step) goes through one
:class:`~scfm.train.checkpoint.CheckpointManager`; a rerun resumes from the newest valid
checkpoint by itself.

Loss normalisation. Each micro-batch's loss is the weighted sum of its objectives' means;
micro-batch ``m`` of a step contributes ``cells_m / cells_step`` of it, ``cells_step`` being
the cells of the whole global step (all ranks, all micro-batches). With full batches that is
the usual ``1 / (grad_accum * world_size)``; it also makes one process with ``grad_accum=2``
and two processes with ``grad_accum=1`` compute the same update from the same batches.

metrics.tsv (long format, tab-separated, one header line). One row per (step, split,
objective) every ``log_every`` steps (train) and ``val_every`` steps (val):
``step split objective loss n trivial_<name>... lr grad_norm tokens_per_s cells_per_s mfu``.
``objective`` is an objective's name (its unweighted loss, mean over its ``n`` positions or
cells, pooled over ranks and the logging window) or "total" (the objectives' pooled losses,
weighted as in the optimised loss). ``trivial_<name>`` are the trivial predictors' losses
on the same positions (empty where they do not apply; ``*_acc`` columns are accuracies).
``lr``, ``grad_norm`` (pre-clip, last step) and throughput (global non-pad tokens and cells
per second over the window) are on train "total" rows only; ``mfu`` is model FLOPs
utilisation on CUDA and empty on CPU.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from scfm.atomic import atomic_path, write_text_atomic
from scfm.data import CorpusLoader, LoaderConfig
from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.tokenize.vocab import Vocab
from scfm.train.checkpoint import CheckpointManager, export_model
from scfm.train.config import RunConfig
from scfm.train.distributed import (
    DistEnv,
    all_reduce_max,
    all_reduce_min,
    all_reduce_sum,
    gather_objects,
    setup_distributed,
    teardown_distributed,
)

log = logging.getLogger(__name__)

#: Exit status of the CLI when a signal (SIGTERM/SIGUSR1) stopped the run after a checkpoint:
#: EX_TEMPFAIL, "try again" -- a rerun (Slurm --requeue, Snakemake --retries) resumes.
REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or gradient: the update was not applied, no checkpoint was written."""


@dataclass
class _Window:
    """Sums over the current logging window (this rank's share, reduced when logged)."""

    loss: dict[str, float] = field(default_factory=dict)  # objective -> sum(loss * n)
    n: dict[str, float] = field(default_factory=dict)
    trivial: dict[tuple[str, str], float] = field(default_factory=dict)  # sum(t * n)
    trivial_n: dict[tuple[str, str], float] = field(default_factory=dict)
    tokens: float = 0.0
    cells: float = 0.0
    flops: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, name: str, loss: float, n: float, trivial: dict[str, float]) -> None:
        self.loss[name] = self.loss.get(name, 0.0) + loss * n
        self.n[name] = self.n.get(name, 0.0) + n
        for key, value in trivial.items():
            if math.isfinite(value):
                k = (name, key)
                self.trivial[k] = self.trivial.get(k, 0.0) + value * n
                self.trivial_n[k] = self.trivial_n.get(k, 0.0) + n

    def state_dict(self) -> dict[str, Any]:
        """The sums so far, so that a run stopped between two log steps logs the same row."""
        pairs = lambda d: [[a, b, v] for (a, b), v in d.items()]  # noqa: E731
        return {
            "loss": dict(self.loss),
            "n": dict(self.n),
            "trivial": pairs(self.trivial),
            "trivial_n": pairs(self.trivial_n),
            "counts": [self.tokens, self.cells, self.flops],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> _Window:
        w = cls()
        if state:  # checkpoints older than this field start an empty window
            w.loss, w.n = dict(state["loss"]), dict(state["n"])
            w.trivial = {(a, b): v for a, b, v in state["trivial"]}
            w.trivial_n = {(a, b): v for a, b, v in state["trivial_n"]}
            w.tokens, w.cells, w.flops = state["counts"]
        return w


# --------------------------------------------------------------------------- the loop


def train(
    run_cfg: RunConfig | dict[str, Any],
    model_cfg: Any,
    manifest_path: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
) -> dict[str, Any]:
    """Train (or resume training) a model on a corpus; write everything under ``out_dir``.

    Parameters
    ----------
    run_cfg
        :class:`RunConfig` or its dict (``runs.<name>``).
    model_cfg
        ``scfm.models.ModelConfig`` or its dict (``models.<name>``, optional ``preset``);
        ``vocab_size``, ``value_kind``, ``n_value_tokens`` and ``max_len`` are filled in
        from the corpus manifest (given ones must agree with it).
    manifest_path
        The corpus ``manifest.json`` (its ``vocab_path`` must exist).
    out_dir
        Run directory: ``metrics.tsv``, ``checkpoints/``, ``config.yaml``, ``model.pt``,
        ``loss.png`` (and ``tensorboard/``).
    device
        "auto" (``cuda:LOCAL_RANK`` when available), "cpu" or "cuda".

    Returns
    -------
    dict
        ``status`` ("completed" or "interrupted"), ``step``, ``resumed_from``, final
        losses, paths. Runs under torchrun join the process group from the environment.

    Raises
    ------
    TrainingDivergedError
        A non-finite loss or gradient (names the step and objective).
    """
    env = setup_distributed(device)
    try:
        with _StopOnSignal() as stop:
            return _train(env, run_cfg, model_cfg, Path(manifest_path), Path(out_dir), stop)
    finally:
        teardown_distributed(env)


def _train(
    env: DistEnv,
    run_cfg: RunConfig | dict[str, Any],
    model_cfg: Any,
    manifest_path: Path,
    out: Path,
    stop: _StopOnSignal,
) -> dict[str, Any]:
    run = run_cfg if isinstance(run_cfg, RunConfig) else RunConfig.from_dict(run_cfg)
    corpus = _read_corpus(manifest_path)
    mcfg = _model_config(model_cfg, corpus["manifest"], run)
    _set_determinism(run.deterministic)
    torch.manual_seed(run.seed)  # the same initial weights on every rank

    # ---- data: this rank's share of train, val for validation, a sample for the statistics
    loader_args = dict(run.loader, max_len=run.loader.get("max_len") or mcfg.max_len)
    train_cfg = LoaderConfig(
        split="train",
        batch_size=run.batch_size,
        mask_ratio=run.mask_ratio,
        seed=run.seed,
        **loader_args,
    )
    train_loader = CorpusLoader(
        manifest_path, train_cfg, num_workers=run.num_workers, pin_memory=env.device.type == "cuda"
    )
    val_loader = _val_loader(manifest_path, train_cfg, run)
    stats = _value_stats(manifest_path, train_cfg, run, mcfg)
    max_steps = _max_steps(run, train_loader, env)

    # ---- model, objective heads, optimizer, schedule
    model = _models().build_model(mcfg).to(env.device)
    objectives = _build_objectives(run, mcfg)
    net = _Net(model, objectives).to(env.device)
    optimizer = _optimizer(net, run, env.device)
    schedule = Schedule(
        run.optimizer.lr, run.schedule.warmup_steps, max_steps, run.schedule.min_lr_ratio
    )
    fwd: nn.Module = torch.compile(net) if run.compile else net  # type: ignore[assignment]
    if env.distributed:
        ids = [env.local_rank] if env.device.type == "cuda" else None
        fwd = DistributedDataParallel(fwd, device_ids=ids)
    autocast = _autocast(run.precision, env.device)

    # ---- resume, or start fresh
    ckpt = CheckpointManager(out / "checkpoints", keep=run.keep_checkpoints)
    meta = {
        "run_config": run.to_dict(),
        "model_config": mcfg.to_dict(),
        "vocab": corpus["vocab"],
        "tokenizer": corpus["tokenizer"],
        "vocab_hash": corpus["vocab_hash"],
    }
    state = ckpt.load_latest()
    step = 0
    if state is not None:
        step = _restore(state, net, optimizer, schedule, train_loader, env, run)
        log.info("resuming from step %d (%s)", step, ckpt.path(step))
    else:
        # per-rank streams for dropout and subsets; Python's and NumPy's too, so that the
        # checkpoints' saved RNG states (and so their bytes) are the same in every run
        torch.manual_seed(run.seed + env.rank)
        random.seed(run.seed + env.rank)
        np.random.seed(run.seed + env.rank)
    resumed_from = step or None
    metrics = _Metrics(
        out / "metrics.tsv",
        _trivial_columns(stats, run, train_loader),
        env,
        resume_step=step,
        saved=state.get("metrics") if state is not None else None,
        tensorboard=run.tensorboard,
    )
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config_yaml(out / "config.yaml", meta, env, max_steps)
    if step == 0 and val_loader is not None:
        metrics.write(0, "val", _evaluate(net, val_loader, stats, run, env, autocast))

    # ---- the loop
    window = _Window.from_state(state["window"][env.rank] if state and "window" in state else None)
    batches = _endless(train_loader)
    bar = _progress(env, step, max_steps)
    peak = _peak_flops(env.device)
    grad_norm = float("nan")
    while step < max_steps:
        lr = schedule.set_lr(optimizer, step)
        micro = [next(batches) for _ in range(run.grad_accum)]
        cells_step = all_reduce_sum(torch.tensor(float(sum(len(b["genes"]) for b in micro))), env)
        step_losses: list[dict[str, float]] = []
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or not env.distributed else fwd.no_sync()  # type: ignore[operator]
            share = len(batch["genes"]) / float(cells_step)
            with sync:
                with autocast:
                    results = fwd(_to_device(batch, env.device))
                    total = _weighted(net.objectives, results)
                (total * share * env.world_size).backward()  # DDP averages over ranks
            step_losses.append({k: float(r.loss.detach()) for k, r in results.items()})
            _account(window, batch, results, stats, net, env)
        grad_norm = float(nn.utils.clip_grad_norm_(net.parameters(), run.clip_norm or math.inf))
        if not math.isfinite(grad_norm):
            _diverged(step + 1, step_losses, grad_norm, env, ckpt)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

        if step % run.log_every == 0 or step == max_steps:
            rows = _reduce_window(window, net.objectives, env, peak)
            metrics.write(step, "train", rows, lr=lr, grad_norm=grad_norm)
            bar.set_postfix(loss=f"{rows['total']['loss']:.4f}")
            window = _Window()
        if val_loader is not None and (step % run.val_every == 0 or step == max_steps):
            metrics.write(step, "val", _evaluate(net, val_loader, stats, run, env, autocast))
        stopping = bool(all_reduce_max(torch.tensor(int(stop.requested)), env))
        if step % run.checkpoint_every == 0 or step == max_steps or stopping:
            _save(ckpt, step, net, optimizer, schedule, train_loader, window, env, meta, metrics)
        if stopping:
            log.warning("stopped by signal after step %d (checkpoint written)", step)
            break
    bar.close()

    # ---- outputs: inference file, loss curves
    completed = step >= max_steps
    if env.is_main and completed:
        export_model(
            out / "model.pt",
            state_dict=model.state_dict(),
            model_config=meta["model_config"],
            vocab=meta["vocab"],
            tokenizer=meta["tokenizer"],
            vocab_hash=meta["vocab_hash"],
            extra={
                "heads": objectives.state_dict(),
                "step": step,
                "run_config": meta["run_config"],
                # the trivial predictors' statistics, so that masked-prediction scores on
                # other data are read against the same baselines as training's
                "value_stats": stats.to_payload() if stats is not None else None,
            },
        )
    if env.is_main:
        _plot(out / "metrics.tsv", out / "loss.png")
    metrics.close()
    return {
        "status": "completed" if completed else "interrupted",
        "step": step,
        "max_steps": max_steps,
        "resumed_from": resumed_from,
        "world_size": env.world_size,
        "global_batch": run.batch_size * run.grad_accum * env.world_size,
        "final": metrics.last,
        "out_dir": str(out),
    }


# --------------------------------------------------------------------------- model glue


def _models() -> Any:
    import scfm.models

    return scfm.models


class _Net(nn.Module):
    """The model plus its objectives (heads included): one module for DDP and the optimizer."""

    def __init__(self, model: nn.Module, objectives: nn.ModuleDict) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        outputs = self.model(batch)
        return {name: obj(self.model, batch, outputs) for name, obj in self.objectives.items()}


def _build_objectives(run: RunConfig, mcfg: Any) -> nn.ModuleDict:
    """Objectives (and their heads) by name; each knows its ``weight``."""
    built = _models().build_objectives(run.to_dict()["objectives"], mcfg)
    return nn.ModuleDict({o.name: o for o in built})


def _weighted(objectives: nn.ModuleDict, results: dict[str, Any]) -> torch.Tensor:
    return sum(objectives[k].weight * r.loss for k, r in results.items())  # type: ignore[return-value]


def _value_stats(manifest_path: Path, train_cfg: LoaderConfig, run: RunConfig, mcfg: Any) -> Any:
    """Trivial predictors' statistics from the first batches of a fixed pass over train.

    Every rank reads the same cells (rank 0 of 1), so the statistics agree without
    communication and a resumed run recomputes exactly the same ones.
    """
    cfg = LoaderConfig(**{**_fields(train_cfg), "seed": run.seed + 1})
    loader = CorpusLoader(manifest_path, cfg, num_workers=0, rank=0, world_size=1)
    with contextlib.closing(iter(loader)) as it:
        sample = [b for _, b in zip(range(run.stats_batches), it, strict=False)]
    return _models().ValueStats.from_batches(sample, mcfg)


def _trivial(name: str, batch: dict[str, Any], stats: Any) -> dict[str, float]:
    out = _models().trivial_losses(name, batch, stats)
    return {k if k.startswith("trivial_") else f"trivial_{k}": float(v) for k, v in out.items()}


def _trivial_columns(stats: Any, run: RunConfig, loader: CorpusLoader) -> list[str]:
    """Trivial predictor columns: whatever the heads report for these objectives."""
    cfg = LoaderConfig(**{**_fields(loader.config), "batch_size": 4})
    probe = CorpusLoader(loader.corpus.manifest_path, cfg, num_workers=0, rank=0, world_size=1)
    with contextlib.closing(iter(probe)) as it:
        batch = next(it)
    names = {k for o in run.objectives for k in _trivial(o.name, batch, stats)}
    return sorted(names)


def _model_config(model_cfg: Any, manifest: dict[str, Any], run: RunConfig) -> Any:
    """The model config with the corpus' vocabulary size, value kind and length filled in."""
    config_cls = _models().ModelConfig
    corpus = {
        "vocab_size": manifest["vocab_size"],
        "value_kind": manifest["value_kind"],
        "n_value_tokens": manifest.get("n_value_tokens"),
        "max_len": run.loader.get("max_len") or manifest["max_len"] + 1,
    }
    given = model_cfg.to_dict() if isinstance(model_cfg, config_cls) else dict(model_cfg)
    problems = [
        f"{k}: {given[k]!r} disagrees with the corpus manifest ({v!r})"
        for k, v in corpus.items()
        if k != "max_len" and k in given and given[k] != v
    ]
    if problems:
        raise ScfmConfigError(problems, source="model config")
    return config_cls.from_dict({**corpus, **given})


# --------------------------------------------------------------------------- steps


def _account(
    window: _Window,
    batch: dict[str, Any],
    results: dict[str, Any],
    stats: Any,
    net: _Net,
    env: DistEnv,
) -> None:
    """Add one micro-batch's losses, trivial losses and work to the logging window."""
    for name, r in results.items():
        window.add(name, float(r.loss.detach()), float(r.n), _trivial(name, batch, stats))
    tokens = int((~batch["padding_mask"]).sum())
    window.tokens += tokens
    window.cells += len(batch["genes"])
    flops_per_token = getattr(net.model, "flops_per_token", None)
    if env.device.type == "cuda" and flops_per_token is not None:
        b, length = batch["genes"].shape
        window.flops += 3.0 * flops_per_token(length) * b * length  # forward + backward


def _reduce_window(
    window: _Window, objectives: nn.ModuleDict, env: DistEnv, peak: float | None
) -> dict[str, dict]:
    """Pool the window over ranks: per-objective rows plus "total" (their weighted sum)."""
    names = sorted(window.loss)
    tkeys = sorted(window.trivial)
    flat = [window.loss[k] for k in names] + [window.n[k] for k in names]
    flat += [window.trivial[k] for k in tkeys] + [window.trivial_n[k] for k in tkeys]
    flat += [window.tokens, window.cells, window.flops]
    sums = all_reduce_sum(torch.tensor(flat, dtype=torch.float64), env).tolist()
    k, t = len(names), len(tkeys)
    loss, n = sums[:k], sums[k : 2 * k]
    triv, triv_n = sums[2 * k : 2 * k + t], sums[2 * k + t : 2 * k + 2 * t]
    tokens, cells, flops = sums[2 * k + 2 * t :]
    seconds = max(time.perf_counter() - window.start, 1e-9)
    rows: dict[str, dict] = {
        name: {"loss": loss[i] / max(n[i], 1e-12), "n": int(n[i])} for i, name in enumerate(names)
    }
    for i, (name, key) in enumerate(tkeys):
        rows[name][key] = triv[i] / max(triv_n[i], 1e-12)
    rows["total"] = {
        "loss": sum(objectives[name].weight * rows[name]["loss"] for name in names),
        "tokens_per_s": tokens / seconds,
        "cells_per_s": cells / seconds,
        "mfu": flops / seconds / (peak * env.world_size) if peak and flops else None,
    }
    return rows


def _evaluate(
    net: _Net, loader: CorpusLoader, stats: Any, run: RunConfig, env: DistEnv, autocast: Any
) -> dict[str, dict]:
    """Loss on the first ``val_batches`` batches of val (the same batches and masks each time)."""
    net.eval()
    loader.set_epoch(0)
    with contextlib.closing(iter(loader)) as it:
        rows = evaluate_batches(net, itertools.islice(it, run.val_batches), stats, env, autocast)
    net.train()
    return rows


@torch.no_grad()
def evaluate_batches(
    net: _Net, batches: Iterable[dict[str, Any]], stats: Any, env: DistEnv, autocast: Any
) -> dict[str, dict]:
    """Validation rows over ``batches``: each objective's loss and trivial predictors, "total".

    The definition of the val rows of ``metrics.tsv``: per objective the loss pooled over the
    batches (mean over its ``n`` positions or cells) with the trivial predictors' losses on
    the same positions, and "total" (the weighted sum of the pooled losses); pooled over
    ranks when ``env`` is distributed. ``net`` should be in eval mode.
    """
    window = _Window()
    for batch in batches:
        with autocast:
            results = net(_to_device(batch, env.device))
        for name, r in results.items():
            window.add(name, float(r.loss), float(r.n), _trivial(name, batch, stats))
    rows = _reduce_window(window, net.objectives, env, None)
    return {k: {"loss": v["loss"]} if k == "total" else v for k, v in rows.items()}


def _diverged(
    step: int, losses: list[dict[str, float]], norm: float, env: DistEnv, ckpt: CheckpointManager
) -> None:
    bad = [
        f"{name} (rank {env.rank}, micro-batch {i})"
        for i, d in enumerate(losses)
        for name, v in d.items()
        if not math.isfinite(v)
    ]
    bad = [b for per_rank in gather_objects(bad, env) for b in per_rank]
    steps = ckpt.steps()
    where = f"{ckpt.path(steps[-1])}" if steps else "none yet"
    what = ", ".join(bad) if bad else "none (losses finite, the gradient overflowed)"
    raise TrainingDivergedError(
        f"non-finite loss at step {step}: objective {what}; gradient norm {norm}. The update "
        f"was not applied and no checkpoint was written; last good checkpoint: {where}. "
        "Lower optimizer.lr, raise schedule.warmup_steps or set clip_norm."
    )


def _endless(loader: CorpusLoader) -> Iterator[dict[str, Any]]:
    """Batches across epochs (the loader advances its epoch when one is exhausted)."""
    while True:
        yield from loader


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


# --------------------------------------------------------------------------- set-up


class Schedule:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio * lr``."""

    def __init__(self, lr: float, warmup: int, total: int, min_ratio: float) -> None:
        self.lr, self.warmup, self.total, self.min_ratio = lr, warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        """Learning rate for the update that follows ``step`` completed ones."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return self.lr * (
            self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's learning rate for ``step``; return it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The schedule's parameters (it has no other state: lr is a function of the step)."""
        return {
            "lr": self.lr,
            "warmup": self.warmup,
            "total": self.total,
            "min_ratio": self.min_ratio,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Warn when the schedule changed since the checkpoint (the new one is used)."""
        if state != self.state_dict():
            log.warning(
                "learning-rate schedule changed since the checkpoint: %s -> %s",
                state,
                self.state_dict(),
            )


def _optimizer(net: nn.Module, run: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (not biases or norms)."""
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": run.optimizer.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=run.optimizer.lr,
        betas=run.optimizer.betas,
        eps=run.optimizer.eps,
        fused=device.type == "cuda",
    )


def _autocast(precision: str, device: torch.device) -> Any:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _set_determinism(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _fields(cfg: LoaderConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in LoaderConfig.__dataclass_fields__}


def _val_loader(
    manifest_path: Path, train_cfg: LoaderConfig, run: RunConfig
) -> CorpusLoader | None:
    if run.val_every == 0:
        return None
    cfg = LoaderConfig(**{**_fields(train_cfg), "split": "val", "shuffle": False})
    try:
        return CorpusLoader(manifest_path, cfg, num_workers=0)
    except ScfmInputError as e:
        if "no cells" not in str(e):
            raise
        log.warning("the corpus has no val cells: validation is off")
        return None


def _max_steps(run: RunConfig, loader: CorpusLoader, env: DistEnv) -> int:
    if run.max_steps is not None:
        return run.max_steps
    per_epoch = all_reduce_min(torch.tensor(len(loader) // run.grad_accum), env)
    return max(1, math.ceil(run.epochs * int(per_epoch)))  # type: ignore[operator]


def _read_corpus(manifest_path: Path) -> dict[str, Any]:
    """Manifest, vocabulary (plain lists), tokenizer parameters and vocab hash."""
    import json

    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ScfmInputError(
            manifest_path, "file", f"not readable ({e})", "a corpus manifest"
        ) from None
    vocab_path = manifest_path.parent / manifest.get("vocab_path", "vocab.tsv")
    if not vocab_path.is_file():
        raise ScfmInputError(
            manifest_path,
            "vocab_path",
            f"{vocab_path} does not exist",
            "the corpus vocabulary (model.pt stores it)",
        )
    vocab = Vocab.read(vocab_path)
    if vocab.hash != manifest.get("vocab_hash"):
        raise ScfmInputError(
            vocab_path,
            "hash",
            f"{vocab.hash} != manifest {manifest.get('vocab_hash')}",
            "the vocabulary the shards were made with",
        )
    table = vocab.table
    return {
        "manifest": manifest,
        "vocab": {
            "token": table["token"].astype(str).tolist(),
            "kind": table["kind"].astype(str).tolist(),
            "gene_symbol": table["gene_symbol"].fillna("").astype(str).tolist(),
        },
        "tokenizer": {
            "name": manifest.get("tokenizer", ""),
            **(manifest.get("tokenizer_params") or {}),
        },
        "vocab_hash": vocab.hash,
    }


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _save(
    ckpt: CheckpointManager,
    step: int,
    net: _Net,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    loader: CorpusLoader,
    window: _Window,
    env: DistEnv,
    meta: dict[str, Any],
    metrics: _Metrics,
) -> None:
    """Every rank contributes its loader position and RNG state; rank 0 writes.

    The rows of metrics.tsv so far go in too: Snakemake deletes the outputs of a failed job
    (metrics.tsv among them), and the resumed run restores them from the checkpoint.
    """
    loaders = gather_objects(loader.state_dict(), env)
    windows = gather_objects(window.state_dict(), env)
    rngs = gather_objects(_rng_state(), env)
    if env.is_main:
        ckpt.save(
            step,
            {
                "model": net.model.state_dict(),
                "heads": net.objectives.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "loader": loaders,
                "rng": rngs,
                "world_size": env.world_size,
                "metrics": metrics.text(),
                # the logging window's sums: a stop between two log steps logs the same row
                "window": windows,
                **meta,
            },
        )
    # nobody runs ahead into a step whose checkpoint might still be missing
    all_reduce_sum(torch.zeros(1), env)


def _restore(
    state: dict[str, Any],
    net: _Net,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    loader: CorpusLoader,
    env: DistEnv,
    run: RunConfig,
) -> int:
    if state["world_size"] != env.world_size:
        raise ScfmConfigError(
            [f"world size: checkpoint {state['world_size']}, now {env.world_size}"],
            source="resume (run with the world size that wrote the checkpoints)",
        )
    changed = sorted(k for k, v in run.to_dict().items() if state["run_config"].get(k) != v)
    if changed:
        log.warning("run config changed since the checkpoint: %s", ", ".join(changed))
    net.model.load_state_dict(state["model"])
    net.objectives.load_state_dict(state["heads"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    loader.load_state_dict(state["loader"][env.rank])
    _set_rng_state(state["rng"][env.rank])
    return int(state["step"])


# --------------------------------------------------------------------------- outputs


class _Metrics:
    """``metrics.tsv`` (rank 0 only); on resume, rows after the checkpoint's step are dropped.

    On resume the rows come from the checkpoint (``saved``, the file's text when it was
    written); the file's own rows are used only for checkpoints older than that field.
    """

    def __init__(
        self,
        path: Path,
        trivial: list[str],
        env: DistEnv,
        *,
        resume_step: int,
        saved: str | None = None,
        tensorboard: bool,
    ) -> None:
        self.path, self.env, self.last = path, env, {}
        self.columns = [
            "step",
            "split",
            "objective",
            "loss",
            "n",
            *trivial,
            "lr",
            "grad_norm",
            "tokens_per_s",
            "cells_per_s",
            "mfu",
        ]
        self.tb = None
        if not env.is_main:
            return
        kept: list[dict[str, str]] = []
        if resume_step and (saved is not None or path.is_file()):
            text = saved if saved is not None else path.read_text()
            rows = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
            kept = [r for r in rows if int(r["step"]) <= resume_step]
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, self.columns, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        w.writerows(kept)
        self._text = buf.getvalue()
        self._rewrite()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard logs")

    def text(self) -> str | None:
        """The rows so far (rank 0; ``None`` elsewhere), from memory: the file may be gone."""
        return self._text if self.env.is_main else None

    def _rewrite(self) -> None:
        """The whole file from memory (start, or after someone deleted it), atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(self._text, newline="")

    def write(self, step: int, split: str, rows: dict[str, dict], **extra: float) -> None:
        """Append one row per objective (plus "total")."""
        self.last[split] = {k: v["loss"] for k, v in rows.items()}
        if not self.env.is_main:
            return
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, self.columns, delimiter="\t", extrasaction="ignore")
        for objective, values in rows.items():
            row = {"step": step, "split": split, "objective": objective}
            row.update({k: _fmt(v) for k, v in values.items()})
            if objective == "total" and split == "train":
                row.update({k: _fmt(v) for k, v in extra.items()})
            w.writerow(row)
        self._text += buf.getvalue()
        # Snakemake deletes the outputs of a job it is told to stop (metrics.tsv among them)
        # while the trainer still runs to its stop-checkpoint: the rows live in memory and in
        # every checkpoint; a missing file is written again whole
        if self.path.is_file():
            with self.path.open("a", newline="") as f:
                f.write(buf.getvalue())
        else:
            self._rewrite()
        if self.tb is not None:
            for objective, values in rows.items():
                self.tb.add_scalar(f"{split}/{objective}", values["loss"], step)
            for k, v in extra.items():
                self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _write_config_yaml(path: Path, meta: dict[str, Any], env: DistEnv, max_steps: int) -> None:
    import yaml

    doc = {
        "run": meta["run_config"],
        "model": meta["model_config"],
        "tokenizer": meta["tokenizer"],
        "vocab_hash": meta["vocab_hash"],
        "world_size": env.world_size,
        "max_steps": max_steps,
    }
    write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False))


def _plot(metrics_path: Path, png: Path) -> None:
    from scfm.train.plots import plot_loss_curves

    try:
        plot_loss_curves(metrics_path, png)
    except Exception as e:  # a figure must never fail a finished run
        log.warning("loss curve figure failed: %s", e)


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return _models().peak_flops_for_device(torch.cuda.get_device_name(device))


class _Progress:
    def __init__(self, env: DistEnv, start: int, total: int) -> None:
        self.bar = None
        if env.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **kw: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kw)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(env: DistEnv, start: int, total: int) -> _Progress:
    return _Progress(env, start, total)


class _StopOnSignal:
    """SIGTERM/SIGUSR1 (Slurm preemption, ``--signal``) ask the loop to checkpoint and stop."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        log.warning("received %s: stopping after this step", signal.Signals(signum).name)

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
