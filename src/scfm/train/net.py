"""The model and its pretraining objectives as one module, and the losses' bookkeeping.

Shared by training (:mod:`scfm.train.trainer`) and masked-prediction evaluation
(:mod:`scfm.embed.masked`), so that a row of either means the same thing:

- :class:`PretrainingNet`: the model plus its objectives (heads included), one module for DDP
  and the optimizer; ``net(batch)`` gives each objective's result.
- :func:`build_objectives`: the objectives of a run config, by name.
- :class:`LossWindow` and :func:`reduce_window`: running sums of losses, trivial predictors and
  work; pooled over ranks into the rows of ``metrics.tsv``.
- :func:`evaluate_batches`: the val rows over a sequence of batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scfm.models import build_objectives as _build_objective_list
from scfm.models import trivial_losses
from scfm.train.config import RunConfig
from scfm.train.distributed import DistEnv, all_reduce_sum

__all__ = [
    "LossWindow",
    "PretrainingNet",
    "build_objectives",
    "evaluate_batches",
    "reduce_window",
    "to_device",
    "trivial_row",
    "weighted_loss",
]


class PretrainingNet(nn.Module):
    """The model plus its objectives (heads included): one module for DDP and the optimizer."""

    def __init__(self, model: nn.Module, objectives: nn.ModuleDict) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Each objective's result (loss, positions ``n``) on ``batch``."""
        outputs = self.model(batch)
        return {name: obj(self.model, batch, outputs) for name, obj in self.objectives.items()}


def build_objectives(run: RunConfig, model_config: Any) -> nn.ModuleDict:
    """The run's objectives (and their heads) by name; each knows its ``weight``."""
    built = _build_objective_list(run.to_dict()["objectives"], model_config)
    return nn.ModuleDict({o.name: o for o in built})


def weighted_loss(objectives: nn.ModuleDict, results: dict[str, Any]) -> torch.Tensor:
    """The optimised loss: the objectives' losses weighted by their ``weight``."""
    return sum(objectives[k].weight * r.loss for k, r in results.items())  # type: ignore[return-value]


def trivial_row(name: str, batch: dict[str, Any], stats: Any) -> dict[str, float]:
    """The trivial predictors' losses of objective ``name`` on ``batch``, as ``trivial_*``."""
    out = trivial_losses(name, batch, stats)
    return {k if k.startswith("trivial_") else f"trivial_{k}": float(v) for k, v in out.items()}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (as is on CPU)."""
    if device.type == "cpu":
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


@dataclass
class LossWindow:
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
        """Add a loss over ``n`` positions and its trivial predictors' losses."""
        self.loss[name] = self.loss.get(name, 0.0) + loss * n
        self.n[name] = self.n.get(name, 0.0) + n
        for key, value in trivial.items():
            if math.isfinite(value):
                k = (name, key)
                self.trivial[k] = self.trivial.get(k, 0.0) + value * n
                self.trivial_n[k] = self.trivial_n.get(k, 0.0) + n

    def reset(self) -> None:
        """Start a new window (empty sums, the clock from now)."""
        self.load_state_dict(None)

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

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """The sums of ``state`` (``None``: empty); the clock starts now."""
        self.loss, self.n, self.trivial, self.trivial_n = {}, {}, {}, {}
        self.tokens = self.cells = self.flops = 0.0
        self.start = time.perf_counter()
        if state:
            self.loss, self.n = dict(state["loss"]), dict(state["n"])
            self.trivial = {(a, b): v for a, b, v in state["trivial"]}
            self.trivial_n = {(a, b): v for a, b, v in state["trivial_n"]}
            self.tokens, self.cells, self.flops = state["counts"]


def reduce_window(
    window: LossWindow, objectives: nn.ModuleDict, env: DistEnv, peak: float | None
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


@torch.no_grad()
def evaluate_batches(
    net: PretrainingNet, batches: Iterable[dict[str, Any]], stats: Any, env: DistEnv, autocast: Any
) -> dict[str, dict]:
    """Validation rows over ``batches``: each objective's loss and trivial predictors, "total".

    The definition of the val rows of ``metrics.tsv``: per objective the loss pooled over the
    batches (mean over its ``n`` positions or cells) with the trivial predictors' losses on
    the same positions, and "total" (the weighted sum of the pooled losses); pooled over
    ranks when ``env`` is distributed. ``net`` should be in eval mode.
    """
    window = LossWindow()
    for batch in batches:
        with autocast:
            results = net(to_device(batch, env.device))
        for name, r in results.items():
            window.add(name, float(r.loss), float(r.n), trivial_row(name, batch, stats))
    rows = reduce_window(window, net.objectives, env, None)
    return {k: {"loss": v["loss"]} if k == "total" else v for k, v in rows.items()}
