"""Snakemake adapter: rule download -> scfm.io.sources.fetch_dataset."""

from pathlib import Path

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.io.sources import fetch_dataset
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
fetch_dataset(
    snakemake.wildcards.dataset,
    snakemake.params.dataset,
    Path(snakemake.output.manifest).parent,
    chunk_cells=snakemake.params.chunk_cells,
)
register_outputs(snakemake, kind="raw")  # no-op unless registry.enabled
