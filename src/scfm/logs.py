"""Logging set-up for pipeline jobs: one log file per job plus stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(logfile: str | Path | None = None, *, level: int = logging.INFO) -> None:
    """Send ``scfm`` log records (and warnings) to ``logfile`` and stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="w"))
    root = logging.getLogger()
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(exc_type, exc, tb) -> None:
    # The job's error goes into its log file (Snakemake points the user there), not only stderr.
    logging.getLogger("scfm").critical(
        "%s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb)
    )
