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
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from scfm import __version__
from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError
from scfm.io.h5ad import CsrH5adWriter, MatrixReader, provenance, read_dataframe
from scfm.paths import check_outputs_not_inputs
from scfm.provenance import created

log = logging.getLogger(__name__)

MITO_PREFIX = {"human": "MT-", "mouse": "mt-"}
RIBO_PREFIX = {"human": ("RPS", "RPL"), "mouse": ("Rps", "Rpl")}
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
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Decide which cells pass; returns the keep mask and one row per reason.

    Each removed cell is attributed to the first reason it fails in the listed order
    (``n_removed``), while ``n_failed`` counts every cell failing that reason.
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
    return keep, rows


def doublet_scores(path: str | Path, batches: np.ndarray, *, seed: int = 0) -> pd.DataFrame:
    """Scrublet doublet scores per batch (scanpy.pp.scrublet); rows in file order."""
    import scanpy as sc

    score = np.full(len(batches), np.nan)
    called = np.zeros(len(batches), bool)
    with MatrixReader(path) as reader:
        for b in pd.unique(batches):
            idx = np.flatnonzero(batches == b)
            if idx.size < 30:  # scrublet's kNN needs a minimum of cells; too few to judge
                log.warning("batch %s has %d cells: no doublet scores", b, idx.size)
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
    chunk_cells: int = 20000,
    compression: str = "gzip",
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
        d = doublet_scores(path, batches)
        d.index = obs.index
        metrics = metrics.join(d)
    keep, rows = filter_cells(metrics, batches, params)
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
    table = pd.DataFrame(
        rows, columns=["step", "reason", "threshold", "n_failed", "n_removed", "n_remaining"]
    )
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
        "versions": {"scfm": __version__, **{p: version(p) for p in ("scanpy", "anndata")}},
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

    plot_qc(metrics, keep, params, figure, title=str(table["dataset"].iloc[0]))
    log.info(
        "%s: kept %d/%d cells, %d/%d genes",
        path.name,
        keep.sum(),
        len(keep),
        gene_keep.sum(),
        len(gene_keep),
    )
    return table


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
