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


#: The negative control: an aggregate on which it ranks at or above a real method is marked.
NEGATIVE_CONTROL = "random"
MASKED = "Masked prediction"


def gamed_aggregates(wide: pd.DataFrame, types: pd.Series) -> dict[str, list[str]]:
    """Aggregate scores on which the negative control ranks at or above real methods.

    Returns ``{aggregate column: [methods scoring at or below random]}`` for every column of
    type ``Aggregate score`` where that list is not empty (higher is better).
    """
    out: dict[str, list[str]] = {}
    if NEGATIVE_CONTROL not in wide.index:
        return out
    for col in wide.columns:
        if types.get(col) != "Aggregate score":
            continue
        control = wide.loc[NEGATIVE_CONTROL, col]
        if not np.isfinite(control):
            continue
        others = wide[col].drop(NEGATIVE_CONTROL)
        beaten = [str(m) for m, v in others.items() if np.isfinite(v) and v <= control]
        if beaten:
            out[col] = beaten
    return out


def results_table_figure(long: pd.DataFrame, out_png: str | Path, *, title: str = "") -> None:
    """The results table of one evaluation set: methods x metrics, grouped by metric type.

    Drawn with plottable (the table library scib-metrics uses for its own figure): circles for
    individual metrics coloured within each column, bars for the aggregate scores, methods
    sorted by the scib total when there is one. ``long`` has columns method, type, metric,
    value, and optionally ``train_overlap_fraction`` (shown as the share of evaluation cells
    each run trained on). Below it: the masked-prediction losses of the trained runs (a second
    panel: they are read against each run's trivial predictors, lower is better, and baselines
    have none), and a footnote under every aggregate on which ``random`` ranks at or above a
    real method (marked with a dagger in its title).
    """
    from plottable import ColumnDefinition, Table
    from plottable.cmap import normed_cmap
    from plottable.plots import bar

    masked = long[long["type"] == MASKED]
    scores = long[long["type"] != MASKED]
    if scores.empty:
        # `metrics: [masked]` alone: there is no score table, only the masked-prediction panel
        _masked_only_figure(masked, out_png, title=title)
        return
    types = scores.drop_duplicates("metric").set_index("metric")["type"]
    wide = scores.pivot_table(index="method", columns="metric", values="value", aggfunc="first")
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
    gamed = gamed_aggregates(wide, types)
    wide.insert(0, "Method", wide.index)
    definitions = [
        ColumnDefinition("Method", width=1.6, textprops={"ha": "left", "weight": "bold"})
    ]
    if "train_overlap_fraction" in long.columns:
        fraction = long.drop_duplicates("method").set_index("method")["train_overlap_fraction"]
        wide.insert(
            1,
            "Trained on",
            [f"{fraction.get(m):.0%}" if pd.notna(fraction.get(m)) else "-" for m in wide.index],
        )
        definitions.append(
            ColumnDefinition(
                "Trained on",
                title="trained on\neval cells",
                width=0.9,
                textprops={"ha": "center", "style": "italic"},
            )
        )
    for i, col in enumerate(order):
        group = types.get(col, "")
        values = wide[col].astype(float)
        finite = values[np.isfinite(values)]
        col_title = col.replace(" ", "\n", 1) + (" \u2020" if col in gamed else "")
        if group == "Aggregate score":
            definitions.append(
                ColumnDefinition(
                    col,
                    title=col_title,
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
                    title=col_title,
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
    masked_wide = masked.pivot_table(
        index="method", columns="metric", values="value", aggfunc="first", sort=False
    )
    notes = [
        f"\u2020 {col}: {NEGATIVE_CONTROL} (the negative control) scores at or above "
        f"{', '.join(beaten)}; this aggregate does not separate these methods from noise here, "
        "read the individual metrics."
        for col, beaten in gamed.items()
    ]
    width = max(8, 1.05 * len(wide.columns) + 1)
    main_h = 2.6 + 0.45 * len(wide)
    masked_h = 1.6 + 0.45 * len(masked_wide) if len(masked_wide) else 0.0
    notes_h = 0.3 * len(notes)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig = plt.figure(figsize=(width, main_h + masked_h + notes_h))
        heights = [main_h + notes_h] + ([masked_h] if masked_h else [])
        grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.35)
        ax = fig.add_subplot(grid[0])
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
        if notes:
            ax.text(
                0,
                -0.02,
                "\n".join(notes),
                transform=ax.transAxes,
                va="top",
                ha="left",
                fontsize=8.5,
                color="#8b0000",
            )
        if masked_h:
            _masked_panel(fig.add_subplot(grid[1]), masked_wide)
    _save(fig, out_png)


def _masked_only_figure(masked: pd.DataFrame, out_png: str | Path, *, title: str) -> None:
    """The results figure of an evaluation set whose only metric is masked prediction."""
    masked_wide = masked.pivot_table(
        index="method", columns="metric", values="value", aggfunc="first", sort=False
    )
    width = max(8, 1.15 * len(masked_wide.columns) + 2)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig, ax = plt.subplots(figsize=(width, 1.6 + 0.45 * max(len(masked_wide), 1)))
        if len(masked_wide):
            _masked_panel(ax, masked_wide)
        else:
            ax.axis("off")
            ax.text(0, 0.5, "no metric values", transform=ax.transAxes, fontsize=10)
        if title:
            fig.suptitle(title, fontsize=12, x=0.02, ha="left")
    _save(fig, out_png)


def _masked_panel(ax: plt.Axes, masked_wide: pd.DataFrame) -> None:
    """The trained runs' masked-prediction losses beside their trivial predictors' losses."""
    from plottable import ColumnDefinition, Table

    table = masked_wide.copy()
    table.insert(0, "Run", table.index)
    definitions = [ColumnDefinition("Run", width=1.6, textprops={"ha": "left", "weight": "bold"})]
    definitions += [
        ColumnDefinition(c, title=c.replace(" ", "\n", 1), width=1.1, formatter="{:.3f}")
        for c in masked_wide.columns
    ]
    Table(
        table,
        column_definitions=definitions,
        ax=ax,
        textprops={"fontsize": 9, "ha": "center"},
        row_divider_kw={"linewidth": 1, "linestyle": (0, (1, 5))},
        col_label_divider_kw={"linewidth": 1, "linestyle": "-"},
        index_col="Run",
    )
    ax.set_title(
        "Masked prediction on the evaluation cells (lower is better; a run should beat the "
        "trivial predictors in its own row)",
        fontsize=10,
        loc="left",
    )


def _save(fig: plt.Figure, out_png: str | Path) -> None:
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
