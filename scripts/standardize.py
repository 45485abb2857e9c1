"""Snakemake adapter: rule standardize -> scfm.io.standardize.standardize."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.io.standardize import standardize
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
standardize(
    snakemake.input.manifest,
    snakemake.output.h5ad,
    dataset=snakemake.wildcards.dataset,
    cfg=snakemake.params.dataset,
    gene_table=snakemake.input.gene_table or None,
    chunk_cells=snakemake.params.chunk_cells,
    compression=snakemake.params.compression,
)
register_outputs(snakemake, kind="standard")  # no-op unless registry.enabled
