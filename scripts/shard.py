"""Snakemake adapter: rule shard -> scfm.shard.shard_dataset."""

from pathlib import Path

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.logs import setup_logging
from scfm.shard import shard_dataset

setup_logging(snakemake.log[0])
shard_dataset(
    snakemake.input.h5ad,
    snakemake.output.shards,
    dataset=snakemake.wildcards.dataset,
    vocab_path=snakemake.input.vocab,
    tokenizer=snakemake.params.tokenizer,
    split=snakemake.params.split,
    filters=snakemake.params.filters,
    gene_stats=snakemake.input.stats or None,
    source_sha256=Path(snakemake.input.sha256).read_text().split()[0],
    cells_per_shard=snakemake.params.cells_per_shard,
    chunk_cells=snakemake.params.chunk_cells,
)
