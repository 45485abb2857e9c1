"""CorpusManifest: the one type every corpus manifest reader and writer goes through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scfm.errors import ScfmInputError
from scfm.shard.manifest import CorpusManifest

#: A manifest as merge_manifests wrote them before the type existed (plus an unknown key).
ON_DISK = {
    "corpus": "c",
    "tokenizer": "binned",
    "tokenizer_params": {"kind": "binned", "max_len": 24, "n_bins": 7},
    "vocab_path": "../vocab.tsv",
    "vocab_hash": "abc",
    "vocab_size": 40,
    "special_tokens": {"<pad>": 0, "<cls>": 1, "<mask>": 2},
    "value_kind": "bin",
    "n_value_tokens": 7,
    "max_len": 24,
    "shards": [
        {
            "path": "datasets/a/train/shard-00000.arrow",
            "dataset": "a",
            "split": "train",
            "n_cells": 10,
            "n_tokens": 200,
            "sha256": "f" * 64,
        }
    ],
    "splits": {"train": 10, "val": 0, "test": 0},
    "datasets": {"a": {"source": "a.h5ad", "sha256": "e", "n_cells": 10}},
    "weights": None,
    "created": "2026-01-01T00:00:00Z",
    "versions": {"scfm": "0.1"},
    "from_the_future": {"kept": True},
}


def test_reads_a_manifest_on_disk_and_writes_it_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "c" / "manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps(ON_DISK))
    m = CorpusManifest.read(path)
    assert m.max_len == 24 and m.shards[0].n_cells == 10 and m.split_cells("train") == 10
    assert m.vocab_file == path.parent / "../vocab.tsv"
    assert m.resolve(m.shards[0].path) == path.parent / "datasets/a/train/shard-00000.arrow"
    assert m.extra == {"from_the_future": {"kept": True}}
    m.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == ON_DISK
    # the identity ignores where and when, not what
    moved = m.replace(vocab_path="vocab.tsv", created="later", corpus="renamed")
    assert moved.identity() == m.identity()
    other = dict(ON_DISK, shards=[{**ON_DISK["shards"][0], "sha256": "0" * 64}])
    assert CorpusManifest.from_dict(other).identity() != m.identity()


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ({"value_kind": "bins"}, "value_kind", "one of"),
        ({"n_value_tokens": None}, "n_value_tokens", "an integer >= 1 for 'bin'"),
        ({"max_len": "24"}, "max_len", "an integer >= 1"),
        ({"vocab_size": None}, "vocab_size", "an integer >= 1"),
        ({"special_tokens": {"<pad>": 0}}, "special_tokens", "integer ids for"),
        ({"shards": {}}, "shards", "a list of shard entries"),
        ({"shards": [{"path": "x"}]}, "shards[0].dataset", "a string"),
        ({"splits": {"train": -1}}, "splits", "integer >= 0"),
        ({"tokenizer_params": []}, "tokenizer_params", "a JSON object"),
    ],
)
def test_bad_fields_name_the_file_and_field(
    tmp_path: Path, change: dict, field: str, expected: str
) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({**ON_DISK, **change}))
    with pytest.raises(ScfmInputError) as e:
        CorpusManifest.read(path)
    assert str(path) in str(e.value) and field in str(e.value) and expected in str(e.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ScfmInputError, match="file: missing"):
        CorpusManifest.read(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ScfmInputError, match="not readable"):
        CorpusManifest.read(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ScfmInputError, match="a JSON object"):
        CorpusManifest.read(tmp_path / "list.json")
