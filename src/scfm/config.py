"""Load and validate the experiment config against its JSON Schema, filling defaults.

Validation happens once, at workflow start-up, before any job runs. Every problem is reported
with its key path (``datasets.pbmc.sourc``) and what was expected, with a spelling suggestion
for unknown keys.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from scfm.errors import ScfmConfigError
from scfm.paths import input_problem

# The schema ships inside the package (package data), so an installed, non-editable `scfm` can
# validate a config; workflow/schemas/config.schema.yaml is a symlink to it for Snakemake users.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """Read the config schema; derive the per-dataset QC override schema (no defaults)."""
    path = Path(path) if path else SCHEMA_PATH
    if not path.exists():
        raise FileNotFoundError(f"config schema not found: {path}")
    schema = yaml.safe_load(path.read_text())
    # A dataset's `qc` block overrides qc.<modality> key by key, so it must not get defaults
    # of its own (they would silently shadow the lab-wide values).
    schema["$defs"]["qc_rna_override"] = _strip_defaults(schema["$defs"]["qc_rna"])
    schema["$defs"]["qc_atac_override"] = _strip_defaults(schema["$defs"]["qc_atac"])
    return schema


def _strip_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_defaults(v) for k, v in schema.items() if k != "default"}
    if isinstance(schema, list):
        return [_strip_defaults(v) for v in schema]
    return schema


_UNSET_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_path(value: str) -> str:
    """``~`` and ``$VAR``/``${VAR}`` of a config path expanded; an unset variable is an error.

    Raises
    ------
    ValueError
        Naming the unset variable(s), so that the caller can add the key path.
    """
    expanded = str(Path(os.path.expandvars(value)).expanduser())
    unset = _UNSET_VAR.findall(expanded)
    if unset:
        names = ", ".join(f"${v.strip('{}')}" for v in unset)
        raise ValueError(
            f"{value!r} uses the environment variable(s) {names}, which are not set; expected "
            "them set in the environment of snakemake, or a path without them"
        )
    return expanded


def _with_defaults(validator_class: type) -> type:
    """Extend a jsonschema validator: `properties` fills in defaults and expands paths.

    A property marked ``x-path: true`` in the schema is a file or directory path: ``~`` and
    environment variables in it are expanded here, the one place every rule and source reads
    the config through (an unset variable is a validation error at that key).
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if not isinstance(sub, dict):
                    continue
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
                if sub.get("x-path") and isinstance(instance.get(name), str):
                    try:
                        instance[name] = expand_path(instance[name])
                    except ValueError as exc:
                        yield jsonschema.ValidationError(str(exc), path=[name])
        yield from validate_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


_DefaultFillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _key_path(path: Any) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def _allowed_keys(schema: Mapping[str, Any], instance: Mapping[str, Any]) -> list[str]:
    """Keys a mapping may hold under `schema`, including the branch chosen by its `source`."""
    keys = set(schema.get("properties", {}))
    for branch in [*schema.get("allOf", []), *([schema] if "if" in schema else [])]:
        cond = branch.get("if", {}).get("properties", {})
        chosen = (
            "then" if all(instance.get(k) == v.get("const") for k, v in cond.items()) else "else"
        )
        keys |= set(branch.get(chosen, {}).get("properties", {}))
    return sorted(keys)


