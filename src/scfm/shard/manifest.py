"""The corpus manifest (``results/corpus/<corpus>/<tokenizer>/manifest.json``): one owning type.

:class:`CorpusManifest` is read (and checked, once) by every stage that uses a corpus -- the
loader, the trainer, the registry, the leakage report, a registered corpus' fetch -- and
written by :func:`scfm.shard.merge_manifests` (and the fetch of a registered corpus). A bad
file raises :class:`~scfm.errors.ScfmInputError` naming the file, the field and what was
expected.

The JSON is the one written since the corpus stage exists (docs/contracts.md): no format field;
keys the type does not know are kept (``extra``) and written back unchanged. ``max_len`` is
genes per cell, without ``<cls>`` (the tokenizer's ``max_len``; see
:func:`scfm.spec.tokens_per_cell`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scfm.atomic import write_text_atomic
from scfm.errors import ScfmInputError

VALUE_KINDS = ("bin", "count", "float", "none")
SPLITS = ("train", "val", "test")
#: Special tokens the loader needs ids for.
NEEDED_SPECIAL = ("<pad>", "<cls>")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class ShardEntry:
    """One shard of the corpus: its file (relative to the manifest), dataset, split, size, hash."""

    path: str
    dataset: str
    split: str
    n_cells: int
    sha256: str
    n_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry's JSON object, keys in the order written so far (``n_tokens`` if known)."""
        out = {k: getattr(self, k) for k in ("path", "dataset", "split", "n_cells", "n_tokens")}
        if out["n_tokens"] is None:
            del out["n_tokens"]
        return {**out, "sha256": self.sha256}


