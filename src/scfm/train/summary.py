"""Every run's loss next to its trivial predictors, in one table and one figure.

The question a lab asks of a pretraining run first is whether it learned anything: a masked
value loss that does not go below the trivial predictors' (uniform = ln K, the train marginal,
each gene's own histogram or mean) means the model predicts no better than a lookup table. The
per-run loss curves (:mod:`scfm.train.plots`) show it for one run; this module puts all runs of
a config side by side, which is how an experiment compares objectives, tokenizers and learning
rates.

Definitions, per (run, objective), from the run's ``metrics.tsv`` validation rows (train rows
when a run has no validation):

- ``final_loss``: the loss at the last logged step; ``best_loss`` / ``best_step``: the minimum.
- ``trivial_<name>``: the trivial predictor's loss, averaged over the same rows (the val
  positions are the same at every validation, so it is a constant up to float noise).
- ``best_trivial``: the lowest of them; ``ratio`` = ``best_loss / best_trivial`` (< 1: the run
  beats every trivial predictor); ``beats``: the predictors whose loss ``best_loss`` is below.
- ``plateau_step``: the first logged step after which the loss never again improves on that
  step's value by more than ``tolerance`` (relative; 1 %): where training stalled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scfm.atomic import atomic_path
from scfm.errors import ScfmInputError

log = logging.getLogger("scfm.train")

#: Trivial-predictor columns that are accuracies, not losses (never compared with a loss).
_NOT_LOSSES = ("_acc",)


def plateau_step(steps: np.ndarray, losses: np.ndarray, *, tolerance: float = 0.01) -> int:
    """The first step after which the loss never improves on its value by > ``tolerance``."""
    later_min = np.minimum.accumulate(losses[::-1])[::-1]  # min over this and later steps
    for i in range(len(losses)):
        rest = later_min[i + 1] if i + 1 < len(losses) else np.inf
        if rest >= losses[i] * (1 - tolerance):
            return int(steps[i])
    return int(steps[-1])


def summarise_run(metrics_tsv: str | Path, run: str, *, tolerance: float = 0.01) -> pd.DataFrame:
    """One row per objective of one run (see the module docstring for the columns)."""
    metrics_tsv = Path(metrics_tsv)
    table = pd.read_csv(metrics_tsv, sep="\t")
    missing = {"step", "split", "objective", "loss"} - set(table.columns)
    if missing:
        raise ScfmInputError(
            metrics_tsv, sorted(missing)[0], "column missing", "a metrics.tsv written by scfm.train"
        )
    trivial = [c for c in table.columns if c.startswith("trivial_") and not c.endswith(_NOT_LOSSES)]
    rows = []
    for objective, mine in table[table["objective"] != "total"].groupby("objective", sort=False):
        split = "val" if (mine["split"] == "val").any() else "train"
        mine = mine[mine["split"] == split].sort_values("step")
        steps, losses = mine["step"].to_numpy(), mine["loss"].to_numpy(dtype=float)
        best = int(np.argmin(losses))
        row = {
            "run": run,
            "objective": objective,
            "split": split,
            "last_step": int(steps[-1]),
            "final_loss": float(losses[-1]),
            "best_loss": float(losses[best]),
            "best_step": int(steps[best]),
            "plateau_step": plateau_step(steps, losses, tolerance=tolerance),
        }
        values = {c.removeprefix("trivial_"): mine[c].mean() for c in trivial}
        values = {k: float(v) for k, v in values.items() if pd.notna(v)}
        row.update({f"trivial_{k}": v for k, v in values.items()})
        if values:
            name, lowest = min(values.items(), key=lambda kv: kv[1])
            row.update(
                best_trivial=name,
                ratio=row["best_loss"] / lowest if lowest > 0 else np.nan,
                beats=",".join(k for k, v in values.items() if row["best_loss"] < v) or "none",
            )
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_runs(
    metrics: Mapping[str, str | Path],
    out_tsv: str | Path,
    out_png: str | Path,
    *,
    tolerance: float = 0.01,
) -> pd.DataFrame:
    """Write the table of every run (``metrics``: run name -> metrics.tsv) and its figure."""
    frames = [summarise_run(path, run, tolerance=tolerance) for run, path in metrics.items()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for _, r in table.iterrows():
        if r.get("beats") == "none":
            log.warning(
                "run %s, objective %s: best %s loss %.4f beats no trivial predictor (lowest: %s)",
                r["run"], r["objective"], r["split"], r["best_loss"], r["best_trivial"],
            )  # fmt: skip
    with atomic_path(out_tsv, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    plot_vs_trivial(table, out_png)
    return table


def plot_vs_trivial(table: pd.DataFrame, out_png: str | Path) -> Path:
    """Best loss / best trivial predictor's loss per run and objective; 1 = no better."""
    scored = table.dropna(subset=["ratio"]) if "ratio" in table else table.iloc[0:0]
    labels = [f"{r.run} · {r.objective}" for r in scored.itertuples()]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.35 * max(1, len(labels))))
    if len(scored):
        ratios = scored["ratio"].to_numpy(dtype=float)
        colors = ["C2" if v < 1 else "C3" for v in ratios]
        ax.barh(np.arange(len(labels)), ratios, color=colors)
        for i, r in enumerate(scored.itertuples()):
            ax.text(
                ratios[i], i, f" {r.best_loss:.3f} vs {r.best_trivial} ", va="center", fontsize=7
            )
        ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1.2, float(ratios.max()) * 1.35))
    else:
        ax.text(
            0.5, 0.5, "no objective with trivial predictors", ha="center", transform=ax.transAxes
        )
        ax.set_yticks([])
    ax.axvline(1.0, color="k", ls="--", lw=1)
    ax.set_xlabel("best loss / best trivial predictor's loss (< 1: the model learned something)")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(out_png)
