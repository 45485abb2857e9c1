"""Snakemake adapter: rule scgraph_reference -> scfm.bench.jobs.scgraph_reference_job."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.jobs import scgraph_reference_job
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
scgraph_reference_job(snakemake.input.data, snakemake.output.tsv, snakemake.params.bench["scgraph"])
