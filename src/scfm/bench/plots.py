"""Benchmark figures: UMAP per method, and the scib-style results table of an evaluation set."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc

from scfm.atomic import atomic_path

#: Column groups of the results table, in display order; aggregate scores come last as bars.
GROUP_ORDER = ["Bio conservation", "Batch correction", "scGraph", "Annotation"]


def umap_figure(
    embedding: np.ndarray,
    labels: np.ndarray,
    batches: np.ndarray,
    out_png: str | Path,
    *,
    title: str,
    seed: int = 0,
    n_neighbors: int = 15,
) -> None:
    """UMAP (scanpy) of one embedding, coloured by cell type and by batch, side by side."""
    adata = ad.AnnData(
        obs=pd.DataFrame(
            {
                "cell type": pd.Categorical(np.asarray(labels, dtype=str)),
                "batch": pd.Categorical(np.asarray(batches, dtype=str)),
            },
            index=[str(i) for i in range(len(labels))],
        ),
        obsm={"X_emb": np.asarray(embedding, dtype=np.float32)},
    )
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, column in zip(axes, ["cell type", "batch"], strict=True):
        sc.pl.umap(
            adata,
            color=column,
            ax=ax,
            show=False,
            frameon=False,
            size=max(120000 / adata.n_obs, 2),
            title=f"{title}: {column}",
        )
    fig.tight_layout()
    _save(fig, out_png)


def results_table_figure(long: pd.DataFrame, out_png: str | Path, *, title: str = "") -> None:
    """The results table of one evaluation set: methods x metrics, grouped by metric type.

    Drawn with plottable (the table library scib-metrics uses for its own figure): circles for
    individual metrics coloured within each column, bars for the aggregate scores, methods
    sorted by the scib total when there is one. ``long`` has columns method, type, metric, value.
    """
    from plottable import ColumnDefinition, Table
    from plottable.cmap import normed_cmap
    from plottable.plots import bar

    # masked-prediction losses are read against each run's trivial predictors, not across
    # methods (lower is better, and baselines have none): they stay in the summary table
    long = long[long["type"] != "Masked prediction"]
    types = long.drop_duplicates("metric").set_index("metric")["type"]
    wide = long.pivot_table(index="method", columns="metric", values="value", aggfunc="first")
    order = [
        m
        for group in [*GROUP_ORDER, "Aggregate score"]
        for m in types.index[types == group]
        if m in wide.columns
    ]
    order += [m for m in wide.columns if m not in order]
    wide = wide[order]
    sort_by = "Total" if "Total" in wide.columns else order[0]
    wide = wide.sort_values(sort_by, ascending=False, na_position="last")
    wide.insert(0, "Method", wide.index)
    definitions = [
        ColumnDefinition("Method", width=1.6, textprops={"ha": "left", "weight": "bold"})
    ]
    for i, col in enumerate(order):
        group = types.get(col, "")
        values = wide[col].astype(float)
        finite = values[np.isfinite(values)]
        if group == "Aggregate score":
            definitions.append(
                ColumnDefinition(
                    col,
                    title=col.replace(" ", "\n", 1),
                    width=1.1,
                    plot_fn=bar,
                    plot_kw={
                        "cmap": matplotlib.cm.YlGnBu,
                        "plot_bg_bar": False,
                        "annotate": True,
                        "height": 0.9,
                        "formatter": "{:.2f}",
                    },
                    group=group,
                    border="left" if i and types.get(order[i - 1]) != group else None,
                )
            )
        else:
            definitions.append(
                ColumnDefinition(
                    col,
                    title=col.replace(" ", "\n", 1),
                    width=1.0,
                    textprops={"ha": "center", "bbox": {"boxstyle": "circle", "pad": 0.25}},
                    cmap=normed_cmap(
                        finite if len(finite) else values.fillna(0),
                        cmap=matplotlib.cm.PRGn,
                        num_stds=2.5,
                    ),
                    group=group,
                    formatter="{:.2f}",
                )
            )
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig, ax = plt.subplots(
            figsize=(max(8, 1.05 * len(wide.columns) + 1), 2.6 + 0.45 * len(wide))
        )
        Table(
            wide.fillna(np.nan),
            column_definitions=definitions,
            ax=ax,
            row_dividers=True,
            footer_divider=True,
            textprops={"fontsize": 9, "ha": "center"},
            row_divider_kw={"linewidth": 1, "linestyle": (0, (1, 5))},
            col_label_divider_kw={"linewidth": 1, "linestyle": "-"},
            column_border_kw={"linewidth": 1, "linestyle": "-"},
            index_col="Method",
        ).autoset_fontcolors(colnames=order)
        if title:
            ax.set_title(title, fontsize=12, loc="left", pad=18)
    _save(fig, out_png)


def _save(fig: plt.Figure, out_png: str | Path) -> None:
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
