"""Source ``cellxgene_census``: cells selected by an obs filter from a pinned CELLxGENE Census.

The query's obs (a few columns) and its cell ids are read first; the counts are then fetched
``chunk_cells`` cells at a time and appended to a CSR h5ad, so memory is bounded by the chunk
size however many million cells the filter selects.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from scfm.atomic import atomic_path
from scfm.io.h5ad import CsrH5adWriter
from scfm.io.sources.cellxgene import DEFAULTS as CELLXGENE_DEFAULTS

if TYPE_CHECKING:
    import tiledbsoma

log = logging.getLogger(__name__)

# config organism -> (Census organism label, experiment name under census_data)
ORGANISMS = {
    "human": ("Homo sapiens", "homo_sapiens"),
    "mouse": ("Mus musculus", "mus_musculus"),
}

# obs columns carried into the h5ad (those the Census has); the rest of the ~30 Census obs
# columns are left behind to keep the file and the obs read small.
OBS_COLUMNS = (
    "soma_joinid",
    "dataset_id",
    "assay",
    "cell_type",
    "cell_type_ontology_term_id",
    "tissue",
    "tissue_general",
    "disease",
    "donor_id",
    "sex",
    "development_stage",
    "suspension_type",
    "is_primary_data",
)

# The CELLxGENE schema conventions, plus batch = the dataset each cell came from.
DEFAULTS = {
    **CELLXGENE_DEFAULTS,
    "obs_map": {**CELLXGENE_DEFAULTS["obs_map"], "batch": "dataset_id"},
}

OUTPUT_NAME = "census.h5ad"


def value_filter(cfg: dict[str, Any]) -> str:
    """The SOMA obs value filter for ``cfg``: ``obs_filter``, AND-ed with primary data if asked.

    Parameters
    ----------
    cfg
        A validated ``cellxgene_census`` dataset config.

    Returns
    -------
    str
        The filter passed to the Census query.
    """
    text = cfg["obs_filter"].strip()
    if cfg.get("primary_only", True):
        # Parenthesised so that an `or` in the user's filter cannot escape the primary clause.
        return f"({text}) and is_primary_data == True"
    return text


def fetch(name: str, cfg: dict[str, Any], outdir: Path, *, chunk_cells: int) -> dict[str, Any]:
    """Query the Census and write the selected cells' raw counts to ``outdir/census.h5ad``.

    Parameters
    ----------
    name
        Dataset name (used in messages).
    cfg
        Validated dataset config: ``census_version``, ``census_uri``, ``obs_filter``,
        ``primary_only``, ``organism``.
    outdir
        Directory for the h5ad.
    chunk_cells
        Cells fetched from the Census per request.

    Returns
    -------
    dict
        The raw manifest fragment (see :mod:`scfm.io.sources`).

    Raises
    ------
    ValueError
        If the filter selects no cells, or the Census has no experiment for the organism.
    """
    if chunk_cells < 1:
        raise ValueError(f"chunk_cells must be >= 1; got {chunk_cells}")
    filt = value_filter(cfg)
    label, exp_name = ORGANISMS[cfg.get("organism", "human")]
    version = cfg["census_version"]
    uri = cfg.get("census_uri")
    dest = Path(outdir) / OUTPUT_NAME
    with _open_census(version, uri) as census:
        exp = _experiment(census, exp_name, name)
        log.info(
            "dataset %s: querying Census %s (%s) with filter %s",
            name,
            version,
            uri or "public release",
            filt,
        )
        obs = _query_obs(exp, filt, name)
        if obs.empty:
            raise ValueError(
                f"datasets.{name}: no cells in Census {version} ({label}) match the filter "
                f"{filt!r}; expected at least one (check obs_filter values and quoting)"
            )
        var, var_joinids = _read_var(exp)
        log.info(
            "dataset %s: %d cells x %d genes; fetching in chunks of %d",
            name,
            len(obs),
            len(var),
            chunk_cells,
        )
        with atomic_path(dest) as tmp:
            _write_counts(census, label, obs, var, var_joinids, tmp, chunk_cells=chunk_cells)
    size = dest.stat().st_size
    log.info("dataset %s: wrote %s (%d bytes)", name, dest, size)
    return {
        "format": "h5ad",
        "matrices": [
            {"path": str(dest), "url": uri or f"census:{version}", "sha256": None, "size": size}
        ],
        "defaults": DEFAULTS,
        "source_info": {
            "census_version": version,
            "census_uri": uri,
            "organism": label,
            "value_filter": filt,
            "n_cells": len(obs),
            "n_genes": len(var),
        },
    }


def _open_census(version: str, uri: str | None) -> tiledbsoma.Collection:
    import cellxgene_census  # heavy (tiledbsoma); only Census jobs pay for the import

    if uri is not None:
        # A local/mirrored store: open_soma(uri=...) makes no release-directory request.
        return cellxgene_census.open_soma(uri=str(uri))
    return cellxgene_census.open_soma(census_version=version)


def _experiment(census: tiledbsoma.Collection, exp_name: str, name: str) -> Any:
    data = census["census_data"]
    if exp_name not in data:
        raise ValueError(
            f"datasets.{name}: the Census at {census.uri} has no experiment {exp_name!r}; "
            f"expected one of {sorted(data.keys())}"
        )
    return data[exp_name]


def _query_obs(exp: Any, filt: str, name: str) -> pd.DataFrame:
    """Obs of the cells matching ``filt`` (selected columns), sorted by soma_joinid."""
    import tiledbsoma

    names = set(exp.obs.schema.names)
    columns = [c for c in OBS_COLUMNS if c in names]
    frames = []
    try:
        # Streamed in batches: a filter over the whole Census touches tens of millions of rows.
        for batch in exp.obs.read(column_names=columns, value_filter=filt):
            frames.append(batch.to_pandas())
    except (tiledbsoma.SOMAError, ValueError) as exc:
        # SOMAError text carries a C++ back-trace after its first line; keep the message only.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"datasets.{name}: Census obs filter {filt!r} cannot be evaluated ({reason}); "
            f"expected a SOMA value filter over the obs columns {sorted(names)}"
        ) from exc
    obs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    obs = obs[columns].sort_values("soma_joinid", kind="stable").reset_index(drop=True)
    obs.index = pd.Index(obs["soma_joinid"].astype(str).to_numpy(), name=None)
    return _h5ad_safe(obs)


def _h5ad_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Make string columns categorical: compact on disk and always writable by anndata."""
    for col in df.columns:
        if df[col].dtype == object or isinstance(df[col].dtype, pd.StringDtype):
            df[col] = df[col].astype("category")
    return df


