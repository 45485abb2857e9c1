# Downloads: datasets from their sources and per-organism reference gene tables.


rule download:
    input:
        get_download_input,
    output:
        manifest="resources/raw/{dataset}/manifest.json",
    log:
        "logs/download/{dataset}.log",
    conda:
        "../../envs/download.yaml"
    resources:
        downloads=1,
        runtime=720,  # minutes; Census queries and atlas downloads take hours
        mem_mb=16000,
    params:
        dataset=params_of("download", "dataset", dataset_cfg),
        chunk_cells=config["io"]["chunk_cells"],
    script:
        "../../scripts/download.py"


rule reference_genes:
    input:
        get_reference_input,
    output:
        table="resources/reference/{organism}/genes.tsv",
    log:
        "logs/reference_genes/{organism}.log",
    conda:
        "../../envs/download.yaml"
    params:
        genes=params_of("reference_genes", "genes", reference_spec),
    script:
        "../../scripts/reference_genes.py"
