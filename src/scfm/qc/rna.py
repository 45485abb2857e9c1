"""RNA QC in bounded memory: per-cell metrics (scanpy), threshold/MAD filters, gene filter.

Three streaming passes over the standardized h5ad: (1) per-cell metrics with
``scanpy.pp.calculate_qc_metrics`` chunk by chunk; then the cell filters are decided from those
metrics (MAD outliers per batch need the whole distribution); (2) cells per gene among the kept
cells; (3) write the filtered matrix. Optional doublet scores come from scanpy's scrublet, one
batch at a time (each batch is a capture, small enough to hold).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError
from scfm.io.h5ad import CsrH5adWriter, MatrixReader, provenance, read_dataframe
from scfm.paths import check_outputs_not_inputs
from scfm.provenance import created, versions
from scfm.spec import default

log = logging.getLogger(__name__)

MITO_PREFIX = {"human": "MT-", "mouse": "mt-"}
RIBO_PREFIX = {"human": ("RPS", "RPL"), "mouse": ("Rps", "Rpl")}
#: Columns of the metrics TSV (after ``dataset``). Rows with ``step`` = ``warning`` flag a
#: dataset, batch or donor that lost more cells than qc.rna.warn_*_fraction allows (``group``
#: names the batch or donor, ``detail`` the reasons that removed most of its cells).
TABLE_COLUMNS = [
    "step",
    "reason",
    "threshold",
    "n_failed",
    "n_removed",
    "n_remaining",
    "group",
    "detail",
]
# Metric columns written to obs and used for thresholds.
METRICS = ["total_counts", "n_genes_by_counts", "pct_counts_mt", "pct_counts_ribo"]


def gene_flags(symbols: pd.Series, organism: str) -> tuple[np.ndarray, np.ndarray]:
    """Mitochondrial and ribosomal gene masks from symbols (case-insensitive prefixes)."""
    s = symbols.astype(str).str.upper()
    mito = s.str.startswith(MITO_PREFIX[organism].upper()).to_numpy()
    ribo = s.str.startswith(tuple(p.upper() for p in RIBO_PREFIX[organism])).to_numpy()
    return mito, ribo


def cell_metrics(
    path: str | Path, var: pd.DataFrame, *, organism: str, chunk_cells: int
) -> pd.DataFrame:
    """Per-cell QC metrics, computed with scanpy one chunk at a time."""
    import scanpy as sc

    mito, ribo = gene_flags(var["gene_symbol"], organism)
    qvar = pd.DataFrame({"mt": mito, "ribo": ribo}, index=var.index)
    parts = []
    with MatrixReader(path) as reader:
        bar = tqdm(
            total=reader.n_obs, unit="cells", desc="qc metrics", disable=not sys.stderr.isatty()
        )
        for _, block in reader.iter_chunks(chunk_cells):
            chunk = ad.AnnData(block.astype(np.float32), var=qvar)
            m = sc.pp.calculate_qc_metrics(
                chunk, qc_vars=["mt", "ribo"], percent_top=None, log1p=False, inplace=False
            )[0]
            parts.append(m[METRICS].to_numpy())
            bar.update(block.shape[0])
        bar.close()
    return pd.DataFrame(np.vstack(parts) if parts else np.zeros((0, 4)), columns=METRICS)


def mad_outliers(
    values: np.ndarray, groups: np.ndarray, n_mads: float, *, upper_only: bool = False
) -> np.ndarray:
    """True where a value lies more than ``n_mads`` MADs from its group's median."""
    out = np.zeros(len(values), bool)
    if n_mads <= 0:
        return out
    for g in np.unique(groups):
        sel = groups == g
        v = values[sel]
        med = np.median(v)
        mad = np.median(np.abs(v - med))
        if mad == 0:
            continue
        dev = (v - med) / mad
        out[sel] = dev > n_mads if upper_only else np.abs(dev) > n_mads
    return out


