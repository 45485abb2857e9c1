"""Leakage: evaluation cells in a run's training split are counted, shown and can be left out."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm.bench.evalset import prepare_evalset, read_evalset
from scfm.bench.jobs import summary_job, write_table
from scfm.bench.leakage import leakage_job, leakage_table, trained_cells
from scfm.bench.plots import gamed_aggregates
from scfm.errors import ScfmInputError
from scfm.io.simulate import simulate_counts
from scfm.shard import assign_splits, merge_manifests, shard_dataset
from scfm.tokenize import build_vocab, write_vocab

SPLIT = {"by": "donor", "val": 0.2, "test": 0.3, "seed": 4}


def qc_like(path: Path, n_cells: int, seed: int) -> Path:
    sim = simulate_counts(n_cells=n_cells, n_genes=150, n_batches=3, seed=seed)
    sim.var_names = [f"SIMG{i:05d}" for i in range(sim.n_vars)]
    sim.var["n_cells"] = np.asarray((sim.X > 0).sum(axis=0)).ravel()
    sim.obs["dataset"] = path.stem
    sim.obs_names = [f"cell{i}" for i in range(n_cells)]  # the same IDs in both datasets
    del sim.uns["simulation"]
    sim.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Corpus `both` has datasets a (filtered to two cell types) and b; corpus `only_b` has b."""
    root = tmp_path_factory.mktemp("leak")
    a, b = qc_like(root / "a.h5ad", 400, 1), qc_like(root / "b.h5ad", 200, 2)
    vocab = root / "vocab.tsv"
    write_vocab(build_vocab({"a": a, "b": b}, min_cells=1, n_condition_tokens=2), vocab)
    obs = ad.read_h5ad(a, backed="r").obs.copy()
    kept_types = sorted(obs["cell_type"].astype(str).unique())[:2]
    manifests = {}
    for corpus, members in {"both": {"a": a, "b": b}, "only_b": {"b": b}}.items():
        parts = {}
        for ds, path in members.items():
            out = root / corpus / ds
            shard_dataset(
                path,
                out,
                dataset=ds,
                vocab_path=vocab,
                tokenizer={"kind": "binned", "max_len": 64},
                split=SPLIT,
                filters={"cell_type": kept_types} if ds == "a" else None,
                cells_per_shard=50,
            )
            parts[ds] = out / "manifest.json"
        manifests[corpus] = root / corpus / "manifest.json"
        merge_manifests(
            parts, manifests[corpus], corpus=corpus, tokenizer="binned", vocab_path=vocab
        )
    # the overlap known from the seeded split and the filter, independently of the shards
    splits = assign_splits(obs, dataset="a", **SPLIT)
    in_train = (splits == "train") & obs["cell_type"].astype(str).isin(kept_types).to_numpy()
    return {"a": a, "root": root, "manifests": manifests, "expected_train": in_train, "obs": obs}


def test_leakage_counts_equal_the_seeded_split_and_filter(corpora):
    runs = {"r_both": corpora["manifests"]["both"], "r_b": corpora["manifests"]["only_b"]}
    table = leakage_table(corpora["obs"].index, dataset="a", runs=runs).set_index("method")
    expected = int(corpora["expected_train"].sum())
    assert 0 < expected < len(corpora["obs"])
    assert table.loc["r_both", "n_train"] == expected
    assert table.loc["r_both", "n_cells"] == 400 and table.loc["r_both", "corpus"] == "both"
    assert table.loc["r_both", "train_fraction"] == pytest.approx(expected / 400)
    # filtered-out cells are in no split; val + test + train = the cells the corpus kept
    kept = table.loc["r_both", ["n_train", "n_val", "n_test"]].sum()
    assert kept < 400 and table.loc["r_both", "n_val"] > 0 and table.loc["r_both", "n_test"] > 0
    # same cell IDs in dataset b do not count: cells match by dataset and ID
    assert table.loc["r_b", ["n_train", "n_val", "n_test"]].tolist() == [0, 0, 0]


def test_held_out_evalset_has_no_training_cells(corpora, caplog, tmp_path):
    runs = {"r_both": corpora["manifests"]["both"]}
    exclude = trained_cells(runs, "a")
    assert len(exclude) == corpora["expected_train"].sum()
    out = tmp_path / "held.h5ad"
    adata = prepare_evalset(
        corpora["a"], out, label_key="cell_type", batch_key="batch", n_hvg=50, exclude=exclude
    )
    assert adata.n_obs == 400 - corpora["expected_train"].sum()
    assert not adata.obs_names.isin(exclude).any()
    assert read_evalset(out, counts=False).uns["scfm_bench"]["held_out"]
    with caplog.at_level(logging.WARNING, logger="scfm.bench"):
        table = leakage_job(out, tmp_path / "leak.tsv", dataset="a", runs=runs, name="held")
    assert table["n_train"].tolist() == [0]
    assert not [r for r in caplog.records if "trained on" in r.getMessage()]
    # every cell trained on: a clear error, nothing written
    with pytest.raises(ScfmInputError, match="every cell is in the training split"):
        prepare_evalset(
            corpora["a"],
            tmp_path / "none.h5ad",
            label_key="cell_type",
            batch_key="batch",
            exclude=corpora["obs"].index,
        )
    assert not (tmp_path / "none.h5ad").exists()


