"""Dataset sources: each turns a ``datasets.<name>`` config block into verified raw files.

Every source module exposes ``fetch(name, cfg, outdir, *, chunk_cells) -> dict`` returning a raw
manifest fragment::

    {"format": "h5ad" | "10x_h5" | "mtx",
     "matrices": [{"path": ..., "url": ... or None, "sha256": ... or None, "size": ...}, ...],
     "obs_table": {"path": <parquet>, "key": <column joined on obs_names>} or None,
     "defaults": {"obs_map": {...}, "obs_keep": [...], "genes": {...}},   # source conventions
     "source_info": {...}}                                                  # versions, queries

:func:`fetch_dataset` dispatches on ``cfg["source"]`` and writes ``<outdir>/manifest.json``
(atomically, last), which is what the standardize stage reads.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from scfm.atomic import write_text_atomic
from scfm.provenance import created, versions
from scfm.redact import redact
from scfm.spec import default

log = logging.getLogger(__name__)

# source name -> module under scfm.io.sources; imported lazily so that e.g. tiledbsoma is only
# loaded by the jobs that query the Census.
SOURCES = {
    "demo": "demo",
    "local": "files",
    "url": "files",
    "cellxgene_dataset": "cellxgene",
    "cellxgene_census": "census",
    "allen_abc": "allen",
    "lamindb": "lamindb",  # a file already in the registry (scfm.registry); needs scfm[registry]
}


def fetch_dataset(
    name: str,
    cfg: dict[str, Any],
    outdir: str | Path,
    *,
    chunk_cells: int = default("io.chunk_cells"),
) -> dict[str, Any]:
    """Fetch dataset ``name`` as configured and write ``outdir/manifest.json``; return it."""
    source = cfg["source"]
    if source not in SOURCES:
        raise ValueError(
            f"datasets.{name}.source: unknown source {source!r}; expected one of {sorted(SOURCES)}"
        )
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"scfm.io.sources.{SOURCES[source]}")
    log.info("fetching dataset %s from source %s", name, source)
    result = module.fetch(name, cfg, outdir, chunk_cells=chunk_cells)
    manifest = {
        "dataset": name,
        "source": source,
        "created": created(),
        "versions": versions(),
        "config": cfg,
        "obs_table": None,
        "defaults": {},
        "source_info": {},
        **result,
    }
    # URLs may carry credentials (user:token@, signed query strings): never written down
    manifest = redact(manifest)
    write_text_atomic(outdir / "manifest.json", json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a raw manifest written by :func:`fetch_dataset`."""
    return json.loads(Path(path).read_text())
