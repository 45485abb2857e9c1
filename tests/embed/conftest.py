"""Fixtures: a tiny corpus made by the pipeline code, a briefly trained model, fresh exports.

The corpus is simulated counts -> vocab -> shards -> manifest (binned, 7 bins, 24 genes per
cell). ``trained`` is a one-layer transformer trained for 20 steps with ordinal +
contrastive; ``fresh`` exports an untrained model of any kind with the corpus' vocabulary and
tokenizer (what training would export, minus the training).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import pytest
import torch
from _models import BINNED, export_fresh, simulated
from _simcorpus import one_dataset_corpus

from scfm.shard.stats import gene_stats
from scfm.tokenize import Vocab
from scfm.train import train


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths: ``h5ad`` (the simulated dataset), ``vocab``, ``manifest``, ``gene_stats``."""
    root = tmp_path_factory.mktemp("corpus")
    one_dataset_corpus(root, simulated(), BINNED, "binned")
    vocab = root / "vocab.tsv"
    gene_stats({"a": root / "a.h5ad"}, Vocab.read(vocab), root / "gene_stats.tsv")
    return {
        "h5ad": root / "a.h5ad",
        "vocab": vocab,
        "manifest": root / "manifest.json",
        "gene_stats": root / "gene_stats.tsv",
    }


@pytest.fixture
def adata(corpus: dict[str, Path]) -> ad.AnnData:
    """The corpus dataset in memory (a fresh copy per test)."""
    return ad.read_h5ad(corpus["h5ad"])


@pytest.fixture(scope="session")
def trained(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.pt of a transformer trained 20 steps (ordinal + contrastive); run dir 'tinyrun'."""
    out = tmp_path_factory.mktemp("train") / "tinyrun"
    run = {
        "objectives": {"ordinal": 1.0, "contrastive": {"weight": 0.2}},
        "optimizer": {"lr": 3e-3},
        "batch_size": 16,
        "max_steps": 20,
        "seed": 3,
        "log_every": 10,
        "val_every": 0,
        "checkpoint_every": 20,
        "stats_batches": 2,
        "loader": {"block_size": 16, "shuffle_buffer": 32},
    }
    model = {"preset": "tiny", "d_model": 32, "n_heads": 2, "n_layers": 1}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add contention
    try:
        train(run, model, corpus["manifest"], out, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return out / "model.pt"


@pytest.fixture
def fresh(corpus: dict[str, Path], tmp_path: Path) -> Callable[..., Path]:
    """``fresh(kind=..., tokenizer=..., objectives=..., extra=...)`` -> a new model.pt."""

    def make(name: str = "freshrun", **kw: Any) -> Path:
        return export_fresh(tmp_path / name, corpus["vocab"], **kw)

    return make
