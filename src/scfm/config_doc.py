"""The config reference in ``docs/config.md``, generated from the schema (one direction).

Every key, its type, allowed values, bounds, default and meaning are written once, in
``scfm/schemas/config.schema.yaml``; this module renders them as the Markdown tables at the end of
``docs/config.md`` (below :data:`MARKER`; the guide above it is written by hand and gives no
defaults). ``models`` and ``runs`` take their defaults from :class:`scfm.models.ModelConfig` and
:class:`scfm.train.RunConfig`, the one place those are written, and the reference shows them from
there. ``tests/test_spec.py`` fails when the file and the schema drift apart.

Regenerate with ``python -m scfm.config_doc docs/config.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scfm.atomic import write_text_atomic
from scfm.spec import Setting, iter_settings

MARKER = "<!-- Generated from the config schema by `python -m scfm.config_doc docs/config.md`. -->"


def _dataclass_defaults() -> dict[str, dict[str, Any]]:
    """Defaults of the blocks whose defaults live in a dataclass, by key prefix."""
    from scfm.models.config import ModelConfig
    from scfm.train.config import RunConfig

    out: dict[str, dict[str, Any]] = {}
    for prefix, cls in (("models.*", ModelConfig), ("runs.*", RunConfig)):
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
        out[prefix] = values
    return out


def _json(value: Any) -> str:
    text = json.dumps(value, default=str)
    return "`" + text.replace("|", "\\|") + "`"


def _type(schema: Mapping[str, Any]) -> str:
    if "const" in schema:
        return _json(schema["const"])
    if "enum" in schema:
        return " \\| ".join(_json(v) for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind:
        if kind == "array" and isinstance(schema.get("items"), Mapping):
            inner = _type(schema["items"])
            return f"array of {inner}" if inner else "array"
        return str(kind)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts = [_type(s) for s in schema[key]]
            return " or ".join(p for p in parts if p) or key
    return ""


def _bounds(schema: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in schema:
            parts.append(f"{sym} {schema[key]}")
    if "minItems" in schema:
        parts.append(f"≥ {schema['minItems']} items")
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`".replace("|", "\\|"))
    return ", ".join(parts)


def _display(key: str) -> str:
    return key.replace("*", "<name>")


def _rows(settings: Iterable[Setting], dc_defaults: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for s in settings:
        if s.key.endswith("*") and not s.description:
            continue  # the entry itself; its keys follow
        prefix, _, leaf = s.key.rpartition(".")
        if s.has_default:
            dflt = _json(s.default)
        elif prefix in dc_defaults and leaf in dc_defaults[prefix]:
            dflt = _json(dc_defaults[prefix][leaf]) + " ¹"
        else:
            dflt = ""
        kind = _type(s.schema)
        bounds = _bounds(s.schema)
        meaning = " ".join(s.description.split()).replace("|", "\\|")
        rows.append(f"| `{_display(s.key)}` | {kind} | {dflt} | {bounds} | {meaning} |")
    return rows


def render() -> str:
    """The generated reference: one table per top-level section, every key in schema order."""
    dc_defaults = _dataclass_defaults()
    sections: dict[str, list[Setting]] = {}
    heads: dict[str, Setting] = {}
    for s in iter_settings():
        top = s.key.split(".", 1)[0]
        if s.key == top:
            heads[top] = s
        else:
            sections.setdefault(top, []).append(s)
    out = [
        MARKER,
        "",
        "## Reference",
        "",
        "Every key of the config as the schema defines it (`src/scfm/schemas/config.schema.yaml`,",
        "the one place a default, bound or allowed value is written). `<name>` stands for a name",
        "you choose. A blank default means required or not set (see the meaning); ¹ marks a",
        "default taken from `scfm.models.ModelConfig` / `scfm.train.RunConfig`, where those two",
        "blocks' defaults are written. Keys of one `source` only are listed once under",
        "`datasets.<name>` (the guide above says which source takes which).",
        "",
    ]
    for top, head in heads.items():
        out += [f"### `{top}`", ""]
        if head.description:
            out += [" ".join(head.description.split()), ""]
        rows = _rows(sections.get(top, []), dc_defaults)
        if rows:
            out += [
                "| key | type | default | bounds | meaning |",
                "|---|---|---|---|---|",
                *rows,
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


def updated(text: str) -> str:
    """``text`` (a docs/config.md) with everything from :data:`MARKER` on regenerated."""
    guide = text.split(MARKER, 1)[0].rstrip() + "\n\n"
    return guide + render()


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated part of a docs/config.md (``--check``: only report drift)."""
    parser = argparse.ArgumentParser(prog="python -m scfm.config_doc", description=main.__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = args.path.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print(f"{args.path}: the reference is out of date with the schema", file=sys.stderr)
            return 1
        return 0
    if new != text:
        write_text_atomic(args.path, new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
