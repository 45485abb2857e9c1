"""On a small real corpus the objectives beat the trivial predictors (issue 4, done-when).

cellbench_5batch (992 cells of 5 lung-cancer cell lines, ../shared/data): binned tokens of up
to 256 randomly chosen expressed genes per cell, a tiny transformer, 300 steps on CPU.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm.shard import merge_manifests, shard_dataset
from scfm.tokenize import build_vocab, write_vocab
from scfm.train import train

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


@pytest.fixture(scope="module")
def cellbench_corpus(tmp_path_factory) -> Path:
    shared = (
        Path(__file__).resolve().parents[3] / "shared" / "data" / "rna" / "cellbench_5batch.h5ad"
    )
    if not shared.exists():
        pytest.skip(f"{shared} not present (only CI and developer machines have ../shared)")
    d = tmp_path_factory.mktemp("cellbench")
    src = ad.read_h5ad(shared)
    src.obs_names_make_unique()
    src.var["gene_symbol"] = src.var_names
    src.var["n_cells"] = np.asarray((src.X > 0).sum(0)).ravel()
    src.obs["dataset"], src.obs["donor"] = "cb", src.obs["batch"]
    src.X = src.X.astype(np.int32)
    src.write_h5ad(d / "cb.h5ad")
    write_vocab(build_vocab({"cb": d / "cb.h5ad"}, min_cells=20, max_genes=2000), d / "vocab.tsv")
    shard_dataset(
        d / "cb.h5ad",
        d / "binned" / "cb",
        dataset="cb",
        vocab_path=d / "vocab.tsv",
        tokenizer={"kind": "binned", "n_bins": 11, "max_len": 256, "genes": "random"},
        split={"by": "cell", "val": 0.15, "test": 0.0, "seed": 0},
    )
    merge_manifests(
        {"cb": d / "binned" / "cb" / "manifest.json"},
        d / "binned" / "manifest.json",
        corpus="cb",
        tokenizer="binned",
        vocab_path=d / "vocab.tsv",
    )
    return d / "binned" / "manifest.json"


def run(manifest: Path, out: Path, objectives: dict, steps: int) -> pd.DataFrame:
    cfg = {
        "objectives": objectives,
        "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_steps": 10},
        "batch_size": 32,
        "max_steps": steps,
        "log_every": 25,
        "val_every": steps,
        "val_batches": 4,
        "checkpoint_every": 10_000,
        "stats_batches": 8,
        "mask_ratio": 0.3,
        "seed": 0,
    }
    train(cfg, {"preset": "tiny", "pooling": "mean"}, manifest, out)
    m = pd.read_csv(out / "metrics.tsv", sep="\t")
    return m[m["split"] == "val"].set_index(["step", "objective"])


def test_mse_and_ordinal_beat_the_trivial_predictors(cellbench_corpus, tmp_path):
    val = run(cellbench_corpus, tmp_path / "r", {"mse": 1.0, "ordinal": 1.0}, 300)
    mse, ordinal = val.loc[(300, "mse")], val.loc[(300, "ordinal")]
    assert mse["loss"] < mse["trivial_per_gene_mean"] < mse["trivial_global_mean"]
    assert ordinal["loss"] < ordinal["trivial_per_gene"]
    assert ordinal["loss"] < ordinal["trivial_marginal"] < ordinal["trivial_uniform"]


def test_contrastive_loss_decreases(cellbench_corpus, tmp_path):
    val = run(cellbench_corpus, tmp_path / "c", {"contrastive": 1.0}, 60)
    start, end = val.loc[(0, "contrastive"), "loss"], val.loc[(60, "contrastive"), "loss"]
    assert end < 0.8 * start
    assert start <= val.loc[(0, "contrastive"), "trivial_uniform"] + 0.5
