"""Plain-text views of registry records for the ``scfm registry`` command."""

from __future__ import annotations

from typing import Any


def _job(node: dict[str, Any]) -> str:
    if not node.get("rule"):
        return ""
    wildcards = ", ".join(f"{k}={v}" for k, v in (node.get("wildcards") or {}).items())
    return f"rule {node['rule']}" + (f" [{wildcards}]" if wildcards else "")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_records(rows: list[dict[str, Any]]) -> str:
    """One line per record: kind, key, uid, size, rule and wildcards."""
    if not rows:
        return "the registry is empty"
    width = max(len(r["key"] or "") for r in rows)
    lines = []
    for r in rows:
        size = _size(r.get("size")) if r["type"] == "artifact" else f"{r['n_artifacts']} files"
        kind = r.get("kind") or "-"
        lines.append(f"{kind:<10} {r['key'] or '-':<{width}}  {r['uid']}  {size:>9}  {_job(r)}")
    return "\n".join(lines)


def format_show(rec: dict[str, Any]) -> str:
    """A record's location, making run, inputs, versions and users."""
    lines = [f"{rec['type']} {rec['key']}  (uid {rec['uid']}, version {rec['version']})"]
    if rec.get("description"):
        lines.append(f"  description: {rec['description']}")
    if rec["type"] == "artifact":
        lines.append(f"  path: {rec['path']}  ({_size(rec.get('size'))}, hash {rec['hash']})")
    else:
        lines.append(f"  {len(rec['artifacts'])} artifacts; metadata: {rec['meta_artifact']}")
    run = rec.get("run")
    if run:
        lines.append(f"  made by: {_job(run)}, run {run['uid']} of {run['transform']}")
        lines.append(
            f"  config {run['config_hash']}, scfm {run['scfm_version']}, "
            f"finished {run['finished_at']}"
        )
        lines.append(f"  working directory: {run['workdir']}")
        for key, value in (run.get("info") or {}).items():
            lines.append(f"  {key}: {value}")
    for item in rec.get("inputs") or []:
        lines.append(f"  input: {item['key']}  ({item['uid']})")
    for item in rec.get("used_by") or []:
        lines.append(f"  used by: {_job(item)}, run {item['uid']}")
    for coll in rec.get("collections") or []:
        lines.append(f"  in collection: {coll['key']} ({coll['uid']})")
    if len(rec.get("versions") or []) > 1:
        lines.append(f"  versions: {', '.join(v['uid'][-4:] for v in rec['versions'])}")
    return "\n".join(lines)


def format_lineage(node: dict[str, Any]) -> str:
    """The input tree of a record, one line per artifact with the rule that made it."""
    lines: list[str] = []
    _walk(node, "", "", lines)
    return "\n".join(lines)


def _walk(node: dict[str, Any], lead: str, child_lead: str, lines: list[str]) -> None:
    text = f"{node['key']}  ({node['uid'][:16]})"
    job = _job(node)
    if job:
        text += f"  <- {job}"
    if node.get("config_hash"):
        text += f"  config {node['config_hash']}, scfm {node.get('scfm_version')}"
    info = node.get("info") or {}
    if info.get("source"):
        text += f"  source {info['source']}"
    if node.get("collection"):
        text += f"  [collection {node['collection']}]"
    if node.get("repeated"):
        text += "  (see above)"
    lines.append(lead + text)
    inputs = node.get("inputs") or []
    for i, child in enumerate(inputs):
        last = i == len(inputs) - 1
        _walk(
            child,
            child_lead + ("`-- " if last else "|-- "),
            child_lead + ("    " if last else "|   "),
            lines,
        )
