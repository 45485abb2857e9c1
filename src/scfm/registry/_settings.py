"""Registry settings from the config's ``registry`` block; never imports lamindb."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Name of the embedded instance (its slug is ``anonymous/scfm``, known only inside ``path``).
LOCAL_NAME = "scfm"
MISSING_LAMINDB = (
    "the registry needs lamindb, which is not installed in this environment ({python}); "
    "install it with: pip install 'scfm[registry]' (or set registry.enabled: false)"
)


class ScfmRegistryError(RuntimeError):
    """The registry could not be reached or could not record/return what was asked."""


class ScfmRegistryNotFound(ScfmRegistryError):
    """No artifact or collection in the registry has the requested key or uid."""


@dataclass(frozen=True)
class RegistrySettings:
    """Where the registry is and what to do when it fails (the ``registry`` config block).

    Parameters
    ----------
    enabled
        Register the outputs of the pipeline's rules.
    required
        A registry failure fails the rule (``True``) or only logs a warning (``False``).
    instance
        ``None``: the embedded SQLite instance under ``path``, created on first use. Else the
        slug ``owner/name`` of a lab's lamindb instance (Postgres + object storage).
    path
        Directory of the embedded instance, lamindb's settings and cache, and the lock file;
        relative paths are relative to the working directory.
    settings_dir
        ``LAMIN_SETTINGS_DIR`` (the directory holding ``.lamin/``); ``None``: ``<path>/settings``.
    timeout
        Seconds allowed to reach the registry (wait for the lock and connect).
    python
        The Python interpreter that runs the registry worker; ``None``: the job's own. With
        per-rule conda environments (which do not install lamindb), point it at an
        environment that has it, e.g. the project's ``.venv/bin/python``.
    """

    enabled: bool = False
    required: bool = True
    instance: str | None = None
    path: str = ".scfm-registry"
    settings_dir: str | None = None
    timeout: float = 60.0
    python: str | None = None
    workdir: str = field(default_factory=lambda: str(Path.cwd()))

    @classmethod
    def from_config(
        cls, block: Mapping[str, Any] | None, *, workdir: str | Path | None = None
    ) -> RegistrySettings:
        """Settings from a (validated or partial) ``registry`` block; unknown keys are ignored."""
        block = dict(block or {})
        known = {k: block[k] for k in cls.__dataclass_fields__ if k in block and k != "workdir"}
        return cls(**known, workdir=str(Path(workdir or Path.cwd()).resolve()))

    @property
    def root(self) -> Path:
        """The registry directory, absolute."""
        return (Path(self.workdir) / Path(self.path).expanduser()).resolve()

    @property
    def lamin_settings_dir(self) -> Path:
        """The directory passed as ``LAMIN_SETTINGS_DIR``."""
        if self.settings_dir:
            return (Path(self.workdir) / Path(self.settings_dir).expanduser()).resolve()
        return self.root / "settings"

    @property
    def interpreter(self) -> str:
        """The Python that runs the registry worker."""
        if not self.python:
            return sys.executable
        return str(Path(self.workdir) / Path(self.python).expanduser())

    @property
    def is_local(self) -> bool:
        """Whether this is the embedded SQLite instance."""
        return self.instance is None

    def describe(self) -> str:
        """Where the registry is, for messages."""
        if self.is_local:
            return f"local registry {self.root}"
        return f"lamindb instance {self.instance} (settings {self.lamin_settings_dir})"

    def to_json(self) -> dict[str, Any]:
        """Resolved settings as sent to the worker process."""
        out = asdict(self)
        out.update(root=str(self.root), lamin_settings_dir=str(self.lamin_settings_dir))
        return out


@functools.cache
def lamindb_installed(python: str | None = None) -> bool:
    """Whether lamindb can be imported here, or by the interpreter ``python``.

    Checked without importing it (for another interpreter: in a short-lived process).
    """
    if python is None or python == sys.executable:
        return importlib.util.find_spec("lamindb") is not None
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('lamindb') is None)"
    try:
        return (
            subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def config_hash(config: Mapping[str, Any]) -> str:
    """Short sha256 of the experiment config (without its ``registry`` block)."""
    data = {k: v for k, v in dict(config).items() if k != "registry"}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