def filter_cells(
    metrics: pd.DataFrame, batches: np.ndarray, params: dict[str, Any]
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """Decide which cells pass; returns the keep mask, one row per reason, and each cell's reason.

    Each removed cell is attributed to the first reason it fails in the listed order
    (``n_removed``, and the third return value: that reason per cell, ``""`` for kept cells),
    while ``n_failed`` counts every cell failing that reason.
    """
    p = params
    total = metrics["total_counts"].to_numpy()
    genes = metrics["n_genes_by_counts"].to_numpy()
    mito = metrics["pct_counts_mt"].to_numpy()
    n_mads = p.get("mad_outliers", 0) or 0
    rules: list[tuple[str, Any, np.ndarray]] = [
        ("min_genes", p.get("min_genes"), genes < (p.get("min_genes") or 0)),
        (
            "max_genes",
            p.get("max_genes"),
            genes > p["max_genes"] if p.get("max_genes") is not None else None,
        ),
        ("min_counts", p.get("min_counts"), total < (p.get("min_counts") or 0)),
        (
            "max_counts",
            p.get("max_counts"),
            total > p["max_counts"] if p.get("max_counts") is not None else None,
        ),
        (
            "max_pct_mito",
            p.get("max_pct_mito"),
            mito > p["max_pct_mito"] if p.get("max_pct_mito") is not None else None,
        ),
        ("mad_log1p_total_counts", n_mads, mad_outliers(np.log1p(total), batches, n_mads)),
        ("mad_log1p_n_genes", n_mads, mad_outliers(np.log1p(genes), batches, n_mads)),
        ("mad_pct_mito", n_mads, mad_outliers(mito, batches, n_mads, upper_only=True)),
    ]
    if "doublet_score" in metrics:
        thr = p.get("max_doublet_score")
        fail = (
            metrics["doublet_score"].to_numpy() > thr
            if thr is not None
            else metrics["predicted_doublet"].to_numpy()
        )
        rules.append(("doublets", thr if thr is not None else "scrublet call", fail))
    keep = np.ones(len(metrics), bool)
    why = np.full(len(metrics), "", dtype=object)
    rows = [
        {
            "step": "cells",
            "reason": "input",
            "threshold": None,
            "n_failed": 0,
            "n_removed": 0,
            "n_remaining": len(keep),
        }
    ]
    for reason, threshold, fail in rules:
        if fail is None:
            continue
        removed = fail & keep
        why[removed] = reason
        keep &= ~fail
        rows.append(
            {
                "step": "cells",
                "reason": reason,
                "threshold": threshold,
                "n_failed": int(fail.sum()),
                "n_removed": int(removed.sum()),
                "n_remaining": int(keep.sum()),
            }
        )
    return keep, rows, why


def qc_warnings(
    obs: pd.DataFrame, keep: np.ndarray, why: np.ndarray, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Losses a user must hear about: rows of the metrics TSV (``step`` = ``warning``).

    A dataset losing more than ``warn_removed_fraction`` of its cells, and every batch or donor
    losing more than ``warn_group_removed_fraction`` of its cells (all of them, at 1.0), give
    one row each, with the reason that removed most of their cells. Each is also logged.
    """
    rows = []
    groups: list[tuple[str, str, np.ndarray]] = [("dataset", "", np.ones(len(keep), bool))]
    for column in ("batch", "donor"):
        if column in obs:
            values = obs[column].astype(str).to_numpy()
            groups += [(column, str(v), values == v) for v in pd.unique(values)]
    for kind, group, sel in groups:
        n, n_kept = int(sel.sum()), int(keep[sel].sum())
        key = "warn_removed_fraction" if kind == "dataset" else "warn_group_removed_fraction"
        limit = params.get(key)
        if limit is None or n == 0:
            continue
        removed = 1 - n_kept / n
        emptied = n_kept == 0
        if removed <= limit and not (kind != "dataset" and emptied):
            continue
        reasons = pd.Series(why[sel & ~keep]).value_counts()
        main = ", ".join(f"{r}: {c}" for r, c in reasons.head(3).items())
        reason = f"{kind}_emptied" if emptied else f"{kind}_removed_fraction"
        rows.append(
            {
                "step": "warning",
                "reason": reason,
                "group": group,
                "threshold": limit,
                "n_failed": n,
                "n_removed": n - n_kept,
                "n_remaining": n_kept,
                "detail": main,
            }
        )
        what = f"{kind} {group}" if group else "the dataset"
        log.warning(
            "QC removed %d of %d cells (%.0f%%) of %s%s (above qc.rna.%s = %g); removed by %s",
            n - n_kept,
            n,
            100 * removed,
            what,
            ": ALL of them" if emptied else "",
            key,
            limit,
            main,
        )
    return rows


#: Batches smaller than this get no doublet scores (``qc.rna.min_doublet_batch_cells``).
MIN_DOUBLET_BATCH_CELLS = 100


def doublet_scores(
    path: str | Path,
    batches: np.ndarray,
    *,
    seed: int = 0,
    min_cells: int = MIN_DOUBLET_BATCH_CELLS,
) -> pd.DataFrame:
    """Scrublet doublet scores per batch (scanpy.pp.scrublet); rows in file order.

    Batches with fewer than ``min_cells`` cells are skipped (NaN score, not called) and logged:
    scrublet calls doublets above a threshold it fits to the histogram of its simulated
    doublets' scores, and a few dozen cells cannot shape that histogram (on real data it
    called every one of a 32-cell batch's cells a doublet). At a 5-10% doublet rate such a
    batch holds a handful of doublets at most.
    """
    import scanpy as sc

    score = np.full(len(batches), np.nan)
    called = np.zeros(len(batches), bool)
    with MatrixReader(path) as reader:
        for b in pd.unique(batches):
            idx = np.flatnonzero(batches == b)
            if idx.size < min_cells:
                log.info(
                    "batch %s has %d cells, fewer than qc.rna.min_doublet_batch_cells = %d: "
                    "doublet detection skipped for it (scrublet's automatic threshold is fitted "
                    "to a histogram of simulated doublets that so few cells cannot shape; "
                    "its calls on small batches are unreliable)",
                    b,
                    idx.size,
                    min_cells,
                )
                continue
            block = reader.read_index(idx)
            sub = ad.AnnData(block.astype(np.float32))
            sc.pp.scrublet(sub, random_state=seed, verbose=False)
            score[idx] = sub.obs["doublet_score"].to_numpy()
            called[idx] = sub.obs["predicted_doublet"].to_numpy().astype(bool)
    return pd.DataFrame({"doublet_score": score, "predicted_doublet": called})


def qc_rna(
    path: str | Path,
    out: str | Path,
    metrics_tsv: str | Path,
    figure: str | Path,
    *,
    params: dict[str, Any],
    organism: str = "human",
    chunk_cells: int = default("io.chunk_cells"),
    compression: str = default("io.compression"),
) -> pd.DataFrame:
    """Filter a standardized RNA h5ad; write the filtered h5ad, a metrics TSV and a figure.

    Parameters
    ----------
    path
        Standardized h5ad (integer counts in X).
    out, metrics_tsv, figure
        Filtered h5ad; TSV with one row per filter (``step``, ``reason``, ``threshold``,
        ``n_failed``, ``n_removed``, ``n_remaining``), starting with an ``input`` row per step;
        PNG with the thresholds drawn.
    params
        ``qc.rna`` merged with the dataset's ``qc`` overrides.
    organism
        ``human`` or ``mouse``: the mitochondrial/ribosomal gene prefixes.
    chunk_cells, compression
        Streaming chunk size and HDF5 compression of the output.

    Returns
    -------
    pandas.DataFrame
        The metrics table.
    """
    path = Path(path)
    outputs = {"out": out, "metrics_tsv": metrics_tsv, "figure": figure}
    check_outputs_not_inputs(outputs, {"input": path})
    var = read_dataframe(path, "var")
    obs = read_dataframe(path, "obs")
    if len(obs) == 0:
        raise ScfmInputError(path, "X", "no cells", "a non-empty standardized h5ad")
    metrics = cell_metrics(path, var, organism=organism, chunk_cells=chunk_cells)
    metrics.index = obs.index
    batches = obs["batch"].astype(str).to_numpy()
    if params.get("doublets", "none") == "scrublet":
        d = doublet_scores(
            path,
            batches,
            min_cells=params.get("min_doublet_batch_cells", MIN_DOUBLET_BATCH_CELLS),
        )
        d.index = obs.index
        metrics = metrics.join(d)
    keep, rows, why = filter_cells(metrics, batches, params)
    if not keep.any():
        detail = ", ".join(f"{r['reason']}: {r['n_failed']}" for r in rows if r["n_failed"])
        raise ScfmInputError(
            path,
            "cells",
            f"no cells left after QC ({len(keep)} failed: {detail})",
            "thresholds that keep some cells (check qc.rna / datasets.<name>.qc)",
        )
    gene_keep, n_cells_gene = _gene_filter(
        path, keep, params.get("min_cells_per_gene", 0), chunk_cells
    )
    if not gene_keep.any():
        raise ScfmInputError(
            path, "genes", "no genes left after min_cells_per_gene", "a lower qc min_cells_per_gene"
        )
    n_gene_fail = int((~gene_keep).sum())
    rows += [
        {
            "step": "genes",
            "reason": "input",
            "threshold": None,
            "n_failed": 0,
            "n_removed": 0,
            "n_remaining": len(gene_keep),
        },
        {
            "step": "genes",
            "reason": "min_cells_per_gene",
            "threshold": params.get("min_cells_per_gene"),
            "n_failed": n_gene_fail,
            "n_removed": n_gene_fail,
            "n_remaining": int(gene_keep.sum()),
        },
    ]
    warnings = qc_warnings(obs, keep, why, params)
    table = pd.DataFrame(rows + warnings, columns=TABLE_COLUMNS)
    table.insert(0, "dataset", str(obs["dataset"].iloc[0]) if "dataset" in obs else path.stem)

    new_obs = obs.loc[keep].join(metrics.loc[keep])
    new_var = var.loc[gene_keep].assign(
        n_cells=n_cells_gene[gene_keep], mito=gene_flags(var["gene_symbol"], organism)[0][gene_keep]
    )
    prov = {
        "stage": "qc",
        "created": created(),
        "params": params,
        "organism": organism,
        "input": str(path),
        "summary": table.to_dict(orient="records"),
        "versions": versions("scanpy", "anndata"),
    }
    uns = {
        "scfm": {
            **{k: json.dumps(v) for k, v in provenance(path).items()},
            "qc": json.dumps(prov, default=str),
        }
    }
    _write_filtered(path, out, keep, gene_keep, new_obs, new_var, uns, chunk_cells, compression)
    with atomic_path(metrics_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    from scfm.qc.plots import plot_qc

    plot_qc(
        metrics,
        keep,
        params,
        figure,
        title=str(table["dataset"].iloc[0]),
        warnings=[_warning_text(w) for w in warnings],
    )
    log.info(
        "%s: kept %d/%d cells, %d/%d genes",
        path.name,
        keep.sum(),
        len(keep),
        gene_keep.sum(),
        len(gene_keep),
    )
    return table


def _warning_text(row: dict[str, Any]) -> str:
    what = f"{row['reason'].split('_')[0]} {row['group']}" if row["group"] else "dataset"
    lost = f"{row['n_removed']}/{row['n_failed']} cells removed"
    return f"{what}: {lost} ({row['detail']})"


def _gene_filter(
    path: Path, keep: np.ndarray, min_cells: int, chunk_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    counts = None
    with MatrixReader(path) as reader:
        for row0, block in reader.iter_chunks(chunk_cells):
            sel = keep[row0 : row0 + block.shape[0]]
            b = block[sel]
            c = np.bincount(b.indices[b.data > 0], minlength=block.shape[1])
            counts = c if counts is None else counts + c
    assert counts is not None
    return counts >= (min_cells or 0), counts


def _write_filtered(
    path: Path,
    out: str | Path,
    keep: np.ndarray,
    gene_keep: np.ndarray,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    uns: dict[str, Any],
    chunk_cells: int,
    compression: str,
) -> None:
    cols = np.flatnonzero(gene_keep)
    with (
        atomic_path(out, suffix=".tmp.h5ad") as tmp,
        MatrixReader(path) as reader,
        CsrH5adWriter(tmp, obs=obs, var=var, uns=uns, compression=compression) as writer,
    ):
        for row0, block in reader.iter_chunks(chunk_cells):
            sel = keep[row0 : row0 + block.shape[0]]
            if sel.any():
                writer.append(block[sel][:, cols])
