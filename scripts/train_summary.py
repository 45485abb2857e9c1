"""Snakemake adapter: rule train_summary -> scfm.train.summary.summarise_runs."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.logs import setup_logging
from scfm.train.summary import summarise_runs

setup_logging(snakemake.log[0])
summarise_runs(
    dict(zip(snakemake.params.runs, snakemake.input.metrics, strict=True)),
    snakemake.output.tsv,
    snakemake.output.png,
)
