"""One source of truth per setting: the schema, the generated reference and the library agree."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest

from scfm import config_doc
from scfm.spec import bounds, default, iter_settings, schema_at

ROOT = Path(__file__).resolve().parents[1]

# Stage entry points (what scripts/ call) and the config blocks whose keys they take by the same
# name. Each such parameter either has no default or takes it from the schema via
# scfm.spec.default, so that no default is written twice.
ENTRY_POINTS = {
    "scfm.io.h5ad:CsrH5adWriter": ["io"],
    "scfm.io.standardize:standardize": ["io"],
    "scfm.io.sources:fetch_dataset": ["io"],
    "scfm.qc.rna:qc_rna": ["io", "qc.rna"],
    "scfm.atac.tiles:tile_matrix": ["io", "qc.atac"],
    "scfm.atac.peaks:peak_matrix": ["io", "qc.atac"],
    "scfm.atac.activity:gene_activity": ["io", "qc.atac"],
    "scfm.shard.writer:shard_dataset": ["io", "shards"],
    "scfm.shard.stats:gene_stats": ["io"],
    "scfm.tokenize.vocab:build_vocab": ["corpora.*.vocab"],
    "scfm.tokenize.tokenizers:TokenizerConfig": ["tokenizers.*"],
    "scfm.bench.evalset:prepare_evalset": ["benchmarks.*"],
    "scfm.bench.jobs:scib_job": ["benchmarks.*.scib"],
    "scfm.bench.jobs:scgraph_job": ["benchmarks.*.scgraph"],
    "scfm.bench.jobs:annotation_job": ["benchmarks.*.annotation"],
    "scfm.bench.jobs:masked_job": ["benchmarks.*.masked"],
    "scfm.bench.external:external_embedding": ["benchmarks.*.external.*"],
}


def _block_keys(prefix: str) -> dict[str, str]:
    depth = prefix.count(".") + 1
    return {s.name: s.key for s in iter_settings(prefix) if s.key.count(".") == depth}


def _function(target: str):
    module, name = target.split(":")
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj) and not dataclasses.is_dataclass(obj):
        return obj.__init__
    return obj


def _default_exprs(fn) -> dict[str, ast.expr]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    if dataclasses.is_dataclass(fn):  # field defaults are written in the class body
        body = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)).body
        return {
            n.target.id: n.value
            for n in body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value
        }
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    args = node.args
    positional = args.posonlyargs + args.args
    pos_defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, pos_defaults, strict=True))
    pairs += list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    return {a.arg: d for a, d in pairs if d is not None}


@pytest.mark.parametrize("target", sorted(ENTRY_POINTS))
def test_entry_point_defaults_come_from_the_schema(target):
    fn = _function(target)
    keys: dict[str, str] = {}
    for prefix in ENTRY_POINTS[target]:
        keys.update(_block_keys(prefix))
    exprs = _default_exprs(fn)
    params = inspect.signature(fn).parameters
    shared = [name for name in params if name in keys]
    assert shared, f"{target} takes no key of {ENTRY_POINTS[target]}: the map is stale"
    for name in shared:
        if name not in exprs:
            continue  # required: the rule passes it
        source = ast.unparse(exprs[name])
        assert re.fullmatch(rf"(tuple\()?default\('{re.escape(keys[name])}'\)\)?", source), (
            f"{target}({name}={source}): a default written a second time; use "
            f'default("{keys[name]}") (the schema is where it is written)'
        )
        value = params[name].default
        expected = default(keys[name])
        assert value == (tuple(expected) if isinstance(value, tuple) else expected)


def test_every_schema_default_is_valid_for_its_own_key():
    """A default outside its own bounds or enum would be filled in and then refused."""
    checked = 0
    for s in iter_settings():
        if not s.has_default:
            continue
        schema = {k: v for k, v in s.schema.items() if k not in ("default", "description")}
        # object defaults ({}) are completed by the children's defaults before validation
        if schema.get("type") == "object" or "properties" in schema:
            continue
        jsonschema.Draft202012Validator(schema).validate(s.default)
        checked += 1
    assert checked > 100


def test_spec_lookups_name_what_is_missing():
    assert default("io.compression") in schema_at("io.compression")["enum"]
    assert bounds("io.chunk_cells") == (1, None)
    assert default("tokenizers.*.max_len") == schema_at("tokenizers.*.max_len")["default"]
    with pytest.raises(KeyError, match=re.escape("no key 'nope' under qc.rna")):
        schema_at("qc.rna.nope")
    with pytest.raises(KeyError, match=re.escape("benchmarks.*.dataset has no default")):
        default("benchmarks.*.dataset")
    # a copy: mutating it does not change the next caller's default
    metrics = default("benchmarks.*.metrics")
    metrics.clear()
    assert default("benchmarks.*.metrics")


def test_docs_config_reference_is_generated_from_the_schema():
    path = ROOT / "docs" / "config.md"
    text = path.read_text()
    assert config_doc.MARKER in text, "docs/config.md lost its generated reference"
    assert config_doc.updated(text) == text, (
        "docs/config.md is out of date with the config schema: run "
        "`python -m scfm.config_doc docs/config.md`"
    )
    reference = text.split(config_doc.MARKER, 1)[1]
    for s in iter_settings():
        if not s.key.endswith("*"):
            assert f"`{s.key.replace('*', '<name>')}`" in reference, s.key


def test_generated_reference_changes_with_the_schema(monkeypatch):
    """The drift check can fail: a changed default shows up in the rendered reference."""
    import scfm.spec as spec

    schema = spec._schema()
    node = schema["properties"]["io"]["properties"]["chunk_cells"]
    monkeypatch.setitem(node, "default", 12345)
    assert "| `io.chunk_cells` | integer | `12345` |" in config_doc.render()


def test_the_guide_part_of_docs_config_writes_no_defaults():
    """Defaults live in the generated reference only; the hand-written guide explains."""
    guide = (ROOT / "docs" / "config.md").read_text().split(config_doc.MARKER, 1)[0]
    for s in iter_settings():
        if s.has_default and isinstance(s.default, int | float) and not isinstance(s.default, bool):
            # "`min_genes` (200)" or "| `min_genes` | `200` |": the old hand-written tables
            pattern = rf"`{re.escape(s.name)}`\s*(\(|\|\s*`?){re.escape(str(s.default))}\b"
            assert not re.search(pattern, guide), f"{s.key}: default repeated in the guide"


def test_provenance_records_spell_the_version_one_way():
    """Every file's provenance says what made it under ``versions`` (scfm.provenance.versions)."""
    offenders = []
    for path in (ROOT / "src" / "scfm").rglob("*.py"):
        if "registry" in path.parts or path.name == "provenance.py":
            continue  # lamindb run records: the registry's own schema (docs/registry.md)
        text = path.read_text()
        for pattern in (r'"scfm_version"\s*:', r'"scfm"\s*:\s*__version__'):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not offenders, offenders


