"""Snakemake adapter: rule reference_genome -> scfm.atac.pipeline.reference_genome."""

from pathlib import Path

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.pipeline import reference_genome
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
reference_genome(
    snakemake.params.genome,
    Path(snakemake.output.chrom_sizes).parent,
    name=snakemake.wildcards.genome,
)
