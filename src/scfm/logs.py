"""Logging set-up for pipeline jobs: one log file per job plus stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from scfm.redact import redact_url


def setup_logging(logfile: str | Path | None = None, *, level: int = logging.INFO) -> None:
    """Send ``scfm`` log records (and warnings) to ``logfile`` and stderr."""
    fmt = _Redacting("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
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


class _Redacting(logging.Formatter):
    """Formats as usual, then masks URL credentials (user:token@, secret query values)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


def _log_uncaught(exc_type, exc, tb) -> None:
    # The job's error goes into its log file (Snakemake points the user there), not only stderr.
    logging.getLogger("scfm").critical(
        "%s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb)
    )
