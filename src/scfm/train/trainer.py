"""The training loop: one function, :func:`train`, readable top to bottom.

Per step: learning rate -> ``grad_accum`` micro-batches (forward, loss, backward; DDP syncs
gradients on the last one) -> clip (and check the norm is finite) -> AdamW step -> log ->
validate -> checkpoint. Everything that must survive a restart (model and objective heads,
optimizer, schedule, every rank's loader position, RNG states and logging window, the metrics
rows) is a component with ``state_dict``/``load_state_dict`` handed to one
:class:`~scfm.train.checkpoint.CheckpointManager`; a rerun resumes from the newest valid
checkpoint by itself -- only one made under the same run, model and corpus (its
:func:`~scfm.train.checkpoint.resume_identity`); checkpoints of another config are moved
aside and the run starts from step 0 (docs/training.md, "Resuming").

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import scfm.models
from scfm.atomic import atomic_path, write_text_atomic
from scfm.data import CorpusLoader, LoaderConfig
from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.shard.manifest import CorpusManifest
from scfm.tokenize.vocab import Vocab
from scfm.train.checkpoint import CheckpointManager, Stateful, export_model, resume_identity
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
from scfm.train.net import (
    LossWindow,
    PretrainingNet,
    build_objectives,
    evaluate_batches,
    reduce_window,
    to_device,
    trivial_row,
    weighted_loss,
)

log = logging.getLogger(__name__)

#: Exit status of the CLI when a signal (SIGTERM/SIGUSR1) stopped the run after a checkpoint:
#: EX_TEMPFAIL, "try again" -- a rerun (Slurm --requeue, Snakemake --retries) resumes.
REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or gradient: the update was not applied, no checkpoint was written."""


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
    model = scfm.models.build_model(mcfg).to(env.device)
    objectives = build_objectives(run, mcfg)
    net = PretrainingNet(model, objectives).to(env.device)
    optimizer = _optimizer(net, run, env.device)
    schedule = Schedule(
        run.optimizer.lr, run.schedule.warmup_steps, max_steps, run.schedule.min_lr_ratio
    )
    fwd: nn.Module = torch.compile(net) if run.compile else net  # type: ignore[assignment]
    if env.distributed:
        ids = [env.local_rank] if env.device.type == "cuda" else None
        fwd = DistributedDataParallel(fwd, device_ids=ids)
    autocast = _autocast(run.precision, env.device)

    # ---- resume (only a checkpoint of this very run), or start fresh
    meta = {
        "run_config": run.to_dict(),
        "model_config": mcfg.to_dict(),
        "vocab": corpus["vocab"],
        "tokenizer": corpus["tokenizer"],
        "vocab_hash": corpus["vocab_hash"],
        "world_size": env.world_size,
    }
    identity = resume_identity(
        meta["run_config"], meta["model_config"], corpus["identity"], max_steps=max_steps
    )
    ckpt = CheckpointManager(
        out / "checkpoints", keep=run.keep_checkpoints, identity=identity, writer=env.is_main
    )
    state = ckpt.load_latest(max_step=max_steps)
    stale = ckpt.stale(max_step=max_steps)
    all_reduce_sum(torch.zeros(1), env)  # every rank has read before rank 0 moves files
    if env.is_main and ckpt.set_aside(stale) is not None:
        (out / "model.pt").unlink(missing_ok=True)  # exported under the other config
    window = LossWindow()
    metrics = _Metrics(
        out / "metrics.tsv",
        _trivial_columns(stats, run, train_loader),
        env,
        tensorboard=run.tensorboard,
    )
    # what a checkpoint holds: each component's state_dict (per-rank ones from every rank)
    components: dict[str, Stateful] = {
        "model": net.model,
        "heads": net.objectives,
        "optimizer": optimizer,
        "schedule": schedule,
        "loader": _PerRank(train_loader, env),
        "rng": _PerRank(_RngState(), env),
        # the logging window's sums: a stop between two log steps logs the same row
        "window": _PerRank(window, env),
        # Snakemake deletes the outputs of a failed job (metrics.tsv among them): the resumed
        # run restores the rows from the checkpoint
        "metrics": metrics,
    }
    step = 0
    if state is not None:
        if state["world_size"] != env.world_size:
            raise ScfmConfigError(
                [f"world size: checkpoint {state['world_size']}, now {env.world_size}"],
                source="resume (run with the world size that wrote the checkpoints)",
            )
        ckpt.restore(state, components)
        step = int(state["step"])
        log.info("resuming from step %d (%s)", step, ckpt.path(step))
    else:
        # per-rank streams for dropout and subsets; Python's and NumPy's too, so that the
        # checkpoints' saved RNG states (and so their bytes) are the same in every run
        torch.manual_seed(run.seed + env.rank)
        random.seed(run.seed + env.rank)
        np.random.seed(run.seed + env.rank)
    resumed_from = step or None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config_yaml(out / "config.yaml", meta, env, max_steps)
    if step == 0 and val_loader is not None:
        metrics.write(0, "val", _evaluate(net, val_loader, stats, run, env, autocast))

    # ---- the loop
    window.start = time.perf_counter()  # throughput from here, not from the set-up
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
                    results = fwd(to_device(batch, env.device))
                    total = weighted_loss(net.objectives, results)
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
            rows = reduce_window(window, net.objectives, env, peak)
            metrics.write(step, "train", rows, lr=lr, grad_norm=grad_norm)
            bar.set_postfix(loss=f"{rows['total']['loss']:.4f}")
            window.reset()
        if val_loader is not None and (step % run.val_every == 0 or step == max_steps):
            metrics.write(step, "val", _evaluate(net, val_loader, stats, run, env, autocast))
        stopping = bool(all_reduce_max(torch.tensor(int(stop.requested)), env))
        if step % run.checkpoint_every == 0 or step == max_steps or stopping:
            ckpt.save(step, {**components, **meta})
            # nobody runs ahead into a step whose checkpoint might still be missing
            all_reduce_sum(torch.zeros(1), env)
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


