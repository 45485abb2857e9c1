"""One h5ad contract for every source (docs/contracts.md).

``X`` = integer raw counts (int32 CSR); ``var_names`` = stable gene IDs (Ensembl where
available) with ``var.gene_symbol``; ``obs`` = harmonised ``cell_type``, ``batch``, ``donor``,
``tissue``, ``assay``, ``dataset`` (+ ``obs_keep`` columns); ``uns['scfm']['standardize']`` =
provenance (JSON). The matrix is streamed in chunks of cells: memory is bounded by the chunk.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp
from tqdm.auto import tqdm

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError
from scfm.io.formats import open_counts
from scfm.io.genes import map_genes, read_gene_table
from scfm.io.h5ad import CsrH5adWriter
from scfm.io.sources import read_manifest
from scfm.paths import check_outputs_not_inputs
from scfm.provenance import created, versions
from scfm.redact import redact
from scfm.spec import default

log = logging.getLogger(__name__)

OBS_KEYS = ("cell_type", "batch", "donor", "tissue", "assay", "dataset")
UNKNOWN = "unknown"
INT32_MAX = np.iinfo(np.int32).max


def settings_with_defaults(cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Source conventions (e.g. CELLxGENE's ``donor_id``) under the user's explicit settings."""
    obs_map = {**defaults.get("obs_map", {}), **cfg.get("obs_map", {})}
    obs_keep = list(dict.fromkeys(cfg.get("obs_keep") or defaults.get("obs_keep", [])))
    genes = dict(cfg.get("genes", {}))
    for key, value in defaults.get("genes", {}).items():
        if genes.get(key) in (None, "auto"):
            genes[key] = value
    return {"obs_map": obs_map, "obs_keep": obs_keep, "genes": genes}


def check_counts(
    block: sp.csr_matrix,
    *,
    path: Path,
    field: str,
    row0: int,
    obs_names: pd.Index,
    var_names: pd.Index,
) -> None:
    """Raise naming the cell and gene if ``block`` holds anything but finite integer counts >= 0."""
    d = block.data
    if d.size == 0:
        return
    is_int = np.issubdtype(d.dtype, np.integer)
    problems = []
    if not is_int:
        problems.append((~np.isfinite(d), "non-finite value"))
    problems.append((d < 0, "negative count"))
    if not is_int:
        problems.append((np.isfinite(d) & (d != np.round(d)), "non-integer value"))
    # X is written as int32: larger values would wrap around silently.
    problems.append((d > INT32_MAX, "count above the int32 range"))
    for mask, what in problems:
        if mask.any():
            k = int(np.argmax(mask))
            row = int(np.searchsorted(block.indptr, k, side="right") - 1)
            col = int(block.indices[k])
            raise ScfmInputError(
                path,
                field,
                f"{what} {d[k].item()!r} at cell {obs_names[row0 + row]!r} (row {row0 + row}), "
                f"gene {var_names[col]!r}",
                "raw integer counts >= 0 (normalised or corrupted data cannot be used as counts)",
            )


def harmonise_obs(
    src_obs: pd.DataFrame,
    *,
    dataset: str,
    obs_map: dict[str, str],
    obs_values: dict[str, str],
    obs_keep: list[str],
) -> pd.DataFrame:
    """The harmonised obs columns (OBS_KEYS) from a source table, constants and defaults."""
    obs = pd.DataFrame(index=src_obs.index)
    for key in OBS_KEYS:
        if key in obs_values:
            obs[key] = pd.Categorical(pd.Series(obs_values[key], index=obs.index).astype(str))
        elif key in obs_map:
            # a cell whose value is missing stays missing (NaN, not a category): a label
            # "unknown" would be scored as a cell type by the benchmark
            obs[key] = strings_keep_missing(src_obs[obs_map[key]])
        elif key in ("dataset", "batch"):
            obs[key] = pd.Categorical(pd.Series(dataset, index=obs.index))
        else:  # not provided by the source at all
            obs[key] = pd.Categorical(pd.Series(UNKNOWN, index=obs.index))
    for col in obs_keep:
        if col in OBS_KEYS:
            continue
        values = src_obs[col]
        obs[col] = strings_keep_missing(values) if values.dtype == object else values
    return obs


