"""scfm: single-cell data -> pretraining corpora -> foundation models -> honest benchmarks.

The library behind the Snakemake workflow. It never imports snakemake and is usable from a
notebook: each stage is a subpackage of plain functions (``scfm.io``, ``scfm.qc``, ...).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scfm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from scfm.errors import ScfmConfigError, ScfmInputError

__all__ = ["ScfmConfigError", "ScfmInputError", "__version__"]
