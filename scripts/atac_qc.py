"""Snakemake adapter: rule atac_qc -> scfm.atac.pipeline.barcode_qc."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.pipeline import barcode_qc
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
barcode_qc(
    snakemake.input.fragments,
    snakemake.input.chrom_sizes,
    snakemake.input.genes,
    snakemake.input.manifest,
    snakemake.output.table,
    snakemake.output.barcodes,
    snakemake.output.figure,
    dataset=snakemake.wildcards.dataset,
    cfg=snakemake.params.dataset,
    qc=snakemake.params.qc,
)
register_outputs(snakemake, kind="qc")  # no-op unless registry.enabled