def strings_keep_missing(values: pd.Series, also: list[str] | None = None) -> pd.Categorical:
    """Values as categorical strings; NaN/None, "", "nan" (and ``also``) stay missing (NaN)."""
    text = values.astype(str)
    missing = values.isna().to_numpy() | text.isin(["", "nan", *(also or [])]).to_numpy()
    return pd.Categorical(text.where(~missing))


def _source_obs(
    reader: Any, columns: list[str], obs_table: pd.DataFrame | None, *, path: Path
) -> tuple[pd.DataFrame, np.ndarray]:
    """Requested obs columns for one matrix and the mask of cells that have metadata."""
    in_file = [c for c in columns if obs_table is None or c not in obs_table.columns]
    missing = [c for c in in_file if c not in reader.obs_columns]
    if missing:
        where = " or the obs table" if obs_table is not None else ""
        raise ScfmInputError(
            path,
            f"obs/{missing[0]}",
            "column named in obs_map/obs_keep not found",
            f"one of the obs columns{where}: {sorted(reader.obs_columns)}",
        )
    obs = reader.read_obs(in_file) if in_file else pd.DataFrame(index=reader.obs_names)
    obs.index = reader.obs_names
    mask = np.ones(len(obs), bool)
    if obs_table is not None:
        mask = obs.index.isin(obs_table.index)
        joined = obs_table.reindex(obs.index[mask])
        obs = pd.concat([obs[mask], joined[[c for c in columns if c in obs_table.columns]]], axis=1)
    return obs, mask


