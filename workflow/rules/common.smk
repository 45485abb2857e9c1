# Config validation, wildcard constraints and input functions shared by every rule.
import re
import sys
from pathlib import Path

# The Snakefile process validates the config with the same scfm the jobs run (scripts/_scfm_path.py
# puts this checkout's src/ first for them): without this, an scfm installed in the environment
# (another version) would validate while the checkout's code runs the jobs.
_SRC = (
    Path(workflow.current_basedir.get_path_or_uri(secret_free=False)).parents[1] / "src"
)
if _SRC.is_dir():
    sys.path[:] = [str(_SRC), *(p for p in sys.path if p != str(_SRC))]
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from snakemake.logging import logger

from scfm.config import corpus_tokenizers as _corpus_tokenizers
from scfm.config import DEFAULT_CONFIG, load_schema, validate_config, workflow_config
from scfm.paths import check_writable_dirs

# The config is read here, by scfm's safe loader, not by a `configfile:` directive: the
# --configfile files replace config/config.yaml (read only when none is given), --config values
# are merged on top, coerced through the schema's types; duplicate keys and yte templates are
# errors. Inside a `module` given `config:`, the lab's Snakefile has read it (docs/config.md).
_SCHEMA = load_schema()
if not workflow.modifier.skip_configfile:
    config = workflow_config(
        workflow.config_settings.configfiles,
        workflow.config_settings.config,
        schema=_SCHEMA,
    )
    if (
        not workflow.config_settings.configfiles
    ):  # listed in the report and source archive
        workflow.configfiles.append(str(DEFAULT_CONFIG))
# Validate once at start-up, before any job: unknown keys, wrong types and unknown sources stop
# the run with the key path and what was expected. Defaults are filled from the schema.
config = validate_config(config, schema=_SCHEMA)
# A read-only output tree stops the run here, naming the directory; later, Snakemake would fail
# inside its own code (creating a log file) or a job on a temporary file name.
if workflow.is_main_process:
    check_writable_dirs(["results", "resources", "logs"])

DATASETS = config["datasets"]
RNA_DATASETS = [n for n, d in DATASETS.items() if d["modality"] == "rna"]
ATAC_DATASETS = [n for n, d in DATASETS.items() if d["modality"] == "atac"]
NAME = "[A-Za-z0-9_.-]+"
# The qc (RNA) and atac_features rules both write results/qc/<dataset>.h5ad; these tell them apart
NEVER = "(?!x)x"
RNA_RE = "|".join(re.escape(n) for n in RNA_DATASETS) or NEVER
ATAC_RE = "|".join(re.escape(n) for n in ATAC_DATASETS) or NEVER


wildcard_constraints:
    dataset=NAME,
    organism=NAME,
    genome=NAME,
    evalset=NAME,
    method=NAME,
    corpus=NAME,
    tokenizer=NAME,
    run=NAME,


from scfm.rule_params import project


def params_of(rule, param, block):
    """A params function: the keys `rule` reads of the block `block(wildcards)`, canonical.

    scfm.rule_params.KEYS says which keys (docs/architecture.md, "Rule params"): a job reruns
    when one of those changes, not when another key of the block does.
    """
    return lambda wildcards: project(rule, param, block(wildcards))


def dataset_cfg(wildcards):
    """The validated config block of the dataset named by the wildcard.

    scATAC datasets also get ``genome_spec``: their reference genome block (the simulator
    places its fragments on that genome).
    """
    cfg = DATASETS[wildcards.dataset]
    if cfg["modality"] == "atac":
        return {**cfg, "genome_spec": config["references"][atac_genome(cfg)]["genome"]}
    return cfg


def atac_genome(cfg):
    """The references.<name> whose genome an scATAC dataset is on."""
    return cfg.get("genome") or cfg["organism"]


def dataset_organism(wildcards):
    """The organism of the dataset named by the wildcard."""
    return dataset_cfg(wildcards)["organism"]


def reference_spec(wildcards):
    """The gene-table spec of the organism named by the wildcard."""
    return config["references"][wildcards.organism]["genes"]


def get_download_input(wildcards):
    """A local source's file is an input, so that replacing it reruns the dataset."""
    cfg = dataset_cfg(wildcards)
    return [cfg["path"]] if cfg["source"] == "local" else []


def get_gene_table(wildcards):
    """The gene table of the dataset's organism, if the config defines one."""
    organism = dataset_cfg(wildcards)["organism"]
    if organism in config["references"]:
        return f"resources/reference/{organism}/genes.tsv"
    return []


