"""Vocabulary and tokenizers (binned, rank, continuous, counts)."""

from scfm.tokenize.tokenizers import TokenizerConfig, Tokens, tokenize_anndata, tokenize_csr
from scfm.tokenize.vocab import Vocab, build_vocab, write_vocab

__all__ = [
    "TokenizerConfig",
    "Tokens",
    "Vocab",
    "build_vocab",
    "tokenize_anndata",
    "tokenize_csr",
    "write_vocab",
]
