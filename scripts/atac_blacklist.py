"""Snakemake adapter: rule atac_blacklist -> scfm.atac.pipeline.blacklist_file."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.pipeline import blacklist_file
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
blacklist_file(snakemake.params.blacklist, snakemake.output.bed)
