"""Snakemake adapter: rule bench_all -> scfm.bench.jobs.merge_summaries."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.jobs import merge_summaries
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
merge_summaries(snakemake.input.tables, snakemake.output.tsv)