def get_reference_input(wildcards):
    """A local reference file is an input of the reference rule."""
    spec = reference_spec(wildcards)
    return [spec["path"]] if spec.get("path") else []


def qc_params(wildcards):
    """qc.<modality> with the dataset's own overrides on top."""
    cfg = dataset_cfg(wildcards)
    return {**config["qc"][cfg["modality"]], **cfg.get("qc", {})}


CORPORA = config["corpora"]
TOKENIZERS = config["tokenizers"]
# Corpora built here (rules vocab, gene_stats, shard, corpus_manifest) and corpora registered
# elsewhere (rules registry_*), which write the same paths: these constraints tell them apart.
REGISTERED_CORPORA = [c for c, b in CORPORA.items() if b["source"] == "lamindb"]
BUILT_CORPUS_RE = (
    "|".join(re.escape(c) for c in CORPORA if c not in REGISTERED_CORPORA) or NEVER
)
REGISTERED_CORPUS_RE = "|".join(re.escape(c) for c in REGISTERED_CORPORA) or NEVER


def corpus_tokenizers(corpus):
    """Tokenizers whose shards a corpus gets (all of them unless the corpus lists some)."""
    return _corpus_tokenizers(CORPORA[corpus], TOKENIZERS)


def corpus_cfg(wildcards):
    """The validated block of the corpus named by the wildcard."""
    return CORPORA[wildcards.corpus]


def get_corpus_qc(wildcards):
    """QC'd h5ad of every dataset of the corpus, named by dataset."""
    return {ds: f"results/qc/{ds}.h5ad" for ds in CORPORA[wildcards.corpus]["datasets"]}


def corpus_vocab_params(wildcards):
    """The corpus' vocabulary policy."""
    return CORPORA[wildcards.corpus]["vocab"]


def corpus_filters(wildcards):
    """Per-dataset cell filters of the corpus."""
    return CORPORA[wildcards.corpus]["filters"]


def dataset_filter(wildcards):
    """The corpus' cell filter for one dataset (None: keep every cell)."""
    return CORPORA[wildcards.corpus]["filters"].get(wildcards.dataset)


def corpus_split(wildcards):
    """The corpus' split settings."""
    return CORPORA[wildcards.corpus]["split"]


def corpus_weights(wildcards):
    """The corpus' sampling weights, if any."""
    return CORPORA[wildcards.corpus]["weights"]


def tokenizer_cfg(wildcards):
    """The validated block of the tokenizer named by the wildcard."""
    return TOKENIZERS[wildcards.tokenizer]


def get_shard_stats(wildcards):
    """Gene statistics are needed by the rank tokenizer only."""
    if TOKENIZERS[wildcards.tokenizer]["kind"] == "rank":
        return f"results/corpus/{wildcards.corpus}/gene_stats.tsv"
    return []


def get_corpus_shards(wildcards):
    """Per-dataset shard directories of a corpus and tokenizer."""
    return {
        ds: f"results/corpus/{wildcards.corpus}/{wildcards.tokenizer}/datasets/{ds}"
        for ds in CORPORA[wildcards.corpus]["datasets"]
    }


RUNS = config["runs"]
MODELS = config["models"]


def run_cfg(wildcards):
    """The validated block of the run named by the wildcard."""
    return RUNS[wildcards.run]


def run_model_cfg(wildcards):
    """The model block the run names."""
    return MODELS[RUNS[wildcards.run]["model"]]


def run_manifest(run):
    """The manifest of the corpus shards a run trains on."""
    cfg = RUNS[run]
    return f"results/corpus/{cfg['corpus']}/{cfg['tokenizer']}/manifest.json"


def get_run_manifest(wildcards):
    """The corpus shards a run trains on."""
    return run_manifest(wildcards.run)


def get_run_vocab(wildcards):
    """The vocabulary of the run's corpus (stored in model.pt)."""
    return f"results/corpus/{RUNS[wildcards.run]['corpus']}/vocab.tsv"


def atac_qc_params(wildcards):
    """qc.atac with the dataset's own overrides on top."""
    return {**config["qc"]["atac"], **DATASETS[wildcards.dataset].get("qc", {})}


def atac_blacklist_spec(wildcards):
    """qc.atac.blacklist of a dataset (its own qc override first): None, a path, or a dict."""
    return atac_qc_params(wildcards).get("blacklist")


def atac_blacklist_download(wildcards):
    """The {url, sha256} blacklist (qc.atac or a dataset's override) of an atac_blacklist job."""
    specs = [config["qc"]["atac"].get("blacklist")]
    specs += [d.get("qc", {}).get("blacklist") for d in DATASETS.values()]
    return next(
        s
        for s in specs
        if isinstance(s, dict)
        and s.get("url")
        and s["sha256"].startswith(wildcards.sha)
    )