def test_leakage_job_warns_and_summary_shows_the_overlap(corpora, caplog, tmp_path):
    full = tmp_path / "full.h5ad"
    prepare_evalset(corpora["a"], full, label_key="cell_type", batch_key="batch", n_hvg=50)
    runs = {"r_both": corpora["manifests"]["both"]}
    with caplog.at_level(logging.WARNING, logger="scfm.bench"):
        leakage_job(full, tmp_path / "leakage.tsv", dataset="a", runs=runs, name="ev")
    n = int(corpora["expected_train"].sum())
    warned = [r.getMessage() for r in caplog.records if "trained on" in r.getMessage()]
    assert warned == [
        f"run r_both trained on {n} of the 400 cells of evaluation set ev ({100 * n / 400:.0f}%, "
        "corpus both): its scores on them are not held-out results; benchmarks.ev.held_out: "
        "true evaluates only cells no run trained on (docs/benchmarks.md)"
    ]
    tables = write_metric_tables(tmp_path, runs=["r_both"])
    long = summary_job(
        tables,
        tmp_path / "summary.tsv",
        tmp_path / "wide.tsv",
        tmp_path / "table.png",
        evalset="ev",
        leakage=tmp_path / "leakage.tsv",
    )
    written = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    assert list(written.columns) == [
        "evalset",
        "method",
        "type",
        "metric",
        "value",
        "train_overlap",
        "train_overlap_fraction",
    ]
    run_rows = written[written["method"] == "r_both"]
    assert (run_rows["train_overlap"] == n).all() and len(run_rows) == len(
        long[long["method"] == "r_both"]
    )
    assert written.loc[written["method"] == "pca", "train_overlap"].isna().all()
    wide = pd.read_csv(tmp_path / "wide.tsv", sep="\t", index_col="method")
    assert list(wide.columns[:2]) == ["train_overlap", "train_overlap_fraction"]
    assert wide.loc["r_both", "train_overlap_fraction"] == pytest.approx(n / 400)


def write_metric_tables(root: Path, *, runs: list[str], random_total: float = 0.3) -> list[Path]:
    """Metric tables of pca, random and runs, with masked rows for the runs."""
    rows = []
    values = {"pca": 0.7, "random": random_total, **{r: 0.5 for r in runs}}
    for method, v in values.items():
        rows += [
            (method, "Bio conservation", "KMeans NMI", v),
            (method, "Aggregate score", "Bio conservation", v),
            (method, "Aggregate score", "Total", v - 0.05),
            (method, "scGraph", "Corr-Weighted", v),
        ]
    for run in runs:
        rows += [
            (run, "Masked prediction", "ordinal loss", 1.2),
            (run, "Masked prediction", "ordinal trivial_mean", 1.5),
        ]
    path = root / "metrics.tsv"
    write_table(pd.DataFrame(rows, columns=["method", "type", "metric", "value"]), path)
    return [path]


def test_results_table_marks_gamed_aggregates_and_draws_masked_rows(tmp_path):
    from PIL import Image

    tables = write_metric_tables(tmp_path, runs=["run1", "run2"], random_total=0.6)
    long = pd.concat([pd.read_csv(t, sep="\t") for t in tables])
    scores = long[long["type"] != "Masked prediction"]
    wide = scores.pivot_table(index="method", columns="metric", values="value")
    types = scores.drop_duplicates("metric").set_index("metric")["type"]
    # random (0.6 bio, 0.55 total) is at or above both runs (0.5, 0.45), below pca (0.7, 0.65)
    assert gamed_aggregates(wide, types) == {
        "Bio conservation": ["run1", "run2"],
        "Total": ["run1", "run2"],
    }
    (tmp_path / "h").mkdir()
    honest = write_metric_tables(tmp_path / "h", runs=["run1"], random_total=0.2)
    h = pd.concat([pd.read_csv(t, sep="\t") for t in honest])
    hs = h[h["type"] != "Masked prediction"]
    assert (
        gamed_aggregates(
            hs.pivot_table(index="method", columns="metric", values="value"),
            hs.drop_duplicates("metric").set_index("metric")["type"],
        )
        == {}
    )
    summary_job(tables, tmp_path / "s.tsv", tmp_path / "w.tsv", tmp_path / "gamed.png")
    summary_job(honest, tmp_path / "s2.tsv", tmp_path / "w2.tsv", tmp_path / "honest.png")
    gamed_img = np.asarray(Image.open(tmp_path / "gamed.png").convert("RGB")).astype(int)
    honest_img = np.asarray(Image.open(tmp_path / "honest.png").convert("RGB"))
    # the masked panel adds rows; the dagger footnote is drawn in dark red (#8b0000)
    assert gamed_img.shape[0] > honest_img.shape[0]
    red = (abs(gamed_img[..., 0] - 0x8B) < 40) & (gamed_img[..., 1] < 60) & (gamed_img[..., 2] < 60)
    assert red.sum() > 200
    honest_int = honest_img.astype(int)
    red_h = (
        (abs(honest_int[..., 0] - 0x8B) < 40)
        & (honest_int[..., 1] < 60)
        & (honest_int[..., 2] < 60)
    )
    assert red_h.sum() < 20


def test_evalset_without_runs_has_an_empty_overlap(tmp_path, corpora):
    """Baselines only: leakage.tsv has no rows and the overlap columns stay empty."""
    full = tmp_path / "full.h5ad"
    prepare_evalset(corpora["a"], full, label_key="cell_type", batch_key="batch", n_hvg=50)
    table = leakage_job(full, tmp_path / "leakage.tsv", dataset="a", runs={}, name="ev")
    assert table.empty and list(table.columns)[:2] == ["method", "corpus"]
    tables = write_metric_tables(tmp_path, runs=[])
    summary_job(
        tables,
        tmp_path / "s.tsv",
        tmp_path / "w.tsv",
        evalset="ev",
        leakage=tmp_path / "leakage.tsv",
    )
    written = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert written["train_overlap"].isna().all() and len(written) == 8
