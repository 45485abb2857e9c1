# Downloads: datasets from their sources and per-organism reference gene tables.


rule download:
    input:
        get_download_input,
    output:
        manifest="resources/raw/{dataset}/manifest.json",
    params:
        cfg=dataset_cfg,
        chunk_cells=config["io"]["chunk_cells"],
    log:
        "logs/download/{dataset}.log",
    conda:
        "../../envs/download.yaml"
    resources:
        downloads=1,
    script:
        "../../scripts/download.py"


rule reference_genes:
    input:
        get_reference_input,
    output:
        table="resources/reference/{organism}/genes.tsv",
    params:
        spec=reference_spec,
    log:
        "logs/reference_genes/{organism}.log",
    conda:
        "../../envs/download.yaml"
    script:
        "../../scripts/reference_genes.py"
