"""lamindb operations, run inside the registry worker (lamindb is connected and imported).

Lineage is recorded without ``ln.track()`` (which needs the hub): each Snakemake job becomes a
``Run`` of a ``Transform`` keyed ``scfm/<rule>`` (one version per scfm version), with the
wildcards, the config hash and the rule's params as run params; its outputs are artifacts
created by that run and its inputs are the run's ``input_artifacts``. Artifact keys are paths
relative to the working directory (``results/qc/pbmc_demo.h5ad``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lamindb as ln
from django.db import transaction
from lamindb_setup.core.hashing import hash_file

from scfm.registry._worker import NotFound

_UID = re.compile(r"^[A-Za-z0-9]{16}([A-Za-z0-9]{4})?$")


# --- registering -------------------------------------------------------------------------------


def register(
    settings: dict[str, Any],
    *,
    kind: str,
    rule: str,
    wildcards: dict[str, str],
    params: dict[str, Any],
    config_hash: str,
    scfm_version: str,
    workdir: str,
    outputs: list[dict[str, Any]],
    inputs: list[str],
    lineage: list[str],
    collection: dict[str, Any] | None,
    input_uids: list[str],
    info: dict[str, Any],
) -> dict[str, Any]:
    """Record one job: a run, its outputs (new versions when changed), inputs, a collection."""
    workdir_path = Path(workdir)
    if settings["instance"] is None:
        _ensure_storage(workdir_path)
    with transaction.atomic():
        transform = _transform(rule, scfm_version)
        job = ",".join(f"{k}={v}" for k, v in wildcards.items())
        run = ln.Run(
            transform=transform,
            name=f"{rule} {job}".strip()[:150],
            params={
                "kind": kind,
                "rule": rule,
                "wildcards": wildcards,
                "config_hash": config_hash,
                "scfm_version": scfm_version,
                "workdir": workdir,
                "params": params,
                "info": info,
            },
            reference=f"{rule}:{job}"[:255],
            reference_type="snakemake",
        ).save()
        linked, unregistered = [], []
        for path in dict.fromkeys([*inputs, *lineage]):
            artifact = _find_file(Path(path), workdir_path)
            if artifact is None:
                unregistered.append(_key(Path(path), workdir_path) or path)
                continue
            run.input_artifacts.add(artifact)
            meta_of = getattr(artifact, "_meta_of_collection", None)
            if meta_of is not None:
                run.input_collections.add(meta_of)
            linked.append(artifact.key)
        for uid in input_uids:  # e.g. the registered file a `lamindb` dataset was copied from
            artifact = ln.Artifact.filter(uid=uid).first()
            if artifact is not None:
                run.input_artifacts.add(artifact)
                meta_of = getattr(artifact, "_meta_of_collection", None)
                if meta_of is not None:  # a registered corpus' manifest: the corpus itself
                    run.input_collections.add(meta_of)
                linked.append(artifact.key)
        registered: dict[str, Any] = {}
        created = []
        for out in outputs:
            artifact, new = _artifact(out, run)
            registered[out["key"]] = artifact
            created.append({"key": out["key"], "uid": artifact.uid, "new": new})
        coll_out = None
        if collection:
            coll, new = _collection(collection, registered, run)
            coll_out = {"key": coll.key, "uid": coll.uid, "new": new}
        run.finished_at = datetime.now(UTC)
        run._status_code = 0
        run.save()
    return {
        "run": run.uid,
        "outputs": created,
        "inputs": linked,
        "unregistered_inputs": unregistered,
        "collection": coll_out,
    }


def _ensure_storage(workdir: Path) -> None:
    """Make the working directory a storage location: its files are registered in place."""
    root = workdir.as_posix()
    if not ln.Storage.filter(root=root).exists():
        ln.Storage(root=root).save()


def _transform(rule: str, version: str) -> Any:
    key = f"scfm/{rule}"
    found = ln.Transform.filter(key=key, version_tag=version).order_by("-created_at").first()
    if found is not None:
        return found
    latest = ln.Transform.filter(key=key, is_latest=True).first()
    return ln.Transform(
        key=key,
        kind="pipeline",
        version=version,
        description=f"Snakemake rule {rule} of the scfm pipeline",
        revises=latest,
    ).save()


def _key(path: Path, workdir: Path) -> str | None:
    try:
        return path.resolve().relative_to(workdir.resolve()).as_posix()
    except ValueError:
        return None


def _find_file(path: Path, workdir: Path) -> Any:
    """The registered artifact holding exactly this file's content (preferring its key)."""
    if not path.is_file():
        return None
    size, digest, _ = hash_file(path)
    key = _key(path, workdir)
    found = ln.Artifact.filter(hash=digest, size=size)
    if key is not None:
        same_key = found.filter(key=key).order_by("-created_at").first()
        if same_key is not None:
            return same_key
    return found.order_by("-created_at").first()


