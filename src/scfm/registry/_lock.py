"""An exclusive file lock with a timeout: one writer at a time on the embedded SQLite instance.

``flock`` locks belong to the open file description, so a process that dies (or is killed by
the timeout of :mod:`scfm.registry._client`) releases its lock at once and the next job goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path


class LockTimeout(TimeoutError):
    """The lock was not acquired in time."""


@contextlib.contextmanager
def file_lock(path: str | Path, *, timeout: float, poll: float = 0.05) -> Iterator[float]:
    """Hold an exclusive lock on ``path`` (created if missing); yield the seconds waited.

    Raises
    ------
    LockTimeout
        When another process holds the lock for longer than ``timeout`` seconds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise LockTimeout(
                        f"{path}: held by another process for more than {timeout:g} s"
                    ) from None
                time.sleep(min(poll * (1 + waited), 0.5))
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
