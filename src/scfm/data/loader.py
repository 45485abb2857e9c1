"""Training data loader: memory-mapped corpus shards to tokenized, masked, padded batches.

Reading. Shards are Arrow IPC files in the corpus shard format agreed with the sharding stage.
They are opened with ``pyarrow.memory_map`` and their list columns become zero-copy numpy views
(offsets + flat values), so a process touches only the pages of the cells it batches. A cell is
addressed by its *cell index* ``shard << 32 | row``, ``shard`` being its manifest position.

Order. Each epoch every shard of the split is cut into row blocks of ``block_size``; the block
list is shuffled with ``rng(seed, epoch)`` and block ``i`` goes to global worker
``i % (world_size * workers_per_rank)``, global worker ``= rank * workers_per_rank +
worker_id``. Ranks and workers therefore see disjoint cells, and each worker's sequence of
batches is a pure function of (seed, epoch, global worker): that is what makes exact resume
possible without reading the skipped batches. Within a worker the block rows stream through a
seeded shuffle buffer and are batched there (the dataset yields ready batches). Each worker
ends with its own incomplete batch unless ``drop_last``; ranks may get a few batches more or
less than each other (blocks are dealt, not cells), so a DDP loop should stop on a step count.

Weighted sampling gives each cell ``floor(w / mean_w) + (u < frac(w / mean_w))`` copies per
epoch, ``u`` a hash of (seed, epoch, cell): deterministic, and copies stay with the cell's
worker, so partitioning and resume hold.

Verification. With ``verify=True`` (the default) every shard of the split is hashed once, when
the corpus is opened, in the calling process, before any batch is built: a corrupt or truncated
shard fails there with :class:`~scfm.errors.ScfmInputError` naming the file, rather than as an
opaque error inside a DataLoader worker. Hashing costs about a second per GB; set
``verify=False`` only for shards verified by other means. Structural checks (readable Arrow
file, columns and types, ``vocab_hash`` in the schema metadata, row count) always run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scfm.errors import ScfmConfigError, ScfmInputError
from scfm.io.download import hash_file
from scfm.shard.manifest import CorpusManifest
from scfm.spec import max_len_problems, tokens_per_cell

ValueKind = Literal["bin", "count", "float", "none"]
PadTo = Literal["longest", "max_len"]

VALUE_KINDS = ("bin", "count", "float", "none")
OBS_COLUMNS = ("dataset", "cell_type", "batch")
_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1
_MASK64 = (1 << 64) - 1
# Tags keep the random streams drawn from one (seed, epoch) independent of each other.
_TAG_BLOCKS, _TAG_BUFFER, _TAG_MASK, _TAG_WEIGHTS = 0xB10C, 0xB0FF, 0x3A5C, 0x3E16


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LoaderConfig:
    """How to turn a corpus split into training batches.

    Parameters
    ----------
    split
        Manifest split to read ("train", "val", "test").
    batch_size
        Cells per batch.
    max_len
        Genes per cell (``<cls>`` is added: rows have up to ``max_len + 1`` tokens); longer
        cells are truncated (the first genes in the tokenizer's order are kept). ``None``: the
        manifest's ``max_len``.
    pad_to
        "longest": pad to the longest cell of the batch; "max_len": always to ``max_len`` genes.
    mask_ratio
        Probability that a gene position is masked (Bernoulli per position, so the count varies
        per cell); 0 disables masking.
    shuffle
        Shuffle blocks and cells; ``None`` means shuffle only the "train" split.
    shuffle_buffer
        Cells held by each worker's shuffle buffer (larger mixes better, costs index memory only).
    block_size
        Rows per partition block: the unit that is shuffled and dealt to ranks and workers.
    seed
        Seeds block order, shuffle buffers, weighted sampling and masking.
    weighted
        Sample with the manifest's ``weights`` (by dataset or cell type).
    drop_last
        Drop each worker's last incomplete batch.
    verify
        Hash every shard of the split against the manifest when the corpus is opened.
    """

    split: str = "train"
    batch_size: int = 64
    max_len: int | None = None
    pad_to: PadTo = "longest"
    mask_ratio: float = 0.15
    shuffle: bool | None = None
    shuffle_buffer: int = 8192
    block_size: int = 1024
    seed: int = 0
    weighted: bool = False
    drop_last: bool = False
    verify: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.split, str) or not self.split:
            problems.append(f"split: {self.split!r} is not a non-empty string")
        for name, low in (("batch_size", 1), ("shuffle_buffer", 1), ("block_size", 1)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                problems.append(f"{name}: {getattr(self, name)!r} is not an integer >= {low}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            problems.append(f"seed: {self.seed!r} is not an integer in [0, 2**63)")
        problems += max_len_problems(self.max_len, nullable=True)
        if self.pad_to not in ("longest", "max_len"):
            problems.append(f"pad_to: {self.pad_to!r} is not 'longest' or 'max_len'")
        ratio = self.mask_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
            problems.append(f"mask_ratio: {ratio!r} is not a number in [0, 1)")
        if self.shuffle is not None and not isinstance(self.shuffle, bool):
            problems.append(f"shuffle: {self.shuffle!r} is not null or a boolean")
        for name in ("weighted", "drop_last", "verify"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}: {getattr(self, name)!r} is not a boolean")
        if problems:
            raise ScfmConfigError(problems, source="LoaderConfig")

    @property
    def shuffles(self) -> bool:
        """Whether this split is shuffled (``shuffle``, or "train" only when unset)."""
        return self.split == "train" if self.shuffle is None else self.shuffle


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


# --------------------------------------------------------------------------- cell index


def encode_cell_index(shard: int | np.ndarray, row: int | np.ndarray) -> np.ndarray:
    """Global cell index ``shard << 32 | row`` (int64); ``shard`` is the manifest position."""
    return (np.asarray(shard, dtype=np.int64) << _ROW_BITS) | np.asarray(row, dtype=np.int64)


def decode_cell_index(index: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_cell_index`: ``(shard, row)`` arrays."""
    index = np.asarray(index, dtype=np.int64)
    return index >> _ROW_BITS, index & _ROW_MASK


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class ShardInfo:
    """One manifest shard entry; ``index`` is its position in the manifest's ``shards``."""

    index: int
    path: Path
    dataset: str
    split: str
    n_cells: int
    sha256: str


class Corpus:
    """One split of a sharded corpus: the manifest's conventions and its memory-mapped shards.

    Use :meth:`open`. Shards are mapped lazily, once per process; the mapping cache is not
    pickled, so DataLoader workers started by spawn map their own.
    """

    def __init__(self, manifest_path: Path, manifest: CorpusManifest, split: str) -> None:
        self.manifest_path = manifest_path
        self.manifest = manifest
        self.split = split
        self.value_kind: ValueKind = manifest.value_kind  # type: ignore[assignment]
        self.n_value_tokens: int | None = manifest.n_value_tokens
        self.max_len: int = manifest.max_len  # genes per cell
        self.vocab_hash: str = manifest.vocab_hash
        self.special_tokens: dict[str, int] = dict(manifest.special_tokens)
        root = manifest_path.parent
        self.shards = tuple(
            ShardInfo(i, root / s.path, s.dataset, s.split, s.n_cells, s.sha256)
            for i, s in enumerate(manifest.shards)
        )
        self.split_shards = tuple(s for s in self.shards if s.split == split and s.n_cells > 0)
        self.n_cells = sum(s.n_cells for s in self.split_shards)
        weights = manifest.weights or {}
        self.weights_by: str | None = weights.get("by")
        self.weight_values: dict[str, float] = dict(weights.get("values") or {})
        self._mapped: dict[int, _MappedShard] = {}
        self._weights: dict[int, float | np.ndarray] = {}
        self._mean_weight: float | None = None

    @classmethod
    def open(
        cls, manifest_path: str | PathLike[str], *, split: str = "train", verify: bool = True
    ) -> Corpus:
        """Read and check the manifest, then check (and with ``verify`` hash) the split's shards.

        Raises
        ------
        ScfmInputError
            Unreadable or malformed manifest, a split without cells, a missing, unreadable,
            truncated or corrupt shard, a shard whose schema or ``vocab_hash`` disagrees with
            the manifest.
        """
        path = Path(manifest_path)
        manifest = CorpusManifest.read(path)
        corpus = cls(path, manifest, split)
        if corpus.n_cells == 0:
            raise ScfmInputError(
                path,
                f"shards (split {split!r})",
                "the split has no cells",
                "at least one shard of this split with n_cells > 0",
            )
        _check_split_count(path, manifest, split, corpus.n_cells)
        for info in corpus.split_shards:
            if verify:
                _verify_sha256(info)
            _check_shard_file(info, corpus)
        return corpus

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mapped"] = {}  # memory maps do not cross process boundaries
        state["_weights"] = {}  # per-cell arrays: cheaper to rebuild than to pickle
        return state

    def mapped(self, shard: int) -> _MappedShard:
        """The memory-mapped shard at manifest position ``shard`` (mapped on first use)."""
        view = self._mapped.get(shard)
        if view is None:
            view = self._mapped[shard] = _MappedShard(self.shards[shard], self)
        return view

    def cell_weights(self, shard: int) -> float | np.ndarray:
        """Sampling weight of each row of a shard (a scalar when weights are by dataset)."""
        if shard not in self._weights:
            if self.weights_by == "dataset":
                w = float(self.weight_values.get(self.shards[shard].dataset, 1.0))
            else:
                codes, categories = self.mapped(shard).obs["cell_type"]
                table = [self.weight_values.get(c, 1.0) for c in categories]
                w = np.asarray(table, dtype=np.float64)[codes]
            self._weights[shard] = w
        return self._weights[shard]

    def mean_weight(self) -> float:
        """Mean sampling weight over the split's cells (unlisted keys weigh 1)."""
        if self._mean_weight is None:
            self._check_weights()
            total = 0.0
            for info in self.split_shards:
                w = self.cell_weights(info.index)
                total += w * info.n_cells if np.isscalar(w) else float(np.sum(w))
            if total <= 0:
                raise ScfmInputError(
                    self.manifest_path,
                    "weights.values",
                    "every cell of the split weighs 0",
                    "a positive weight for some cells",
                )
            self._mean_weight = total / self.n_cells
        return self._mean_weight

    def _check_weights(self) -> None:
        if self.weights_by not in ("dataset", "cell_type"):
            raise ScfmInputError(
                self.manifest_path,
                "weights.by",
                f"{self.weights_by!r} (no sampling weights)",
                "'dataset' or 'cell_type' when LoaderConfig.weighted is true",
            )
        for key, w in self.weight_values.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not w >= 0:
                raise ScfmInputError(
                    self.manifest_path, f"weights.values.{key}", f"{w!r}", "a number >= 0"
                )


def _check_split_count(path: Path, manifest: CorpusManifest, split: str, n_cells: int) -> None:
    """The manifest's ``splits`` total, when given, must match its shards."""
    declared = (manifest.splits or {}).get(split)
    if declared is not None and declared != n_cells:
        raise ScfmInputError(
            path,
            f"splits.{split}",
            f"{declared!r} cells declared",
            f"{n_cells}, the sum of n_cells over the split's shards",
        )


# --------------------------------------------------------------------------- shards


def _verify_sha256(info: ShardInfo) -> None:
    try:
        digest = hash_file(info.path)
    except FileNotFoundError:
        raise ScfmInputError(info.path, "file", "missing", "the shard the manifest lists") from None
    if digest != info.sha256.lower():
        raise ScfmInputError(
            info.path,
            "sha256",
            f"{digest} differs from the manifest's {info.sha256} (corrupt or truncated file)",
            "the bytes the sharding stage wrote",
        )


def _open_table(path: Path) -> pa.Table:
    """Memory-map an Arrow IPC file; reading an uncompressed one this way copies nothing."""
    try:
        return ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except FileNotFoundError:
        raise ScfmInputError(path, "file", "missing", "the shard the manifest lists") from None
    except (pa.ArrowException, OSError) as e:
        raise ScfmInputError(
            path,
            "file",
            f"not a readable Arrow IPC file ({e})",
            "an Arrow IPC file (pyarrow.ipc.new_file), complete and uncompressed",
        ) from None


def _check_shard_file(info: ShardInfo, corpus: Corpus) -> None:
    """Structure only: opens the file, checks schema and rows, keeps nothing mapped."""
    table = _open_table(info.path)
    _check_schema(info.path, table.schema, corpus)
    _check_rows(info, table.num_rows)


def _check_rows(info: ShardInfo, n_rows: int) -> None:
    if n_rows != info.n_cells:
        raise ScfmInputError(
            info.path, "rows", f"{n_rows} rows", f"{info.n_cells} (the manifest's n_cells)"
        )


def _check_schema(path: Path, schema: pa.Schema, corpus: Corpus) -> None:
    raw = (schema.metadata or {}).get(b"scfm")
    try:
        meta = json.loads(raw) if raw is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise ScfmInputError(
            path,
            "schema metadata 'scfm'",
            "missing or not a JSON object",
            'JSON {"vocab_hash": ...} written by the sharding stage',
        )
    if meta.get("vocab_hash") != corpus.vocab_hash:
        raise ScfmInputError(
            path,
            "schema metadata scfm.vocab_hash",
            f"{meta.get('vocab_hash')!r} differs from the manifest's {corpus.vocab_hash!r}",
            "shards tokenized with the manifest's vocabulary (re-run the sharding stage)",
        )
    for name in OBS_COLUMNS:
        _check_column(path, schema, name, pa.types.is_string, "string")
    _check_column(path, schema, "genes", _list_of(pa.types.is_integer), "list<int32>")
    if corpus.value_kind == "none":
        if "values" in schema.names:
            raise ScfmInputError(path, "values", "column present", "no values column for 'none'")
    elif corpus.value_kind == "float":
        _check_column(path, schema, "values", _list_of(pa.types.is_floating), "list<float32>")
    else:
        _check_column(path, schema, "values", _list_of(pa.types.is_integer), "list<int16>")


def _list_of(pred: Any) -> Any:
    return lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t)) and pred(t.value_type)


