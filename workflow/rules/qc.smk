# QC: per-cell metrics, filters, figures (report outputs).


rule qc:
    input:
        h5ad="results/standard/{dataset}.h5ad",
    output:
        h5ad="results/qc/{dataset}.h5ad",
        metrics=report(
            "results/qc/{dataset}.metrics.tsv",
            caption="../report/qc_metrics.rst",
            category="QC",
            # its own subcategory: the report shows one row per label set, so a table and a
            # figure of one dataset under one subcategory would share a row
            subcategory="{dataset} (table)",
            labels={
                "dataset": "{dataset}",
                "figure": "cells removed per filter (table)",
            },
        ),
        figure=report(
            "results/qc/{dataset}.qc.png",
            caption="../report/qc.rst",
            category="QC",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "QC metrics"},
        ),
    log:
        "logs/qc/{dataset}.log",
    wildcard_constraints:
        dataset=RNA_RE,
    conda:
        "../../envs/rna.yaml"
    resources:
        runtime=480,
        mem_mb=32000,  # scrublet holds one batch at a time
    params:
        qc=params_of("qc", "qc", qc_params),
        organism=dataset_organism,
        chunk_cells=config["io"]["chunk_cells"],
        compression=config["io"]["compression"],
    script:
        "../../scripts/qc.py"


rule checksum:
    input:
        h5ad="results/qc/{dataset}.h5ad",
    output:
        sha256="results/qc/{dataset}.h5ad.sha256",
    log:
        "logs/checksum/{dataset}.log",
    conda:
        "../../envs/rna.yaml"
    script:
        "../../scripts/checksum.py"
