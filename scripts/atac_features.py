"""Snakemake adapter: rule atac_features -> scfm.atac.pipeline.features."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.atac.pipeline import features
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
features(
    snakemake.input.matrix,
    snakemake.input.barcodes,
    snakemake.output.h5ad,
    dataset=snakemake.wildcards.dataset,
    kind=snakemake.params.dataset["features"],
)
register_outputs(snakemake, kind="qc")  # no-op unless registry.enabled
