"""masked_prediction: the model's own objectives on new data, next to the trivial predictors."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _models import BINNED, N_CELLS

from scfm.data import CorpusLoader, LoaderConfig
from scfm.embed import masked_prediction, open_model_file
from scfm.errors import ScfmInputError
from scfm.models import ValueStats
from scfm.train.net import trivial_row

# training writes its value statistics into model.pt: the trivial predictors' columns carry
# the names of metrics.tsv
TRAINFIT = [
    "trivial_majority_acc",
    "trivial_marginal",
    "trivial_per_gene",
    "trivial_per_gene_mode_acc",
]


def test_rows_losses_and_trivial_columns(adata, trained: Path) -> None:
    table = masked_prediction(adata, trained)
    assert table["objective"].tolist() == ["ordinal", "contrastive", "total"]
    assert list(table.columns) == [
        "objective",
        "loss",
        "n",
        *TRAINFIT,
        "trivial_uniform",
        "n_cells",
        "n_tokens",
        "trivial_stats",
        "note",
    ]
    assert np.isfinite(table["loss"]).all() and (table["loss"] > 0).all()
    ordinal, contrastive, total = (table.iloc[i] for i in range(3))
    assert np.isfinite(ordinal[TRAINFIT].astype(float)).all()
    assert ordinal["trivial_uniform"] == pytest.approx(math.log(BINNED["n_bins"]))
    assert contrastive["trivial_uniform"] == pytest.approx(math.log(N_CELLS))  # one batch
    assert contrastive["n"] == N_CELLS and contrastive[TRAINFIT].isna().all()
    assert total["loss"] == pytest.approx(ordinal["loss"] + 0.2 * contrastive["loss"])
    # every gene token of every cell counted; about mask_ratio of them masked
    mf = open_model_file(trained)
    in_vocab = mf.vocab.map_genes(adata.var_names) >= 0
    per_cell = np.asarray((adata.X[:, in_vocab] > 0).sum(axis=1)).ravel()
    assert (table["n_cells"] == N_CELLS).all()
    assert (table["n_tokens"] == np.minimum(per_cell, BINNED["max_len"]).sum()).all()
    assert 0.08 < ordinal["n"] / ordinal["n_tokens"] < 0.25  # mask_ratio 0.15
    assert (table["trivial_stats"] == "train").all()


def test_deterministic_and_independent_of_chunking(adata, trained: Path) -> None:
    a = masked_prediction(adata, trained, batch_size=32, seed=5)
    b = masked_prediction(adata, trained, batch_size=32, seed=5, chunk_cells=7)
    pd.testing.assert_frame_equal(a, b)
    c = masked_prediction(adata, trained, batch_size=32, seed=6)
    assert c.loc[0, "n"] != a.loc[0, "n"] or c.loc[0, "loss"] != a.loc[0, "loss"]  # other masks


def test_max_cells_evaluates_a_seeded_subset(adata, trained: Path) -> None:
    table = masked_prediction(adata, trained, max_cells=20, seed=1)
    assert (table["n_cells"] == 20).all()
    again = masked_prediction(adata, trained, max_cells=20, seed=1)
    pd.testing.assert_frame_equal(table, again)


def test_untrained_ordinal_head_scores_the_uniform_loss(adata, fresh) -> None:
    """The ordinal head starts at score 0 with thresholds logit(k/K): exactly uniform, ln K."""
    table = masked_prediction(adata, fresh(objectives={"ordinal": 1.0}))
    row = table.set_index("objective").loc["ordinal"]
    assert row["loss"] == pytest.approx(math.log(BINNED["n_bins"]), abs=1e-5)
    assert row["loss"] == pytest.approx(row["trivial_uniform"], abs=1e-5)


def test_training_value_stats_in_the_model_file_are_used(adata, corpus, fresh) -> None:
    cfg = LoaderConfig(split="train", batch_size=16, mask_ratio=0.15, seed=1)
    loader = CorpusLoader(corpus["manifest"], cfg)
    with contextlib.closing(iter(loader)) as it:
        sample = [next(it) for _ in range(2)]
    path = fresh(objectives={"ordinal": 1.0})
    stats = ValueStats.from_batches(sample, open_model_file(path).config)
    saved = stats.to_payload()
    path = fresh(name="withstats", objectives={"ordinal": 1.0}, extra={"value_stats": saved})
    table = masked_prediction(adata, path)
    # the column names of metrics.tsv, plus the source of the statistics
    expected = set(trivial_row("ordinal", sample[0], stats)) | {"trivial_stats"}
    assert {c for c in table.columns if c.startswith("trivial_")} == expected
    assert (table["trivial_stats"] == "train").all()
    evalfit = masked_prediction(adata, fresh(name="nostats", objectives={"ordinal": 1.0}))
    assert table.loc[0, "loss"] == pytest.approx(evalfit.loc[0, "loss"])  # same masks
    assert table.loc[0, "trivial_marginal"] != evalfit.loc[0, "trivial_marginal_evalfit"]


def test_vae_reports_mse_and_kl(adata, fresh) -> None:
    table = masked_prediction(adata, fresh(kind="vae", objectives={"mse": 1.0}))
    assert table["objective"].tolist() == ["mse", "kl", "total"]
    rows = table.set_index("objective")
    assert np.isfinite(rows["loss"]).all() and rows.loc["kl", "loss"] >= 0
    assert np.isfinite(
        rows.loc["mse", ["trivial_global_mean_evalfit", "trivial_per_gene_mean_evalfit"]].astype(
            float
        )
    ).all()


def test_a_model_file_without_its_run_config_is_rejected(adata, fresh, tmp_path: Path) -> None:
    path = fresh(objectives={"ordinal": 1.0})
    payload = torch.load(path, weights_only=True)
    del payload["run_config"]
    torch.save(payload, tmp_path / "norun.pt")
    with pytest.raises(ScfmInputError, match="run_config: missing"):
        masked_prediction(adata, tmp_path / "norun.pt")
