# Training: one job per run; torchrun starts one process per GPU (CPU: a single process).


rule train:
    input:
        manifest=get_run_manifest,
        vocab=get_run_vocab,
    output:
        model="results/train/{run}/model.pt",
        metrics="results/train/{run}/metrics.tsv",
        curve=report(
            "results/train/{run}/loss.png",
            caption="../report/loss.rst",
            category="Training",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "loss curves"},
        ),
    log:
        "logs/train/{run}.log",
    conda:
        "../../envs/train.yaml"
    # CPU threads of the training process (capped at --cores locally: beside it, the benchmark
    # jobs' threads: 2 keep running). GPU jobs get their CPUs as cpus_per_gpu (profiles/slurm).
    threads: 4
    resources:
        runtime=2880,  # minutes; checkpoints + retries/--requeue continue longer runs
        mem_mb=16000,
    params:
        run=params_of("train", "run", run_cfg),
        model=params_of("train", "model", run_model_cfg),
        out=subpath(output.model, parent=True),
    script:
        "../../scripts/train.py"


rule train_summary:
    input:
        metrics=expand("results/train/{run}/metrics.tsv", run=list(RUNS)),
    output:
        tsv=report(
            "results/train/summary.tsv",
            caption="../report/train_summary_tsv.rst",
            category="Experiments",
            labels={"figure": "every run vs its trivial predictors (table)"},
        ),
        png=report(
            "results/train/vs_trivial.png",
            caption="../report/vs_trivial.rst",
            category="Experiments",
            labels={"figure": "every run vs its trivial predictors"},
        ),
    log:
        "logs/train_summary.log",
    conda:
        "../../envs/train.yaml"
    params:
        runs=list(RUNS),
    script:
        "../../scripts/train_summary.py"
