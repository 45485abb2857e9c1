"""Corpora: cell filters, seeded splits, gene statistics and tokenized Arrow shards."""

from scfm.shard.corpus import assign_splits, select_cells
from scfm.shard.stats import gene_stats
from scfm.shard.writer import merge_manifests, read_manifest, shard_dataset

__all__ = [
    "assign_splits",
    "gene_stats",
    "merge_manifests",
    "read_manifest",
    "select_cells",
    "shard_dataset",
]
