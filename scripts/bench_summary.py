"""Snakemake adapter: rule bench_summary -> scfm.bench.jobs.summary_job."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.jobs import summary_job
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
summary_job(
    snakemake.input.tables,
    snakemake.output.tsv,
    snakemake.output.wide,
    snakemake.output.png,
    evalset=snakemake.wildcards.evalset,
    leakage=snakemake.input.leakage,
)
register_outputs(snakemake, kind="benchmark")  # no-op unless registry.enabled
