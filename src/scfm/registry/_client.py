"""Run one registry operation in a worker process, with a bounded time to reach the registry.

lamindb is imported only in the worker (``python -m scfm.registry._worker``): the job's own
process never loads Django or lamindb, lamindb's settings and cache directories are set for the
worker alone, and a worker that cannot reach its registry in ``timeout`` seconds (a lock held
too long, a hub or database that never answers) is killed, which no in-process timeout can do
for a blocked socket. Once connected, registering (hashing, uploading to a lab's storage) has
no time limit.

Protocol: the request is one JSON document on the worker's stdin; the worker prints lines
``@@scfm-registry {json}`` with ``event`` = ``connected``, ``result`` or ``error``; every other
line (lamindb's own messages) is passed to the debug log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from scfm.registry._settings import (
    MISSING_LAMINDB,
    RegistrySettings,
    ScfmRegistryError,
    ScfmRegistryNotFound,
    lamindb_installed,
)

log = logging.getLogger("scfm.registry")
PREFIX = "@@scfm-registry "
_PACKAGE = Path(__file__).resolve().parents[1]  # the scfm package this process runs


def call(settings: RegistrySettings, op: str, payload: dict[str, Any] | None = None) -> Any:
    """Run ``op`` against the registry of ``settings`` and return its result.

    Raises
    ------
    ScfmRegistryError
        lamindb is missing, the registry was not reached within ``settings.timeout`` seconds, or
        the operation failed (the message says which, and where the registry is).
    ScfmRegistryNotFound
        The key or uid asked for is not registered.
    """
    python = settings.interpreter
    if not lamindb_installed(python):
        raise ScfmRegistryError(MISSING_LAMINDB.format(python=python))
    root = settings.root
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("LAMIN_CURRENT_INSTANCE", None)  # the worker connects to the configured one only
    env["LAMIN_SETTINGS_DIR"] = str(settings.lamin_settings_dir)
    env["LAMIN_CACHE_DIR"] = str(root / "cache")
    path = str(worker_pythonpath(root))
    env["PYTHONPATH"] = os.pathsep.join([path, *filter(None, [env.get("PYTHONPATH")])])
    request = {"op": op, "settings": settings.to_json(), "payload": payload or {}}
    start = time.monotonic()
    proc = subprocess.Popen(
        [python, "-m", "scfm.registry._worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()
    stderr: list[str] = []
    threads = [
        threading.Thread(target=_read_events, args=(proc.stdout, events), daemon=True),
        threading.Thread(target=_read_lines, args=(proc.stderr, stderr), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        proc.stdin.write(json.dumps(request, default=str))
        proc.stdin.close()
    except BrokenPipeError:  # the worker died at start; its stderr says why
        pass
    try:
        return _wait(proc, events, stderr, settings, start)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def worker_pythonpath(root: Path) -> Path:
    """A directory holding only a link to this process' scfm package, for the worker's path.

    The worker must import the same scfm as the job, also when it runs in another interpreter
    (``registry.python``). scfm's parent directory is ``src/`` in a checkout but the whole
    site-packages of an installed scfm, whose numpy, pandas, ... would shadow the worker
    environment's own. One directory per package location (``root/pythonpath/<hash>``), made
    atomically, so jobs of different environments sharing a registry never swap each other's.
    """
    key = hashlib.sha256(str(_PACKAGE).encode()).hexdigest()[:16]
    directory = root / "pythonpath" / key
    link = directory / "scfm"
    if link.is_symlink() and link.resolve() == _PACKAGE:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".scfm.{os.getpid()}.{threading.get_ident()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(_PACKAGE, target_is_directory=True)
    tmp.replace(link)
    return directory


def _wait(proc, events, stderr, settings: RegistrySettings, start: float) -> Any:
    connected = False
    while True:
        timeout = None if connected else max(0.0, settings.timeout - (time.monotonic() - start))
        try:
            event = events.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            why = (
                "another job held its lock all that time"
                if settings.is_local
                else "the instance (hub, database or network) did not answer"
            )
            raise ScfmRegistryError(
                f"{settings.describe()} was not reachable within {settings.timeout:g} s "
                f"(registry.timeout): {why}"
            ) from None
        if event is None:  # stdout closed: the worker ended without a result
            proc.wait()
            tail = "".join(stderr[-20:]).strip()
            raise ScfmRegistryError(
                f"{settings.describe()}: the registry worker ended with exit code "
                f"{proc.returncode} and no result" + (f":\n{tail}" if tail else "")
            )
        kind = event.get("event")
        if kind == "connected":
            connected = True
            log.debug("connected to %s in %.1f s", settings.describe(), time.monotonic() - start)
        elif kind == "result":
            return event.get("result")
        elif kind == "error":
            cls = ScfmRegistryNotFound if event.get("type") == "not_found" else ScfmRegistryError
            prefix = "" if event.get("type") == "not_found" else f"{settings.describe()}: "
            raise cls(prefix + str(event.get("message")))


def _read_events(stream, events: queue.Queue) -> None:
    for line in stream:
        if line.startswith(PREFIX):
            try:
                events.put(json.loads(line[len(PREFIX) :]))
            except json.JSONDecodeError:
                log.debug("registry worker: %s", line.rstrip())
        elif line.strip():
            log.debug("lamindb: %s", line.rstrip())
    events.put(None)


def _read_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)
        if line.strip():
            log.debug("registry worker: %s", line.rstrip())
