"""Snakemake adapter: rule vocab -> scfm.tokenize.build_vocab."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.logs import setup_logging
from scfm.registry import register_outputs
from scfm.tokenize import build_vocab, write_vocab

setup_logging(snakemake.log[0])
datasets = {k: v for k, v in snakemake.input.items() if k}
params = dict(snakemake.params.vocab)
table = build_vocab(datasets, **params)
write_vocab(table, snakemake.output.vocab)
register_outputs(snakemake, kind="vocab")  # no-op unless registry.enabled
