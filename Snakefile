# scfm: public single-cell data -> pretraining corpora -> foundation models -> benchmarks.
# This file is the table of contents; the work happens in src/scfm (see docs/architecture.md).


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/slurm.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/standardize.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/atac.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/bench.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
