# scATAC branch: fragments -> per-barcode QC -> genome bins, shared peaks, gene activity ->
# results/qc/<dataset>.h5ad (one of those matrices), which corpora and benchmarks then use as
# they use RNA. The download rule fetches fragment files like any other source.


rule reference_genome:
    input:
        get_genome_input,
    output:
        chrom_sizes="resources/reference/{genome}/genome/chrom.sizes",
        genes="resources/reference/{genome}/genome/genes.tsv",
    log:
        "logs/reference_genome/{genome}.log",
    conda:
        "../../envs/atac.yaml"
    params:
        genome=params_of("reference_genome", "genome", genome_spec),
    script:
        "../../scripts/reference_genome.py"


rule atac_blacklist:
    output:
        bed="resources/atac/blacklist/{sha}/{name}",
    log:
        "logs/atac_blacklist/{sha}/{name}.log",
    wildcard_constraints:
        sha="[0-9a-f]{16}",
    conda:
        "../../envs/atac.yaml"
    params:
        blacklist=params_of("atac_blacklist", "blacklist", atac_blacklist_download),
    script:
        "../../scripts/atac_blacklist.py"


rule atac_fragments:
    input:
        unpack(get_atac_genome),
        unpack(get_atac_blacklist),
        manifest="resources/raw/{dataset}/manifest.json",
    output:
        fragments="results/atac/{dataset}/fragments.tsv.gz",
        index="results/atac/{dataset}/fragments.tsv.gz.tbi",
        # the same fragments as binary records + the QC sums: later rules read this, not text
        sidecar="results/atac/{dataset}/fragments.tsv.gz.scfm",
    log:
        "logs/atac_fragments/{dataset}.log",
    wildcard_constraints:
        dataset=ATAC_RE,
    conda:
        "../../envs/atac.yaml"
    params:
        dataset=params_of("atac_fragments", "dataset", dataset_cfg),
    script:
        "../../scripts/atac_fragments.py"


rule atac_qc:
    input:
        unpack(get_atac_genome),
        fragments="results/atac/{dataset}/fragments.tsv.gz",
        sidecar="results/atac/{dataset}/fragments.tsv.gz.scfm",
        manifest="resources/raw/{dataset}/manifest.json",
    output:
        table="results/atac/{dataset}/qc.tsv",
        barcodes="results/atac/{dataset}/barcodes.tsv",
        figure=report(
            "results/atac/{dataset}/qc.png",
            caption="../report/atac_qc.rst",
            category="QC",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "scATAC QC"},
        ),
    log:
        "logs/atac_qc/{dataset}.log",
    conda:
        "../../envs/atac.yaml"
    params:
        dataset=params_of("atac_qc", "dataset", dataset_cfg),
        qc=params_of("atac_qc", "qc", atac_qc_params),
    script:
        "../../scripts/atac_qc.py"


rule atac_tiles:
    input:
        unpack(get_atac_genome),
        fragments="results/atac/{dataset}/fragments.tsv.gz",
        sidecar="results/atac/{dataset}/fragments.tsv.gz.scfm",
        barcodes="results/atac/{dataset}/barcodes.tsv",
    output:
        h5ad="results/atac/{dataset}.tiles.h5ad",
    log:
        "logs/atac_tiles/{dataset}.log",
    conda:
        "../../envs/atac.yaml"
    params:
        qc=params_of("atac_tiles", "qc", atac_qc_params),
        compression=config["io"]["compression"],
    script:
        "../../scripts/atac_tiles.py"


rule atac_summits:
    input:
        unpack(get_atac_genome),
        fragments="results/atac/{dataset}/fragments.tsv.gz",
        sidecar="results/atac/{dataset}/fragments.tsv.gz.scfm",
        barcodes="results/atac/{dataset}/barcodes.tsv",
    output:
        summits="results/atac/{dataset}/summits.bed",
    log:
        "logs/atac_summits/{dataset}.log",
    conda:
        "../../envs/atac.yaml"
    params:
        qc=params_of("atac_summits", "qc", atac_qc_params),
    script:
        "../../scripts/atac_summits.py"


rule atac_peakset:
    input:
        summits=get_peakset_summits,
        chrom_sizes="resources/reference/{genome}/genome/chrom.sizes",
        genes="resources/reference/{genome}/genome/genes.tsv",
    output:
        bed="results/atac/peaks/{genome}.bed",
    log:
        "logs/atac_peakset/{genome}.log",
    conda:
        "../../envs/atac.yaml"
    params:
        peak_width=config["qc"]["atac"]["peak_width"],
    script:
        "../../scripts/atac_peakset.py"


rule atac_peak_matrix:
    input:
        fragments="results/atac/{dataset}/fragments.tsv.gz",
        sidecar="results/atac/{dataset}/fragments.tsv.gz.scfm",
        barcodes="results/atac/{dataset}/barcodes.tsv",
        peaks=get_dataset_peakset,
    output:
        h5ad="results/atac/{dataset}.peaks.h5ad",
    log:
        "logs/atac_peak_matrix/{dataset}.log",
    conda:
        "../../envs/atac.yaml"
    params:
        qc=params_of("atac_peak_matrix", "qc", atac_qc_params),
    script:
        "../../scripts/atac_peak_matrix.py"


rule atac_activity:
    input:
        unpack(get_atac_genome),
        fragments="results/atac/{dataset}/fragments.tsv.gz",
        sidecar="results/atac/{dataset}/fragments.tsv.gz.scfm",
        barcodes="results/atac/{dataset}/barcodes.tsv",
    output:
        h5ad="results/atac/{dataset}.genes.h5ad",
    log:
        "logs/atac_activity/{dataset}.log",
    conda:
        "../../envs/atac.yaml"
    params:
        qc=params_of("atac_activity", "qc", atac_qc_params),
    script:
        "../../scripts/atac_activity.py"


rule atac_features:
    input:
        matrix=get_atac_features,
        barcodes="results/atac/{dataset}/barcodes.tsv",
    output:
        h5ad="results/qc/{dataset}.h5ad",
    log:
        "logs/atac_features/{dataset}.log",
    wildcard_constraints:
        dataset=ATAC_RE,
    conda:
        "../../envs/atac.yaml"
    params:
        dataset=params_of("atac_features", "dataset", dataset_cfg),
    script:
        "../../scripts/atac_features.py"