def _artifact(out: dict[str, Any], run: Any) -> tuple[Any, bool]:
    """Register one output file; the latest version of its key is reused when unchanged."""
    path = Path(out["path"])
    size, digest, _ = hash_file(path)
    latest = ln.Artifact.filter(key=out["key"], is_latest=True).first()
    if latest is not None and latest.hash == digest and latest.size == size:
        latest.recreating_runs.add(run)
        return latest, False
    artifact = ln.Artifact(
        str(path),
        key=out["key"],
        description=out.get("description"),
        kind=out.get("kind"),
        run=run,
        revises=latest,
    )
    new = artifact._state.adding
    artifact.save()
    return artifact, new


def _collection(spec: dict[str, Any], registered: dict[str, Any], run: Any) -> tuple[Any, bool]:
    members = [registered[k] for k in spec["artifacts"]]
    meta = registered.get(spec.get("meta"))
    existing = getattr(meta, "_meta_of_collection", None) if meta is not None else None
    if existing is not None:
        return existing, False
    latest = ln.Collection.filter(key=spec["key"], is_latest=True).first()
    if latest is not None and [a.uid for a in latest.ordered_artifacts] == [a.uid for a in members]:
        return latest, False
    coll = ln.Collection(
        members,
        key=spec["key"],
        description=spec.get("description"),
        meta_artifact=meta,
        run=run,
        revises=latest,
    )
    if not coll._state.adding:
        # lamindb returned an existing collection with the same members (same hash): leave
        # its key, description and run as they are rather than saving this job's over them
        coll.refresh_from_db()
        coll.recreating_runs.add(run)
        return coll, False
    coll.save()
    return coll, True


# --- reading -----------------------------------------------------------------------------------


def _resolve(ident: str) -> Any:
    """An artifact or collection by uid (16 characters: its latest version) or by key."""
    if _UID.match(ident):
        for registry in (ln.Artifact, ln.Collection):
            found = registry.filter(uid__startswith=ident).order_by("-created_at")
            latest = found.filter(is_latest=True).first() if len(ident) == 16 else None
            if latest is not None or found.exists():
                return latest or found.first()
    for registry in (ln.Artifact, ln.Collection):
        found = registry.filter(key=ident, is_latest=True).first()
        if found is not None:
            return found
    raise NotFound(
        f"{ident!r}: no artifact or collection with this key or uid in the registry "
        "(`scfm registry list` shows what is there)"
    )


