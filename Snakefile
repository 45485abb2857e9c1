# scfm: public single-cell data -> pretraining corpora -> foundation models -> benchmarks.
# This file is the table of contents; the work happens in src/scfm (see docs/architecture.md).
# The config: config/config.yaml, or only the --configfile files when given (read and validated
# at the top of workflow/rules/common.smk; docs/config.md).


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
