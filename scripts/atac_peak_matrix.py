"""Snakemake adapter: rule atac_peak_matrix -> scfm.atac.peaks.peak_matrix."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.peaks import peak_matrix
from scfm.atac.pipeline import kept_barcodes
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
peak_matrix(
    snakemake.input.fragments,
    snakemake.input.peaks,
    kept_barcodes(snakemake.input.barcodes),
    snakemake.output.h5ad,
    counting=snakemake.params.qc["counting"],
)
register_outputs(snakemake, kind="qc")  # no-op unless registry.enabled
