"""Snakemake adapter: rule atac_tiles -> scfm.atac.tiles.tile_matrix."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.pipeline import genome_from_files, kept_barcodes
from scfm.atac.tiles import tile_matrix
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
qc = snakemake.params.qc
tile_matrix(
    snakemake.input.fragments,
    genome_from_files(snakemake.input.chrom_sizes, snakemake.input.genes),
    kept_barcodes(snakemake.input.barcodes),
    snakemake.output.h5ad,
    bin_size=qc["bin_size"],
    counting=qc["counting"],
    binarize=qc["binarize"],
    compression=snakemake.params.compression,
)
register_outputs(snakemake, kind="qc")  # no-op unless registry.enabled
