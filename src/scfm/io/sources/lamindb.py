"""Source ``lamindb``: a file already in the registry (by key or uid) as a pipeline input.

So one lab member reuses what another downloaded or built. The dataset block names ``key``
(the registered file's path in the working directory that registered it) or ``uid``; the
registry is the top-level ``registry`` block's (filled in by :mod:`scfm.config`) unless the
block's own ``registry`` names another. Two kinds of file work:

- an h5ad (``results/standard/<d>.h5ad``, ``results/qc/<d>.h5ad``, or a raw h5ad): copied (hard
  linked when possible) into ``resources/raw/<name>/``; a standardized or QC'd file keeps its
  harmonised ``obs`` columns and stable gene IDs (``genes.id_type: as_is``);
- a raw manifest (``resources/raw/<d>/manifest.json``): the matrices it lists, registered by the
  same download job, are copied, with the format and source conventions of the original source.

``source_info.registry`` records the uid, key and registry of what was read, and the registry
links it as an input of this dataset's download run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError
from scfm.io.download import hash_file

#: Conventions of files standardized by this pipeline (docs/contracts.md).
STANDARD_DEFAULTS = {
    "obs_map": {k: k for k in ("cell_type", "batch", "donor", "tissue", "assay")},
    "genes": {"id_type": "as_is", "symbol_column": "gene_symbol"},
}


def fetch(name: str, cfg: dict[str, Any], outdir: Path, *, chunk_cells: int) -> dict[str, Any]:
    """Copy a registered file (or a registered raw dataset) into ``outdir``; see the module doc."""
    from scfm.registry import RegistrySettings, ScfmRegistryNotFound
    from scfm.registry import fetch as registry_fetch

    settings = RegistrySettings.from_config(cfg.get("registry"))
    field = "uid" if cfg.get("uid") else "key"
    ident = cfg[field]
    try:
        record = registry_fetch(settings, ident)
    except ScfmRegistryNotFound as exc:
        raise ScfmInputError(
            settings.describe(),
            f"datasets.{name}.{field}",
            str(exc),
            "the key or uid of a registered h5ad or raw manifest.json (`scfm registry list`)",
        ) from None
    info = {
        "registry": {
            "uid": record["uid"],
            "key": record["key"],
            "kind": record["kind"],
            "where": settings.describe(),
            "run": record.get("run"),
        }
    }
    if "members" in record:  # a raw dataset: its manifest and the matrices it lists
        return _raw_dataset(record, outdir, info)
    path = Path(record["path"])
    if not path.name.endswith(".h5ad"):
        raise ScfmInputError(
            path,
            f"datasets.{name}.{field}",
            f"registered file {record['key']!r} is not an h5ad",
            "an h5ad (standardized, QC'd or raw) or a raw manifest.json",
        )
    kind = record["kind"]
    matrix = link_copy(path, outdir / f"{name}.h5ad")
    defaults = STANDARD_DEFAULTS if kind in ("standard", "qc") else {}
    return {"format": "h5ad", "matrices": [matrix], "defaults": defaults, "source_info": info}


def _raw_dataset(record: dict[str, Any], outdir: Path, info: dict[str, Any]) -> dict[str, Any]:
    manifest = json.loads(Path(record["path"]).read_text())
    workdir = Path((record.get("run") or {}).get("workdir") or "/")
    members = record["members"]

    def local(entry_path: str, what: str) -> Path:
        original = workdir / entry_path  # absolute paths stay as they are
        if str(original) in members:
            return Path(members[str(original)]["path"])
        if original.is_file():  # e.g. a `local` source's file, which is never copied
            return original
        raise ScfmInputError(
            record["key"],
            what,
            f"{entry_path} is neither registered nor present",
            "the files of the raw dataset in the registry",
        )

    matrices = []
    for i, m in enumerate(manifest["matrices"]):
        src = local(m["path"], f"matrices[{i}]")
        copied = link_copy(src, outdir / Path(m["path"]).name)
        matrices.append({**copied, "url": m.get("url")})
    obs_table = manifest.get("obs_table")
    if obs_table:
        src = local(obs_table["path"], "obs_table")
        obs_table = {
            **obs_table,
            "path": link_copy(src, outdir / Path(obs_table["path"]).name)["path"],
        }
    info["original_source"] = {
        "source": manifest.get("source"),
        "source_info": manifest.get("source_info"),
    }
    return {
        "format": manifest["format"],
        "matrices": matrices,
        "obs_table": obs_table,
        "defaults": manifest.get("defaults") or {},
        "source_info": info,
    }


def link_copy(src: Path, dest: Path) -> dict[str, Any]:
    """Hard-link (or copy) ``src`` to ``dest`` atomically; return its raw-manifest record.

    A hard link shares the registered bytes without a copy; registered files are never
    rewritten in place (a rerun writes a new file and renames it), so the link stays valid.
    """
    with atomic_path(dest, suffix=".tmp" + dest.suffix) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(src, tmp)
    return {"path": str(dest), "url": None, "size": dest.stat().st_size, "sha256": hash_file(dest)}