def get_atac_blacklist(wildcards):
    """{"blacklist": <BED>} for the atac_fragments rule (a local file or the downloaded one)."""
    spec = atac_blacklist_spec(wildcards)
    if not spec:
        return {}
    if isinstance(spec, str) or spec.get("path"):
        return {"blacklist": spec if isinstance(spec, str) else spec["path"]}
    name = PurePosixPath(urlsplit(spec["url"]).path).name
    return {"blacklist": f"resources/atac/blacklist/{spec['sha256'][:16]}/{name}"}


def get_atac_genome(wildcards):
    """The prepared genome files of an scATAC dataset."""
    genome = atac_genome(DATASETS[wildcards.dataset])
    return {
        "chrom_sizes": f"resources/reference/{genome}/genome/chrom.sizes",
        "genes": f"resources/reference/{genome}/genome/genes.tsv",
    }


def genome_spec(wildcards):
    """references.<genome>.genome."""
    return config["references"][wildcards.genome]["genome"]


def get_genome_input(wildcards):
    """Local files a genome spec names are inputs of its rule."""
    spec = genome_spec(wildcards)
    paths = [spec.get("chrom_sizes"), (spec.get("annotation") or {}).get("path")]
    return [p for p in paths if p]


def get_peakset_summits(wildcards):
    """Summits of every scATAC dataset on a genome: one shared peak set."""
    return [
        f"results/atac/{d}/summits.bed"
        for d in ATAC_DATASETS
        if atac_genome(DATASETS[d]) == wildcards.genome
    ]


def get_dataset_peakset(wildcards):
    """The shared peak set of the dataset's genome."""
    return f"results/atac/peaks/{atac_genome(DATASETS[wildcards.dataset])}.bed"


def get_atac_features(wildcards):
    """The matrix (peaks, tiles or genes) that becomes the dataset's QC'd h5ad."""
    kind = DATASETS[wildcards.dataset]["features"]
    return f"results/atac/{wildcards.dataset}.{kind}.h5ad"


def get_final_outputs():
    """What `snakemake` builds by default: QC outputs, corpus manifests, trained runs."""
    qc = expand(
        [
            "results/qc/{dataset}.h5ad",
            "results/qc/{dataset}.metrics.tsv",
            "results/qc/{dataset}.qc.png",
        ],
        dataset=RNA_DATASETS,
    )
    corpora = [
        f"results/corpus/{c}/{t}/manifest.json"
        for c in CORPORA
        for t in corpus_tokenizers(c)
    ]
    runs = expand(
        ["results/train/{run}/model.pt", "results/train/{run}/loss.png"], run=list(RUNS)
    )
    if RUNS:
        runs += ["results/train/summary.tsv", "results/train/vs_trivial.png"]
    atac = expand(
        [
            "results/qc/{dataset}.h5ad",
            "results/atac/{dataset}/qc.png",
            "results/atac/{dataset}.tiles.h5ad",
            "results/atac/{dataset}.genes.h5ad",
        ],
        dataset=ATAC_DATASETS,
    )
    return qc + atac + corpora + runs + get_bench_outputs()


BENCHMARKS = config["benchmarks"]
BASELINE_NAMES = ["pca", "hvg", "scvi", "random", "lsi"]
# Rule `baseline` makes the baselines' embeddings, rule `embed` the trained runs'; both write
# results/embed/<method>/<evalset>.h5ad, told apart by these constraints.
BASELINE_RE = "|".join(BASELINE_NAMES)
RUN_RE = "|".join(re.escape(r) for r in RUNS) or NEVER
# Rule `external_embedding` makes the embeddings of benchmarks.<set>.external methods.
EXTERNAL_METHODS = sorted({m for b in BENCHMARKS.values() for m in b["external"]})
EXTERNAL_RE = "|".join(re.escape(m) for m in EXTERNAL_METHODS) or NEVER


def bench_cfg(wildcards):
    """The validated block of the evaluation set named by the wildcard."""
    return BENCHMARKS[wildcards.evalset]


def get_bench_qc(wildcards):
    """The QC'd h5ad an evaluation set is drawn from."""
    return f"results/qc/{BENCHMARKS[wildcards.evalset]['dataset']}.h5ad"


def bench_run_manifests(wildcards):
    """Corpus manifest of each trained run an evaluation set scores, by run (sorted)."""
    methods = BENCHMARKS[wildcards.evalset]["methods"]
    return {m: run_manifest(m) for m in sorted(methods) if m in RUNS}