def _numeric_bounds(prefix: str):
    for s in iter_settings(prefix):
        kinds = s.schema.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not {"integer", "number"} & set(kinds):
            continue
        for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            if key in s.schema:
                yield s, key, s.schema[key], "integer" in kinds


def _outside(bound: str, value: float, integer: bool) -> float:
    step = 1 if integer else 1e-9
    if bound == "minimum":
        return value - step
    if bound == "exclusiveMinimum":
        return value
    if bound == "maximum":
        return value + step
    return value


def test_run_and_model_bounds_agree_with_their_dataclasses():
    """Runs and models are checked by the schema and again by RunConfig / ModelConfig (the
    trainer is also a library, used without a config): the two must refuse the same values.
    Each numeric bound of the schema is tried just outside: the dataclass refuses it too."""
    from scfm.data import LoaderConfig
    from scfm.errors import ScfmConfigError
    from scfm.models.config import ModelConfig
    from scfm.train.config import RunConfig

    base_run = {"corpus": "c", "tokenizer": "t", "model": "m", "max_steps": 10}
    checked = 0
    for s, bound, value, integer in _numeric_bounds("runs.*"):
        path = s.key.split(".")[2:]
        if path[0] in ("max_steps", "epochs"):
            continue  # oneOf: either one; covered by the schema alone
        if path[0] == "loader":  # checked by the loader's own config when training starts
            with pytest.raises((ScfmConfigError, ValueError)):
                LoaderConfig(**{path[1]: _outside(bound, value, integer)})
            checked += 1
            continue
        block: dict = dict(base_run)
        node = block
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _outside(bound, value, integer)
        with pytest.raises((ScfmConfigError, ValueError)):
            RunConfig.from_dict(block, source="runs.r")
        checked += 1
    for s, bound, value, integer in _numeric_bounds("models.*"):
        name = s.key.split(".")[2]
        data = {"vocab_size": 20, "value_kind": "bin", "n_value_tokens": 8, "max_len": 10}
        data[name] = _outside(bound, value, integer)
        with pytest.raises((ScfmConfigError, ValueError)):
            ModelConfig.from_dict(data)
        checked += 1
    assert checked > 20