def _describe(error: jsonschema.ValidationError) -> Iterator[str]:
    where = _key_path(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(
        error.instance, dict
    ):
        allowed = _allowed_keys(error.schema, error.instance)
        unexpected = re.findall(r"'([^']+)'", error.message.split("(")[-1]) or ["?"]
        for key in unexpected:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(key, allowed, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            full = f"{where}.{key}" if error.absolute_path else key
            yield f"{full}: unknown key{extra}; expected one of: {', '.join(allowed)}"
        return
    if isinstance(error.schema, dict) and error.schema.get("x-name"):
        # a name: a mapping key (propertyNames) or a reference to one (e.g. runs.<r>.corpus)
        if error.validator == "maxLength":
            expected = (
                f"at most {error.validator_value} characters (names become parts of file names, "
                "which have at most 255 bytes)"
            )
        elif error.validator == "minLength":
            expected = "at least one character"
        else:
            expected = (
                "letters, digits, '_', '.' or '-' only, and not '.' or '..' (the name becomes a "
                "file path and a wildcard)"
            )
        yield f"{where}: invalid name {error.instance!r}; expected {expected}"
        return
    if "propertyNames" in error.absolute_schema_path:
        yield f"{where}: invalid key {error.instance!r}; expected one of: " + ", ".join(
            map(str, error.schema.get("enum", []))
        )
        return
    if error.validator == "enum":
        yield f"{where}: {error.instance!r} is not allowed; expected one of: " + ", ".join(
            map(str, error.validator_value)
        )
        return
    if error.validator == "required":
        yield f"{where}: {error.message}"
        return
    if error.validator in ("anyOf", "oneOf") and error.context:
        options = sorted(
            {str(sorted(c.validator_value)) for c in error.context if c.validator == "required"}
        )
        if options:
            yield (
                f"{where}: needs exactly the keys of one of: {' or '.join(options)}"
                if error.validator == "oneOf"
                else f"{where}: needs one of: {' or '.join(options)}"
            )
            return
    yield f"{where}: {error.message}"


def validate_config(
    config: Mapping[str, Any], *, schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Validate ``config`` and return a deep copy with every default filled in.

    Raises
    ------
    ScfmConfigError
        Listing every problem as ``<key path>: <what is wrong>; expected <what>``.
    """
    schema = dict(schema) if schema is not None else load_schema()
    instance = copy.deepcopy(dict(config))
    validator = _DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    problems: list[str] = []
    for err in errors:
        # `if/then` failures repeat the inner error; report the innermost ones only.
        leaves = _leaf_errors(err)
        for leaf in leaves:
            for line in _describe(leaf):
                if line not in problems:
                    problems.append(line)
    problems += [p for p in _cross_references(instance) if p not in problems]
    if not problems:  # these need a config of the right shape
        problems += training_problems(instance)
    if problems:
        raise ScfmConfigError(problems)
    _fill_registry_sources(instance)
    return instance


def _fill_registry_sources(config: dict[str, Any]) -> None:
    """A `lamindb` dataset or corpus reads from the top-level registry unless it names its own."""
    top = config.get("registry") or {}
    keys = ("instance", "path", "settings_dir", "timeout", "python")
    location = {k: top[k] for k in keys if k in top}
    for block in [
        *(config.get("datasets") or {}).values(),
        *(config.get("corpora") or {}).values(),
    ]:
        if isinstance(block, dict) and block.get("source") == "lamindb":
            block["registry"] = {**location, **(block.get("registry") or {})}


def corpus_tokenizers(corpus: Mapping[str, Any], tokenizers: Mapping[str, Any]) -> list[str]:
    """Tokenizers a corpus has shards of.

    A registered corpus' collections, else the corpus' ``tokenizers`` list, else every
    tokenizer of the config.
    """
    if corpus.get("source") == "lamindb":
        return list(corpus.get("collections") or {})
    return list(corpus.get("tokenizers") or tokenizers)


def _leaf_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if error.validator in ("allOf", "then", "if", "$ref") and error.context:
        out: list[jsonschema.ValidationError] = []
        for sub in error.context:
            out += _leaf_errors(sub)
        return out
    return [error]


def _cross_references(config: Mapping[str, Any]) -> list[str]:
    """Checks JSON Schema cannot express: names that must refer to other config entries."""
    problems = []
    datasets = config.get("datasets") or {}
    references = config.get("references") or {}
    corpora = config.get("corpora") or {}
    registered = [
        c for c in corpora.values() if isinstance(c, dict) and c.get("source") == "lamindb"
    ]
    if isinstance(config.get("datasets"), dict) and not datasets and not registered:
        problems.append(
            "datasets: no datasets; expected at least one (or only corpora with source lamindb)"
        )
    for name, ds in datasets.items():
        if not isinstance(ds, dict):
            continue
        gene_cfg = ds.get("genes") or {}
        needs_table = gene_cfg.get("id_type") in ("symbol",) and not gene_cfg.get("symbol_column")
        if needs_table and ds.get("organism") not in references:
            problems.append(
                f"datasets.{name}.genes.id_type: 'symbol' needs a gene table; expected "
                f"references.{ds.get('organism')}.genes to be set"
            )
    for name, ds in datasets.items():
        if not isinstance(ds, dict) or ds.get("modality") != "atac":
            continue
        genome = ds.get("genome") or ds.get("organism", "human")
        if "genome" not in (references.get(genome) or {}):
            problems.append(
                f"datasets.{name}.genome: scATAC needs chromosome sizes and a gene annotation; "
                f"expected references.{genome}.genome to be set"
            )
        if ds.get("source") == "demo" and ds.get("demo") != "simulated_atac":
            problems.append(
                f"datasets.{name}.demo: {ds.get('demo')!r} is an RNA demo; expected "
                "simulated_atac for modality atac"
            )
    tokenizers = config.get("tokenizers") or {}
    for name, corpus in (config.get("corpora") or {}).items():
        if not isinstance(corpus, dict):
            continue
        for i, ds in enumerate(corpus.get("datasets") or []):
            if ds not in datasets:
                problems.append(
                    f"corpora.{name}.datasets[{i}]: {ds!r} is not a dataset; expected one of: "
                    f"{', '.join(datasets) or '(none defined)'}"
                )
        for ds in corpus.get("filters") or {}:
            if ds not in (corpus.get("datasets") or []):
                problems.append(f"corpora.{name}.filters.{ds}: not a dataset of this corpus")
        split = corpus.get("split") or {}
        held_out = split.get("val", 0) + split.get("test", 0)
        if held_out >= 1:  # scfm.shard.corpus.assign_splits: train is u >= val + test, u < 1
            problems.append(
                f"corpora.{name}.split: val + test = {held_out} leaves no training cells; "
                "expected val + test < 1"
            )
        vocab = corpus.get("vocab") or {}
        if vocab.get("policy") == "file" and not vocab.get("genes_file"):
            problems.append(f"corpora.{name}.vocab.genes_file: required by policy 'file'")
        for i, tok in enumerate(corpus.get("tokenizers") or []):
            if tok not in tokenizers:
                problems.append(
                    f"corpora.{name}.tokenizers[{i}]: {tok!r} is not a tokenizer; expected one of: "
                    f"{', '.join(tokenizers) or '(none defined)'}"
                )
        for tok in corpus.get("collections") or {}:
            if tok not in tokenizers:
                problems.append(
                    f"corpora.{name}.collections.{tok}: {tok!r} is not a tokenizer; expected "
                    "tokenizers.<name> with the parameters the corpus was tokenized with"
                )
    models = config.get("models") or {}
    for name, run in (config.get("runs") or {}).items():
        if not isinstance(run, dict):
            continue
        for key, pool, label in (
            ("corpus", corpora, "corpora"),
            ("tokenizer", tokenizers, "tokenizers"),
            ("model", models, "models"),
        ):
            if key in run and run[key] not in pool:
                problems.append(
                    f"runs.{name}.{key}: {run[key]!r} is not in {label}; expected one of: "
                    f"{', '.join(pool) or '(none defined)'}"
                )
        corpus = corpora.get(run.get("corpus"), {})
        if (
            isinstance(corpus, dict)
            and run.get("tokenizer") in tokenizers
            and run.get("tokenizer") not in corpus_tokenizers(corpus, tokenizers)
        ):
            key = "collections" if corpus.get("source") == "lamindb" else "tokenizers"
            problems.append(
                f"runs.{name}.tokenizer: corpus {run.get('corpus')!r} is not sharded with "
                f"{run.get('tokenizer')!r}; add it to corpora.{run.get('corpus')}.{key}"
            )
    problems += _benchmark_references(config)
    problems += _reserved_name_problems(config)
    problems += _local_path_kinds(config)
    for name, tok in tokenizers.items():
        why = NONZERO_GENES_ONLY.get(tok.get("kind")) if isinstance(tok, dict) else None
        if why and tok.get("genes", "nonzero") != "nonzero":
            problems.append(f"tokenizers.{name}.genes: {why}; expected 'nonzero'")
    return problems


#: Tokenizer kinds that take a cell's expressed (accessible) genes only, i.e. `genes: nonzero`
#: (mirrors scfm.tokenize.tokenizers.TokenizerConfig; tests/test_config.py compares the two).
NONZERO_GENES_ONLY = {
    "rank": "rank encoding orders the expressed genes",
    "binary": "binary takes the accessible features",
}


def _local_path_kinds(config: Mapping[str, Any]) -> list[str]:
    """Local input paths that can never be read: FIFOs, devices, sockets, symlink loops.

    Checked at start-up so that the run stops with the key path instead of a job that hangs
    on a FIFO or Snakemake's "missing input" for a symlink loop. A path that does not exist
    (yet) is left to the job that reads it.
    """
    found: list[tuple[str, Any, bool]] = []
    for name, ds in (config.get("datasets") or {}).items():
        if isinstance(ds, dict) and ds.get("source") == "local":
            found.append((f"datasets.{name}.path", ds.get("path"), True))  # 10x directories
    for org, ref in (config.get("references") or {}).items():
        if not isinstance(ref, dict):
            continue
        genome = ref.get("genome") or {}
        found += [
            (f"references.{org}.genes.path", (ref.get("genes") or {}).get("path"), False),
            (f"references.{org}.genome.chrom_sizes", genome.get("chrom_sizes"), False),
            (
                f"references.{org}.genome.annotation.path",
                (genome.get("annotation") or {}).get("path"),
                False,
            ),
        ]
    for name, corpus in (config.get("corpora") or {}).items():
        if isinstance(corpus, dict):
            found.append(
                (
                    f"corpora.{name}.vocab.genes_file",
                    (corpus.get("vocab") or {}).get("genes_file"),
                    False,
                )
            )
    for name, bench in (config.get("benchmarks") or {}).items():
        external = bench.get("external") if isinstance(bench, dict) else None
        for method, spec in (external or {}).items():
            if isinstance(spec, dict) and spec.get("kind") == "precomputed":
                key = f"benchmarks.{name}.external.{method}.path"
                found.append((key, spec.get("path"), False))
    problems = []
    for key, path, directory in found:
        if not isinstance(path, str) or not path:
            continue
        problem = input_problem(Path(path).expanduser(), directory=directory)
        if problem is not None and problem != "does not exist":
            what = "a regular file or a 10x directory" if directory else "a regular file"
            problems.append(f"{key}: {path} {problem}; expected {what}")
    return problems


#: Methods every evaluation set can name besides the trained runs (see scfm.bench.baselines).
BASELINES = ("pca", "hvg", "scvi", "random", "lsi")

_BENCH = "results/bench/<evalset>/"
#: Wildcard -> names the pipeline's own files (or directories) take in a directory where that
#: wildcard is a file or directory name (a tokenizer called vocab.tsv would be the directory
#: results/corpus/<corpus>/vocab.tsv/ beside the file of that name). From the rules' output
#: paths; tests/pipeline/test_config_entry.py derives the table from them and compares.
RESERVED_NAMES: dict[str, dict[str, str]] = {
    "dataset": {"peaks": "results/atac/peaks/"},
    "tokenizer": {n: f"results/corpus/<corpus>/{n}" for n in ("gene_stats.tsv", "vocab.tsv")},
    "run": {n: f"results/train/{n}" for n in ("summary.tsv", "vs_trivial.png")},
    "evalset": {"summary.tsv": "results/bench/summary.tsv"},
    "method": {  # runs are methods too: results/train/<method>/model.pt
        **{n: f"results/train/{n}" for n in ("summary.tsv", "vs_trivial.png")},
        **{
            n: _BENCH + n
            for n in (
                "data.h5ad",
                "leakage.tsv",
                "results_table.png",
                "scgraph_reference.tsv",
                "summary.tsv",
                "summary.wide.tsv",
            )
        },
    },
}


def _reserved_name_problems(config: Mapping[str, Any]) -> list[str]:
    """Names under which a config entry's files would collide with the pipeline's own files."""
    places: list[tuple[str, str, Any]] = [
        ("dataset", "datasets", config.get("datasets")),
        ("tokenizer", "tokenizers", config.get("tokenizers")),
        ("run", "runs", config.get("runs")),
        ("method", "runs", config.get("runs")),
        ("evalset", "benchmarks", config.get("benchmarks")),
    ]
    for name, bench in (config.get("benchmarks") or {}).items():
        if isinstance(bench, dict):
            places.append(("method", f"benchmarks.{name}.external", bench.get("external")))
    problems = []
    for wildcard, key, block in places:
        for name in block or {}:
            taken = RESERVED_NAMES[wildcard].get(name)
            if taken and not any(p.startswith(f"{key}.{name}:") for p in problems):
                problems.append(
                    f"{key}.{name}: the name is taken by the pipeline's own {taken}; expected "
                    "another name"
                )
    return problems


def _benchmark_references(config: Mapping[str, Any]) -> list[str]:
    """Evaluation sets must name an RNA dataset and methods that are baselines, runs or external."""
    problems = []
    datasets = config.get("datasets") or {}
    runs = config.get("runs") or {}
    for name in runs:
        if name in BASELINES:
            problems.append(
                f"runs.{name}: the name is taken by a benchmark baseline; expected a name other "
                f"than {', '.join(BASELINES)}"
            )
    widths: dict[str, tuple[int, str]] = {}  # external method -> (n_dims, first set naming it)
    for name, bench in (config.get("benchmarks") or {}).items():
        if not isinstance(bench, dict):
            continue
        ds = bench.get("dataset")
        if ds is not None and ds not in datasets:
            problems.append(
                f"benchmarks.{name}.dataset: {ds!r} is not a dataset; expected one of: "
                f"{', '.join(datasets)}"
            )
        external = bench.get("external") or {}
        methods = bench.get("methods") or []
        for i, method in enumerate(methods):
            if method not in BASELINES and method not in runs and method not in external:
                problems.append(
                    f"benchmarks.{name}.methods[{i}]: {method!r} is neither a baseline, a run nor "
                    f"an external method; expected one of: "
                    f"{', '.join([*BASELINES, *runs, *external])}"
                )
        for method, spec in external.items():
            where = f"benchmarks.{name}.external.{method}"
            if not isinstance(spec, dict):
                continue
            other = {"precomputed": "command", "command": "path"}.get(spec.get("kind"))
            if other in spec:
                problems.append(
                    f"{where}.{other}: not used by kind {spec['kind']!r}; expected "
                    f"{'path' if other == 'command' else 'command'} only"
                )
            if method in BASELINES or method in runs:
                kind = "baseline" if method in BASELINES else "run"
                problems.append(f"{where}: the name is taken by a {kind}; expected another name")
            elif method not in methods:
                problems.append(
                    f"{where}: defined but not scored; expected {method!r} in "
                    f"benchmarks.{name}.methods"
                )
            dims = spec.get("n_dims")
            if dims is None:
                continue
            first_dims, first_set = widths.setdefault(method, (dims, name))
            if dims != first_dims:
                problems.append(
                    f"{where}.n_dims: {dims}, but benchmarks.{first_set}.external.{method}.n_dims "
                    f"is {first_dims}; expected one width per method across evaluation sets"
                )
    return problems


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping.

    Plain data only (no tag builds an object, nothing is executed), and no silent last-wins.
    Keys merged in with ``<<: *anchor`` may be overridden by an explicit key, as YAML intends;
    a key written twice is the error.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeConstructor reports it below
                continue
            if first != line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first}); expected each key "
                    "once per mapping",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str, name: str = "<string>") -> Any:
    """``yaml.safe_load`` with :class:`_ConfigLoader` (a SafeLoader: no Python tags)."""
    loader = _ConfigLoader(text)
    loader.name = name  # errors say: in "<name>", line N, column M
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


#: The top-level key that asks Snakemake's loader (yte) to evaluate ``?``-expressions as Python.
YTE_KEY = "__use_yte__"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) config file, read as data only; not validated.

    Raises
    ------
    ScfmConfigError
        Naming the file: not a readable regular file, not valid YAML, a duplicate key (with
        its line), not a mapping, or yte templating (``__use_yte__``), which is refused: a
        config is data and is read without running any of it.
    """
    path = Path(path)
    problem = input_problem(path)  # a FIFO would block read_text() forever
    if problem is not None:
        problems = [f"the config file {problem}; expected a YAML file"]
        raise ScfmConfigError(problems, source=str(path))
    try:
        raw = _safe_load(path.read_text(), str(path))
    except yaml.YAMLError as exc:
        raise ScfmConfigError([f"not valid YAML: {exc}"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScfmConfigError([f"cannot be read: {exc}"], source=str(path)) from None
    if not isinstance(raw, dict):
        raise ScfmConfigError(["expected a mapping at the top level"], source=str(path))
    if YTE_KEY in raw:
        raise ScfmConfigError(
            [
                f"{YTE_KEY}: yte templating is not supported (it evaluates '?'-expressions as "
                "Python); expected plain YAML: write the values out, or generate the file with "
                "a script of your own and pass its output"
            ],
            source=str(path),
        )
    return raw


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (:func:`read_config_file`) and validate it."""
    raw = read_config_file(path)
    try:
        return validate_config(raw)
    except ScfmConfigError as exc:
        raise ScfmConfigError(exc.problems, source=str(path)) from None


def merge_config(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in: mappings key by key, anything else replaced.

    The rule Snakemake applies to ``--configfile`` files and ``--config`` values.
    """
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return out


def _branches(node: Any, root: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``node`` and every schema it may combine with: $ref, allOf/anyOf/oneOf, if-then-else."""
    if not isinstance(node, dict):
        return []
    out = [node]
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        out += _branches(target, root)
    for word in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(word, []):
            out += _branches(sub, root)
    for word in ("then", "else"):
        out += _branches(node.get(word), root)
    return out


def _subschemas(schemas: list[Any], key: str, root: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The schemas that may apply to ``instance[key]`` of a mapping validated by ``schemas``."""
    out: list[dict[str, Any]] = []
    for sub in (b for node in schemas for b in _branches(node, root)):
        props = sub.get("properties", {})
        matched = [v for p, v in sub.get("patternProperties", {}).items() if re.search(p, key)]
        if key in props:
            out.append(props[key])
        out += matched
        extra = sub.get("additionalProperties")
        if key not in props and not matched and isinstance(extra, dict):
            out.append(extra)
    return out


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "array": (list,),
    "object": (dict,),
}


def _allowed_types(schemas: list[Any], root: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for sub in (b for node in schemas for b in _branches(node, root)):
        kind = sub.get("type")
        found |= set(kind) if isinstance(kind, list) else {kind} if kind else set()
        for value in [*sub.get("enum", []), *([sub["const"]] if "const" in sub else [])]:
            found.add("string" if isinstance(value, str) else "other")
    return found


def _fits(value: Any, types: set[str]) -> bool:
    if isinstance(value, bool):
        return "boolean" in types
    return any(isinstance(value, _JSON_TYPES[t]) for t in types if t in _JSON_TYPES)


def coerce_overrides(
    overrides: Mapping[str, Any], schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``--config`` values with strings turned into the types the schema expects there.

    Snakemake parses ``--config key=value`` with int, float, bool and then YAML's BaseLoader,
    which keeps every value inside a mapping or list a string: ``io={chunk_cells: 5000}`` arrives
    as ``{"chunk_cells": "5000"}``. A string at a key whose schema allows no string is read as
    YAML (safely) and kept when the result has an allowed type; otherwise it stays a string, and
    validation reports the key and the type expected.
    """
    schema = schema if schema is not None else load_schema()
    return _coerce(dict(overrides), [schema], schema)


def _coerce(value: Any, schemas: list[Any], root: Mapping[str, Any]) -> Any:
    if isinstance(value, Mapping):
        return {k: _coerce(v, _subschemas(schemas, str(k), root), root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [b["items"] for node in schemas for b in _branches(node, root) if "items" in b]
        return [_coerce(v, items, root) for v in value]
    if not isinstance(value, str):
        return value
    types = _allowed_types(schemas, root)
    if not types or "string" in types:
        return value
    try:
        parsed = _safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str) and "number" in types:  # YAML 1.1 reads 1e-5 as a string
        try:
            parsed = float(value) if math.isfinite(float(value)) else value
        except ValueError:
            return value
    return parsed if _fits(parsed, types) else value


#: The config file the workflow reads when none is given on the command line (relative to the
#: working directory, i.e. `--directory`).
DEFAULT_CONFIG = Path("config") / "config.yaml"


def workflow_config(
    configfiles: Sequence[str | Path],
    overrides: Mapping[str, Any],
    *,
    default: str | Path = DEFAULT_CONFIG,
    schema: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The raw (not yet validated) config of a workflow run, read with :func:`read_config_file`.

    ``configfiles`` (``--configfile``, merged in order) replace the default config file
    entirely; without them ``default`` is read. ``overrides`` (``--config``, coerced through the
    schema's types by :func:`coerce_overrides`) are merged on top of either.
    """
    files = [Path(f) for f in configfiles]
    if not files:
        if not Path(default).exists():
            raise ScfmConfigError(
                [
                    f"no config file: {default} not found in the working directory "
                    f"{Path.cwd()}; expected --configfile <your config.yaml> (or that file)"
                ]
            )
        files = [Path(default)]
    config: dict[str, Any] = {}
    for path in files:
        try:
            config = merge_config(config, read_config_file(path))
        except ScfmConfigError as exc:
            if configfiles and any(p.startswith(YTE_KEY) for p in exc.problems):
                note = (
                    "note: `snakemake --configfile` has already evaluated this file's "
                    "'?'-expressions (Snakemake reads --configfile with yte before the workflow "
                    "starts); check a config with `scfm validate-config FILE` before running it"
                )
                raise ScfmConfigError([*exc.problems, note], source=str(path)) from None
            raise
    return merge_config(config, coerce_overrides(overrides, schema))


# --------------------------------------------------------------------------- training checks
# What the trainer, the model and the objectives would refuse inside the `train` job, hours of
# data work later, checked here from the config alone with the key path. The run and model
# checks are theirs (RunConfig.from_dict, ModelConfig.from_dict, called below); what needs
# torch to ask (the objectives' heads) is mirrored in the tables below, which
# tests/test_config.py checks against scfm.models.heads.

#: The value kind of each tokenizer kind, and its number of value tokens (mirrors
#: scfm.tokenize.tokenizers.TokenizerConfig.value_kind / n_value_tokens, which import numba).
TOKEN_VALUES: dict[str, tuple[str, str | int | None]] = {
    "binned": ("bin", "n_bins"),
    "counts": ("count", "vocab_size"),
    "continuous": ("float", None),
    "rank": ("none", None),
    "binary": ("bin", 2),
}
#: Objective -> value kinds it is defined for (scfm.models.heads.OBJECTIVES[o].value_kinds).
OBJECTIVE_VALUE_KINDS: dict[str, tuple[str, ...]] = {
    "mse": ("bin", "count", "float"),
    "ce": ("bin", "count", "none"),
    "ordinal": ("bin", "count"),
    "contrastive": ("bin", "count", "float", "none"),
}
#: Objectives whose loss is computed at masked positions only (they need mask_ratio > 0).
MASKED_OBJECTIVES = ("mse", "ce", "ordinal")
#: Parameters an objective takes besides its weight (the keyword arguments of its class).
OBJECTIVE_PARAMS: dict[str, tuple[str, ...]] = {
    "mse": (),
    "ce": (),
    "ordinal": (),
    "contrastive": ("temperature", "keep", "proj_dim"),
}
#: Bytes per parameter that training holds at least: fp32 weights, gradients and AdamW's two
#: moments (activations, the gene embedding and the heads come on top).
TRAIN_BYTES_PER_PARAM = 16
#: The most memory one training process can have: every GPU process holds a full copy of the
#: model and optimizer (DDP), and the largest single GPU sold has 288 GB (NVIDIA B300).
MAX_PROCESS_BYTES = 288 * 10**9
# A vocabulary size for the model checks: the real one comes from the corpus (its manifest);
# any size works for the checks that do not involve it.
_ANY_VOCAB = 2**31 - 1


def _light_import(name: str) -> Any:
    """Module ``name`` of scfm, without running its package's ``__init__``.

    ``scfm.train`` and ``scfm.models`` import torch in their ``__init__`` (2-4 s here on a
    loaded machine), while their ``config`` modules need only ``scfm.errors``; validation runs
    at the start of every Snakemake process (each job too), so it loads just the file.
    """
    if name in sys.modules:
        return sys.modules[name]
    private = f"_scfm_config_checks.{name}"
    if private not in sys.modules:
        path = Path(__file__).resolve().parent.joinpath(*name.split(".")[1:]).with_suffix(".py")
        spec = importlib.util.spec_from_file_location(private, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module  # dataclasses look their module up while being built
        spec.loader.exec_module(module)
    return sys.modules[private]


def training_problems(config: Mapping[str, Any]) -> list[str]:
    """Runs, models and objectives that the `train` job would refuse, with key paths.

    Expects a config that passed the schema (:func:`validate_config` calls it then).
    """
    run_cls = _light_import("scfm.train.config").RunConfig
    model_cls = _light_import("scfm.models.config").ModelConfig
    problems: list[str] = []
    said: set[str] = set()
    for name, block in (config.get("runs") or {}).items():
        where = f"runs.{name}"
        try:
            run = run_cls.from_dict(copy.deepcopy(block), source=where)
        except ScfmConfigError as exc:
            problems += [f"{where}.{p}" for p in exc.problems]
            continue
        tok = config["tokenizers"][block["tokenizer"]]
        value_kind, n_tokens = TOKEN_VALUES[tok["kind"]]
        n_value_tokens = tok[n_tokens] if isinstance(n_tokens, str) else n_tokens
        masked = []
        for objective in run.objectives:
            key = f"{where}.objectives.{objective.name}"
            if value_kind not in OBJECTIVE_VALUE_KINDS[objective.name]:
                fits = [o for o, kinds in OBJECTIVE_VALUE_KINDS.items() if value_kind in kinds]
                problems.append(
                    f"{key}: not defined for tokenizer {block['tokenizer']!r} (kind "
                    f"{tok['kind']!r}, value kind {value_kind!r}); expected one of: "
                    f"{', '.join(fits)}"
                )
            allowed = OBJECTIVE_PARAMS[objective.name]
            for param in (p for p in objective.params if p not in allowed):
                problems.append(
                    f"{key}.{param}: unknown parameter; expected weight"
                    + (f" or one of: {', '.join(allowed)}" if allowed else " only")
                )
            if objective.name in MASKED_OBJECTIVES and objective.weight > 0:
                masked.append(objective.name)
        if masked and run.mask_ratio == 0:
            problems.append(
                f"{where}.mask_ratio: 0 masks no position, but {', '.join(masked)} "
                "learn(s) from masked positions only; expected mask_ratio > 0 (or only "
                "contrastive)"
            )
        model_where = f"models.{block['model']}"
        try:
            model = model_cls.from_dict(
                dict(config["models"][block["model"]]),
                vocab_size=_ANY_VOCAB,
                value_kind=value_kind,
                n_value_tokens=n_value_tokens,
                max_len=run.loader.get("max_len") or tok["max_len"],  # genes per cell
            )
        except ScfmConfigError as exc:
            for problem in exc.problems:  # a model several runs use: reported once
                if f"{model_where}.{problem}" not in said:
                    said.add(f"{model_where}.{problem}")
                    problems.append(f"{model_where}.{problem} (as {where} uses it)")
            continue
        need = _transformer_params(model) * TRAIN_BYTES_PER_PARAM
        if need > MAX_PROCESS_BYTES and model_where not in said:
            said.add(model_where)
            problems.append(
                f"{model_where}: cannot fit in memory: training it needs at least "
                f"{need / 1e9:,.0f} GB per process ({TRAIN_BYTES_PER_PARAM} bytes per parameter "
                "for weights, gradients and AdamW state, before activations and the gene "
                f"embedding), more than the largest single GPU ({MAX_PROCESS_BYTES / 1e9:.0f} "
                "GB); expected a smaller d_model, d_ff or n_layers"
            )
    return problems


def _transformer_params(model: Any) -> int:
    """Parameters of the transformer layers and position table (not the vocabulary's)."""
    if model.kind != "transformer":
        return 0
    d, hidden = model.d_model, model.ff_hidden
    up = 2 * hidden if model.activation == "swiglu" else hidden
    layer = (3 * d * d + 3 * d) + (d * d + d) + (d * up + up) + (hidden * d + d) + 4 * d
    return model.n_layers * layer + (model.n_positions * d if model.use_positional else 0)
