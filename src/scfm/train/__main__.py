"""Command line: ``[torchrun --standalone --nproc_per_node=N] python -m scfm.train ...``.

Exit status: 0 completed; 75 stopped by SIGTERM/SIGUSR1 after writing a checkpoint (rerun to
resume); 3 the loss diverged (non-finite; last good checkpoint kept); 2 bad config or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.logs import setup_logging
from scfm.train.trainer import REQUEUE_EXIT_CODE, TrainingDivergedError, train

log = logging.getLogger("scfm.train")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, return the exit status."""
    p = argparse.ArgumentParser(prog="python -m scfm.train", description=__doc__)
    p.add_argument("--run-config", required=True, type=Path, help="JSON: the runs.<name> block")
    p.add_argument("--model-config", required=True, type=Path, help="JSON: the models.<name> block")
    p.add_argument("--manifest", required=True, type=Path, help="corpus manifest.json")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--log", type=Path, default=None, help="log file (rank 0)")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    setup_logging(
        args.log if rank == 0 else None, level=logging.INFO if rank == 0 else logging.WARNING
    )
    try:
        run_cfg = json.loads(args.run_config.read_text())
        model_cfg = json.loads(args.model_config.read_text())
        summary = train(run_cfg, model_cfg, args.manifest, args.out, device=args.device)
    except (ScfmConfigError, ScfmInputError) as e:
        log.error("%s", e)
        return 2
    except TrainingDivergedError as e:
        log.error("%s", e)
        return 3
    if summary["status"] != "completed":
        log.warning("interrupted at step %d; rerun to resume", summary["step"])
        return REQUEUE_EXIT_CODE
    if rank == 0:
        log.info("done: %s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
