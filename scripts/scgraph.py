"""Snakemake adapter: rule scgraph -> scfm.bench.jobs.scgraph_job."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.jobs import scgraph_job
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
scgraph_job(
    snakemake.input.data,
    snakemake.input.embedding,
    snakemake.input.reference,
    snakemake.output.tsv,
    snakemake.output.types,
    method=snakemake.wildcards.method,
    trim_rate=snakemake.params.bench["scgraph"]["trim_rate"],
)
register_outputs(snakemake, kind="benchmark")  # no-op unless registry.enabled
