"""A small simulated dataset and its one-dataset corpus, shared by the train and embed tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from scfm.shard import merge_manifests, shard_dataset
from scfm.tokenize import build_vocab, write_vocab


def simulated(n_cells: int, n_genes: int) -> ad.AnnData:
    """Simulated counts as a QC'd h5ad of dataset "a" (gene IDs SIMG00000..., var n_cells)."""
    from scfm.io.simulate import simulate_counts

    sim = simulate_counts(n_cells=n_cells, n_genes=n_genes, seed=1)
    sim.var_names = [f"SIMG{i:05d}" for i in range(n_genes)]
    sim.var["n_cells"] = np.asarray((sim.X > 0).sum(axis=0)).ravel()
    sim.obs["dataset"] = "a"
    sim.obs_names = [f"a-{i}" for i in range(n_cells)]
    del sim.uns["simulation"]
    return sim


def one_dataset_corpus(root: Path, adata: ad.AnnData, tokenizer: dict[str, Any], name: str) -> Path:
    """Write ``adata`` as dataset "a", its vocabulary, shards and corpus manifest under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(root / "a.h5ad")
    vocab = root / "vocab.tsv"
    write_vocab(build_vocab({"a": root / "a.h5ad"}, min_cells=1, n_condition_tokens=2), vocab)
    shard_dataset(
        root / "a.h5ad",
        root / "shards" / "a",
        dataset="a",
        vocab_path=vocab,
        tokenizer=tokenizer,
        split={"by": "cell", "val": 0.125, "test": 0.0, "seed": 0},
        cells_per_shard=64,
    )
    merge_manifests(
        {"a": root / "shards" / "a" / "manifest.json"},
        root / "manifest.json",
        corpus="c",
        tokenizer=name,
        vocab_path=vocab,
    )
    return root / "manifest.json"
