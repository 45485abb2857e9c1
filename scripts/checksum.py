"""Snakemake adapter: rule checksum -> scfm.io.download.hash_file (once per QC'd dataset)."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atomic import write_text_atomic
from scfm.io.download import hash_file
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
write_text_atomic(
    snakemake.output.sha256, f"{hash_file(snakemake.input.h5ad)}  {snakemake.input.h5ad}\n"
)
