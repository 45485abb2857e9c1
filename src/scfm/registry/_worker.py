"""Worker process of :mod:`scfm.registry._client`: connect to lamindb, run one operation.

Started as ``python -m scfm.registry._worker`` with ``LAMIN_SETTINGS_DIR``/``LAMIN_CACHE_DIR``
set and the registry directory as working directory. The embedded instance is created here on
first use and every operation on it runs under the registry's file lock, so concurrent
Snakemake jobs take turns on the SQLite file. Nothing here calls ``ln.track()`` or other hub
functions; for the embedded instance the hub lookups lamindb would make are answered locally.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scfm.registry._client import PREFIX
from scfm.registry._lock import LockTimeout, file_lock
from scfm.registry._settings import LOCAL_NAME

_INIT_MARKER = ".scfm-initialized"


class Unavailable(Exception):
    """The registry could not be reached (reported as such to the parent)."""


class NotFound(Exception):
    """No record matches (reported as such to the parent)."""


def emit(event: str, **data: Any) -> None:
    """Send one protocol line to the parent."""
    sys.stdout.write(PREFIX + json.dumps({"event": event, **data}, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    """Read the request from stdin, connect, run the operation, print the result."""
    request = json.loads(sys.stdin.read())
    settings = request["settings"]
    try:
        with _session(settings):
            emit("connected")
            from scfm.registry import _ops

            result = getattr(_ops, request["op"])(settings, **request["payload"])
        emit("result", result=result)
        return 0
    except NotFound as exc:
        emit("error", type="not_found", message=str(exc))
    except Unavailable as exc:
        emit("error", type="unavailable", message=str(exc))
    except Exception as exc:
        emit("error", type="error", message=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    return 1


@contextlib.contextmanager
def _session(settings: dict[str, Any]) -> Iterator[None]:
    if settings["instance"] is None:
        root = Path(settings["root"])
        try:
            # the parent kills this worker after `timeout`; this is only a safety net
            with file_lock(root / "registry.lock", timeout=settings["timeout"] + 5):
                _connect_local(settings)
                yield
        except LockTimeout as exc:
            raise Unavailable(f"registry lock {exc}") from None
    else:
        try:
            import lamindb_setup

            lamindb_setup.connect(settings["instance"])
        except Exception as exc:
            raise Unavailable(
                f"cannot connect ({type(exc).__name__}: {exc}); check registry.instance, the "
                "network, and that `lamin connect` works with LAMIN_SETTINGS_DIR="
                f"{settings['lamin_settings_dir']}"
            ) from exc
        yield


def _connect_local(settings: dict[str, Any]) -> None:
    """Create the embedded instance on first use (crash-safe), then connect to it offline."""
    import lamindb_setup

    root = Path(settings["root"])
    storage = root / "storage"
    slug = f"anonymous/{LOCAL_NAME}"
    if not (root / _INIT_MARKER).exists():
        # a killed first initialisation leaves half an instance: start again from nothing
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(root / ".lamin", ignore_errors=True)
        lamin_dir = Path(settings["lamin_settings_dir"]) / ".lamin"
        (lamin_dir / f"instance--anonymous--{LOCAL_NAME}.env").unlink(missing_ok=True)
        lamindb_setup.init(storage=str(storage), name=LOCAL_NAME)  # writes .lamin/ into cwd=root
        (root / _INIT_MARKER).write_text(slug + "\n")
    else:
        lamindb_setup.connect(slug)
    # A local SQLite instance created offline is never on the hub; tell lamindb so that
    # registering a file does not ask the hub (which fails, or hangs, without network).
    lamindb_setup.settings.instance._is_on_hub = False


if __name__ == "__main__":
    # run the module under its importable name, so that _ops raises the classes caught here
    from scfm.registry._worker import main as _main

    sys.exit(_main())
