"""Snakemake adapter: rule qc -> scfm.qc.qc_rna."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.logs import setup_logging
from scfm.qc import qc_rna
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
qc_rna(
    snakemake.input.h5ad,
    snakemake.output.h5ad,
    snakemake.output.metrics,
    snakemake.output.figure,
    params=snakemake.params.qc,
    organism=snakemake.params.organism,
    chunk_cells=snakemake.params.chunk_cells,
    compression=snakemake.params.compression,
)
register_outputs(snakemake, kind="qc")  # no-op unless registry.enabled
