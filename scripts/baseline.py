"""Snakemake adapter: rule baseline -> scfm.bench.baselines.baseline_embedding."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.baselines import baseline_embedding
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
baseline_embedding(
    snakemake.wildcards.method,
    snakemake.input.data,
    snakemake.output.h5ad,
    snakemake.params.baseline,
)
register_outputs(snakemake, kind="embedding")  # no-op unless registry.enabled
