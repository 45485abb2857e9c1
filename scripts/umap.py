"""Snakemake adapter: rule umap -> scfm.bench.jobs.umap_job."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.jobs import umap_job
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
umap_job(
    snakemake.input.data,
    snakemake.input.embedding,
    snakemake.output.png,
    method=snakemake.wildcards.method,
    seed=snakemake.params.bench["seed"],
)