def held_out_run_manifests(wildcards):
    """bench_run_manifests, if the set leaves the runs' training cells out (else unused: {})."""
    if BENCHMARKS[wildcards.evalset]["held_out"]:
        return bench_run_manifests(wildcards)
    return {}


def get_bench_run_manifests(wildcards):
    """Corpus manifests of the evaluation set's runs (their train splits are counted)."""
    return sorted(set(bench_run_manifests(wildcards).values()))


def warn_possible_leakage():
    """Say at start-up which runs may be scored on cells they trained on (leakage.tsv counts)."""
    for name, bench in BENCHMARKS.items():
        if bench["held_out"]:
            continue
        runs = [
            run
            for run in bench["methods"]
            if bench["dataset"]
            in (CORPORA.get(RUNS.get(run, {}).get("corpus"), {}).get("datasets") or [])
        ]
        if runs:
            logger.warning(
                f"benchmarks.{name}: dataset {bench['dataset']} is in the training corpus of "
                f"run(s) {', '.join(runs)}; the evaluation cells they trained on are counted "
                f"in results/bench/{name}/leakage.tsv and the summaries (train_overlap); "
                f"benchmarks.{name}.held_out: true evaluates only held-out cells"
            )


def get_held_out_manifests(wildcards):
    """With held_out, the evaluation set itself needs the runs' corpora (to leave cells out)."""
    return sorted(set(held_out_run_manifests(wildcards).values()))


def baseline_params(wildcards):
    """Keyword arguments of a baseline (see scfm.bench.baselines)."""
    bench = BENCHMARKS[wildcards.evalset]
    return project("baseline", "baseline", bench, method=wildcards.method)


def external_spec(wildcards):
    """benchmarks.<set>.external.<method>: how the job gets that method's embedding."""
    return BENCHMARKS[wildcards.evalset]["external"][wildcards.method]


def get_external_input(wildcards):
    """The evaluation set, and a precomputed method's file (a changed file reruns the job)."""
    spec = external_spec(wildcards)
    inputs = {"data": f"results/bench/{wildcards.evalset}/data.h5ad"}
    if spec["kind"] == "precomputed":
        inputs["file"] = spec["path"]
    return inputs


def external_threads(wildcards):
    """Threads of a command method (precomputed files need one)."""
    spec = external_spec(wildcards)
    return spec["threads"] if spec["kind"] == "command" else 1


def get_run_model(wildcards):
    """A trained run's model.pt, and the gene statistics its rank tokenizer needs."""
    run = RUNS[wildcards.method]
    inputs = {"model": f"results/train/{wildcards.method}/model.pt"}
    if TOKENIZERS[run["tokenizer"]]["kind"] == "rank":
        inputs["gene_stats"] = f"results/corpus/{run['corpus']}/gene_stats.tsv"
    return inputs


def bench_metric_files(evalset):
    """Every metric table of an evaluation set: methods x metrics (masked: trained runs only).

    Annotation always includes the hvg method: logistic regression on the raw HVG features is
    the reference every embedding's annotation score is read against.
    """
    bench = BENCHMARKS[evalset]
    files = []
    for metric in bench["metrics"]:
        methods = list(bench["methods"])
        if metric == "annotation" and "hvg" not in methods:
            methods.append("hvg")
        if metric == "masked":
            methods = [m for m in methods if m in RUNS]
        files += [f"results/bench/{evalset}/{m}/{metric}.tsv" for m in methods]
    return files


def get_unintegrated(wildcards):
    """scib's PCR comparison reference: PCA for RNA, LSI for scATAC evaluation sets."""
    dataset = BENCHMARKS[wildcards.evalset]["dataset"]
    method = "lsi" if DATASETS[dataset]["modality"] == "atac" else "pca"
    return f"results/embed/{method}/{wildcards.evalset}.h5ad"


def get_bench_tables(wildcards):
    """Metric tables merged into one evaluation set's summary."""
    return bench_metric_files(wildcards.evalset)


def get_bench_outputs():
    """Summaries, results tables and UMAPs of every evaluation set."""
    if not BENCHMARKS:
        return []
    files = ["results/bench/summary.tsv"]
    for name, bench in BENCHMARKS.items():
        files += [
            f"results/bench/{name}/summary.tsv",
            f"results/bench/{name}/results_table.png",
        ]
        if bench["umap"]:
            files += [f"results/bench/{name}/{m}/umap.png" for m in bench["methods"]]
    return files


warn_possible_leakage()

# The registry (docs/registry.md): without lamindb installed, stop here rather than in a job.
from scfm.registry import check_installed

check_installed(config)
