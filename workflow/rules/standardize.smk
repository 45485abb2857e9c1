# Standardize: every source into one h5ad contract (docs/contracts.md).


rule standardize:
    input:
        manifest="resources/raw/{dataset}/manifest.json",
        gene_table=get_gene_table,
    output:
        h5ad="results/standard/{dataset}.h5ad",
    log:
        "logs/standardize/{dataset}.log",
    conda:
        "../../envs/rna.yaml"
    resources:
        runtime=480,
        mem_mb=16000,  # bounded by io.chunk_cells, not by the dataset
    params:
        dataset=params_of("standardize", "dataset", dataset_cfg),
        chunk_cells=config["io"]["chunk_cells"],
        compression=config["io"]["compression"],
    script:
        "../../scripts/standardize.py"
