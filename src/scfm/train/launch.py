"""The command that runs one training job: torchrun with one process per GPU, else plain python."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: Signals passed on to the training process (Slurm: preemption, scancel, ``--signal``).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def launch_command(
    run_config: str | Path,
    model_config: str | Path,
    manifest: str | Path,
    out: str | Path,
    *,
    gpus: int = 0,
    log: str | Path | None = None,
) -> list[str]:
    """Command line for ``python -m scfm.train``; ``torchrun --standalone`` when ``gpus > 1``.

    One node only: a multi-node job runs one torchrun per node through ``srun`` with a
    rendezvous endpoint instead of ``--standalone`` (docs/training.md).
    """
    args = [
        "-m",
        "scfm.train",
        "--run-config",
        str(run_config),
        "--model-config",
        str(model_config),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
    ]
    if log is not None:
        args += ["--log", str(log)]
    if gpus > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            *args[1:],
        ]
    return [sys.executable, *args]


def run_forwarding_signals(cmd: Sequence[str]) -> int:
    """Run ``cmd``, pass SIGTERM/SIGUSR1/SIGINT on to it, wait for it, return its exit status.

    The adapter between Snakemake and the trainer must not die of the signal that asks the
    trainer to checkpoint: it would leave the trainer orphaned and its exit status (75:
    stopped after a checkpoint) would never reach Snakemake. Slurm signals every process of
    the job, so the child may get a signal twice; the trainer's handler is idempotent.
    A child killed by a signal gives ``128 + signal number``, as a shell reports it.
    """
    proc = subprocess.Popen(list(cmd))

    def forward(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        code = proc.wait()  # a handled signal does not interrupt it (PEP 475)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code
