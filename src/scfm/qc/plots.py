"""QC figures with the thresholds drawn, for the Snakemake report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from scfm.atomic import atomic_path

MAX_POINTS = 50_000


def plot_qc(
    metrics: pd.DataFrame,
    keep: np.ndarray,
    params: dict[str, Any],
    out: str | Path,
    *,
    title: str,
    warnings: list[str] | None = None,
) -> None:
    """Histograms of counts, genes and % mito (kept vs removed) and counts-vs-genes scatter.

    ``warnings`` (lines such as ``batch P07: 32/32 cells removed (doublets: 32)``) are printed in
    red under the title, so that the report shows them next to the figure.
    """
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        (
            "total_counts",
            "total counts per cell",
            params.get("min_counts"),
            params.get("max_counts"),
            True,
        ),
        (
            "n_genes_by_counts",
            "genes detected per cell",
            params.get("min_genes"),
            params.get("max_genes"),
            True,
        ),
        ("pct_counts_mt", "% counts mitochondrial", None, params.get("max_pct_mito"), False),
    ]
    for ax, (col, label, lo, hi, logx) in zip(axes[:3], panels, strict=False):
        v = metrics[col].to_numpy(dtype=float)
        pos = v[v > 0] if logx else v
        bins = (
            np.logspace(np.log10(max(pos.min(), 1)), np.log10(max(pos.max(), 2)), 50)
            if logx and pos.size
            else 50
        )
        ax.hist(
            [v[keep], v[~keep]],
            bins=bins,
            stacked=True,
            color=["#3b75af", "#d62728"],
            label=[f"kept ({keep.sum()})", f"removed ({(~keep).sum()})"],
        )
        for t in (lo, hi):
            if t is not None:
                ax.axvline(t, color="k", ls="--", lw=1)
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("cells")
    axes[0].legend(frameon=False, fontsize=8)
    ax = axes[3]
    # drawing millions of points costs more than the QC itself: plot a seeded sample
    shown = np.arange(len(metrics))
    if len(shown) > MAX_POINTS:
        shown = np.sort(np.random.default_rng(0).choice(len(shown), MAX_POINTS, replace=False))
    m, k = metrics.iloc[shown], keep[shown]
    sc = ax.scatter(
        m["total_counts"],
        m["n_genes_by_counts"],
        c=m["pct_counts_mt"],
        s=3,
        cmap="viridis",
        rasterized=True,
    )
    ax.scatter(
        m.loc[~k, "total_counts"],
        m.loc[~k, "n_genes_by_counts"],
        s=6,
        facecolors="none",
        edgecolors="#d62728",
        lw=0.5,
        label="removed",
        rasterized=True,
    )
    for t in (params.get("min_counts"), params.get("max_counts")):
        if t is not None:
            ax.axvline(t, color="k", ls="--", lw=1)
    for t in (params.get("min_genes"), params.get("max_genes")):
        if t is not None:
            ax.axhline(t, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("total counts")
    ax.set_ylabel("genes detected")
    fig.colorbar(sc, ax=ax, label="% mito")
    fig.suptitle(f"QC: {title} (dashed: thresholds)")
    fig.tight_layout()
    if warnings:
        shown = warnings[:8] + ([f"... and {len(warnings) - 8} more"] if len(warnings) > 8 else [])
        text = "QC WARNING (see the metrics TSV, step 'warning'):\n" + "\n".join(shown)
        height = fig.get_figheight()
        extra = 0.22 * (len(shown) + 1) + 0.2
        fig.set_figheight(height + extra)
        fig.subplots_adjust(bottom=(extra + 0.6) / (height + extra))
        fig.text(0.01, 0.01, text, color="#b00000", fontsize=9, va="bottom", ha="left")
    with atomic_path(out, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
