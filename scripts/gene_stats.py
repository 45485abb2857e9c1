"""Snakemake adapter: rule gene_stats -> scfm.shard.gene_stats."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.logs import setup_logging
from scfm.registry import register_outputs
from scfm.shard import gene_stats
from scfm.tokenize import Vocab

setup_logging(snakemake.log[0])
datasets = {k: v for k, v in snakemake.input.items() if k != "vocab"}
gene_stats(
    datasets,
    Vocab.read(snakemake.input.vocab),
    snakemake.output.stats,
    filters=snakemake.params.filters,
    chunk_cells=snakemake.params.chunk_cells,
)
register_outputs(snakemake, kind="vocab")  # no-op unless registry.enabled
