"""Snakemake adapter: rule corpus_manifest -> scfm.shard.merge_manifests."""

from pathlib import Path

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.logs import setup_logging
from scfm.registry import register_outputs
from scfm.shard import merge_manifests

setup_logging(snakemake.log[0])
merge_manifests(
    {k: Path(v) / "manifest.json" for k, v in snakemake.input.items() if k != "vocab"},
    snakemake.output.manifest,
    corpus=snakemake.wildcards.corpus,
    tokenizer=snakemake.wildcards.tokenizer,
    vocab_path=snakemake.input.vocab,
    weights=snakemake.params.weights,
)
register_outputs(snakemake, kind="corpus")  # no-op unless registry.enabled
