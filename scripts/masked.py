"""Snakemake adapter: rule masked -> scfm.bench.jobs.masked_job."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.jobs import masked_job
from scfm.logs import setup_logging
from scfm.registry import register_outputs

setup_logging(snakemake.log[0])
bench = snakemake.params.bench
masked_job(
    snakemake.input.data,
    snakemake.input.model,
    snakemake.output.tsv,
    method=snakemake.wildcards.method,
    max_cells=bench["masked"]["max_cells"],
    batch_size=bench["batch_size"],
    seed=bench["seed"],
    gene_stats=snakemake.input.get("gene_stats"),
)
register_outputs(snakemake, kind="benchmark")  # no-op unless registry.enabled