# --------------------------------------------------------------------------- statistics


def _value_stats(manifest_path: Path, train_cfg: LoaderConfig, run: RunConfig, mcfg: Any) -> Any:
    """Trivial predictors' statistics from the first batches of a fixed pass over train.

    Every rank reads the same cells (rank 0 of 1), so the statistics agree without
    communication and a resumed run recomputes exactly the same ones.
    """
    cfg = LoaderConfig(**{**_fields(train_cfg), "seed": run.seed + 1})
    loader = CorpusLoader(manifest_path, cfg, num_workers=0, rank=0, world_size=1)
    with contextlib.closing(iter(loader)) as it:
        sample = [b for _, b in zip(range(run.stats_batches), it, strict=False)]
    return scfm.models.ValueStats.from_batches(sample, mcfg)


def _trivial_columns(stats: Any, run: RunConfig, loader: CorpusLoader) -> list[str]:
    """Trivial predictor columns: whatever the heads report for these objectives."""
    cfg = LoaderConfig(**{**_fields(loader.config), "batch_size": 4})
    probe = CorpusLoader(loader.corpus.manifest_path, cfg, num_workers=0, rank=0, world_size=1)
    with contextlib.closing(iter(probe)) as it:
        batch = next(it)
    names = {k for o in run.objectives for k in trivial_row(o.name, batch, stats)}
    return sorted(names)