def _run_info(run: Any) -> dict[str, Any] | None:
    if run is None:
        return None
    params = run.params or {}
    return {
        "uid": run.uid,
        "rule": params.get("rule") or run.transform.key,
        "transform": f"{run.transform.key} {run.transform.version_tag or ''}".strip(),
        "wildcards": params.get("wildcards", {}),
        "config_hash": params.get("config_hash"),
        "scfm_version": params.get("scfm_version"),
        "workdir": params.get("workdir"),
        "kind": params.get("kind"),
        "info": params.get("info", {}),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


def _brief(record: Any) -> dict[str, Any]:
    params = (record.run.params or {}) if record.run is not None else {}
    out = {
        "type": type(record).__name__.lower(),
        "key": record.key,
        "uid": record.uid,
        "version": record.version_tag or record.uid[-4:],
        "kind": params.get("kind"),
        "rule": params.get("rule"),
        "wildcards": params.get("wildcards", {}),
        "created_at": record.created_at,
    }
    if isinstance(record, ln.Artifact):
        out["size"] = record.size
    else:
        out["n_artifacts"] = record.artifacts.count()
    return out


def list_records(
    settings: dict[str, Any], *, kind: str | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """The latest version of every registered artifact and collection, newest first."""
    rows = []
    for registry in (ln.Collection, ln.Artifact):
        query = registry.filter(is_latest=True).select_related("run__transform")
        for record in query.order_by("-created_at")[:limit]:
            row = _brief(record)
            if kind is None or row["kind"] == kind:
                rows.append(row)
    return rows[:limit]


def show(settings: dict[str, Any], *, ident: str) -> dict[str, Any]:
    """One record: where it is, how it was made, what it was made from and what used it."""
    record = _resolve(ident)
    out = _brief(record)
    out["description"] = record.description
    out["run"] = _run_info(record.run)
    out["versions"] = [
        {"uid": v.uid, "created_at": v.created_at, "is_latest": v.is_latest}
        for v in record.versions.order_by("created_at")
    ]
    run = record.run
    out["inputs"] = [_brief(a) for a in run.input_artifacts.all()] if run is not None else []
    if isinstance(record, ln.Artifact):
        out.update(path=str(record.path), hash=record.hash, storage=record.storage.root)
        used_by = record.input_of_runs.all()
        out["collections"] = [_brief(c) for c in record.collections.all()]
    else:
        out["artifacts"] = [a.key for a in record.ordered_artifacts]
        out["meta_artifact"] = record.meta_artifact.key if record.meta_artifact else None
        used_by = record.input_of_runs.all()
    out["used_by"] = [_run_info(r) for r in used_by]
    return out


def lineage(settings: dict[str, Any], *, ident: str) -> dict[str, Any]:
    """The tree of runs and inputs that led to a record, down to the raw data."""
    return _node(_resolve(ident), set())


def _node(record: Any, seen: set[str]) -> dict[str, Any]:
    node = _brief(record)
    run = record.run
    run_info = _run_info(run)
    if run_info is not None:
        node.update(config_hash=run_info["config_hash"], scfm_version=run_info["scfm_version"])
        if run_info["info"]:
            node["info"] = run_info["info"]
    meta_of = getattr(record, "_meta_of_collection", None)
    if meta_of is not None:
        node["collection"] = meta_of.key
    if record.uid in seen:
        node["repeated"] = True
        node["inputs"] = []
        return node
    seen.add(record.uid)
    inputs = list(run.input_artifacts.order_by("key")) if run is not None else []
    node["inputs"] = [_node(a, seen) for a in inputs]
    return node


def fetch(settings: dict[str, Any], *, ident: str) -> dict[str, Any]:
    """A registered file made local (its cache path, verified against its hash).

    For a raw-dataset manifest, the matrices the manifest lists are fetched too.
    """
    record = _resolve(ident)
    if not isinstance(record, ln.Artifact):
        raise NotFound(
            f"{ident!r} is a collection (a corpus of shards), not a dataset file; name one of "
            "its datasets' h5ad files or a raw manifest instead"
        )
    out = _local(record)
    run_info = _run_info(record.run) or {}
    out.update(kind=run_info.get("kind"), run=run_info)
    if run_info.get("kind") == "raw" and record.key.endswith("manifest.json"):
        out["members"] = _raw_members(record, run_info)
    return out


def fetch_corpus(settings: dict[str, Any], *, ident: str, shards: bool = True) -> dict[str, Any]:
    """A registered corpus (a collection of shards) made local, every file verified.

    Returns the collection's uid and key, its manifest (the meta artifact), its shards (unless
    ``shards`` is false) and the other files its run registered (vocabulary, gene statistics,
    per-dataset manifests), each as ``{uid, key, path, size}``, keyed by their registered key.
    """
    record = _resolve(ident)
    if not isinstance(record, ln.Collection):
        raise NotFound(
            f"{ident!r} is a single file, not a corpus; name a corpus collection "
            "(`scfm registry list --kind corpus`), e.g. results/corpus/<corpus>/<tokenizer>"
        )
    if record.meta_artifact is None:
        raise NotFound(f"{ident!r}: the collection has no manifest (meta artifact)")
    members = list(record.ordered_artifacts)
    files = {a.key: _local(a) for a in members} if shards else {}
    skip = {a.uid for a in members}
    run = record.meta_artifact.run
    if run is not None:  # created by the run, or registered earlier and recreated by it
        for artifact in [*run.output_artifacts.all(), *run.recreated_artifacts.all()]:
            if artifact.uid not in skip:
                files.setdefault(artifact.key, _local(artifact))
    return {
        "uid": record.uid,
        "key": record.key,
        "manifest": _local(record.meta_artifact),
        "shards": [a.key for a in members],
        "files": files,
        "run": _run_info(run),
    }


def _local(record: Any) -> dict[str, Any]:
    path = Path(str(record.cache(is_run_input=False, mute=True)))
    size, digest, _ = hash_file(path)
    if digest != record.hash or size != record.size:
        raise RuntimeError(
            f"{record.key} (uid {record.uid}): the file at {path} no longer matches the "
            "registered version (it was overwritten by a later run); use the latest version "
            "or register the file again"
        )
    return {"uid": record.uid, "key": record.key, "path": str(path), "size": record.size}


def _raw_members(manifest: Any, run_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Registered files of the same download job, by their original absolute path."""
    workdir = Path(run_info.get("workdir") or "/")
    members = {}
    for artifact in manifest.run.output_artifacts.exclude(uid=manifest.uid):
        members[str(workdir / artifact.key)] = _local(artifact)
    return members
