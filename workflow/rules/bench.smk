# Benchmarks: evaluation sets, embeddings of every method, one job per (set, method, metric),
# summaries and report figures. Rerun one metric by naming its file, e.g.
#   snakemake results/bench/<evalset>/<method>/scgraph.tsv


rule bench_data:
    input:
        h5ad=get_bench_qc,
        manifests=get_held_out_manifests,
    output:
        h5ad="results/bench/{evalset}/data.h5ad",
    log:
        "logs/bench_data/{evalset}.log",
    conda:
        "../../envs/bench.yaml"
    params:
        bench=params_of("bench_data", "bench", bench_cfg),
        runs=params_of("bench_data", "runs", held_out_run_manifests),
    script:
        "../../scripts/bench_data.py"


# Evaluation cells each trained run saw in training (its corpus' train split): leakage.tsv,
# shown next to the scores in the summaries and the results table (docs/benchmarks.md).
rule bench_leakage:
    input:
        data="results/bench/{evalset}/data.h5ad",
        manifests=get_bench_run_manifests,
    output:
        tsv="results/bench/{evalset}/leakage.tsv",
    log:
        "logs/bench_leakage/{evalset}.log",
    conda:
        "../../envs/bench.yaml"
    params:
        bench=params_of("bench_leakage", "bench", bench_cfg),
        runs=params_of("bench_leakage", "runs", bench_run_manifests),
    script:
        "../../scripts/bench_leakage.py"


rule baseline:
    input:
        data="results/bench/{evalset}/data.h5ad",
    output:
        h5ad="results/embed/{method}/{evalset}.h5ad",
    log:
        "logs/baseline/{method}/{evalset}.log",
    wildcard_constraints:
        method=BASELINE_RE,
    conda:
        "../../envs/bench.yaml"
    threads: 2
    params:
        baseline=baseline_params,
    script:
        "../../scripts/baseline.py"


rule embed:
    input:
        unpack(get_run_model),
        data="results/bench/{evalset}/data.h5ad",
    output:
        h5ad="results/embed/{method}/{evalset}.h5ad",
    log:
        "logs/embed/{method}/{evalset}.log",
    wildcard_constraints:
        method=RUN_RE,
    conda:
        "../../envs/bench.yaml"
    threads: 2
    params:
        bench=params_of("embed", "bench", bench_cfg),
    script:
        "../../scripts/embed.py"


rule external_embedding:
    input:
        unpack(get_external_input),
    output:
        h5ad="results/embed/{method}/{evalset}.h5ad",
    log:
        "logs/external_embedding/{method}/{evalset}.log",
    wildcard_constraints:
        method=EXTERNAL_RE,
    conda:
        "../../envs/bench.yaml"
    threads: external_threads
    params:
        external=params_of("external_embedding", "external", external_spec),
    script:
        "../../scripts/external_embedding.py"


rule scib:
    input:
        data="results/bench/{evalset}/data.h5ad",
        embedding="results/embed/{method}/{evalset}.h5ad",
        unintegrated=get_unintegrated,
    output:
        tsv="results/bench/{evalset}/{method}/scib.tsv",
    log:
        "logs/scib/{evalset}/{method}.log",
    conda:
        "../../envs/bench.yaml"
    threads: 2
    params:
        bench=params_of("scib", "bench", bench_cfg),
    script:
        "../../scripts/scib.py"


rule scgraph_reference:
    input:
        data="results/bench/{evalset}/data.h5ad",
    output:
        tsv="results/bench/{evalset}/scgraph_reference.tsv",
    log:
        "logs/scgraph_reference/{evalset}.log",
    conda:
        "../../envs/bench.yaml"
    params:
        bench=params_of("scgraph_reference", "bench", bench_cfg),
    script:
        "../../scripts/scgraph_reference.py"


rule scgraph:
    input:
        data="results/bench/{evalset}/data.h5ad",
        embedding="results/embed/{method}/{evalset}.h5ad",
        reference="results/bench/{evalset}/scgraph_reference.tsv",
    output:
        tsv="results/bench/{evalset}/{method}/scgraph.tsv",
        types="results/bench/{evalset}/{method}/scgraph_types.tsv",
    log:
        "logs/scgraph/{evalset}/{method}.log",
    conda:
        "../../envs/bench.yaml"
    params:
        bench=params_of("scgraph", "bench", bench_cfg),
    script:
        "../../scripts/scgraph.py"


rule annotation:
    input:
        data="results/bench/{evalset}/data.h5ad",
        embedding="results/embed/{method}/{evalset}.h5ad",
    output:
        tsv="results/bench/{evalset}/{method}/annotation.tsv",
    log:
        "logs/annotation/{evalset}/{method}.log",
    conda:
        "../../envs/bench.yaml"
    threads: 2
    params:
        bench=params_of("annotation", "bench", bench_cfg),
    script:
        "../../scripts/annotation.py"


rule masked:
    input:
        unpack(get_run_model),
        data="results/bench/{evalset}/data.h5ad",
    output:
        tsv="results/bench/{evalset}/{method}/masked.tsv",
    log:
        "logs/masked/{evalset}/{method}.log",
    wildcard_constraints:
        method=RUN_RE,
    conda:
        "../../envs/bench.yaml"
    threads: 2
    params:
        bench=params_of("masked", "bench", bench_cfg),
    script:
        "../../scripts/masked.py"


rule umap:
    input:
        data="results/bench/{evalset}/data.h5ad",
        embedding="results/embed/{method}/{evalset}.h5ad",
    output:
        png=report(
            "results/bench/{evalset}/{method}/umap.png",
            caption="../report/umap.rst",
            category="Benchmarks",
            subcategory="{evalset}",
            labels={"evalset": "{evalset}", "method": "{method}", "figure": "UMAP"},
        ),
    log:
        "logs/umap/{evalset}/{method}.log",
    conda:
        "../../envs/bench.yaml"
    params:
        bench=params_of("umap", "bench", bench_cfg),
    script:
        "../../scripts/umap.py"


rule bench_summary:
    input:
        tables=get_bench_tables,
        leakage="results/bench/{evalset}/leakage.tsv",
    output:
        tsv=report(
            "results/bench/{evalset}/summary.tsv",
            caption="../report/summary_tsv.rst",
            category="Benchmarks",
            subcategory="{evalset}",
            labels={
                "evalset": "{evalset}",
                "method": "all",
                "figure": "all scores (table)",
            },
        ),
        wide="results/bench/{evalset}/summary.wide.tsv",
        png=report(
            "results/bench/{evalset}/results_table.png",
            caption="../report/results_table.rst",
            category="Benchmarks",
            subcategory="{evalset}",
            labels={
                "evalset": "{evalset}",
                "method": "all",
                "figure": "results table",
            },
        ),
    log:
        "logs/bench_summary/{evalset}.log",
    conda:
        "../../envs/bench.yaml"
    script:
        "../../scripts/bench_summary.py"


rule bench_all:
    input:
        tables=expand("results/bench/{evalset}/summary.tsv", evalset=list(BENCHMARKS)),
    output:
        tsv="results/bench/summary.tsv",
    log:
        "logs/bench_all.log",
    conda:
        "../../envs/bench.yaml"
    script:
        "../../scripts/bench_all.py"