def _check_column(path: Path, schema: pa.Schema, name: str, ok: Any, expected: str) -> None:
    if name not in schema.names:
        raise ScfmInputError(path, name, "column missing", f"a {expected} column")
    if not ok(schema.field(name).type):
        raise ScfmInputError(path, name, f"type {schema.field(name).type}", expected)


class _MappedShard:
    """A memory-mapped shard: per record batch, zero-copy offsets/genes/values numpy views."""

    def __init__(self, info: ShardInfo, corpus: Corpus) -> None:
        table = _open_table(info.path)
        _check_schema(info.path, table.schema, corpus)
        _check_rows(info, table.num_rows)
        genes = table.column("genes").chunks
        values = table.column("values").chunks if corpus.value_kind != "none" else None
        self.chunk_starts = np.cumsum([0] + [len(c) for c in genes])
        self.offsets = [_list_offsets(info.path, "genes", c) for c in genes]
        self.genes = [_list_flat(info.path, "genes", c) for c in genes]
        self.values = None
        if values is not None:
            for off, c in zip(self.offsets, values, strict=True):
                if not np.array_equal(off, _list_offsets(info.path, "values", c)):
                    raise ScfmInputError(
                        info.path, "values", "row lengths differ from genes", "one value per gene"
                    )
            self.values = [_list_flat(info.path, "values", c) for c in values]
        self.obs = {name: _encode_strings(table.column(name)) for name in OBS_COLUMNS}

    def fill(
        self, rows: np.ndarray, pos: np.ndarray, genes: list[Any], values: list[Any] | None
    ) -> None:
        """Put the views of cell ``rows[i]`` at ``genes[pos[i]]`` (and ``values[pos[i]]``)."""
        chunk = np.searchsorted(self.chunk_starts, rows, side="right") - 1
        local = rows - self.chunk_starts[chunk]
        for c in np.unique(chunk).tolist():
            sel = np.flatnonzero(chunk == c)
            lo = self.offsets[c][local[sel]].tolist()
            hi = self.offsets[c][local[sel] + 1].tolist()
            g = self.genes[c]
            v = self.values[c] if self.values is not None and values is not None else None
            for p, a, b in zip(pos[sel].tolist(), lo, hi, strict=True):
                genes[p] = g[a:b]
                if v is not None:
                    values[p] = v[a:b]  # type: ignore[index]


