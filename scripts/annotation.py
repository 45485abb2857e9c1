"""Snakemake adapter: rule annotation -> scfm.bench.jobs.annotation_job."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.jobs import annotation_job
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
bench = snakemake.params.bench
annotation_job(
    snakemake.input.data,
    snakemake.input.embedding,
    snakemake.output.tsv,
    method=snakemake.wildcards.method,
    seed=bench["seed"],
    **bench["annotation"],
)
register_outputs(snakemake, kind="benchmark")  # no-op unless registry.enabled
