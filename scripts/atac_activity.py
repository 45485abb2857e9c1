"""Snakemake adapter: rule atac_activity -> scfm.atac.activity.gene_activity."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.activity import gene_activity
from scfm.atac.pipeline import genome_from_files, kept_barcodes
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
gene_activity(
    snakemake.input.fragments,
    genome_from_files(snakemake.input.chrom_sizes, snakemake.input.genes),
    kept_barcodes(snakemake.input.barcodes),
    snakemake.output.h5ad,
    upstream=snakemake.params.qc["promoter_upstream"],
    counting=snakemake.params.qc["counting"],
)
register_outputs(snakemake, kind="qc")  # no-op unless registry.enabled
