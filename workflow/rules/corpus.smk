# Corpora: vocabulary, gene statistics and tokenized shards (one job per dataset).


rule vocab:
    input:
        unpack(get_corpus_qc),
    output:
        vocab="results/corpus/{corpus}/vocab.tsv",
    log:
        "logs/vocab/{corpus}.log",
    wildcard_constraints:
        corpus=BUILT_CORPUS_RE,
    conda:
        "../../envs/rna.yaml"
    params:
        vocab=params_of("vocab", "vocab", corpus_vocab_params),
    script:
        "../../scripts/vocab.py"


rule gene_stats:
    input:
        unpack(get_corpus_qc),
        vocab="results/corpus/{corpus}/vocab.tsv",
    output:
        stats="results/corpus/{corpus}/gene_stats.tsv",
    log:
        "logs/gene_stats/{corpus}.log",
    wildcard_constraints:
        corpus=BUILT_CORPUS_RE,
    conda:
        "../../envs/rna.yaml"
    resources:
        runtime=480,
        mem_mb=8000,  # genes x 1536 histogram (~180 MB at 30k genes) + one chunk
    params:
        filters=params_of("gene_stats", "filters", corpus_filters),
        chunk_cells=config["io"]["chunk_cells"],
    script:
        "../../scripts/gene_stats.py"


rule shard:
    input:
        h5ad="results/qc/{dataset}.h5ad",
        sha256="results/qc/{dataset}.h5ad.sha256",
        vocab="results/corpus/{corpus}/vocab.tsv",
        stats=get_shard_stats,
    output:
        shards=directory("results/corpus/{corpus}/{tokenizer}/datasets/{dataset}"),
    log:
        "logs/shard/{corpus}.{tokenizer}.{dataset}.log",
    conda:
        "../../envs/rna.yaml"
    resources:
        runtime=240,
        mem_mb=4000,  # bounded by io.chunk_cells
    params:
        tokenizer=params_of("shard", "tokenizer", tokenizer_cfg),
        split=params_of("shard", "split", corpus_split),
        filters=params_of("shard", "filters", dataset_filter),
        cells_per_shard=config["shards"]["cells_per_shard"],
        chunk_cells=config["io"]["chunk_cells"],
    script:
        "../../scripts/shard.py"


rule corpus_manifest:
    input:
        unpack(get_corpus_shards),
        vocab="results/corpus/{corpus}/vocab.tsv",
    output:
        manifest="results/corpus/{corpus}/{tokenizer}/manifest.json",
    log:
        "logs/corpus_manifest/{corpus}.{tokenizer}.log",
    wildcard_constraints:
        corpus=BUILT_CORPUS_RE,
    conda:
        "../../envs/rna.yaml"
    params:
        weights=params_of("corpus_manifest", "weights", corpus_weights),
    script:
        "../../scripts/corpus_manifest.py"


# A corpus registered by another working directory (corpora.<name>.source: lamindb): its
# vocabulary, gene statistics and shards are fetched from the registry, verified, and then used
# like a corpus built here (docs/registry.md).


rule registry_vocab:
    output:
        file="results/corpus/{corpus}/vocab.tsv",
    log:
        "logs/registry_vocab/{corpus}.log",
    wildcard_constraints:
        corpus=REGISTERED_CORPUS_RE,
    conda:
        "../../envs/rna.yaml"
    params:
        corpus=params_of("registry_vocab", "corpus", corpus_cfg),
    script:
        "../../scripts/registry_corpus.py"


use rule registry_vocab as registry_gene_stats with:
    output:
        file="results/corpus/{corpus}/gene_stats.tsv",
    log:
        "logs/registry_gene_stats/{corpus}.log",


rule registry_corpus:
    input:
        vocab="results/corpus/{corpus}/vocab.tsv",
    output:
        manifest="results/corpus/{corpus}/{tokenizer}/manifest.json",
        shards=directory("results/corpus/{corpus}/{tokenizer}/datasets"),
    log:
        "logs/registry_corpus/{corpus}.{tokenizer}.log",
    wildcard_constraints:
        corpus=REGISTERED_CORPUS_RE,
    conda:
        "../../envs/rna.yaml"
    params:
        corpus=params_of("registry_corpus", "corpus", corpus_cfg),
        tokenizer=params_of("registry_corpus", "tokenizer", tokenizer_cfg),
    script:
        "../../scripts/registry_corpus.py"
