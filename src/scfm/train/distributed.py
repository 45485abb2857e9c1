"""DDP set-up from torchrun's environment, and the few collectives the trainer needs.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing is initialised and every helper is the
identity, so the same loop runs on a laptop, one GPU or many.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Rank, local rank, world size and device of the current process."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistEnv:
    """Read ``RANK/LOCAL_RANK/WORLD_SIZE`` (torchrun) and join the process group.

    NCCL when the device is CUDA, gloo on CPU. ``device`` "auto" picks ``cuda:LOCAL_RANK``
    when CUDA is available. A process group that is already initialised is reused.
    """
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialized_here = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        initialized_here = True
    return DistEnv(rank, local_rank, world_size, dev, initialized_here)


def teardown_distributed(env: DistEnv) -> None:
    """Leave the process group if :func:`setup_distributed` joined it."""
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks, in place (identity on one process)."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Max over ranks, in place (identity on one process)."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_min(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Min over ranks, in place (identity on one process)."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    """Wait for all ranks."""
    if env.distributed:
        dist.barrier()
