"""Runs next to their trivial predictors: the table and figure an experiment is read from."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scfm.errors import ScfmInputError
from scfm.train.summary import plateau_step, summarise_runs

LN100 = math.log(100)


def _metrics(path, val_losses, *, objective="ce", uniform=LN100, marginal=3.0, per_gene=2.5):
    rows = []
    for i, loss in enumerate(val_losses):
        step = 100 * (i + 1)
        rows.append(
            {"step": step, "split": "train", "objective": objective, "loss": loss + 0.1,
             "trivial_uniform": uniform, "trivial_marginal": marginal + 0.2,
             "trivial_per_gene": per_gene + 0.2, "trivial_majority_acc": 0.3}
        )  # fmt: skip
        rows.append(
            {"step": step, "split": "val", "objective": objective, "loss": loss,
             "trivial_uniform": uniform, "trivial_marginal": marginal,
             "trivial_per_gene": per_gene, "trivial_majority_acc": 0.3}
        )  # fmt: skip
        rows.append({"step": step, "split": "train", "objective": "total", "loss": loss})
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def test_plateau_step_is_where_improvement_stops():
    steps = np.array([1, 2, 3, 4, 5, 6])
    assert plateau_step(steps, np.array([5.0, 4.0, 3.0, 2.99, 2.995, 2.98])) == 3
    assert plateau_step(steps, np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])) == 6
    assert plateau_step(steps, np.array([5.0, 5.0, 5.0, 5.0, 5.0, 5.0])) == 1


def test_stalled_ce_run_beats_only_uniform(tmp_path):
    # the published failure's shape: below ln 100, above the marginal and per-gene predictors
    stalled = _metrics(tmp_path / "ce.tsv", [4.4, 3.9, 3.6, 3.6, 3.59, 3.6])
    learned = _metrics(tmp_path / "ord.tsv", [4.0, 3.0, 2.4, 2.2, 2.1, 2.0], objective="ordinal")
    table = summarise_runs(
        {"ce_counts": stalled, "ordinal_counts": learned}, tmp_path / "s.tsv", tmp_path / "s.png"
    )
    ce = table.set_index("run").loc["ce_counts"]
    assert ce["split"] == "val" and ce["best_loss"] == 3.59 and ce["best_step"] == 500
    assert ce["plateau_step"] == 300 and ce["last_step"] == 600
    assert ce["trivial_uniform"] == pytest.approx(math.log(100))
    assert ce["beats"] == "uniform" and ce["best_trivial"] == "per_gene"
    assert ce["ratio"] == pytest.approx(3.59 / 2.5)
    good = table.set_index("run").loc["ordinal_counts"]
    assert good["beats"] == "uniform,marginal,per_gene" and good["ratio"] < 1
    assert "trivial_majority_acc" not in table.columns  # accuracies are not losses
    back = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert list(back["run"]) == ["ce_counts", "ordinal_counts"]
    assert (tmp_path / "s.png").stat().st_size > 5_000


def test_a_run_that_beats_nothing_is_logged(tmp_path, caplog):
    worse = _metrics(tmp_path / "m.tsv", [5.0, 4.9, 4.8])
    summarise_runs({"r": worse}, tmp_path / "s.tsv", tmp_path / "s.png")
    assert "run r, objective ce: best val loss 4.8000 beats no trivial predictor" in caplog.text


def test_metrics_without_loss_column_is_named(tmp_path):
    bad = tmp_path / "metrics.tsv"
    pd.DataFrame({"step": [1], "split": ["val"], "objective": ["ce"]}).to_csv(bad, sep="\t")
    with pytest.raises(ScfmInputError, match=r"metrics.tsv: loss: column missing"):
        summarise_runs({"r": bad}, tmp_path / "s.tsv", tmp_path / "s.png")
    assert not (tmp_path / "s.tsv").exists()