def standardize(
    manifest: str | Path,
    out: str | Path,
    *,
    dataset: str,
    cfg: dict[str, Any],
    gene_table: str | Path | None = None,
    chunk_cells: int = default("io.chunk_cells"),
    compression: str = default("io.compression"),
) -> dict[str, Any]:
    """Write the standard h5ad for one dataset from its raw manifest.

    Parameters
    ----------
    manifest
        ``resources/raw/<dataset>/manifest.json`` from :func:`scfm.io.sources.fetch_dataset`.
    out
        Output h5ad; written atomically.
    dataset
        Dataset name (becomes ``obs.dataset`` and the default ``obs.batch``).
    cfg
        The validated ``datasets.<name>`` config block.
    gene_table
        Gene table TSV for the dataset's organism (needed to map symbols).
    chunk_cells, compression
        Streaming chunk and HDF5 compression of the output.

    Returns
    -------
    dict
        The provenance record stored in ``uns['scfm']['standardize']``.
    """
    man = read_manifest(manifest)
    inputs = {"manifest": manifest, "gene_table": gene_table}
    inputs |= {f"matrices[{i}]": m["path"] for i, m in enumerate(man["matrices"])}
    inputs["obs_table"] = (man.get("obs_table") or {}).get("path")
    check_outputs_not_inputs({"output": out}, inputs)
    settings = settings_with_defaults(cfg, man.get("defaults") or {})
    table = read_gene_table(gene_table) if gene_table else None
    columns = list(dict.fromkeys([*settings["obs_map"].values(), *settings["obs_keep"]]))
    obs_table = None
    if man.get("obs_table"):
        # Only the key and the columns this config uses: an atlas' full table is several GB.
        key = man["obs_table"]["key"]
        available = set(pq.read_schema(man["obs_table"]["path"]).names)
        wanted = [key, *[c for c in columns if c in available and c != key]]
        obs_table = pd.read_parquet(man["obs_table"]["path"], columns=wanted)
        obs_table = obs_table.set_index(obs_table.pop(key).astype(str))

    readers = [
        open_counts(m["path"], man["format"], counts=cfg.get("counts", "auto"))
        for m in man["matrices"]
    ]
    try:
        first = readers[0]
        for r in readers[1:]:
            if not r.var.index.equals(first.var.index):
                raise ScfmInputError(
                    r.path,
                    "var",
                    f"genes differ from the first matrix {first.path}",
                    "the same genes in every matrix of a dataset",
                )
        keep, var, gene_report = map_genes(
            first.var,
            path=first.path,
            field="raw/var" if first.field == "raw" else "var",
            gene_table=table,
            **settings["genes"],
        )
        obs_parts, masks = [], []
        for r in readers:
            o, mask = _source_obs(r, columns, obs_table, path=r.path)
            obs_parts.append(o)
            masks.append(mask)
        src_obs = pd.concat(obs_parts) if len(obs_parts) > 1 else obs_parts[0]
        n_no_meta = int(sum((~m).sum() for m in masks))
        if n_no_meta:
            log.warning(
                "%s: %d cell(s) have no row in the obs table and are dropped", dataset, n_no_meta
            )
        obs = harmonise_obs(
            src_obs,
            dataset=dataset,
            obs_map=settings["obs_map"],
            obs_values=cfg.get("obs_values", {}),
            obs_keep=settings["obs_keep"],
        )
        if obs.index.has_duplicates:
            n_dup = int(obs.index.duplicated().sum())
            log.warning(
                "%s: %d duplicated cell name(s), e.g. %s: suffixes -1, -2, ... added",
                dataset,
                n_dup,
                [str(c) for c in obs.index[obs.index.duplicated()][:3]],
            )
            obs.index = pd.Index(_unique(obs.index))
        if len(obs) == 0 or len(var) == 0:
            raise ScfmInputError(
                first.path,
                "X",
                f"empty matrix ({len(obs)} cells x {len(var)} genes)",
                "at least one cell and one gene",
            )
        prov = {
            "stage": "standardize",
            "dataset": dataset,
            "source": man["source"],
            "created": created(),
            "inputs": man["matrices"],
            "counts_field": [r.field for r in readers],
            "genes": gene_report,
            "obs_map": settings["obs_map"],
            "cells_without_metadata": n_no_meta,
            "config": cfg,
            "source_info": man.get("source_info", {}),
            "versions": versions("anndata", "numpy", "scipy", "h5py"),
        }
        prov = redact(prov)  # no URL credentials in the provenance
        uns = {"scfm": {"standardize": json.dumps(prov, default=str)}}
        _stream(
            readers,
            masks,
            keep,
            var,
            obs,
            uns,
            out,
            chunk_cells=chunk_cells,
            compression=compression,
        )
    finally:
        for r in readers:
            r.close()
    log.info("%s: standardized %d cells x %d genes -> %s", dataset, len(obs), len(var), out)
    return prov


def _unique(index: pd.Index) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in index:
        k = seen.get(name, 0)
        out.append(name if k == 0 else f"{name}-{k}")
        seen[name] = k + 1
    return out


def _stream(
    readers: list[Any],
    masks: list[np.ndarray],
    keep: np.ndarray,
    var: pd.DataFrame,
    obs: pd.DataFrame,
    uns: dict[str, Any],
    out: str | Path,
    *,
    chunk_cells: int,
    compression: str,
) -> None:
    all_cols = all(len(keep) == r.var.shape[0] for r in readers[:1])
    bar = tqdm(total=len(obs), unit="cells", desc="standardize", disable=not sys.stderr.isatty())
    with (
        atomic_path(out, suffix=".tmp.h5ad") as tmp,
        CsrH5adWriter(tmp, obs=obs, var=var, uns=uns, compression=compression) as writer,
    ):
        for reader, mask in zip(readers, masks, strict=True):
            src_vars = reader.var.index
            for row0, block in reader.iter_chunks(chunk_cells):
                check_counts(
                    block,
                    path=reader.path,
                    field=reader.field,
                    row0=row0,
                    obs_names=reader.obs_names,
                    var_names=src_vars,
                )
                sel = mask[row0 : row0 + block.shape[0]]
                if not sel.all():
                    block = block[sel]
                if not all_cols:
                    block = block[:, keep]
                writer.append(block.astype(np.int32))
                bar.update(int(sel.sum()))
    bar.close()
