"""Training loader: partitioning, exact resume, collate, determinism, weights, bad input.

Shards are built here with pyarrow following the shard contract (docs/contracts.md), since the
sharding stage is tested on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch

from scfm.data import (
    Collator,
    CorpusLoader,
    LoaderConfig,
    decode_cell_index,
    encode_cell_index,
)
from scfm.data.loader import _push, _resume_plan
from scfm.errors import ScfmConfigError, ScfmInputError

VOCAB_HASH = "0123456789abcdef"
SPECIAL = {"<pad>": 0, "<cls>": 1, "<mask>": 2, "<unk>": 3}
N_BINS = 11  # n_value_tokens
MAX_GENES = 20
# dataset -> cells per shard (train); each dataset also gets a small val shard
LAYOUT = {"pbmc": [37, 21], "lung": [30], "gut": [9, 25]}
CELL_TYPES = ["T", "B", "NK"]


def _shard_table(
    rng: np.random.Generator, dataset: str, split: str, n: int, value_kind: str
) -> pa.Table:
    lens = rng.integers(0, MAX_GENES + 1, n)
    genes = [rng.choice(np.arange(4, 200), k, replace=False).astype(np.int32) for k in lens]
    cols: dict[str, Any] = {
        "cell_id": [f"{dataset}-{split}-{i}" for i in range(n)],
        "dataset": [dataset] * n,
        "split": [split] * n,
        "cell_type": [CELL_TYPES[i % 3] for i in range(n)],
        "batch": [f"{dataset}-b{i % 2}" for i in range(n)],
        "donor": ["d0"] * n,
        "n_genes": pa.array(lens, pa.int32()),
        "genes": pa.array(genes, pa.list_(pa.int32())),
    }
    if value_kind in ("bin", "count"):
        vals = [rng.integers(1, N_BINS, k).astype(np.int16) for k in lens]
        cols["values"] = pa.array(vals, pa.list_(pa.int16()))
    elif value_kind == "float":
        vals = [rng.random(k).astype(np.float32) + 0.5 for k in lens]
        cols["values"] = pa.array(vals, pa.list_(pa.float32()))
    return pa.table(cols)


def _write_shard(path: Path, table: pa.Table, meta: dict[str, Any], chunk: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.replace_schema_metadata({b"scfm": json.dumps(meta).encode()})
    # several record batches per file: the loader must handle chunked columns
    with pa.OSFile(str(path), "wb") as f, ipc.new_file(f, table.schema) as w:
        for batch in table.to_batches(max_chunksize=chunk):
            w.write_batch(batch)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_corpus(
    root: Path,
    *,
    value_kind: str = "bin",
    layout: dict[str, list[int]] | None = None,
    weights: dict[str, Any] | None = None,
    val: bool = True,
    seed: int = 0,
) -> Path:
    """Write shards + manifest.json under ``root``; return the manifest path."""
    rng = np.random.default_rng(seed)
    shards, splits = [], Counter()
    for dataset, sizes in (layout or LAYOUT).items():
        parts = [("train", n) for n in sizes] + ([("val", 5)] if val else [])
        for i, (split, n) in enumerate(parts):
            rel = f"{dataset}/{split}/shard-{i:05d}.arrow"
            table = _shard_table(rng, dataset, split, n, value_kind)
            meta = {"vocab_hash": VOCAB_HASH, "tokenizer": {}, "dataset": dataset, "split": split}
            _write_shard(root / rel, table, meta)
            shards.append(
                {
                    "path": rel,
                    "dataset": dataset,
                    "split": split,
                    "n_cells": n,
                    "n_tokens": _n_tokens(table),
                    "sha256": _sha(root / rel),
                }
            )
            splits[split] += n
    manifest = {
        "corpus": "test",
        "tokenizer": value_kind,
        "tokenizer_params": {"kind": value_kind, "max_len": MAX_GENES},
        "vocab_path": "../vocab.tsv",
        "vocab_hash": VOCAB_HASH,
        "vocab_size": 200,
        "special_tokens": SPECIAL,
        "value_kind": value_kind,
        "n_value_tokens": N_BINS if value_kind in ("bin", "count") else None,
        "max_len": MAX_GENES,
        "shards": shards,
        "splits": dict(splits),
        "datasets": {d: {"source": "x", "sha256": "y", "n_cells": 0} for d in layout or LAYOUT},
        "weights": weights or {"by": None, "values": {}},
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def _n_tokens(table: pa.Table) -> int:
    return int(np.sum(table.column("n_genes").to_numpy()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


N_TRAIN = sum(sum(v) for v in LAYOUT.values())
SMALL = {"batch_size": 8, "block_size": 8, "shuffle_buffer": 16}


def take(loader: CorpusLoader, k: int) -> list[dict[str, Any]]:
    """The next ``k`` batches, crossing epochs like a training loop would."""
    out: list[dict[str, Any]] = []
    while len(out) < k:
        with contextlib.closing(iter(loader)) as it:
            for batch in it:
                out.append(batch)
                if len(out) == k:
                    break
    return out


def epoch_batches(loader: CorpusLoader) -> list[dict[str, Any]]:
    return list(loader)


def assert_same_batches(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert x[key].dtype == y[key].dtype, key
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def cells_of(batches: list[dict[str, Any]]) -> list[int]:
    return [int(c) for b in batches for c in b["cell_index"]]


def all_train_cells(manifest: Path) -> list[int]:
    shards = json.loads(manifest.read_text())["shards"]
    return sorted(
        int(c)
        for i, s in enumerate(shards)
        if s["split"] == "train"
        for c in encode_cell_index(i, np.arange(s["n_cells"]))
    )


# --------------------------------------------------------------------------- partitioning


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_train_cell_once_per_epoch(corpus: Path, world_size: int, num_workers: int) -> None:
    seen: list[int] = []
    for rank in range(world_size):
        loader = CorpusLoader(
            corpus,
            LoaderConfig(**SMALL, seed=5),
            num_workers=num_workers,
            rank=rank,
            world_size=world_size,
        )
        batches = epoch_batches(loader)
        assert sum(loader.worker_batch_counts(0)) == len(batches)
        seen += cells_of(batches)
        assert loader.epoch == 1
    assert sorted(seen) == all_train_cells(corpus)


def test_rank_and_world_size_come_from_torch_distributed(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    implicit = CorpusLoader(corpus, LoaderConfig(**SMALL))
    explicit = CorpusLoader(corpus, LoaderConfig(**SMALL), rank=1, world_size=2)
    assert (implicit.dataset.rank, implicit.dataset.world_size) == (1, 2)
    assert cells_of(list(implicit)) == cells_of(list(explicit))


def test_val_split_is_read_in_order_without_shuffle(corpus: Path) -> None:
    loader = CorpusLoader(corpus, LoaderConfig(split="val", batch_size=4, mask_ratio=0.0))
    cells = cells_of(list(loader))
    shard, _ = decode_cell_index(np.array(cells))
    assert len(cells) == 5 * len(LAYOUT)
    assert np.all(np.diff(cells) > 0)  # shard by shard, row by row
    assert set(shard.tolist()) == {2, 4, 7}


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_matches_uninterrupted_run(corpus: Path, num_workers: int) -> None:
    cfg = LoaderConfig(**SMALL, seed=3)
    full_loader = CorpusLoader(corpus, cfg, num_workers=num_workers)
    n0 = len(full_loader)
    full = epoch_batches(full_loader) + epoch_batches(full_loader)
    for k in (3, n0 - 1, n0, n0 + 2):  # mid-epoch (odd k), last batch, boundary, next epoch
        first = CorpusLoader(corpus, cfg, num_workers=num_workers)
        head = take(first, k)
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
        resumed = CorpusLoader(corpus, cfg, num_workers=num_workers)
        resumed.load_state_dict(state)
        rest = take(resumed, len(full) - k)
        assert_same_batches(head + rest, full)
        assert resumed.epoch == 2 and resumed.batches_in_epoch == 0


def test_resume_with_uneven_workers_and_weights(tmp_path: Path) -> None:
    # weights make the workers' batch counts differ, so round-robin skips exhausted workers
    weights = {"by": "dataset", "values": {"pbmc": 3.0, "lung": 1.0, "gut": 0.5}}
    manifest = make_corpus(tmp_path, weights=weights)
    cfg = LoaderConfig(batch_size=4, block_size=16, shuffle_buffer=8, weighted=True, seed=1)
    full_loader = CorpusLoader(manifest, cfg, num_workers=2)
    counts = full_loader.worker_batch_counts(0)
    full = epoch_batches(full_loader)
    assert sum(counts) == len(full) and counts[0] != counts[1]
    n = len(full)
    for k in sorted({1, 2, 3, n // 2, n // 2 + 1, n - 3, n - 2, n - 1}):
        state = {"epoch": 0, "batches_in_epoch": k, "order": full_loader.state_dict()["order"]}
        resumed = CorpusLoader(manifest, cfg, num_workers=2)
        resumed.load_state_dict(state)
        assert_same_batches(list(resumed), full[k:])


def test_resume_plan_follows_round_robin() -> None:
    for counts in ([3, 1], [0, 4, 2], [5], [2, 2, 2], [1, 0, 3, 3]):
        order = []  # simulate the DataLoader: cycle over workers, skipping exhausted ones
        left = list(counts)
        while any(left):
            for w in range(len(counts)):
                if left[w]:
                    order.append(w)
                    left[w] -= 1
        for k in range(len(order) + 1):
            taken, rotate = _resume_plan(counts, k)
            assert taken == [order[:k].count(w) for w in range(len(counts))]
            if k < len(order):  # the next worker due is the first active one from rotate
                n = len(counts)
                nxt = next(
                    (rotate + i) % n
                    for i in range(n)
                    if counts[(rotate + i) % n] > taken[(rotate + i) % n]
                )
                assert nxt == order[k]


def test_state_from_other_settings_is_refused(corpus: Path) -> None:
    state = CorpusLoader(corpus, LoaderConfig(**SMALL, seed=1)).state_dict()
    other = CorpusLoader(corpus, LoaderConfig(**SMALL, seed=2), num_workers=2)
    with pytest.raises(ScfmConfigError, match="seed") as err:
        other.load_state_dict(state)
    assert "workers_per_rank" in str(err.value)


def test_set_epoch_and_len(corpus: Path) -> None:
    loader = CorpusLoader(corpus, LoaderConfig(**SMALL, seed=4))
    loader.set_epoch(3)
    batches = list(loader)
    assert loader.epoch == 4
    assert len(batches) == sum(loader.worker_batch_counts(3))
    again = CorpusLoader(corpus, LoaderConfig(**SMALL, seed=4))
    again.set_epoch(3)
    assert_same_batches(list(again), batches)


# --------------------------------------------------------------------------- collate


def _cells() -> tuple[list[np.ndarray], list[np.ndarray]]:
    genes = [np.array([5, 6, 7]), np.array([8]), np.array([9, 10, 11, 12, 13, 14])]
    values = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8, 9, 9])]
    return genes, values


def test_collate_pads_to_longest_and_truncates() -> None:
    # max_len counts genes: <cls> + at most 4 genes
    collate = Collator(max_len=4, value_kind="bin", n_value_tokens=10, mask_ratio=0.0)
    out = collate(*_cells())
    assert out["genes"].tolist() == [[1, 5, 6, 7, 0], [1, 8, 0, 0, 0], [1, 9, 10, 11, 12]]
    assert out["values"].tolist() == [[0, 1, 2, 3, 0], [0, 4, 0, 0, 0], [0, 5, 6, 7, 8]]
    assert out["padding_mask"].tolist() == [
        [False, False, False, False, True],
        [False, False, True, True, True],
        [False] * 5,
    ]
    assert out["genes"].dtype == torch.int64 and out["values"].dtype == torch.int64
    assert "mask" not in out and "target_values" not in out

    short = Collator(max_len=10, value_kind="bin", n_value_tokens=10, mask_ratio=0.0)
    assert short([np.array([5])], [np.array([1])])["genes"].tolist() == [[1, 5]]


def test_collate_pads_to_max_len() -> None:
    collate = Collator(
        max_len=7, value_kind="bin", n_value_tokens=10, pad_to="max_len", mask_ratio=0.0
    )
    out = collate(*_cells())
    assert out["genes"].shape == (3, 8)  # <cls> + 7 genes
    assert out["genes"][1].tolist() == [1, 8, 0, 0, 0, 0, 0, 0]
    assert out["padding_mask"].sum(1).tolist() == [4, 6, 1]


def test_collate_masks_gene_positions_only() -> None:
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 40, 2000)
    genes = [rng.integers(4, 100, k) for k in lens]
    values = [rng.integers(1, 10, k) for k in lens]
    collate = Collator(max_len=32, value_kind="bin", n_value_tokens=10, mask_ratio=0.3)
    out = collate(genes, values, rng=np.random.default_rng(1))
    mask, pad = out["mask"], out["padding_mask"]
    assert not mask[:, 0].any() and not (mask & pad).any()
    ratio = mask.sum().item() / (~pad[:, 1:]).sum().item()
    assert abs(ratio - 0.3) < 0.01
    assert (out["values"][mask] == 10).all()  # the dedicated mask value = n_value_tokens
    unmasked = ~mask
    assert torch.equal(out["values"][unmasked], out["target_values"][unmasked])
    reference = collate.__class__(max_len=32, value_kind="bin", n_value_tokens=10, mask_ratio=0)
    plain = reference(genes, values)
    assert torch.equal(out["target_values"], plain["values"])
    assert torch.equal(out["genes"], plain["genes"])  # gene ids are never masked for bin


def test_collate_float_and_none() -> None:
    genes, values = _cells()
    fvals = [v.astype(np.float32) + 0.5 for v in values]
    out = Collator(max_len=4, value_kind="float", mask_ratio=0.5)(
        genes, fvals, rng=np.random.default_rng(0)
    )
    assert out["values"].dtype == torch.float32 and out["mask"].any()
    assert (out["values"][out["mask"]] == 0.0).all()
    assert (out["target_values"][out["mask"]] > 0).all()

    collate = Collator(max_len=4, value_kind="none", mask_id=2, mask_ratio=0.5)
    out = collate(genes, rng=np.random.default_rng(0))
    assert "values" not in out and out["mask"].any()
    assert (out["genes"][out["mask"]] == 2).all()
    assert out["target_genes"].tolist() == [[1, 5, 6, 7, 0], [1, 8, 0, 0, 0], [1, 9, 10, 11, 12]]


def test_collate_config_errors() -> None:
    with pytest.raises(ScfmConfigError, match="n_value_tokens"):
        Collator(max_len=5, value_kind="bin")
    with pytest.raises(ScfmConfigError, match="mask_id"):
        Collator(max_len=5, value_kind="none", mask_ratio=0.1)


def test_loader_batches_match_shard_contents(corpus: Path) -> None:
    cfg = LoaderConfig(batch_size=16, block_size=8, max_len=11, mask_ratio=0.0, seed=2)
    loader = CorpusLoader(corpus, cfg)
    manifest = json.loads(corpus.read_text())
    tables = [ipc.open_file(str(corpus.parent / s["path"])).read_all() for s in manifest["shards"]]
    for batch in loader:
        assert batch["genes"].shape[1] <= 12
        for i, cell in enumerate(batch["cell_index"].tolist()):
            s, r = (int(x) for x in decode_cell_index(cell))
            row = tables[s].slice(r, 1).to_pylist()[0]
            n = min(len(row["genes"]), 11)
            assert batch["genes"][i, 1 : n + 1].tolist() == row["genes"][:n]
            assert batch["values"][i, 1 : n + 1].tolist() == row["values"][:n]
            assert batch["padding_mask"][i].sum().item() == batch["genes"].shape[1] - n - 1
            for key in ("dataset", "cell_type", "batch"):
                assert batch[key][i] == row[key]


@pytest.mark.parametrize("value_kind", ["float", "none"])
def test_loader_float_and_none_corpora(tmp_path: Path, value_kind: str) -> None:
    manifest = make_corpus(tmp_path, value_kind=value_kind, val=False)
    loader = CorpusLoader(manifest, LoaderConfig(**SMALL, mask_ratio=0.3))
    batches = list(loader)
    assert sorted(cells_of(batches)) == all_train_cells(manifest)
    b = batches[0]
    assert b["genes"].shape[1] <= MAX_GENES + 1  # default max_len: the manifest's, + <cls>
    if value_kind == "float":
        assert b["values"].dtype == torch.float32 and "target_values" in b
    else:
        assert "values" not in b and "target_genes" in b
        assert (b["genes"][b["mask"]] == SPECIAL["<mask>"]).all()


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_batches_other_seed_other_order(corpus: Path) -> None:
    a = list(CorpusLoader(corpus, LoaderConfig(**SMALL, seed=7)))
    b = list(CorpusLoader(corpus, LoaderConfig(**SMALL, seed=7)))
    c = list(CorpusLoader(corpus, LoaderConfig(**SMALL, seed=8)))
    assert_same_batches(a, b)
    assert cells_of(a) != cells_of(c)
    assert sorted(cells_of(a)) == sorted(cells_of(c))
    loader = CorpusLoader(corpus, LoaderConfig(**SMALL, seed=7))
    list(loader)
    assert cells_of(list(loader)) != cells_of(a)  # the next epoch has a new order


def test_shuffle_buffer_push_matches_one_by_one() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        buf = rng.integers(0, 1000, 5)
        items = rng.integers(1000, 2000, 12)
        slots = rng.integers(0, 5, 12)
        ref_buf, ref_out = buf.copy(), []
        for x, j in zip(items, slots, strict=True):
            ref_out.append(ref_buf[j])
            ref_buf[j] = x
        out = _push(buf, items, slots)
        assert out.tolist() == ref_out and buf.tolist() == ref_buf.tolist()


# --------------------------------------------------------------------------- weights


def test_weighted_dataset_appears_three_times_as_often(tmp_path: Path) -> None:
    layout = {"a": [300], "b": [300]}
    weights = {"by": "dataset", "values": {"a": 3.0, "b": 1.0}}
    manifest = make_corpus(tmp_path, layout=layout, weights=weights, val=False)
    cfg = LoaderConfig(batch_size=64, block_size=32, weighted=True, mask_ratio=0.0)
    counts: Counter[str] = Counter()
    per_rank: list[int] = []
    for rank in range(2):
        loader = CorpusLoader(manifest, cfg, rank=rank, world_size=2)
        for _ in range(3):
            for batch in loader:
                counts.update(batch["dataset"])
                per_rank += batch["cell_index"].tolist()
    assert 2.6 < counts["a"] / counts["b"] < 3.4
    # copies of a cell stay with one worker: the two ranks' multisets add up to one rank's
    single = CorpusLoader(manifest, cfg)
    alone: list[int] = []
    for _ in range(3):
        alone += cells_of(list(single))
    assert Counter(per_rank) == Counter(alone)


def test_weights_by_cell_type(tmp_path: Path) -> None:
    weights = {"by": "cell_type", "values": {"T": 4.0, "B": 1.0}}  # NK unlisted: weight 1
    manifest = make_corpus(tmp_path, weights=weights, val=False)
    cfg = LoaderConfig(batch_size=16, weighted=True, mask_ratio=0.0)
    counts: Counter[str] = Counter()
    loader = CorpusLoader(manifest, cfg)
    for _ in range(20):
        for batch in loader:
            counts.update(batch["cell_type"])
    assert 3.3 < counts["T"] / counts["B"] < 4.7 and 0.8 < counts["NK"] / counts["B"] < 1.25


def test_weighted_without_manifest_weights(corpus: Path) -> None:
    with pytest.raises(ScfmInputError, match=r"weights\.by"):
        CorpusLoader(corpus, LoaderConfig(weighted=True))


# --------------------------------------------------------------------------- bad input


def _first_train_shard(manifest: Path) -> Path:
    return manifest.parent / json.loads(manifest.read_text())["shards"][0]["path"]


def test_corrupt_shard_is_named(tmp_path: Path) -> None:
    manifest = make_corpus(tmp_path, val=False)
    shard = _first_train_shard(manifest)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ScfmInputError, match="sha256") as err:
        CorpusLoader(manifest)
    assert err.value.path == str(shard)


def test_truncated_shard_is_named_even_without_hashing(tmp_path: Path) -> None:
    manifest = make_corpus(tmp_path, val=False)
    shard = _first_train_shard(manifest)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ScfmInputError, match="sha256"):
        CorpusLoader(manifest)
    with pytest.raises(ScfmInputError, match="Arrow IPC") as err:
        CorpusLoader(manifest, LoaderConfig(verify=False))
    assert err.value.path == str(shard)


def test_vocab_hash_mismatch_names_file_and_field(tmp_path: Path) -> None:
    manifest = make_corpus(tmp_path, val=False)
    shard = _first_train_shard(manifest)
    table = ipc.open_file(str(shard)).read_all()
    _write_shard(shard, table, {"vocab_hash": "ffffffffffffffff"})
    m = json.loads(manifest.read_text())
    m["shards"][0]["sha256"] = _sha(shard)  # a consistent manifest, wrong vocabulary
    manifest.write_text(json.dumps(m))
    with pytest.raises(ScfmInputError, match="ffffffffffffffff") as err:
        CorpusLoader(manifest)
    assert err.value.path == str(shard) and "vocab_hash" in err.value.field


def test_row_count_and_schema_mismatch(tmp_path: Path) -> None:
    manifest = make_corpus(tmp_path, val=False)
    m = json.loads(manifest.read_text())
    m["shards"][0]["n_cells"] += 1
    m["splits"]["train"] += 1
    manifest.write_text(json.dumps(m))
    with pytest.raises(ScfmInputError, match="rows"):
        CorpusLoader(manifest)
    m["shards"][0]["n_cells"] -= 1
    m["splits"]["train"] -= 1
    m["value_kind"] = "float"
    manifest.write_text(json.dumps(m))
    with pytest.raises(ScfmInputError, match="list<float32>") as err:
        CorpusLoader(manifest)
    assert err.value.field == "values"


def test_empty_split(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ScfmInputError, match="no cells") as err:
        CorpusLoader(corpus, LoaderConfig(split="test"))
    assert err.value.path == str(corpus)
    manifest = make_corpus(tmp_path, val=False)
    m = json.loads(manifest.read_text())
    m["splits"]["train"] = 5
    manifest.write_text(json.dumps(m))
    with pytest.raises(ScfmInputError, match=r"splits\.train"):
        CorpusLoader(manifest)


def test_config_validation_names_every_problem() -> None:
    with pytest.raises(ScfmConfigError) as err:
        LoaderConfig(batch_size=0, pad_to="shortest", mask_ratio=1.0, seed=-1)  # type: ignore[arg-type]
    assert len(err.value.problems) == 4
    assert LoaderConfig(split="val").shuffles is False
    assert LoaderConfig().shuffles is True


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("kind", ["binned", "rank"])
def test_reads_shards_written_by_the_sharding_stage(tmp_path: Path, kind: str) -> None:
    """The real writer and merger produce what the loader reads (guards the contract)."""
    from scfm.io.simulate import simulate_counts
    from scfm.shard import gene_stats, merge_manifests, shard_dataset
    from scfm.tokenize import Vocab, build_vocab, write_vocab

    sources = {}
    for i, name in enumerate(("a", "b")):
        sim = simulate_counts(n_cells=120, n_genes=60, seed=i)
        sim.var_names = [f"SIMG{g:05d}" for g in range(60)]
        sim.var["n_cells"] = np.asarray((sim.X > 0).sum(axis=0)).ravel()
        sim.obs["dataset"] = name
        sim.obs_names = [f"{name}-{c}" for c in range(120)]
        del sim.uns["simulation"]
        sim.write_h5ad(tmp_path / f"{name}.h5ad")
        sources[name] = tmp_path / f"{name}.h5ad"
    vocab = tmp_path / "vocab.tsv"
    write_vocab(build_vocab(sources, min_cells=1), vocab)
    stats = None
    if kind == "rank":
        stats = tmp_path / "stats.tsv"
        gene_stats(sources, Vocab.read(vocab), stats)
    split = {"by": "cell", "val": 0.1, "test": 0.1, "seed": 0}
    manifests = {}
    for name, src in sources.items():
        out = tmp_path / "corp" / kind / "datasets" / name
        tokenizer = {"kind": kind}
        shard_dataset(
            src,
            out,
            dataset=name,
            vocab_path=vocab,
            tokenizer=tokenizer,
            split=split,
            gene_stats=stats,
            cells_per_shard=50,
        )
        manifests[name] = out / "manifest.json"
    path = tmp_path / "corp" / kind / "manifest.json"
    merge_manifests(manifests, path, corpus="corp", tokenizer=kind, vocab_path=vocab)

    batches = list(CorpusLoader(path, LoaderConfig(batch_size=16, block_size=8)))
    assert sorted(cells_of(batches)) == all_train_cells(path)
    shards = json.loads(path.read_text())["shards"]
    s, r = (int(x) for x in decode_cell_index(batches[0]["cell_index"][0]))
    row = ipc.open_file(str(path.parent / shards[s]["path"])).read_all().slice(r, 1).to_pylist()[0]
    key = "genes" if kind == "rank" else "values"
    target = batches[0]["target_" + key][0]  # the unmasked row
    assert target[1 : len(row[key]) + 1].tolist() == row[key]
