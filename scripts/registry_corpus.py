"""Snakemake adapter: rules registry_vocab, registry_gene_stats, registry_corpus ->
scfm.shard.registered (a corpus registered by another working directory)."""

import _scfm_path  # noqa: F401 - makes this checkout's src/ importable in any env

from scfm.logs import setup_logging
from scfm.registry import register_outputs
from scfm.shard.registered import fetch_corpus_file, fetch_registered_corpus

setup_logging(snakemake.log[0])
corpus = snakemake.wildcards.corpus
if snakemake.rule == "registry_corpus":
    fetch_registered_corpus(
        corpus,
        snakemake.wildcards.tokenizer,
        snakemake.params.corpus,
        tokenizer_cfg=snakemake.params.tokenizer,
        vocab_path=snakemake.input.vocab,
        manifest_out=snakemake.output.manifest,
    )
    register_outputs(snakemake, kind="corpus")  # no-op unless registry.enabled
else:
    name = "vocab.tsv" if snakemake.rule == "registry_vocab" else "gene_stats.tsv"
    fetch_corpus_file(corpus, snakemake.params.corpus, name, snakemake.output.file)