def _list_offsets(path: Path, name: str, arr: pa.Array) -> np.ndarray:
    if arr.null_count:
        raise ScfmInputError(path, name, f"{arr.null_count} null rows", "a list for every cell")
    return arr.offsets.to_numpy(zero_copy_only=True)


def _list_flat(path: Path, name: str, arr: pa.Array) -> np.ndarray:
    flat = arr.values  # the whole child array: offsets index into it directly
    if flat.null_count:
        raise ScfmInputError(path, name, f"{flat.null_count} null entries", "no nulls")
    return flat.to_numpy(zero_copy_only=True)


def _encode_strings(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes + categories: per-batch obs lookups become list indexing."""
    arr = pc.fill_null(column.combine_chunks(), "")
    encoded = pc.dictionary_encode(arr)
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


# --------------------------------------------------------------------------- collate


@dataclass(frozen=True)
class Collator:
    """Turn cells (gene ids + values) into a padded, optionally masked batch of tensors.

    Each row is ``<cls>`` followed by the cell's first ``max_len`` genes, then ``<pad>``.
    Output keys: ``genes`` (int64 [B, L]); ``values`` (int64 for bin/count, float32 for float;
    absent for value kind "none"; 0 at ``<cls>`` and padding); ``padding_mask`` (bool, True =
    pad). When ``mask_ratio > 0`` also ``mask`` (bool, True = masked; never ``<cls>`` or pad)
    and the unmasked originals of what was replaced, as a full [B, L] tensor: for bin/count
    ``target_values`` with masked ``values`` set to ``n_value_tokens`` (a dedicated mask value,
    one past the largest value token: value embeddings need ``n_value_tokens + 1`` rows); for
    float ``target_values`` with masked ``values`` set to 0.0 (the model must use ``mask``);
    for "none" ``target_genes`` with masked ``genes`` set to ``mask_id``.

    Parameters
    ----------
    max_len
        Genes per row (rows have up to :func:`~scfm.tokenize.tokenizers.tokens_per_cell`
        tokens: ``<cls>`` and the genes).
    value_kind
        The manifest's ``value_kind``.
    n_value_tokens
        Value vocabulary size (bin/count): values lie in ``[0, n_value_tokens)``.
    pad_id, cls_id, mask_id
        Special token ids (``mask_id`` is needed for "none" with masking).
    pad_to
        "longest" (the batch's longest row) or "max_len".
    mask_ratio
        Probability that a gene position is masked.
    """

    max_len: int
    value_kind: ValueKind
    n_value_tokens: int | None = None
    pad_id: int = 0
    cls_id: int = 1
    mask_id: int | None = None
    pad_to: PadTo = "longest"
    mask_ratio: float = 0.15

    def __post_init__(self) -> None:
        problems = []
        problems += max_len_problems(self.max_len)
        if self.value_kind not in VALUE_KINDS:
            problems.append(f"value_kind: {self.value_kind!r} is not one of {VALUE_KINDS}")
        if self.value_kind in ("bin", "count") and not (
            _is_int(self.n_value_tokens) and self.n_value_tokens >= 1
        ):
            problems.append(f"n_value_tokens: {self.n_value_tokens!r} (needed for bin/count)")
        if self.value_kind == "none" and self.mask_ratio > 0 and self.mask_id is None:
            problems.append("mask_id: needed to mask gene tokens when value_kind is 'none'")
        if self.pad_to not in ("longest", "max_len"):
            problems.append(f"pad_to: {self.pad_to!r} is not 'longest' or 'max_len'")
        if not 0 <= self.mask_ratio < 1:
            problems.append(f"mask_ratio: {self.mask_ratio!r} is not in [0, 1)")
        if problems:
            raise ScfmConfigError(problems, source="Collator")

    @property
    def mask_value(self) -> int | float | None:
        """What masked values become: ``n_value_tokens`` (bin/count), 0.0 (float), None."""
        return {"bin": self.n_value_tokens, "count": self.n_value_tokens, "float": 0.0}.get(
            self.value_kind
        )

    def __call__(
        self,
        genes: Sequence[np.ndarray],
        values: Sequence[np.ndarray] | None = None,
        *,
        rng: np.random.Generator | None = None,
        cell_index: np.ndarray | None = None,
        share_memory: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Collate cells.

        Parameters
        ----------
        genes, values
            Per cell, gene ids and (unless value kind "none") values, in the tokenizer's order.
        rng
            Draws the mask; pass a seeded one for reproducible batches.
        cell_index
            Optional int64 ids, returned as ``cell_index``.
        share_memory
            Allocate the batch in shared memory (in DataLoader workers: saves a copy).

        Returns
        -------
        dict
            Tensors that are views of one buffer, so a DataLoader worker hands the whole batch
            over as a single shared-memory segment (one per tensor is several times slower).
        """
        if self.value_kind != "none" and values is None:
            raise ValueError(f"value_kind {self.value_kind!r} needs values")
        lens = np.minimum([len(g) for g in genes], self.max_len).astype(np.int64)
        longest = self.max_len if self.pad_to == "max_len" else int(lens.max(initial=0))
        width = tokens_per_cell(longest)
        out, arrays = _arena(self._layout(len(genes), width, cell_index), share_memory)
        self._fill(arrays, genes, values, lens)
        if self.mask_ratio > 0:
            self._mask(arrays, rng if rng is not None else np.random.default_rng())
        if cell_index is not None:
            arrays["cell_index"][:] = cell_index
        return out

    def _layout(
        self, n: int, width: int, cell_index: np.ndarray | None
    ) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """Name, dtype and shape of each output tensor, widest dtypes first (alignment)."""
        shape = (n, width)
        value = {"float": torch.float32, "none": None}.get(self.value_kind, torch.int64)
        layout = [("genes", torch.int64, shape)]
        if cell_index is not None:
            layout.append(("cell_index", torch.int64, (n,)))
        masked = "genes" if self.value_kind == "none" else "values"
        if self.mask_ratio > 0 and masked == "genes":
            layout.append(("target_genes", torch.int64, shape))
        if value is not None:
            layout.append(("values", value, shape))
            if self.mask_ratio > 0:
                layout.append(("target_values", value, shape))
        layout.append(("padding_mask", torch.bool, shape))
        if self.mask_ratio > 0:
            layout.append(("mask", torch.bool, shape))
        return layout

    def _fill(
        self,
        arrays: dict[str, np.ndarray],
        genes: Sequence[np.ndarray],
        values: Sequence[np.ndarray] | None,
        lens: np.ndarray,
    ) -> None:
        out_genes, out_values = arrays["genes"], arrays.get("values")
        out_genes.fill(self.pad_id)
        out_genes[:, 0] = self.cls_id
        if out_values is not None:
            out_values.fill(0)
        # A loop over the cells (each a memcpy) beats building a fancy index of every token.
        for i, n in enumerate(lens.tolist()):
            out_genes[i, 1 : n + 1] = genes[i][:n]
            if out_values is not None:
                out_values[i, 1 : n + 1] = values[i][:n]  # type: ignore[index]
        np.greater(np.arange(out_genes.shape[1]), lens[:, None], out=arrays["padding_mask"])

    def _mask(self, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        padding, mask = arrays["padding_mask"], arrays["mask"]
        # 16-bit draws (ratio resolution 2**-16) cost half of float draws.
        threshold = round(self.mask_ratio * 65536)
        np.less(rng.integers(0, 65536, padding.shape, dtype=np.uint16), threshold, out=mask)
        mask &= ~padding
        mask[:, 0] = False  # <cls>
        key = "genes" if self.value_kind == "none" else "values"
        np.copyto(arrays["target_" + key], arrays[key])
        np.putmask(arrays[key], mask, self.mask_id if key == "genes" else self.mask_value)


def _arena(
    layout: list[tuple[str, torch.dtype, tuple[int, ...]]], share_memory: bool
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Tensors carved out of one uint8 buffer, and writable numpy views of them."""
    sizes = [math.prod(shape) * dtype.itemsize for _, dtype, shape in layout]
    offsets = np.concatenate([[0], np.cumsum([-(-s // 8) * 8 for s in sizes])]).tolist()
    buffer = torch.empty(max(offsets[-1], 1), dtype=torch.uint8)
    if share_memory:
        buffer.share_memory_()
    tensors = {
        name: buffer[a : a + size].view(dtype).view(shape)
        for (name, dtype, shape), a, size in zip(layout, offsets, sizes, strict=False)
    }
    return tensors, {name: t.numpy() for name, t in tensors.items()}


# --------------------------------------------------------------------------- ordering


def _epoch_blocks(
    shards: Sequence[ShardInfo], block_size: int, *, shuffle: bool, seed: int, epoch: int
) -> np.ndarray:
    """(shard, start, stop) rows of every block of the split, shuffled per (seed, epoch)."""
    parts = []
    for s in shards:
        starts = np.arange(0, s.n_cells, block_size, dtype=np.int64)
        stops = np.minimum(starts + block_size, s.n_cells)
        parts.append(np.stack([np.full_like(starts, s.index), starts, stops], axis=1))
    blocks = np.concatenate(parts)
    if shuffle:
        blocks = blocks[np.random.default_rng([seed, epoch, _TAG_BLOCKS]).permutation(len(blocks))]
    return blocks


def _shuffle_buffer(
    chunks: Iterator[np.ndarray], size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """The classic shuffle buffer (emit a random slot, refill it), a chunk at a time.

    Equivalent to pushing items one by one: when several items of a chunk hit the same slot,
    each after the first evicts its predecessor from the chunk, which the grouping handles.
    """
    buf = np.empty(size, dtype=np.int64)
    filled = 0
    for chunk in chunks:
        take = min(size - filled, len(chunk))
        buf[filled : filled + take] = chunk[:take]
        filled += take
        rest = chunk[take:]
        if len(rest):
            yield _push(buf, rest, rng.integers(0, size, len(rest)))
    yield buf[:filled][rng.permutation(filled)]


def _push(buf: np.ndarray, items: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Push ``items`` into a full buffer at ``slots`` in order; return the evicted items."""
    order = np.argsort(slots, kind="stable")
    s, x = slots[order], items[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    out = np.empty_like(x)
    out[first] = buf[s[first]]
    out[1:][~first[1:]] = x[:-1][~first[1:]]  # evicts the same chunk's earlier item
    last = np.ones(len(s), dtype=bool)
    last[:-1] = first[1:]
    buf[s[last]] = x[last]
    evicted = np.empty_like(out)
    evicted[order] = out
    return evicted


def _rebatch(
    chunks: Iterator[np.ndarray], batch_size: int, *, drop_last: bool
) -> Iterator[np.ndarray]:
    pending: list[np.ndarray] = []
    n = 0
    for chunk in chunks:
        pending.append(chunk)
        n += len(chunk)
        if n < batch_size:
            continue
        flat = np.concatenate(pending)
        cut = len(flat) - len(flat) % batch_size
        yield from np.split(flat[:cut], cut // batch_size)
        pending, n = [flat[cut:]], len(flat) - cut
    if n and not drop_last:
        yield np.concatenate(pending)


def _uniform_hash(cells: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Uniform [0, 1) per (seed, epoch, cell): splitmix64, independent of who draws it."""
    key = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xC2B2AE3D27D4EB4F + _TAG_WEIGHTS) & _MASK64
    x = cells.astype(np.uint64) ^ np.uint64(key)
    x += np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _resume_plan(counts: Sequence[int], consumed: int) -> tuple[list[int], int]:
    """Per-worker batches already taken after ``consumed``, and who serves next.

    A DataLoader over an IterableDataset takes batches from its workers round-robin, skipping
    exhausted ones. After ``r`` full rounds worker ``w`` gave ``min(count_w, r)`` batches; the
    remainder went to the first workers still active. A fresh DataLoader starts its round at
    worker 0, so the returned ``rotate`` makes DataLoader worker 0 play the next worker due.
    """
    lo, hi = 0, max(counts, default=0)
    while lo < hi:  # largest r with sum(min(c, r)) <= consumed
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if sum(min(c, mid) for c in counts) <= consumed else (lo, mid - 1)
    r = lo
    taken = [min(c, r) for c in counts]
    left = consumed - sum(taken)
    last = max((w for w, c in enumerate(counts) if c >= r), default=-1) if r else -1
    for w, c in enumerate(counts):
        if left and c > r:
            taken[w] += 1
            left -= 1
            last = w
    return taken, (last + 1) % max(len(counts), 1) if consumed else 0


# --------------------------------------------------------------------------- dataset


class CellBatchDataset(IterableDataset):
    """Ready batches of one rank's share of a corpus split, for ``DataLoader(batch_size=None)``.

    Each DataLoader worker yields its own batches (see the module docstring for the order).

    Parameters
    ----------
    corpus
        The opened split.
    config
        Loader settings; ``config.split`` must be the corpus split.
    rank, world_size
        This process's share (see :class:`CorpusLoader` for the defaults from
        ``torch.distributed``).
    epoch
        Epoch whose order to produce.
    skip
        Batches each worker (by logical id) has already delivered this epoch; they are
        skipped by index, without reading their cells.
    rotate
        DataLoader worker ``i`` plays logical worker ``(i + rotate) % num_workers``.
    """

    def __init__(
        self,
        corpus: Corpus,
        config: LoaderConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        skip: Sequence[int] = (),
        rotate: int = 0,
    ) -> None:
        if config.split != corpus.split:
            raise ValueError(f"config split {config.split!r} != corpus split {corpus.split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.corpus, self.config = corpus, config
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip, self.rotate = epoch, tuple(skip), rotate
        special = corpus.special_tokens
        self.collator = Collator(
            max_len=config.max_len or corpus.max_len,
            value_kind=corpus.value_kind,
            n_value_tokens=corpus.n_value_tokens,
            pad_id=special["<pad>"],
            cls_id=special["<cls>"],
            mask_id=special.get("<mask>"),
            pad_to=config.pad_to,
            mask_ratio=config.mask_ratio,
        )
        if config.weighted:
            corpus.mean_weight()  # fail early, and compute once before workers fork

    def at(self, epoch: int, *, skip: Sequence[int] = (), rotate: int = 0) -> CellBatchDataset:
        """A shallow copy positioned at ``epoch`` (sharing the corpus and its maps)."""
        other = copy.copy(self)
        other.epoch, other.skip, other.rotate = epoch, tuple(skip), rotate
        return other

    def worker_cells(self, epoch: int, worker: int, n_workers: int) -> Iterator[np.ndarray]:
        """Cell indices of global ``worker``'s epoch, in order, as chunks (before batching)."""
        cfg = self.config
        chunks = self._unshuffled(epoch, worker, n_workers)
        if cfg.shuffles:
            rng = np.random.default_rng([cfg.seed, epoch, worker, _TAG_BUFFER])
            chunks = _shuffle_buffer(chunks, cfg.shuffle_buffer, rng)
        return chunks

    def _block_cells(self, shard: int, start: int, stop: int, epoch: int) -> np.ndarray:
        cells = encode_cell_index(shard, np.arange(start, stop))
        if not self.config.weighted:
            return cells
        # Expected copies per epoch = w / mean(w), so the epoch keeps about n_cells cells.
        w = np.asarray(self.corpus.cell_weights(shard), dtype=np.float64)
        w = np.broadcast_to(w, (self.corpus.shards[shard].n_cells,))[start:stop]
        w = w / self.corpus.mean_weight()
        copies = np.floor(w) + (_uniform_hash(cells, self.config.seed, epoch) < w - np.floor(w))
        return np.repeat(cells, copies.astype(np.int64))

    def worker_batch_count(self, epoch: int, worker: int, n_workers: int) -> int:
        """Number of batches global ``worker`` yields in ``epoch`` (reads no gene data)."""
        n = sum(len(c) for c in self._unshuffled(epoch, worker, n_workers))
        whole, part = divmod(n, self.config.batch_size)
        return whole + (part > 0 and not self.config.drop_last)

    def _unshuffled(self, epoch: int, worker: int, n_workers: int) -> Iterator[np.ndarray]:
        """The worker's blocks (every ``n_workers``-th of the epoch), weighted copies made."""
        cfg = self.config
        blocks = _epoch_blocks(
            self.corpus.split_shards,
            cfg.block_size,
            shuffle=cfg.shuffles,
            seed=cfg.seed,
            epoch=epoch,
        )[worker::n_workers]
        return (self._block_cells(s, a, b, epoch) for s, a, b in blocks.tolist())

    def cell_batches(self, epoch: int, worker: int, n_workers: int) -> Iterator[np.ndarray]:
        """Cell indices of each batch global ``worker`` yields in ``epoch``."""
        chunks = self.worker_cells(epoch, worker, n_workers)
        return _rebatch(chunks, self.config.batch_size, drop_last=self.config.drop_last)

    def make_batch(self, cells: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """Read, collate and mask the given cells; adds ``cell_index`` and obs string lists."""
        shard_ids, rows = decode_cell_index(cells)
        n = len(cells)
        has_values = self.corpus.value_kind != "none"
        genes: list[Any] = [None] * n
        values: list[Any] | None = [None] * n if has_values else None
        obs: dict[str, list[Any]] = {name: [None] * n for name in OBS_COLUMNS}
        for s in np.unique(shard_ids).tolist():
            pos = np.flatnonzero(shard_ids == s)
            shard = self.corpus.mapped(s)
            shard.fill(rows[pos], pos, genes, values)
            for name, (codes, categories) in shard.obs.items():
                for p, code in zip(pos.tolist(), codes[rows[pos]].tolist(), strict=True):
                    obs[name][p] = categories[code]
        in_worker = get_worker_info() is not None
        batch: dict[str, Any] = self.collator(
            genes, values, rng=rng, cell_index=cells, share_memory=in_worker
        )
        batch.update(obs)
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        local, n_local = (0, 1) if info is None else (info.id, info.num_workers)
        local = (local + self.rotate) % n_local
        worker = self.rank * n_local + local
        n_workers = self.world_size * n_local
        skip = self.skip[local] if self.skip else 0
        seed, epoch = self.config.seed, self.epoch
        for b, cells in enumerate(self.cell_batches(epoch, worker, n_workers)):
            if b < skip:
                continue  # only indices were computed for this batch
            # Mask draws depend on the batch's identity only, so a resumed run redraws them.
            rng = np.random.default_rng([seed, epoch, worker, b, _TAG_MASK])
            yield self.make_batch(cells, rng)


# --------------------------------------------------------------------------- loader


class CorpusLoader:
    """Iterable of training batches with exact resume (``state_dict``/``load_state_dict``).

    Each ``for batch in loader`` runs the rest of the current epoch; when the epoch's last
    batch is handed out the epoch counter advances, so the next ``for`` runs the next epoch.

    Parameters
    ----------
    manifest_path
        The corpus ``manifest.json``.
    config
        Loader settings (default :class:`LoaderConfig`).
    num_workers
        DataLoader worker processes (0: batches are built in this process).
    rank, world_size
        This process's share of the corpus; default ``torch.distributed``'s when it is
        initialised, else 0 and 1. Give both or neither.
    pin_memory
        Passed to the DataLoader.
    """

    def __init__(
        self,
        manifest_path: str | PathLike[str],
        config: LoaderConfig | None = None,
        *,
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.config = config or LoaderConfig()
        if not _is_int(num_workers) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None or world_size is None:
            rank, world_size = _distributed_rank()
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.corpus = Corpus.open(manifest_path, split=self.config.split, verify=self.config.verify)
        self.dataset = CellBatchDataset(self.corpus, self.config, rank=rank, world_size=world_size)
        self.epoch = 0
        self.batches_in_epoch = 0
        self._counts: tuple[int, list[int]] | None = None

    def worker_batch_counts(self, epoch: int) -> list[int]:
        """Batches each of this rank's workers yields in ``epoch`` (index work only)."""
        if self._counts is None or self._counts[0] != epoch:
            n_local = max(self.num_workers, 1)
            first = self.dataset.rank * n_local
            n_all = self.dataset.world_size * n_local
            counts = [
                self.dataset.worker_batch_count(epoch, w, n_all)
                for w in range(first, first + n_local)
            ]
            self._counts = (epoch, counts)
        return self._counts[1]

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch."""
        return sum(self.worker_batch_counts(self.epoch))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, done = self.epoch, self.batches_in_epoch
        counts = self.worker_batch_counts(epoch)
        total = sum(counts)
        skip, rotate = _resume_plan(counts, done)
        loader = DataLoader(
            self.dataset.at(epoch, skip=skip, rotate=rotate),
            batch_size=None,
            collate_fn=_as_is,  # batches are ready; default_convert would walk every obs string
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # each iterator draws a base seed; from the global RNG that draw would shift the
            # training's torch stream by how often loaders were started (a resumed run starts
            # one more). Batches do not use it: their randomness comes from config.seed.
            generator=torch.Generator().manual_seed(epoch),
        )
        for batch in loader:
            done += 1
            # Advance as the last batch leaves, so a checkpoint taken now resumes at the next
            # epoch even if the caller never asks for the (empty) rest.
            self.epoch, self.batches_in_epoch = (epoch + 1, 0) if done == total else (epoch, done)
            yield batch
        if done < total:
            raise RuntimeError(f"epoch {epoch}: got {done} batches, expected {total}")
        self.epoch, self.batches_in_epoch = epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration."""
        self.epoch, self.batches_in_epoch = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """Position (epoch, batches consumed in it) plus what the order depends on."""
        return {
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "order": self._order_key(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position: the next batch is the one after the last consumed.

        Raises
        ------
        ScfmConfigError
            The state was taken with different order-determining settings (seed, batch size,
            workers, ranks, corpus shards...): its position would mean other cells here.
        """
        saved = state.get("order", {})
        mine = self._order_key()
        diff = [
            f"{k}: checkpoint {saved.get(k)!r}, now {v!r}"
            for k, v in mine.items()
            if saved.get(k) != v
        ]
        if diff:
            raise ScfmConfigError(diff, source="loader state (cannot resume this order)")
        self.epoch, self.batches_in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])

    def _order_key(self) -> dict[str, Any]:
        cfg = self.config
        order_fields = ("split", "seed", "batch_size", "block_size", "shuffle_buffer", "weighted")
        key: dict[str, Any] = {name: getattr(cfg, name) for name in order_fields}
        key.update(
            shuffle=cfg.shuffles,
            drop_last=cfg.drop_last,
            rank=self.dataset.rank,
            world_size=self.dataset.world_size,
            workers_per_rank=max(self.num_workers, 1),
            shards=_shards_digest(self.corpus.split_shards),
        )
        return key


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def _shards_digest(shards: Sequence[ShardInfo]) -> str:
    text = json.dumps([[s.index, s.dataset, s.n_cells, s.sha256] for s in shards])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _distributed_rank() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
