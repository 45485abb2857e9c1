"""A lab's own directory (README "Use from your lab's directory"): its config and outputs only.

The workflow stays in the checkout; the lab directory holds ``config/config.yaml`` and, to use
scfm as a Snakemake module, a Snakefile of a few lines. :func:`checkout_files` lists what the
checkout holds, so a test can show that a run wrote nothing there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = str(REPO / "profiles" / "local")

# What README tells a lab to write (with the path of its scfm checkout)
MODULE_SNAKEFILE = """\
from scfm.config import read_config_file

# scfm's safe reader: duplicate keys and yte templating are refused (docs/config.md)
config.update(read_config_file("config/config.yaml"))


module scfm:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from scfm
"""


def make_lab(root: Path, config: dict[str, Any], *, module: bool) -> Path:
    """``root/config/config.yaml`` and, with ``module``, a Snakefile using scfm as a module."""
    (root / "config").mkdir(parents=True)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if module:
        (root / "Snakefile").write_text(MODULE_SNAKEFILE.format(snakefile=REPO / "Snakefile"))
    return root


def checkout_files() -> dict[str, tuple[int, int]]:
    """Every file of the checkout as ``path: (size, mtime)``, but .git, venvs and __pycache__.

    __pycache__ holds Python's bytecode and numba's compiled kernels (``cache=True``): both are
    written beside the sources when that directory is writable and elsewhere (or not at all)
    when it is not, so they are caches of the code, not outputs of a run.
    """
    found = {}
    for top, dirs, files in os.walk(REPO):
        dirs[:] = [
            d
            for d in dirs
            if d not in (".git", "__pycache__") and not Path(top, d, "pyvenv.cfg").exists()
        ]
        for name in files:
            path = Path(top, name)
            st = path.lstat()
            found[str(path.relative_to(REPO))] = (st.st_size, st.st_mtime_ns)
    return found


def changed_in_checkout(before: dict[str, tuple[int, int]]) -> list[str]:
    """Files of the checkout added, changed or removed since ``before``."""
    after = checkout_files()
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
