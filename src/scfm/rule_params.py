"""What each Snakemake rule receives as ``params``: the part of the validated config its job uses.

Snakemake reruns a job when its params changed (it compares ``sorted(repr(value))`` of the
values). A rule that received a whole config block would rerun whenever any key of that block
changed, including keys only other jobs read (adding a method to a benchmark would rerun the
evaluation set and with it every embedding). So each rule gets a projection: :data:`KEYS` says,
per rule and param, which config block it comes from and which keys of it the job reads, and
:func:`project` builds it in a canonical form (dict keys sorted at every level), so reordering
keys or reformatting the YAML changes no repr and reruns nothing. Values are builtins only:
Snakemake cannot represent other objects and would silently leave them out of the comparison.

``workflow/rules/common.smk`` applies the table; ``docs/architecture.md`` shows it
(:func:`markdown_table`, kept in step by a test). This module does not import Snakemake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def canonical(obj: Any) -> Any:
    """``obj`` with every mapping rebuilt as a dict with sorted keys (lists keep their order).

    Tuples become lists (YAML has no tuples; the repr must not depend on where a value came
    from). Anything but builtins is refused: Snakemake would ignore it when deciding reruns.
    """
    if isinstance(obj, Mapping):
        return {str(k): canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(
        f"{type(obj).__name__} is not a builtin value: Snakemake would ignore it in its params "
        "rerun check; project the config to dicts, lists and scalars"
    )


def _pick(block: Mapping[str, Any], key: str) -> dict[str, Any]:
    """{key: value} for a key or a dotted path (``scgraph.trim_rate`` -> nested dicts)."""
    head, _, rest = key.partition(".")
    if head not in block:
        return {}
    if not rest:
        return {head: block[head]}
    inner = _pick(block[head], rest)
    return {head: inner} if inner else {}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


# A dataset block holds the keys of its source (download) and the keys later stages read;
# these are the later stages' (and `modality`, which only picks the rules).
_LATER_DATASET_KEYS = frozenset(
    {
        "modality",
        "qc",
        "obs_map",
        "obs_values",
        "obs_keep",
        "counts",
        "genes",
        "genome",
        "features",
        "barcodes",
        "chrom_map",
    }
)
# The demo source's own keys, per demo (the schema fills `simulation` for every dataset).
_DEMO_KEYS = {
    "pbmc68k": (),
    "simulated": ("simulation",),
    "simulated_atac": ("atac_simulation", "genome_spec"),
}
_DEMO_ONLY = frozenset({"demo", "simulation", "atac_simulation", "genome_spec"})


def source_keys(block: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset's source keys: every key but the later stages' (demo: its own keys only)."""
    if block.get("source") == "demo":
        own = ("source", "demo", *_DEMO_KEYS.get(block["demo"], ()))
        return {k: block[k] for k in own if k in block}
    return {k: v for k, v in block.items() if k not in _LATER_DATASET_KEYS | _DEMO_ONLY}


