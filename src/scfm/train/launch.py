"""The command that runs one training job: torchrun with one process per GPU, else plain python."""

from __future__ import annotations

import sys
from pathlib import Path


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