@dataclass(frozen=True)
class CorpusManifest:
    """A sharded corpus: vocabulary, tokenizer, value convention, shards and splits.

    Build one with :meth:`read` (or :meth:`from_dict`); ``write`` writes it atomically.
    ``source`` is the file it was read from (``None`` for a new one); relative paths
    (``vocab_path``, shard paths) are relative to its directory.
    """

    vocab_hash: str
    vocab_size: int
    special_tokens: Mapping[str, int]
    value_kind: str
    n_value_tokens: int | None
    max_len: int
    shards: tuple[ShardEntry, ...]
    corpus: str = ""
    tokenizer: str = ""
    tokenizer_params: Mapping[str, Any] = field(default_factory=dict)
    vocab_path: str = "vocab.tsv"
    splits: Mapping[str, int] | None = None
    datasets: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, Any] | None = None
    created: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    registry: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ reading

    @classmethod
    def read(cls, path: str | Path) -> CorpusManifest:
        """Read and check a corpus manifest.

        Raises
        ------
        ScfmInputError
            Missing or unreadable file, not a JSON object, or a field of the wrong type or
            range (named, with what was expected).
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ScfmInputError(path, "file", "missing", "a corpus manifest.json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScfmInputError(path, "file", f"not readable ({e})", "a corpus manifest") from None
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(cls, raw: Any, *, source: str | Path | None = None) -> CorpusManifest:
        """Check a manifest's JSON object (``source`` names it in errors)."""
        where = source if source is not None else "<corpus manifest>"

        def bad(fld: str, got: Any, expected: str) -> ScfmInputError:
            return ScfmInputError(where, fld, repr(got), expected)

        if not isinstance(raw, dict):
            raise ScfmInputError(where, "(top level)", f"a {type(raw).__name__}", "a JSON object")
        m = dict(raw)
        kind = m.get("value_kind")
        if kind not in VALUE_KINDS:
            raise bad("value_kind", kind, f"one of {VALUE_KINDS}")
        nvt = m.get("n_value_tokens")
        if kind in ("bin", "count") and (not _is_int(nvt) or nvt < 1):
            raise bad("n_value_tokens", nvt, f"an integer >= 1 for {kind!r}")
        if not _is_int(m.get("max_len")) or m["max_len"] < 1:
            raise bad("max_len", m.get("max_len"), "an integer >= 1 (genes per cell)")
        if not isinstance(m.get("vocab_hash"), str):
            raise bad("vocab_hash", m.get("vocab_hash"), "a string")
        if not _is_int(m.get("vocab_size")) or m["vocab_size"] < 1:
            raise bad("vocab_size", m.get("vocab_size"), "an integer >= 1")
        special = m.get("special_tokens")
        if not isinstance(special, dict) or not all(
            _is_int(special.get(t)) for t in NEEDED_SPECIAL
        ):
            raise bad("special_tokens", special, f"integer ids for {NEEDED_SPECIAL}")
        if not isinstance(m.get("shards"), list):
            raise bad("shards", m.get("shards"), "a list of shard entries")
        shards = tuple(_shard(where, i, s) for i, s in enumerate(m["shards"]))
        for key in ("corpus", "tokenizer", "vocab_path", "created"):
            if key in m and not isinstance(m[key], str):
                raise bad(key, m[key], "a string")
        for key in ("tokenizer_params", "datasets", "versions"):
            if m.get(key) is not None and not isinstance(m[key], dict):
                raise bad(key, m[key], "a JSON object")
        splits = m.get("splits")
        if splits is not None and not (
            isinstance(splits, dict) and all(_is_int(v) and v >= 0 for v in splits.values())
        ):
            raise bad("splits", splits, "cells per split: {split: integer >= 0}")
        weights = m.get("weights")
        if weights is not None and not (
            isinstance(weights, dict) and isinstance(weights.get("values", {}), dict | None)
        ):
            raise bad("weights", weights, "{'by': ..., 'values': {...}}")
        if m.get("registry") is not None and not isinstance(m["registry"], dict):
            raise bad("registry", m["registry"], "a JSON object")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "source", "shards"}
        known = {k: m.pop(k) for k in list(m) if k in names}
        m.pop("shards")
        known["tokenizer_params"] = known.get("tokenizer_params") or {}
        known["datasets"] = known.get("datasets") or {}
        known["versions"] = known.get("versions") or {}
        return cls(
            **known,
            shards=shards,
            extra=m,
            source=Path(source) if source is not None else None,
        )

    # ------------------------------------------------------------------ writing

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (fields in the order of the files written so far, then ``extra``)."""
        order = (
            "corpus",
            "tokenizer",
            "tokenizer_params",
            "vocab_path",
            "vocab_hash",
            "vocab_size",
            "special_tokens",
            "value_kind",
            "n_value_tokens",
            "max_len",
            "shards",
            "splits",
            "datasets",
            "weights",
            "created",
            "versions",
        )
        out: dict[str, Any] = {}
        for key in order:
            value = getattr(self, key)
            if key == "shards":
                value = [s.to_dict() for s in self.shards]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[key] = value
        if self.registry is not None:
            out["registry"] = dict(self.registry)
        out.update(self.extra)
        return out

    def write(self, path: str | Path) -> Path:
        """Write the manifest atomically (temporary file, then rename)."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, default=str))
        return path

    def replace(self, **changes: Any) -> CorpusManifest:
        """A copy with ``changes`` (checked like a read manifest)."""
        raw = {**self.to_dict(), **changes}
        return CorpusManifest.from_dict(raw, source=self.source)

    # ------------------------------------------------------------------ derived

    @property
    def directory(self) -> Path:
        """The directory relative paths are resolved against (``source``'s)."""
        if self.source is None:
            raise ValueError("a manifest that was not read from a file has no directory")
        return self.source.parent

    def resolve(self, relative: str) -> Path:
        """A path of the manifest (shard, vocabulary) as a path on disk."""
        return self.directory / relative

    @property
    def vocab_file(self) -> Path:
        """The corpus vocabulary (``vocab_path`` resolved)."""
        return self.resolve(self.vocab_path)

    def split_cells(self, split: str) -> int:
        """Cells of a split, summed over its shards."""
        return sum(s.n_cells for s in self.shards if s.split == split)

    def identity(self) -> dict[str, Any]:
        """What the corpus' tokens are, independent of where it lies and when it was made.

        Vocabulary hash, tokenizer parameters, value convention, sampling weights and every
        shard's dataset, split, size and sha256 (digested). Two corpora with the same identity
        give a trainer the same batches.
        """
        shards = sorted((s.dataset, s.split, s.n_cells, s.sha256) for s in self.shards)
        digest = hashlib.sha256(json.dumps(shards).encode()).hexdigest()
        return {
            "vocab_hash": self.vocab_hash,
            "tokenizer_params": dict(self.tokenizer_params),
            "value_kind": self.value_kind,
            "n_value_tokens": self.n_value_tokens,
            "max_len": self.max_len,
            "weights": dict(self.weights) if self.weights else None,
            "shards": digest,
        }


_SHARD_STRINGS = ("path", "dataset", "split", "sha256")


def _shard(where: Any, i: int, s: Any) -> ShardEntry:
    if not isinstance(s, dict):
        raise ScfmInputError(where, f"shards[{i}]", repr(s), "an object")
    for key in _SHARD_STRINGS:
        if not isinstance(s.get(key), str):
            raise ScfmInputError(where, f"shards[{i}].{key}", repr(s.get(key)), "a string")
    if not _is_int(s.get("n_cells")) or s["n_cells"] < 0:
        raise ScfmInputError(where, f"shards[{i}].n_cells", repr(s.get("n_cells")), "int >= 0")
    n_tokens = s.get("n_tokens")
    if n_tokens is not None and (not _is_int(n_tokens) or n_tokens < 0):
        raise ScfmInputError(where, f"shards[{i}].n_tokens", repr(n_tokens), "int >= 0")
    return ShardEntry(
        path=s["path"],
        dataset=s["dataset"],
        split=s["split"],
        n_cells=s["n_cells"],
        sha256=s["sha256"],
        n_tokens=n_tokens,
    )
