"""Vocabulary, splits, gene statistics and shards through the real code path."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from scfm.config import validate_config
from scfm.errors import ScfmInputError
from scfm.io.download import hash_file
from scfm.io.simulate import simulate_counts
from scfm.shard import assign_splits, gene_stats, merge_manifests, shard_dataset
from scfm.shard.manifest import CorpusManifest
from scfm.tokenize import TokenizerConfig, Vocab, build_vocab, tokenize_csr, write_vocab
from scfm.tokenize.tokenizers import cell_seeds

SPLIT = {"by": "cell", "val": 0.1, "test": 0.1, "seed": 0}


def qc_like(path: Path, *, n_cells=300, n_genes=120, seed=0, prefix="SIMG") -> Path:
    """A small h5ad in the QC contract (int32 CSR, var.gene_symbol/n_cells, harmonised obs)."""
    sim = simulate_counts(n_cells=n_cells, n_genes=n_genes, seed=seed)
    sim.var_names = [f"{prefix}{i:05d}" for i in range(n_genes)]
    sim.var["n_cells"] = np.asarray((sim.X > 0).sum(axis=0)).ravel()
    sim.obs["dataset"] = path.stem
    sim.obs_names = [f"{path.stem}-{i}" for i in range(n_cells)]
    del sim.uns["simulation"]
    sim.write_h5ad(path)
    return path


@pytest.fixture
def corpus(tmp_path):
    a = qc_like(tmp_path / "a.h5ad", seed=1)
    b = qc_like(tmp_path / "b.h5ad", n_genes=100, seed=2)
    vocab = tmp_path / "vocab.tsv"
    write_vocab(build_vocab({"a": a, "b": b}, min_cells=5, n_condition_tokens=4), vocab)
    return {"a": a, "b": b, "vocab": vocab, "dir": tmp_path}


def read_shards(directory: Path) -> pa.Table:
    man = json.loads((directory / "manifest.json").read_text())
    tables = [
        ipc.open_file(pa.memory_map(str(directory / s["path"]))).read_all() for s in man["shards"]
    ]
    return pa.concat_tables(tables)


def test_vocab_policies_and_hash(corpus, tmp_path):
    v = Vocab.read(corpus["vocab"])
    assert v.tokens[:3] == ["<pad>", "<cls>", "<mask>"] and v.n_special == 10
    assert v.genes == sorted(v.genes)
    union = build_vocab({"a": corpus["a"], "b": corpus["b"]}, min_cells=0)
    inter = build_vocab({"a": corpus["a"], "b": corpus["b"]}, policy="intersection", min_cells=0)
    assert (union.kind == "gene").sum() == 120 and (inter.kind == "gene").sum() == 100
    n_cells = ad.read_h5ad(corpus["a"]).var["n_cells"] + ad.read_h5ad(corpus["b"]).var[
        "n_cells"
    ].reindex(ad.read_h5ad(corpus["a"]).var_names, fill_value=0)
    capped = build_vocab({"a": corpus["a"], "b": corpus["b"]}, min_cells=0, max_genes=7)
    assert set(capped.token[capped.kind == "gene"]) == set(
        n_cells.sort_values(ascending=False, kind="stable").index[:7]
    )
    listed = tmp_path / "hvg.txt"
    listed.write_text("SIMG00003\nSIMG00001\nNOPE\n")
    file_vocab = build_vocab({"a": corpus["a"]}, policy="file", genes_file=listed, min_cells=1)
    assert file_vocab.token[file_vocab.kind == "gene"].tolist() == ["SIMG00001", "SIMG00003"]
    # min_cells 0 keeps a listed gene the corpus never measured (a panel shared by corpora)
    panel = build_vocab({"a": corpus["a"]}, policy="file", genes_file=listed, min_cells=0)
    assert "NOPE" in panel.token.tolist()
    assert Vocab(union).hash != Vocab(inter).hash
    assert (
        Vocab(union).hash
        == Vocab(build_vocab({"a": corpus["a"], "b": corpus["b"]}, min_cells=0)).hash
    )


def test_splits_are_seeded_stable_and_respect_units():
    obs = pd.DataFrame(
        {"donor": [f"d{i % 20}" for i in range(20000)]}, index=[f"c{i}" for i in range(20000)]
    )
    s = assign_splits(obs, dataset="x", by="cell", val=0.1, test=0.2, seed=3)
    frac = pd.Series(s).value_counts(normalize=True)
    assert abs(frac["val"] - 0.1) < 0.015 and abs(frac["test"] - 0.2) < 0.015
    # adding cells does not move existing ones
    more = pd.concat([obs, pd.DataFrame({"donor": ["d0"]}, index=["new"])])
    assert (assign_splits(more, dataset="x", by="cell", val=0.1, test=0.2, seed=3)[:-1] == s).all()
    assert (assign_splits(obs, dataset="x", by="cell", val=0.1, test=0.2, seed=4) != s).any()
    by_donor = pd.Series(assign_splits(obs, dataset="x", by="donor", val=0.3, test=0.3, seed=0))
    assert by_donor.groupby(obs["donor"].to_numpy()).nunique().max() == 1
    with pytest.raises(ValueError, match="val \\+ test <= 1"):
        assign_splits(obs, dataset="x", val=0.6, test=0.5)
    with pytest.raises(ValueError, match="each in \\[0, 1\\]"):
        assign_splits(obs, dataset="x", val=-0.1, test=0.1)


def test_shards_equal_direct_tokenization_and_manifest(corpus):
    cfg = validate_config(
        {
            "datasets": {"a": {"source": "demo", "demo": "simulated"}},
            "tokenizers": {"t": {"kind": "binned", "n_bins": 11, "max_len": 40}},
        }
    )["tokenizers"]["t"]
    out = corpus["dir"] / "shards" / "a"
    man = shard_dataset(
        corpus["a"],
        out,
        dataset="a",
        vocab_path=corpus["vocab"],
        tokenizer=cfg,
        split=SPLIT,
        cells_per_shard=64,
        chunk_cells=50,
    )
    table = read_shards(out)
    assert table.num_rows == 300 == man["n_cells"]
    assert sum(s["n_cells"] for s in man["shards"]) == 300
    assert all(s["n_cells"] <= 64 for s in man["shards"])
    for s in man["shards"]:
        assert hash_file(out / s["path"]) == s["sha256"]
    src = ad.read_h5ad(corpus["a"])
    vocab = Vocab.read(corpus["vocab"])
    direct = tokenize_csr(
        src.X,
        vocab.map_genes(src.var_names),
        TokenizerConfig(**cfg),
        n_special=vocab.n_special,
        n_vocab=len(vocab),
        seeds=cell_seeds(0, "a", np.arange(300)),
    )
    row = {c: i for i, c in enumerate(src.obs_names)}
    for cid, genes, values in zip(
        table["cell_id"].to_pylist()[:50],
        table["genes"].to_pylist()[:50],
        table["values"].to_pylist()[:50],
        strict=True,
    ):
        i = row[cid]
        o = direct.offsets
        assert (
            genes == direct.genes[o[i] : o[i + 1]].tolist()
            and values == direct.values[o[i] : o[i + 1]].tolist()
        )
    meta = json.loads(table.schema.metadata[b"scfm"])
    assert meta["vocab_hash"] == vocab.hash and meta["tokenizer"]["n_bins"] == 11
    splits = dict(zip(table["cell_id"].to_pylist(), table["split"].to_pylist(), strict=True))
    expected = assign_splits(src.obs, dataset="a", **SPLIT)
    assert [splits[c] for c in src.obs_names] == expected.tolist()
    assert set(table["cell_type"].to_pylist()) == set(src.obs["cell_type"].astype(str))


def test_same_config_gives_byte_identical_shards(corpus):
    cfg = {"kind": "counts", "genes": "random", "max_len": 20, "seed": 5}
    a1, a2 = corpus["dir"] / "r1", corpus["dir"] / "r2"
    m1 = shard_dataset(
        corpus["a"], a1, dataset="a", vocab_path=corpus["vocab"], tokenizer=cfg, split=SPLIT
    )
    m2 = shard_dataset(
        corpus["a"], a2, dataset="a", vocab_path=corpus["vocab"], tokenizer=cfg, split=SPLIT
    )
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]


def test_rank_needs_stats_and_uses_medians(corpus):
    stats = corpus["dir"] / "stats.tsv"
    table = gene_stats({"a": corpus["a"], "b": corpus["b"]}, Vocab.read(corpus["vocab"]), stats)
    # medians of the binned log2 histogram are within half a bin (1/128 octave) of the exact ones
    src = ad.read_h5ad(corpus["a"])
    norm = src.X.toarray() / src.X.sum(1).A1[:, None] * 1e4
    b = ad.read_h5ad(corpus["b"])
    normb = pd.DataFrame(b.X.toarray() / b.X.sum(1).A1[:, None] * 1e4, columns=b.var_names)
    g = "SIMG00050"
    values = np.concatenate([norm[:, 50], normb[g].to_numpy()])
    exact = np.median(values[values > 0])
    got = table.set_index("token").loc[g, "nonzero_median"]
    assert abs(np.log2(got) - np.log2(exact)) < 1 / 64
    out = corpus["dir"] / "rank"
    man = shard_dataset(
        corpus["a"],
        out,
        dataset="a",
        vocab_path=corpus["vocab"],
        tokenizer={"kind": "rank", "max_len": 30},
        split=SPLIT,
        gene_stats=stats,
    )
    assert man["value_kind"] == "none" and "values" not in read_shards(out).column_names


def test_filters_and_zero_cells(corpus):
    out = corpus["dir"] / "f"
    src = ad.read_h5ad(corpus["a"])
    keep_type = src.obs["cell_type"].astype(str).iloc[0]
    man = shard_dataset(
        corpus["a"],
        out,
        dataset="a",
        vocab_path=corpus["vocab"],
        tokenizer={"kind": "binned"},
        split=SPLIT,
        filters={"cell_type": [keep_type]},
    )
    assert man["n_cells"] == (src.obs["cell_type"] == keep_type).sum()
    assert set(read_shards(out)["cell_type"].to_pylist()) == {keep_type}
    with pytest.raises(ScfmInputError, match="no cell of dataset a passes the corpus filter"):
        shard_dataset(
            corpus["a"],
            corpus["dir"] / "none",
            dataset="a",
            vocab_path=corpus["vocab"],
            tokenizer={"kind": "binned"},
            split=SPLIT,
            filters={"cell_type": ["nope"]},
        )
    assert not (corpus["dir"] / "none").exists()
    assert not [p for p in corpus["dir"].iterdir() if p.name.startswith(".none")]
    with pytest.raises(
        ScfmInputError, match="obs/tissue_x: column named in the corpus filter not found"
    ):
        shard_dataset(
            corpus["a"],
            corpus["dir"] / "x",
            dataset="a",
            vocab_path=corpus["vocab"],
            tokenizer={"kind": "binned"},
            split=SPLIT,
            filters={"tissue_x": ["a"]},
        )


def test_dataset_barely_overlapping_the_vocab_is_refused(corpus):
    other = qc_like(corpus["dir"] / "c.h5ad", prefix="OTHER")
    with pytest.raises(
        ScfmInputError, match=r"c\.h5ad: var_names: 100% of the counts fall on 120 genes missing"
    ):
        shard_dataset(
            other,
            corpus["dir"] / "c",
            dataset="c",
            vocab_path=corpus["vocab"],
            tokenizer={"kind": "binned"},
            split=SPLIT,
        )
    assert not (corpus["dir"] / "c").exists()


def test_merge_checks_vocab_hash_and_sums_splits(corpus):
    d = corpus["dir"]
    for name in ("a", "b"):
        shard_dataset(
            corpus[name],
            d / "corp" / "binned" / "datasets" / name,
            dataset=name,
            vocab_path=corpus["vocab"],
            tokenizer={"kind": "binned"},
            split=SPLIT,
        )
    mans = {n: d / "corp" / "binned" / "datasets" / n / "manifest.json" for n in ("a", "b")}
    out = d / "corp" / "binned" / "manifest.json"
    merged = merge_manifests(
        mans, out, corpus="corp", tokenizer="binned", vocab_path=corpus["vocab"]
    )
    assert sum(merged.splits.values()) == 600
    assert (out.parent / merged.vocab_path).resolve() == corpus["vocab"].resolve()
    assert all((out.parent / s.path).exists() for s in merged.shards)
    # what was written is what the type reads back, and its JSON is the one written before
    read = CorpusManifest.read(out)
    assert read == merged and read.vocab_file.resolve() == corpus["vocab"].resolve()
    raw = json.loads(out.read_text())
    assert list(raw)[:11] == [
        "corpus", "tokenizer", "tokenizer_params", "vocab_path", "vocab_hash", "vocab_size",
        "special_tokens", "value_kind", "n_value_tokens", "max_len", "shards",
    ]  # fmt: skip
    assert list(raw["shards"][0]) == ["path", "dataset", "split", "n_cells", "n_tokens", "sha256"]
    other_vocab = d / "other.tsv"
    write_vocab(build_vocab({"a": corpus["a"]}, min_cells=0), other_vocab)
    with pytest.raises(ScfmInputError, match=r"vocab_hash: .* differs from"):
        merge_manifests(mans, out, corpus="corp", tokenizer="binned", vocab_path=other_vocab)


def test_corpus_config_cross_checks():
    from scfm.errors import ScfmConfigError

    base = {
        "datasets": {"a": {"source": "demo", "demo": "simulated"}},
        "tokenizers": {"t": {"kind": "binned"}},
    }
    with pytest.raises(ScfmConfigError) as info:
        validate_config(
            {
                **base,
                "corpora": {
                    "c": {
                        "datasets": ["a", "zz"],
                        "split": {"val": 0.7, "test": 0.5},
                        "tokenizers": ["q"],
                        "vocab": {"policy": "file"},
                    }
                },
            }
        )
    text = str(info.value)
    assert "corpora.c.datasets[1]: 'zz' is not a dataset" in text
    assert (
        "corpora.c.split: val + test = 1.2 leaves no training cells; expected val + test < 1"
        in text
    )
    assert "corpora.c.tokenizers[0]: 'q' is not a tokenizer" in text
    assert "corpora.c.vocab.genes_file: required by policy 'file'" in text
    with pytest.raises(
        ScfmConfigError, match=r"tokenizers.t.max_len: 1 is less than the minimum of 2"
    ):
        validate_config({**base, "tokenizers": {"t": {"kind": "binned", "max_len": 1}}})
    with pytest.raises(ScfmConfigError, match=r"tokenizers.t.kind: 'bpe' is not allowed"):
        validate_config({**base, "tokenizers": {"t": {"kind": "bpe"}}})
