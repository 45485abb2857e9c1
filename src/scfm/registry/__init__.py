"""Data registry: what the pipeline made, from what, by which rule and config (lamindb).

The pipeline's scripts end with one call, ``register_outputs(snakemake, kind=...)``, which is a
no-op unless ``registry.enabled``. Each job is recorded as a lamindb ``Run`` of the transform
``scfm/<rule>`` (params: wildcards, config hash, scfm version, the rule's params) whose outputs
are artifacts keyed by their path relative to the working directory and whose inputs are the
artifacts it read, so that the lineage of a benchmark table leads back to its raw data.

lamindb is optional (``pip install 'scfm[registry]'``) and is only imported in a worker
process (:mod:`scfm.registry._client`): the rule's own process stays free of it, and reaching
the registry is bounded by ``registry.timeout``. See docs/registry.md.

Example (a notebook)::

    from scfm.registry import RegistrySettings, lineage, list_records

    settings = RegistrySettings.from_config({"path": ".scfm-registry"}, workdir="/lab/scfm")
    list_records(settings, kind="corpus")
    lineage(settings, "results/bench/sim/summary.tsv")
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scfm.redact import redact
from scfm.registry import _client
from scfm.registry._collect import KINDS, describe, expand, files, output_records
from scfm.registry._settings import (
    MISSING_LAMINDB,
    RegistrySettings,
    ScfmRegistryError,
    ScfmRegistryNotFound,
    config_hash,
    lamindb_installed,
)

__all__ = [
    "KINDS",
    "RegistrySettings",
    "ScfmRegistryError",
    "ScfmRegistryNotFound",
    "check_installed",
    "config_hash",
    "fetch",
    "fetch_corpus",
    "lamindb_installed",
    "lineage",
    "list_records",
    "register_files",
    "register_outputs",
    "show",
]

log = logging.getLogger("scfm.registry")


def check_installed(config: Mapping[str, Any]) -> None:
    """Stop at start-up when the config needs lamindb (required registry, `lamindb` sources).

    Raises
    ------
    ScfmRegistryError
        Saying to ``pip install 'scfm[registry]'``.
    """
    block = config.get("registry") or {}
    readers = [
        f"{section}.{name}"
        for section in ("datasets", "corpora")
        for name, b in (config.get(section) or {}).items()
        if isinstance(b, dict) and b.get("source") == "lamindb"
    ]
    needed = bool(block.get("enabled") and block.get("required", True)) or bool(readers)
    python = RegistrySettings.from_config(block).interpreter
    if needed and not lamindb_installed(python):
        why = f"{', '.join(readers)} read from it" if readers else "registry.enabled"
        raise ScfmRegistryError(f"{why}: " + MISSING_LAMINDB.format(python=python))


def register_outputs(
    smk: Any, *, kind: str, lineage: Iterable[str | Path] = ()
) -> dict[str, Any] | None:
    """Register the outputs of the running Snakemake job; a no-op when the registry is off.

    Parameters
    ----------
    smk
        The ``snakemake`` object of a rule script (``config``, ``rule``, ``wildcards``,
        ``input``, ``output``, ``params``).
    kind
        What the job made, one of :data:`KINDS`.
    lineage
        Upstream files the job depends on through unregistered intermediates (e.g. the
        embeddings behind a benchmark summary's metric tables).

    Returns
    -------
    The worker's summary (run uid, outputs, linked inputs), or ``None`` when the registry is
    disabled or failed with ``registry.required: false`` (a warning is logged).

    Raises
    ------
    ScfmRegistryError
        The registry failed and ``registry.required`` is true (the default).
    """
    settings = RegistrySettings.from_config(smk.config.get("registry"))
    if not settings.enabled:
        return None
    try:
        return register_files(
            kind,
            list(smk.output),
            inputs=list(smk.input),
            lineage=lineage,
            rule=smk.rule,
            wildcards=dict(smk.wildcards.items()),
            params=redact(dict(smk.params.items())),  # no URL credentials in the registry
            config=smk.config,
            settings=settings,
        )
    except Exception as exc:
        if settings.required:
            if isinstance(exc, ScfmRegistryError):
                raise
            raise ScfmRegistryError(f"registering the outputs of rule {smk.rule}: {exc}") from exc
        log.warning(
            "registry: outputs of rule %s not registered (%s); continuing because "
            "registry.required is false",
            smk.rule,
            exc,
        )
        return None


def register_files(
    kind: str,
    outputs: Iterable[str | Path],
    *,
    inputs: Iterable[str | Path] = (),
    lineage: Iterable[str | Path] = (),
    rule: str,
    wildcards: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    settings: RegistrySettings,
) -> dict[str, Any]:
    """Register files made by one step (``rule``) from ``inputs``; see :func:`register_outputs`.

    Paths are relative to ``settings.workdir``; keys are paths relative to it, and files outside
    it are not registered (inputs outside it are looked up by content).
    """
    from scfm import __version__

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    workdir = Path(settings.workdir)
    outs = files(_abs(workdir, outputs))
    ins = [p for p in files(_abs(workdir, inputs)) if p not in outs]
    outs, more_lineage, collection, info = expand(kind, outs, ins, workdir)
    ins = [p for p in ins if p not in outs]  # e.g. a corpus registers its vocabulary with it
    wildcards = dict(wildcards or {})
    payload = {
        "kind": kind,
        "rule": rule,
        "wildcards": wildcards,
        "params": dict(params or {}),
        "config_hash": config_hash(config or {}),
        "scfm_version": __version__,
        "workdir": str(workdir),
        "outputs": output_records(outs, workdir, describe(kind, rule, wildcards)),
        "inputs": [str(p) for p in ins],
        "lineage": [str(p) for p in _abs(workdir, [*lineage, *more_lineage])],
        "collection": collection,
        "input_uids": info.pop("input_uids", []),
        "info": info,
    }
    result = _client.call(settings, "register", payload)
    n_new = sum(o["new"] for o in result["outputs"])
    log.info(
        "registry: rule %s registered %d files (%d new versions) from %d registered inputs in %s",
        rule,
        len(result["outputs"]),
        n_new,
        len(result["inputs"]),
        settings.describe(),
    )
    return result


def list_records(
    settings: RegistrySettings, *, kind: str | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """Latest versions of the registered artifacts and collections (optionally of one kind)."""
    return _client.call(settings, "list_records", {"kind": kind, "limit": limit})


def show(settings: RegistrySettings, ident: str) -> dict[str, Any]:
    """One artifact or collection by key or uid: location, run, inputs, versions, users."""
    return _client.call(settings, "show", {"ident": ident})


def lineage(settings: RegistrySettings, ident: str) -> dict[str, Any]:
    """The tree of inputs (each with its rule, wildcards, config hash) behind a record."""
    return _client.call(settings, "lineage", {"ident": ident})


def fetch(settings: RegistrySettings, ident: str) -> dict[str, Any]:
    """Make a registered file local and return ``{uid, key, path, size, kind, run, ...}``."""
    return _client.call(settings, "fetch", {"ident": ident})


def fetch_corpus(settings: RegistrySettings, ident: str, *, shards: bool = True) -> dict[str, Any]:
    """Make a registered corpus local: ``{uid, key, manifest, shards, files, run}``.

    ``ident`` is the key (``results/corpus/<corpus>/<tokenizer>``) or uid of a corpus
    collection; every file is checked against its registered hash. ``shards=False`` fetches
    only the manifest and the corpus' other files (vocabulary, gene statistics).
    """
    return _client.call(settings, "fetch_corpus", {"ident": ident, "shards": shards})


def _abs(workdir: Path, paths: Iterable[str | Path]) -> list[Path]:
    return [workdir / Path(str(p)) for p in paths]