def _read_var(exp: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """Genes in soma_joinid order (the column order of get_anndata's X), and their joinids."""
    names = set(exp.ms["RNA"].var.schema.names)
    if "feature_id" not in names:
        raise ValueError(f"{exp.uri}: ms/RNA/var has no feature_id column; expected Ensembl ids")
    columns = [c for c in ("soma_joinid", "feature_id", "feature_name") if c in names]
    var = exp.ms["RNA"].var.read(column_names=columns).concat().to_pandas()
    var = var.sort_values("soma_joinid", kind="stable")
    out = pd.DataFrame(index=pd.Index(var["feature_id"].astype(str).to_numpy(), name=None))
    if "feature_name" in var:
        out["feature_name"] = var["feature_name"].astype(str).to_numpy()
    return out, var["soma_joinid"].to_numpy(dtype=np.int64)


def _chunks(joinids: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(joinids), size):
        yield joinids[start : start + size]


def _write_counts(
    census: tiledbsoma.Collection,
    label: str,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    var_joinids: np.ndarray,
    path: Path,
    *,
    chunk_cells: int,
) -> None:
    """Fetch X["raw"] for ``obs`` chunk by chunk and stream it into a CSR h5ad at ``path``."""
    joinids = obs["soma_joinid"].to_numpy(dtype=np.int64)
    bar = tqdm(
        total=len(joinids),
        unit="cells",
        desc="census",
        disable=not sys.stderr.isatty(),
        leave=False,
    )
    with bar, CsrH5adWriter(path, obs=obs, var=var, dtype=np.float32) as writer:
        for chunk in _chunks(joinids, chunk_cells):
            writer.append(_fetch_chunk(census, label, chunk, var_joinids))
            bar.update(len(chunk))


def _fetch_chunk(
    census: tiledbsoma.Collection, label: str, chunk: np.ndarray, var_joinids: np.ndarray
) -> sp.csr_matrix:
    import cellxgene_census

    with warnings.catch_warnings():
        # anndata notes that it turns the integer joinid index into strings; harmless here.
        warnings.filterwarnings("ignore", message="Transforming to str index")
        adata = cellxgene_census.get_anndata(
            census,
            label,
            X_name="raw",
            obs_coords=chunk,
            obs_column_names=["soma_joinid"],
            var_column_names=["soma_joinid"],
        )
    # get_anndata returns cells in soma_joinid order whatever the coords order; anything else
    # (a missing cell, a different gene axis) would silently misalign counts and metadata.
    got = adata.obs["soma_joinid"].to_numpy(dtype=np.int64)
    if not np.array_equal(got, chunk):
        raise RuntimeError(
            f"Census returned cells {got[:5].tolist()}... for requested joinids "
            f"{chunk[:5].tolist()}... ({len(got)} vs {len(chunk)} cells); expected the same "
            "cells in soma_joinid order"
        )
    got_var = adata.var["soma_joinid"].to_numpy(dtype=np.int64)
    if not np.array_equal(got_var, var_joinids):
        raise RuntimeError(
            "Census returned genes in an unexpected order; expected soma_joinid order"
        )
    return sp.csr_matrix(adata.X, dtype=np.float32)
