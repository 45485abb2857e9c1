"""Snakemake adapter: rule scib -> scfm.bench.jobs.scib_job (scib-metrics Benchmarker)."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.jobs import scib_job
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
scib_job(
    snakemake.input.data,
    snakemake.input.embedding,
    snakemake.input.unintegrated,
    snakemake.output.tsv,
    method=snakemake.wildcards.method,
    kbet=snakemake.params.bench["scib"]["kbet"],
    leiden=snakemake.params.bench["scib"]["leiden"],
    threads=snakemake.threads,
)
register_outputs(snakemake, kind="benchmark")  # no-op unless registry.enabled
