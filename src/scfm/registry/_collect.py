"""What one job registers: its output files, inputs, lineage and collection, by kind.

Pure file inspection (manifests, h5ad provenance); no lamindb, no snakemake import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: What the pipeline registers, one kind per stage.
KINDS = ("raw", "standard", "qc", "vocab", "corpus", "model", "embedding", "benchmark")
_LABEL = {
    "raw": "raw dataset",
    "standard": "standardized h5ad",
    "qc": "QC output",
    "vocab": "corpus vocabulary or gene statistics",
    "corpus": "corpus",
    "model": "trained model",
    "embedding": "cell embedding",
    "benchmark": "benchmark table",
}
_FIGURES = (".png", ".svg", ".pdf", ".html")


def files(paths: Iterable[Any]) -> list[Path]:
    """Existing regular files among ``paths`` (directories and missing paths are left out)."""
    out = []
    for p in paths:
        path = Path(os.path.normpath(str(p)))  # `a/b/../vocab.tsv` and `a/vocab.tsv` are one file
        if path.is_file() and path not in out:
            out.append(path)
    return out


def key_of(path: Path, workdir: Path) -> str | None:
    """The registry key of a file: its path relative to the working directory."""
    try:
        return path.resolve().relative_to(workdir.resolve()).as_posix()
    except ValueError:
        return None


def describe(kind: str, rule: str, wildcards: Mapping[str, str]) -> str:
    """A one-line description of an output of this job."""
    job = ", ".join(f"{k}={v}" for k, v in wildcards.items())
    return f"scfm {_LABEL[kind]} (rule {rule}{': ' + job if job else ''})"


def output_records(paths: Iterable[Path], workdir: Path, description: str) -> list[dict[str, Any]]:
    """Output files as the worker registers them (files outside the working dir are skipped)."""
    out = []
    for path in paths:
        key = key_of(path, workdir)
        if key is None:
            continue
        suffix = path.suffix.lower()
        kind = "model" if suffix == ".pt" else None if suffix in _FIGURES else "dataset"
        out.append(
            {
                "path": str(path.resolve()),
                "key": key,
                "description": description,
                "kind": kind,
            }
        )
    return out


def expand(
    kind: str, outputs: list[Path], inputs: list[Path], workdir: Path
) -> tuple[list[Path], list[str], dict[str, Any] | None, dict[str, Any]]:
    """Kind-specific additions: more outputs, lineage inputs, a collection, provenance info.

    Returns ``(outputs, lineage, collection, info)``.
    """
    if kind == "raw":
        return _raw(outputs, workdir)
    if kind == "corpus":
        return _corpus(outputs, workdir)
    if kind == "embedding":
        return outputs, [s for s in map(evalset_source, inputs) if s], None, {}
    return outputs, [], None, {}


def _raw(outputs: list[Path], workdir: Path) -> tuple[list[Path], list[str], None, dict[str, Any]]:
    manifest_path = next(p for p in outputs if p.name == "manifest.json")
    manifest = json.loads(manifest_path.read_text())
    matrices = list(manifest.get("matrices") or [])
    extra = [workdir / m["path"] for m in matrices]
    if manifest.get("obs_table"):
        extra.append(workdir / manifest["obs_table"]["path"])
    info = {
        "dataset": manifest.get("dataset"),
        "source": manifest.get("source"),
        "format": manifest.get("format"),
        "matrices": [{k: m.get(k) for k in ("path", "url", "size", "sha256")} for m in matrices],
        "source_info": manifest.get("source_info", {}),
    }
    registry_input = (manifest.get("source_info") or {}).get("registry") or {}
    if manifest.get("source") == "lamindb" and registry_input.get("uid"):
        info["input_uids"] = [registry_input["uid"]]  # the registered file this copy came from
    # the matrices first, the manifest that vouches for them last
    return [*files(extra), manifest_path], [], None, info


def _corpus(
    outputs: list[Path], workdir: Path
) -> tuple[list[Path], list[str], dict[str, Any], dict[str, Any]]:
    from scfm.shard.manifest import CorpusManifest  # the shard stage's imports: corpus jobs only

    manifest_path = next(p for p in outputs if p.name == "manifest.json")
    manifest = CorpusManifest.read(manifest_path)
    registered = manifest.registry or {}
    if registered.get("manifest_uid"):
        # Fetched from a registered corpus (source lamindb): its shards and vocabulary are
        # byte-identical copies of registered files, so only this manifest is new; it is linked
        # to the original collection's manifest, whose lineage leads to the QC'd data.
        info = {
            "corpus": manifest.corpus,
            "tokenizer": manifest.tokenizer,
            "vocab_hash": manifest.vocab_hash,
            "registered_corpus": {k: registered.get(k) for k in ("uid", "key")},
            "input_uids": [registered["manifest_uid"]],
        }
        return [manifest_path], [], None, info
    base = manifest_path.parent
    shards = files(manifest.resolve(s.path) for s in manifest.shards)
    per_dataset = files(base / "datasets" / d / "manifest.json" for d in manifest.datasets)
    vocab = files([manifest.vocab_file])
    if manifest.tokenizer_params.get("kind") == "rank" and vocab:
        vocab += files([vocab[0].parent / "gene_stats.tsv"])  # rank tokens are read with it
    lineage = [str(d["source"]) for d in manifest.datasets.values() if d.get("source")]
    n_cells = sum((manifest.splits or {}).values())
    collection = {
        "key": key_of(base, workdir),
        "artifacts": [key_of(p, workdir) for p in shards],
        "meta": key_of(manifest_path, workdir),
        "description": (
            f"scfm corpus {manifest.corpus} tokenized with {manifest.tokenizer}: "
            f"{len(shards)} shards, {n_cells} cells"
        ),
    }
    info = {
        "corpus": manifest.corpus,
        "tokenizer": manifest.tokenizer,
        "vocab_hash": manifest.vocab_hash,
        "splits": dict(manifest.splits) if manifest.splits is not None else None,
        "n_shards": len(shards),
        "datasets": sorted(manifest.datasets),
    }
    return [*shards, *per_dataset, *vocab, manifest_path], lineage, collection, info


def evalset_source(path: Path) -> str | None:
    """The QC'd h5ad an evaluation set was drawn from (``uns['scfm_bench']['source']``)."""
    if path.suffix != ".h5ad":
        return None
    try:
        import h5py

        with h5py.File(path, "r") as f:
            value = f["uns/scfm_bench/source"][()]
    except (OSError, KeyError):
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
