"""Source ``allen_abc``: raw counts and cell annotations of an Allen Brain Cell Atlas release.

A release is described by ``{base_url}/releases/{release}/manifest.json``. Its ``file_listing``
gives, for every file, a path relative to the bucket, a size and an MD5 ``file_hash``::

    file_listing[directory]["expression_matrices"][label]["raw"]["files"]["h5ad"]
    file_listing[metadata_directory]["metadata"]["cell_metadata"]["files"]["csv"]
    file_listing[taxonomy_directory]["metadata"][PIVOT]["files"]["csv"]

Files are versioned separately from the release (a 20231215 release can point at 20230630
matrices), so paths are always taken from the manifest, never built from the release date.

The matrices are downloaded as they are (h5ad, obs index ``cell_label``); cell annotations live
in a separate ~860 MB CSV covering all 4M cells of the atlas. It is streamed in row chunks,
filtered to the requested matrices, joined to the taxonomy on ``cluster_alias`` and written to
``obs.parquet``, which the standardize stage joins on ``cell_label``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scfm.atomic import atomic_path, write_text_atomic
from scfm.errors import ScfmInputError
from scfm.io.download import download, fetch_json, hash_file

log = logging.getLogger(__name__)

PIVOT = "cluster_to_cluster_annotation_membership_pivoted"
KEY = "cell_label"
ALIAS = "cluster_alias"
# Releases from 20231215 on call the column feature_matrix_label; 20230630 called it matrix_label.
MATRIX_LABEL_COLUMNS = ("feature_matrix_label", "matrix_label")
TAXONOMY_REQUIRED = ("class", "subclass", "supertype", "cluster")
# Spatial coordinates are the only numeric metadata; everything else (including cluster_alias)
# stays a string so that every chunk has the same Parquet schema whatever values it holds.
NUMERIC_COLUMNS = frozenset({"x", "y"})
# Rows of cell_metadata.csv per chunk: ~50 MB of DataFrame, far below the 4M-row file.
METADATA_CHUNK_ROWS = 250_000

DEFAULTS: dict[str, Any] = {
    "obs_map": {
        "cell_type": "subclass",
        "donor": "donor_label",
        "batch": "library_label",
        "tissue": "region_of_interest_acronym",
        "assay": "library_method",
    },
    "obs_keep": ["class", "subclass", "supertype", "cluster", "neurotransmitter", "donor_sex"],
    "genes": {"id_type": "ensembl", "symbol_column": "gene_symbol"},
}


def fetch(name: str, cfg: dict[str, Any], outdir: Path, *, chunk_cells: int) -> dict[str, Any]:
    """Download raw matrices and annotations of one ABC release; see :mod:`scfm.io.sources`.

    Parameters
    ----------
    name
        Dataset name (for messages).
    cfg
        The validated ``datasets.<name>`` block (``release``, ``base_url``, ``directory``,
        ``matrices``, ``metadata_directory``, ``taxonomy_directory``, ``retries``, ``timeout``).
    outdir
        Files land at ``outdir/<relative_path>``; ``outdir/obs.parquet`` holds the annotations.
    chunk_cells
        Unused: matrices are downloaded as published, not rewritten.

    Returns
    -------
    dict
        The raw manifest fragment (format, matrices, obs_table, defaults, source_info).
    """
    outdir = Path(outdir)
    base = cfg["base_url"].rstrip("/")
    release = cfg["release"]
    net = {"retries": cfg["retries"], "timeout": cfg["timeout"]}
    manifest_url = f"{base}/releases/{release}/manifest.json"

    log.info("dataset %s: reading ABC release manifest %s", name, manifest_url)
    manifest = fetch_json(manifest_url, **net)
    _check_version(manifest, manifest_url, release)
    # Keep the release manifest beside the data: it records which file versions were used.
    write_text_atomic(
        outdir / "releases" / release / "manifest.json", json.dumps(manifest, indent=2)
    )

    entries = [_matrix_entry(manifest, manifest_url, cfg, label) for label in cfg["matrices"]]
    meta_entry = _metadata_entry(manifest, manifest_url, cfg["metadata_directory"], "cell_metadata")
    pivot_entry = _metadata_entry(manifest, manifest_url, cfg["taxonomy_directory"], PIVOT)

    records = [_fetch_entry(base, e, outdir, **net) for e in entries]
    meta_record = _fetch_entry(base, meta_entry, outdir, **net)
    pivot_record = _fetch_entry(base, pivot_entry, outdir, **net)

    obs_path = outdir / "obs.parquet"
    stats = write_obs_table(
        Path(meta_record["path"]), Path(pivot_record["path"]), cfg["matrices"], obs_path
    )
    defaults = {**DEFAULTS, "obs_keep": [c for c in DEFAULTS["obs_keep"] if c in stats["columns"]]}
    return {
        "format": "h5ad",
        "matrices": records,
        "obs_table": {"path": str(obs_path), "key": KEY},
        "defaults": defaults,
        "source_info": {
            "release": release,
            "manifest_url": manifest_url,
            "manifest_version": manifest.get("version"),
            "directory": cfg["directory"],
            "matrices": [
                _describe(label, e) for label, e in zip(cfg["matrices"], entries, strict=True)
            ],
            "cell_metadata": _describe("cell_metadata", meta_entry),
            "taxonomy": _describe(PIVOT, pivot_entry),
            "n_metadata_rows": stats["n_rows"],
            "n_cells": stats["n_cells"],
            "cells_per_matrix": stats["per_matrix"],
        },
    }


# --------------------------------------------------------------------------- manifest look-ups


def _check_version(manifest: Any, url: str, release: str) -> None:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("file_listing"), dict):
        raise ScfmInputError(url, "file_listing", "missing", "an ABC release manifest.json")
    version = manifest.get("version")
    if version is not None and str(version) != release:
        log.warning("%s declares version %s, not the configured release %s", url, version, release)


def _directory(manifest: dict[str, Any], url: str, directory: str, kind: str) -> dict[str, Any]:
    """``file_listing[directory][kind]``, or an error listing what the release has."""
    listing = manifest["file_listing"]
    if directory not in listing:
        raise ScfmInputError(
            url,
            f"file_listing.{directory}",
            f"release {manifest.get('version', '?')} has no directory {directory!r}",
            f"one of {sorted(listing)}",
        )
    if kind not in listing[directory]:
        raise ScfmInputError(
            url,
            f"file_listing.{directory}.{kind}",
            "missing",
            f"one of {sorted(listing[directory])}",
        )
    return listing[directory][kind]


def _matrix_entry(
    manifest: dict[str, Any], url: str, cfg: dict[str, Any], label: str
) -> dict[str, Any]:
    """The raw-count h5ad entry of feature matrix ``label``."""
    directory = cfg["directory"]
    matrices = _directory(manifest, url, directory, "expression_matrices")
    field = f"file_listing.{directory}.expression_matrices.{label}"
    if label not in matrices:
        raise ScfmInputError(
            url,
            field,
            f"release {cfg['release']}, directory {directory}: no feature matrix {label!r}",
            f"one of {sorted(matrices)}",
        )
    try:
        return _leaf(matrices[label]["raw"], "h5ad")
    except (KeyError, TypeError) as exc:
        raise ScfmInputError(
            url,
            f"{field}.raw.files.h5ad",
            "missing",
            f"a raw-count h5ad entry (found variants {sorted(matrices[label])})",
        ) from exc


def _metadata_entry(
    manifest: dict[str, Any], url: str, directory: str, table: str
) -> dict[str, Any]:
    """The CSV entry of metadata table ``table`` in ``directory``."""
    tables = _directory(manifest, url, directory, "metadata")
    try:
        return _leaf(tables[table], "csv")
    except (KeyError, TypeError) as exc:
        raise ScfmInputError(
            url,
            f"file_listing.{directory}.metadata.{table}.files.csv",
            "missing",
            f"one of the tables {sorted(tables)}",
        ) from exc


def _leaf(node: dict[str, Any], ext: str) -> dict[str, Any]:
    entry = node["files"][ext]
    missing = [k for k in ("relative_path", "size", "file_hash") if k not in entry]
    if missing:
        raise KeyError(missing[0])
    return entry


def _describe(label: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": label,
        "version": entry.get("version"),
        "relative_path": entry["relative_path"],
        "size": entry["size"],
        "md5": entry["file_hash"],
    }


# --------------------------------------------------------------------------- downloads


def _fetch_entry(
    base: str, entry: dict[str, Any], outdir: Path, *, retries: int, timeout: float
) -> dict[str, Any]:
    """Download one manifest entry to ``outdir/<relative_path>``, verified by size and MD5.

    The URL is built from ``base`` rather than the entry's ``url`` so that mirrors (and local
    test servers) work. A file already in place with the right size and MD5 is kept: matrices
    reach 14 GB, and hashing is much cheaper than fetching again.
    """
    rel = _safe_relative(entry["relative_path"])
    dest = outdir / rel
    url = f"{base}/{rel.as_posix()}"
    size, md5 = int(entry["size"]), str(entry["file_hash"]).lower()
    if dest.is_file() and dest.stat().st_size == size and hash_file(dest, "md5") == md5:
        log.info("%s already present and verified; not downloading again", dest)
        return {"url": url, "path": str(dest), "size": size, "sha256": hash_file(dest)}
    return download(url, dest, md5=md5, size=size, retries=retries, timeout=timeout)


def _safe_relative(relative_path: str) -> PurePosixPath:
    """Reject manifest paths that would write outside ``outdir``."""
    rel = PurePosixPath(relative_path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ScfmInputError(
            relative_path,
            "relative_path",
            "is not a plain relative path",
            "a path inside the bucket such as metadata/WMB-10X/.../x.csv",
        )
    return rel


# --------------------------------------------------------------------------- obs table


def write_obs_table(
    metadata_csv: Path,
    pivot_csv: Path,
    matrices: list[str],
    out: Path,
    *,
    chunk_rows: int | None = None,
) -> dict[str, Any]:
    """Stream ``metadata_csv``, keep the cells of ``matrices``, join the taxonomy, write Parquet.

    Parameters
    ----------
    metadata_csv
        ABC ``cell_metadata.csv`` (all cells of the atlas).
    pivot_csv
        ``cluster_to_cluster_annotation_membership_pivoted.csv``.
    matrices
        Feature-matrix labels whose cells are kept.
    out
        Parquet file, written atomically with one row group per non-empty chunk.
    chunk_rows
        CSV rows per chunk (default :data:`METADATA_CHUNK_ROWS`).

    Returns
    -------
    dict
        ``n_rows`` (metadata rows read), ``n_cells`` (written), ``per_matrix`` cell counts and
        the written ``columns``.

    Raises
    ------
    ScfmInputError
        A required column is missing, or no row belongs to ``matrices``.
    """
    header = _read_header(metadata_csv)
    label_col = _label_column(metadata_csv, header)
    pivot = read_pivot(pivot_csv)
    taxonomy = [c for c in pivot.columns if c not in header]
    schema = _schema(header, taxonomy)
    wanted = set(matrices)
    stats: dict[str, Any] = {
        "n_rows": 0,
        "n_cells": 0,
        "per_matrix": dict.fromkeys(matrices, 0),
        "columns": list(schema.names),
    }
    unmatched = 0
    log.info("streaming %s (cells of %s)", metadata_csv, ", ".join(matrices))
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for chunk in _chunks(metadata_csv, chunk_rows or METADATA_CHUNK_ROWS):
            stats["n_rows"] += len(chunk)
            chunk = chunk[chunk[label_col].isin(wanted)]
            if chunk.empty:
                continue
            joined = chunk.join(pivot[taxonomy], on=ALIAS)
            unmatched += int(joined[TAXONOMY_REQUIRED[0]].isna().sum())
            for label, n in joined[label_col].value_counts().items():
                stats["per_matrix"][label] += int(n)
            stats["n_cells"] += len(joined)
            writer.write_table(pa.Table.from_pandas(joined, schema=schema, preserve_index=False))
        if stats["n_cells"] == 0:
            raise ScfmInputError(
                metadata_csv,
                label_col,
                f"no row belongs to the matrices {matrices}",
                f"rows whose {label_col} is one of them",
            )
    _report(metadata_csv, stats, unmatched)
    return stats


def _report(metadata_csv: Path, stats: dict[str, Any], unmatched: int) -> None:
    # A matrix without metadata, or cells without a taxonomy, would silently become "unknown".
    for label, n in stats["per_matrix"].items():
        if n == 0:
            log.warning(
                "%s has no rows for matrix %s: its cells will lack annotations", metadata_csv, label
            )
    if unmatched:
        log.warning("%d cells have a cluster_alias absent from the taxonomy", unmatched)
    log.info(
        "kept %d of %d metadata rows (%s)",
        stats["n_cells"],
        stats["n_rows"],
        ", ".join(f"{k}: {v}" for k, v in stats["per_matrix"].items()),
    )


def _read_header(path: Path) -> list[str]:
    header = list(pd.read_csv(path, nrows=0).columns)
    for col in (KEY, ALIAS):
        if col not in header:
            raise ScfmInputError(
                path, col, "column missing", f"an ABC cell_metadata table; found {header}"
            )
    return header


def _label_column(path: Path, header: list[str]) -> str:
    for col in MATRIX_LABEL_COLUMNS:
        if col in header:
            return col
    raise ScfmInputError(
        path,
        " or ".join(MATRIX_LABEL_COLUMNS),
        "column missing",
        f"an ABC cell_metadata table; found {header}",
    )


def read_pivot(path: Path) -> pd.DataFrame:
    """Read the taxonomy pivot indexed by ``cluster_alias`` (strings, empty values kept as "")."""
    # keep_default_na=False: an empty neurotransmitter is a real value, not a missing one.
    pivot = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in (ALIAS, *TAXONOMY_REQUIRED) if c not in pivot.columns]
    if missing:
        raise ScfmInputError(
            path,
            missing[0],
            "column missing",
            f"a taxonomy pivot with {[ALIAS, *TAXONOMY_REQUIRED]}",
        )
    dup = pivot[ALIAS][pivot[ALIAS].duplicated()]
    if not dup.empty:
        raise ScfmInputError(
            path, ALIAS, f"duplicated values, e.g. {dup.iloc[0]!r}", "one row per cluster"
        )
    return pivot.set_index(ALIAS)


def _chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    # All columns as strings, so a chunk's dtypes never depend on its values (a chunk of integer
    # cluster_alias with one blank would otherwise become float); x/y are parsed afterwards.
    with pd.read_csv(path, dtype=str, chunksize=rows) as reader:
        for chunk in reader:
            for col in NUMERIC_COLUMNS.intersection(chunk.columns):
                chunk[col] = pd.to_numeric(chunk[col], errors="coerce")
            yield chunk


def _schema(header: list[str], taxonomy: list[str]) -> pa.Schema:
    """One fixed schema for every chunk: an all-empty column must not become type ``null``."""
    return pa.schema(
        [pa.field(c, pa.float64() if c in NUMERIC_COLUMNS else pa.string()) for c in header]
        + [pa.field(c, pa.string()) for c in taxonomy]
    )
