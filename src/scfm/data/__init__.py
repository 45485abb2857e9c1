"""Training data: memory-mapped corpus shards to masked, padded batches with exact resume."""

from scfm.data.loader import (
    CellBatchDataset,
    Collator,
    Corpus,
    CorpusLoader,
    LoaderConfig,
    ShardInfo,
    decode_cell_index,
    encode_cell_index,
)

__all__ = [
    "CellBatchDataset",
    "Collator",
    "Corpus",
    "CorpusLoader",
    "LoaderConfig",
    "ShardInfo",
    "decode_cell_index",
    "encode_cell_index",
]