def _model_config(model_cfg: Any, manifest: CorpusManifest, run: RunConfig) -> Any:
    """The model config with the corpus' vocabulary size, value kind and length filled in."""
    config_cls = scfm.models.ModelConfig
    corpus = {
        "vocab_size": manifest.vocab_size,
        "value_kind": manifest.value_kind,
        "n_value_tokens": manifest.n_value_tokens,
        "max_len": run.loader.get("max_len") or manifest.max_len,
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
    window: LossWindow,
    batch: dict[str, Any],
    results: dict[str, Any],
    stats: Any,
    net: PretrainingNet,
    env: DistEnv,
) -> None:
    """Add one micro-batch's losses, trivial losses and work to the logging window."""
    for name, r in results.items():
        window.add(name, float(r.loss.detach()), float(r.n), trivial_row(name, batch, stats))
    tokens = int((~batch["padding_mask"]).sum())
    window.tokens += tokens
    window.cells += len(batch["genes"])
    flops_per_token = getattr(net.model, "flops_per_token", None)
    if env.device.type == "cuda" and flops_per_token is not None:
        b, length = batch["genes"].shape
        window.flops += 3.0 * flops_per_token(length) * b * length  # forward + backward


def _evaluate(
    net: PretrainingNet,
    loader: CorpusLoader,
    stats: Any,
    run: RunConfig,
    env: DistEnv,
    autocast: Any,
) -> dict[str, dict]:
    """Loss on the first ``val_batches`` batches of val (the same batches and masks each time)."""
    net.eval()
    loader.set_epoch(0)
    with contextlib.closing(iter(loader)) as it:
        rows = evaluate_batches(net, itertools.islice(it, run.val_batches), stats, env, autocast)
    net.train()
    return rows


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
    """Manifest, vocabulary (plain lists), tokenizer parameters, vocab hash, corpus identity."""
    manifest = CorpusManifest.read(manifest_path)
    vocab_path = manifest.vocab_file
    if not vocab_path.is_file():
        raise ScfmInputError(
            manifest_path,
            "vocab_path",
            f"{vocab_path} does not exist",
            "the corpus vocabulary (model.pt stores it)",
        )
    vocab = Vocab.read(vocab_path)
    if vocab.hash != manifest.vocab_hash:
        raise ScfmInputError(
            vocab_path,
            "hash",
            f"{vocab.hash} != manifest {manifest.vocab_hash}",
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
        "tokenizer": {"name": manifest.tokenizer, **manifest.tokenizer_params},
        "vocab_hash": vocab.hash,
        "identity": manifest.identity(),
    }


# --------------------------------------------------------------------------- checkpoints


class _RngState:
    """The process's random number generators (torch, CUDA, NumPy, Python) as a component."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


class _PerRank:
    """A component whose state differs between ranks.

    Saved as the list of every rank's state (a collective call), restored from this rank's.
    """

    def __init__(self, component: Stateful, env: DistEnv) -> None:
        self.component, self.env = component, env

    def state_dict(self) -> list[Any]:
        return gather_objects(self.component.state_dict(), self.env)

    def load_state_dict(self, states: list[Any]) -> None:
        self.component.load_state_dict(states[self.env.rank])


# --------------------------------------------------------------------------- outputs


class _Metrics:
    """``metrics.tsv`` (rank 0 only), its rows kept in memory too.

    A component of the checkpoint: ``state_dict`` is the rows so far (the file's text),
    ``load_state_dict`` replaces the file's rows with a checkpoint's (rows written after the
    checkpoint are dropped).
    """

    def __init__(
        self,
        path: Path,
        trivial: list[str],
        env: DistEnv,
        *,
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
        self.load_state_dict(None)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard logs")

    def state_dict(self) -> str | None:
        """The rows so far (rank 0; ``None`` elsewhere), from memory: the file may be gone."""
        return self._text if self.env.is_main else None

    def load_state_dict(self, text: str | None) -> None:
        """Rewrite the file with the rows of ``text`` (a checkpoint's; ``None``: none)."""
        if not self.env.is_main:
            return
        rows = csv.DictReader(io.StringIO(text or "", newline=""), delimiter="\t")
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, self.columns, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        self._text = buf.getvalue()
        self._rewrite()

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
    return scfm.models.peak_flops_for_device(torch.cuda.get_device_name(device))


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
