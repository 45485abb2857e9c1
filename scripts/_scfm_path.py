"""Make this checkout's ``src/`` importable from rule scripts and the processes they start.

In the project's venv scfm is installed editable already; inside per-rule conda environments
(``--software-deployment-method conda``) it is not, and Snakemake puts this directory on
``sys.path`` of every script it runs, so importing this module is enough. ``PYTHONPATH`` gets
it too: the trainer (``python -m scfm.train``, under torchrun on GPUs) and the registry worker
are new interpreters, which would otherwise import another scfm, or none.
"""

import os
import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
_PATH = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if _PATH[:1] != [_SRC]:
    os.environ["PYTHONPATH"] = os.pathsep.join([_SRC, *(p for p in _PATH if p != _SRC)])
