"""Snakemake adapter: rule bench_data -> scfm.bench.prepare_evalset."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.bench.evalset import prepare_evalset
from scfm.bench.leakage import trained_cells
from scfm.logs import setup_logging

setup_logging(snakemake.log[0])
bench = snakemake.params.bench
prepare_evalset(
    snakemake.input.h5ad,
    snakemake.output.h5ad,
    label_key=bench["label_key"],
    batch_key=bench["batch_key"],
    split_key=bench["split_key"],
    metrics=bench["metrics"],
    max_cells=bench["max_cells"],
    seed=bench["seed"],
    n_hvg=bench["n_hvg"],
    hvg_min_batch_cells=bench["hvg_min_batch_cells"],
    name=snakemake.wildcards.evalset,
    exclude=trained_cells(snakemake.params.runs, bench["dataset"]) if bench["held_out"] else None,
)
