"""Loss curves of a run, with the trivial predictors drawn in."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from scfm.atomic import atomic_path


def _read(metrics_path: Path) -> list[dict[str, str]]:
    with Path(metrics_path).open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def plot_loss_curves(
    metrics_path: str | Path, out_png: str | Path, *, title: str | None = None
) -> Path:
    """One panel per objective: train and val loss by step, trivial predictors as dashed lines.

    A trivial predictor's line is its mean over the val rows (the val positions are the same at
    every validation, so it is a constant), or over the train rows when there is no val.
    """
    rows = _read(Path(metrics_path))
    objectives = [o for o in dict.fromkeys(r["objective"] for r in rows) if o != "total"]
    objectives = objectives or ["total"]
    # accuracies (`*_acc`) are logged beside the losses but are not losses: not drawn here
    trivial = [
        c
        for c in (rows[0].keys() if rows else [])
        if c.startswith("trivial_") and not c.endswith("_acc")
    ]
    fig, axes = plt.subplots(
        1, len(objectives), figsize=(4.5 * len(objectives), 3.5), squeeze=False
    )
    for ax, objective in zip(axes[0], objectives, strict=True):
        mine = [r for r in rows if r["objective"] == objective]
        for split, style in (("train", "-"), ("val", "o-")):
            pts = [(int(r["step"]), float(r["loss"])) for r in mine if r["split"] == split]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, ms=3, label=split)
        ref = [r for r in mine if r["split"] == "val"] or [r for r in mine if r["split"] == "train"]
        for i, col in enumerate(trivial):
            values = [float(r[col]) for r in ref if r.get(col)]
            if values:
                ax.axhline(
                    sum(values) / len(values),
                    ls="--",
                    lw=1,
                    color=f"C{i + 2}",
                    label=col.removeprefix("trivial_"),
                )
        ax.set_title(objective)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return out_png
