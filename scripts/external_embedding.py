"""Snakemake adapter: rule external_embedding -> scfm.bench.external.external_embedding."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.external import external_embedding
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
external_embedding(
    snakemake.wildcards.method,
    snakemake.input.data,
    snakemake.output.h5ad,
    snakemake.params.external,
    threads=snakemake.threads,
    log_file=snakemake.log[0],
)
register_outputs(snakemake, kind="embedding")  # no-op unless registry.enabled