def token_keys(block: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that define the tokens (they depend on the kind and the gene selection).

    ``scfm.tokenize.TokenizerConfig.params`` is this; it lives here so that the workflow does
    not import the tokenizers (numba, scipy: seconds at every Snakemake start).
    """
    keep = {"kind", "max_len", "genes", "target_sum"}
    keep |= {"binned": {"n_bins"}, "counts": {"vocab_size"}, "binary": {"negatives", "seed"}}.get(
        block["kind"], set()
    )
    keep |= {"top_k": {"top_k"}, "random": {"seed"}}.get(block.get("genes", "nonzero"), set())
    return {k: v for k, v in block.items() if k in keep}


def shard_token_keys(block: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that define the tokens, and ``max_missing_fraction`` (checked while sharding)."""
    return {**token_keys(block), "max_missing_fraction": block["max_missing_fraction"]}


# Per baseline: the benchmark keys it reads; a block's keys become the baseline's keyword
# arguments (scfm.bench.baselines), beside `seed`.
BASELINE_KEYS = {"pca": ("n_pcs",), "lsi": ("n_pcs",), "scvi": ("scvi",), "random": ("random",)}


def baseline_keys(block: Mapping[str, Any], method: str) -> dict[str, Any]:
    """``seed`` and the method's own settings: ``n_pcs`` (pca, lsi), ``scvi.*``, ``random.*``."""
    out: dict[str, Any] = {"seed": block["seed"]}
    for key in BASELINE_KEYS.get(method, ()):
        value = block[key]
        out.update(value if isinstance(value, Mapping) else {key: value})
    return out


Keys = tuple[str, ...] | Callable[[Mapping[str, Any]], dict[str, Any]] | None
_ATAC_QC = "qc.atac (datasets.<dataset>.qc on top)"
_BENCH = "benchmarks.<evalset>"
_DATASET = "datasets.<dataset>"

# rule -> param -> (config block, keys the job reads). None: the whole value (a scalar, or a
# block whose every key the job reads: see the allowlist of tests/pipeline/test_workflow.py).
# A callable: a projection that depends on the block's values (its docstring says which).
KEYS: dict[str, dict[str, tuple[str, Keys]]] = {
    "download": {"dataset": (_DATASET, source_keys), "chunk_cells": ("io.chunk_cells", None)},
    "reference_genes": {"genes": ("references.<organism>.genes", None)},
    "reference_genome": {"genome": ("references.<genome>.genome", None)},
    "atac_blacklist": {"blacklist": ("qc.atac.blacklist / datasets.<d>.qc.blacklist", None)},
    "standardize": {
        "dataset": (_DATASET, ("obs_map", "obs_values", "obs_keep", "counts", "genes")),
        "chunk_cells": ("io.chunk_cells", None),
        "compression": ("io.compression", None),
    },
    "qc": {
        "qc": ("qc.rna (datasets.<dataset>.qc on top)", None),
        "organism": ("datasets.<dataset>.organism", None),
        "chunk_cells": ("io.chunk_cells", None),
        "compression": ("io.compression", None),
    },
    "atac_fragments": {"dataset": (_DATASET, ("chrom_map",))},
    "atac_qc": {
        "dataset": (_DATASET, ("barcodes", "obs_map", "obs_values")),
        "qc": (_ATAC_QC, ("min_fragments", "min_tsse", "max_frac_mito", "max_nucleosome_signal")),
    },
    "atac_tiles": {
        "qc": (_ATAC_QC, ("bin_size", "counting", "binarize")),
        "compression": ("io.compression", None),
    },
    "atac_summits": {"qc": (_ATAC_QC, ("peak_qvalue",))},
    "atac_peakset": {"peak_width": ("qc.atac.peak_width", None)},
    "atac_peak_matrix": {"qc": (_ATAC_QC, ("counting",))},
    "atac_activity": {"qc": (_ATAC_QC, ("promoter_upstream", "counting"))},
    "atac_features": {"dataset": (_DATASET, ("features",))},
    "vocab": {"vocab": ("corpora.<corpus>.vocab", None)},
    "gene_stats": {
        "filters": ("corpora.<corpus>.filters", None),
        "chunk_cells": ("io.chunk_cells", None),
    },
    "shard": {
        "tokenizer": ("tokenizers.<tokenizer>", shard_token_keys),
        "split": ("corpora.<corpus>.split", None),
        "filters": ("corpora.<corpus>.filters.<dataset>", None),
        "cells_per_shard": ("shards.cells_per_shard", None),
        "chunk_cells": ("io.chunk_cells", None),
    },
    "corpus_manifest": {"weights": ("corpora.<corpus>.weights", None)},
    "registry_vocab": {"corpus": ("corpora.<corpus>", ("collections", "registry"))},
    "registry_gene_stats": {"corpus": ("corpora.<corpus>", ("collections", "registry"))},
    "registry_corpus": {
        "corpus": ("corpora.<corpus>", ("collections", "registry")),
        "tokenizer": ("tokenizers.<tokenizer>", token_keys),
    },
    "train": {
        "run": ("runs.<run>", None),
        "model": ("models.<runs.<run>.model>", None),
        "out": ("(the output directory)", None),
    },
    "train_summary": {"runs": ("names of runs", None)},
    "bench_data": {
        "bench": (
            _BENCH,
            (
                "dataset",
                "label_key",
                "batch_key",
                "split_key",
                "metrics",
                "max_cells",
                "seed",
                "n_hvg",
                "hvg_min_batch_cells",
                "held_out",
            ),
        ),
        "runs": ("corpus manifests of the set's runs (held_out only)", None),
    },
    "bench_leakage": {
        "bench": (_BENCH, ("dataset",)),
        "runs": ("corpus manifests of the set's runs", None),
    },
    "baseline": {"baseline": (_BENCH, baseline_keys)},
    "embed": {"bench": (_BENCH, ("batch_size",))},
    "external_embedding": {"external": ("benchmarks.<evalset>.external.<method>", None)},
    "scib": {"bench": (_BENCH, ("scib",))},
    "scgraph_reference": {"bench": (_BENCH, ("scgraph",))},
    "scgraph": {"bench": (_BENCH, ("scgraph.trim_rate",))},
    "annotation": {"bench": (_BENCH, ("seed", "annotation"))},
    "masked": {"bench": (_BENCH, ("masked.max_cells", "batch_size", "seed"))},
    "umap": {"bench": (_BENCH, ("seed",))},
}


def project(rule: str, param: str, block: Any, **wildcards: str) -> Any:
    """The canonical projection of ``block`` that ``rule`` gets as ``params.<param>``.

    ``wildcards`` reach the projections that depend on them (the baseline's method).
    """
    _, keys = KEYS[rule][param]
    if keys is None:
        return canonical(block)
    if callable(keys):
        return canonical(keys(block, **wildcards) if wildcards else keys(block))
    picked: dict[str, Any] = {}
    for key in keys:
        picked = _merge(picked, _pick(block, key))
    return canonical(picked)


def _describe(keys: Keys) -> str:
    if keys is None:
        return "all"
    if callable(keys):
        return (keys.__doc__ or keys.__name__).strip().splitlines()[0].replace("``", "`")
    return ", ".join(f"`{k}`" for k in keys)


def markdown_table() -> str:
    """The table of :data:`KEYS` as Markdown (docs/architecture.md holds it verbatim)."""
    rows = ["| rule | params | from the config | keys |", "|---|---|---|---|"]
    for rule, params in KEYS.items():
        for param, (where, keys) in params.items():
            rows.append(f"| {rule} | {param} | {where} | {_describe(keys)} |")
    return "\n".join(rows) + "\n"
