"""The per-evaluation-set summary and its results figure, for any combination of metrics."""

from __future__ import annotations

import matplotlib.image as mpimg
import pandas as pd
import pytest

from scfm.bench.jobs import summary_job
from scfm.bench.plots import MASKED


def _table(path, rows):
    pd.DataFrame(rows, columns=["method", "type", "metric", "value"]).to_csv(
        path, sep="\t", index=False
    )
    return path


@pytest.mark.parametrize("with_scores", [False, True])
def test_summary_with_masked_metrics_alone_or_beside_scores(tmp_path, with_scores):
    """``metrics: [masked]`` alone once crashed the figure (no score column to sort by)."""
    tables = [
        _table(
            tmp_path / "masked.tsv",
            [
                ["run_a", MASKED, "masked loss", 2.1],
                ["run_a", MASKED, "uniform loss", 4.6],
                ["run_b", MASKED, "masked loss", 2.4],
                ["run_b", MASKED, "uniform loss", 4.6],
            ],
        )
    ]
    if with_scores:
        tables.append(
            _table(
                tmp_path / "scib.tsv",
                [
                    ["run_a", "Bio conservation", "Silhouette label", 0.6],
                    ["pca", "Bio conservation", "Silhouette label", 0.55],
                ],
            )
        )
    png = tmp_path / "results_table.png"
    long = summary_job(tables, tmp_path / "summary.tsv", tmp_path / "wide.tsv", png, evalset="e1")
    assert len(long) == 4 + 2 * with_scores
    wide = pd.read_csv(tmp_path / "wide.tsv", sep="\t").set_index("method")
    assert wide.loc["run_b", "masked loss"] == pytest.approx(2.4)
    image = mpimg.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 400
