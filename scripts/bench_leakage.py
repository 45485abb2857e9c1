"""Snakemake adapter: rule bench_leakage -> scfm.bench.leakage.leakage_job."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.leakage import leakage_job
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
leakage_job(
    snakemake.input.data,
    snakemake.output.tsv,
    dataset=snakemake.params.bench["dataset"],
    runs=snakemake.params.runs,
    name=snakemake.wildcards.evalset,
)
