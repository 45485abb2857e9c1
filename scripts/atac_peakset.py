"""Snakemake adapter: rule atac_peakset -> scfm.atac.pipeline.merge_peaks."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.pipeline import merge_peaks
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
merge_peaks(
    snakemake.input.summits,
    snakemake.input.chrom_sizes,
    snakemake.input.genes,
    snakemake.output.bed,
    width=snakemake.params.peak_width,
)
register_outputs(snakemake, kind="qc")  # no-op unless registry.enabled
