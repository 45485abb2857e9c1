"""Make this checkout's ``src/`` importable from rule scripts.

In the project's venv scfm is installed editable already; inside per-rule conda environments
(``--software-deployment-method conda``) it is not, and Snakemake puts this directory on
``sys.path`` of every script it runs, so importing this module is enough.
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
