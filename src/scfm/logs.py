"""Logging set-up for pipeline jobs: one log file per job plus stderr."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from scfm.errors import disk_full_error
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
    log = logging.getLogger("scfm")
    full = disk_full_error(exc) if isinstance(exc, BaseException) else None
    if full is None:
        log.critical("%s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        return
    # A full disk: say so in one line that names the output (libraries' messages name a temporary
    # file or nothing), then exit at once. HDF5 2.0 crashes (SIGSEGV) freeing files whose writes
    # failed, which at interpreter exit would turn this clean error into a segfault.
    log.critical("%s: %s", type(full).__name__, full, exc_info=(exc_type, exc, tb))
    logging.shutdown()
    sys.stderr.flush()
    os._exit(1)
