"""Config defaults, bounds and docs, read from the one place they are written: the schema.

The config schema (``scfm/schemas/config.schema.yaml``) is the single source of truth for every
setting: its type, allowed values, bounds, default and meaning. Everything else derives from it,
in one direction:

* :func:`default` gives library code a setting's default by its config key path, so a function
  signature never writes a default of its own (``compression=default("io.compression")``);
* :func:`bounds` gives a setting's numeric bounds the same way;
* :func:`iter_settings` walks every setting, which :mod:`scfm.config_doc` turns into the config
  reference in ``docs/config.md`` (a test keeps the file in step with the schema), and
  ``tests/test_spec.py`` uses to check that no library default disagrees with the schema.

Key paths use the config's own spelling with ``*`` for a named entry (``tokenizers.*.max_len``,
``benchmarks.*.scib.kbet``) and follow ``$ref`` into ``$defs``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_MISSING = object()


@functools.cache
def _schema() -> dict[str, Any]:
    from scfm.config import load_schema

    return load_schema()


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow ``$ref`` (local ``#/$defs/<name>`` references only, as the schema uses)."""
    seen = 0
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"config schema: only local $ref is supported, got {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        # sibling keywords of a $ref (a `default`, a `description`) override the target's
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
        if seen > 20:
            raise ValueError(f"config schema: $ref cycle at {ref!r}")
    return node


def _branches(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The sub-schemas whose properties a mapping may also hold (if/then/else, allOf)."""
    yield node
    for branch in node.get("allOf", []):
        yield from _branches(branch)
    for key in ("then", "else"):
        if key in node:
            yield from _branches(node[key])


def _children(node: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Named child schemas of an object schema; ``*`` for its named entries."""
    out: dict[str, Mapping[str, Any]] = {}
    for branch in _branches(node):
        for key, sub in (branch.get("properties") or {}).items():
            sub = _resolve(sub, root)
            if key in out and out[key] != sub:
                # a key defined differently per branch (e.g. per source): keep the first,
                # the walk lists each branch's own spelling through iter_settings
                continue
            out[key] = sub
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping) and extra:
        out["*"] = _resolve(extra, root)
    return out


def schema_at(key: str) -> dict[str, Any]:
    """The (resolved) schema of one setting, by key path: ``qc.rna.min_genes``.

    Raises ``KeyError`` naming the first unknown part.
    """
    root = _schema()
    node: Mapping[str, Any] = root
    done: list[str] = []
    for part in key.split("."):
        children = _children(node, root)
        if part not in children:
            where = ".".join(done) or "<top level>"
            raise KeyError(f"config schema has no key {part!r} under {where}")
        node = children[part]
        done.append(part)
    return dict(node)


def default(key: str) -> Any:
    """The schema's default of a setting (a copy: callers may mutate it)."""
    node = schema_at(key)
    if "default" not in node:
        raise KeyError(f"config schema: {key} has no default")
    return copy.deepcopy(node["default"])


def bounds(key: str) -> tuple[float | None, float | None]:
    """``(minimum, maximum)`` of a numeric setting (exclusive bounds are given as they are)."""
    node = schema_at(key)
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    return low, high


def check(prefix: str, values: Mapping[str, Any]) -> list[str]:
    """Problems of ``values`` (keys of the block at ``prefix``) against the schema, one per key.

    The schema's types, enums and bounds, applied to a library object's fields, so that a
    dataclass built without a config (``TokenizerConfig(kind="binned", n_bins=1)``) refuses
    exactly what a config may not say, without writing the bounds a second time. Messages are
    ``<key>: <what jsonschema says>``; keys the block does not define are not checked here.
    """
    import jsonschema

    children = _children(schema_at(prefix), _schema())
    problems = []
    for key, value in values.items():
        if key not in children:
            continue
        node = {k: v for k, v in children[key].items() if k not in ("default", "description")}
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(node).iter_errors(value)
        )
        if error is not None:
            problems.append(f"{key}: {error.message}")
    return problems


@dataclass(frozen=True)
class Setting:
    """One setting of the config as the schema defines it."""

    key: str
    schema: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The last part of the key path."""
        return self.key.rsplit(".", 1)[-1]

    @property
    def has_default(self) -> bool:
        """Whether the schema gives a default."""
        return "default" in self.schema

    @property
    def default(self) -> Any:
        """The schema's default (a sentinel when there is none)."""
        return self.schema.get("default", _MISSING)

    @property
    def description(self) -> str:
        """The schema's description, stripped."""
        return str(self.schema.get("description", "")).strip()


def _is_object(node: Mapping[str, Any]) -> bool:
    return node.get("type") == "object" or "properties" in node or "allOf" in node


def iter_settings(prefix: str = "") -> Iterator[Setting]:
    """Every setting under ``prefix`` (all of them by default), depth first, in schema order.

    Objects are yielded too (they have a description and often a default ``{}``), before their
    children, so a reference can print a heading per block.
    """
    root = _schema()
    start: Mapping[str, Any] = schema_at(prefix) if prefix else root

    def walk(node: Mapping[str, Any], path: str, depth: int) -> Iterator[Setting]:
        if depth > 12:  # recursive schemas (none today) would otherwise not end
            return
        for key, sub in _children(node, root).items():
            child = f"{path}.{key}" if path else key
            yield Setting(child, sub)
            if _is_object(sub):
                yield from walk(sub, child, depth + 1)

    yield from walk(start, prefix, 0)


# -------------------------------------------------------------------- max_len: genes per cell


def tokens_per_cell(max_len: int) -> int:
    """Sequence length of a cell with at most ``max_len`` genes: ``<cls>`` plus the genes.

    ``max_len`` means genes per cell (without ``<cls>``) everywhere -- tokenizer config, corpus
    manifest, ``runs.<r>.loader.max_len``, :class:`scfm.data.Collator`,
    :class:`scfm.models.ModelConfig`; this is the one place the ``<cls>`` token is added.
    """
    return max_len + 1


def _min_max_len() -> int:
    """The lower bound of ``max_len``: ``tokenizers.<t>.max_len``'s ``minimum`` in the schema."""
    low, _ = bounds("tokenizers.*.max_len")
    return int(low)


def max_len_problems(value: Any, *, name: str = "max_len", nullable: bool = False) -> list[str]:
    """The problems of a ``max_len`` (genes per cell): ``[]`` or one message naming ``name``.

    The bound is the config schema's (``tokenizers.<t>.max_len``), so library objects built
    without a config (loader, collator, model) accept exactly what a config may say. Lives here,
    not with the tokenizers, so that config validation (which checks model blocks through
    :class:`scfm.models.ModelConfig`) imports no numba kernels.
    """
    if nullable and value is None:
        return []
    low = _min_max_len()
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        null = "null or " if nullable else ""
        return [f"{name}: {value!r} is not {null}an integer >= {low} (genes per cell)"]
    return []
