"""Tokenized shards: Arrow IPC files plus a manifest.

Arrow IPC files are memory-mappable and open in pyarrow, polars and HF datasets. One job per
dataset, streamed in bounded memory, written atomically.

Layout and schema: docs/contracts.md ("Corpus shards").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from tqdm.auto import tqdm

from scfm.atomic import temp_dir_beside, write_text_atomic
from scfm.errors import ScfmInputError, disk_full_error
from scfm.io.download import hash_file
from scfm.io.h5ad import read_dataframe
from scfm.provenance import created, versions
from scfm.shard.chunks import CsrChunks
from scfm.shard.corpus import SPLITS, assign_splits, select_cells
from scfm.shard.manifest import CorpusManifest, ShardEntry
from scfm.shard.stats import inverse_medians
from scfm.spec import default
from scfm.tokenize.tokenizers import (
    TokenizerConfig,
    Tokens,
    cell_seeds,
    gene_coverage,
    tokenize_csr,
)
from scfm.tokenize.vocab import Vocab

log = logging.getLogger(__name__)

OBS_FIELDS = ("cell_type", "batch", "donor")


def shard_schema(value_kind: str, metadata: dict[str, Any]) -> pa.Schema:
    """Arrow schema of a shard (``values`` absent for rank encoding)."""
    fields = [
        pa.field("cell_id", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
    ]
    fields += [pa.field(c, pa.string()) for c in OBS_FIELDS]
    fields += [pa.field("n_genes", pa.int32()), pa.field("genes", pa.list_(pa.int32()))]
    if value_kind in ("bin", "count"):
        fields.append(pa.field("values", pa.list_(pa.int16())))
    elif value_kind == "float":
        fields.append(pa.field("values", pa.list_(pa.float32())))
    return pa.schema(fields, metadata={b"scfm": json.dumps(metadata).encode()})


class _HashingFile:
    """A write-only binary file that hashes (sha256) the bytes as they are written.

    Arrow's IPC file writer only appends (it tracks offsets through ``tell``), so the digest of
    what passes through equals the file's: the shard is never read back to be hashed.
    """

    def __init__(self, path: Path) -> None:
        self._fh = path.open("wb")
        self._sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._sha.update(view)
        return self._fh.write(view)

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        self._fh.flush()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def close(self) -> None:
        self._fh.close()

    def hexdigest(self) -> str:
        """sha256 of everything written so far."""
        return self._sha.hexdigest()


class _SplitWriter:
    """Rolls Arrow IPC files of ``cells_per_shard`` rows for one split, hashing them as written."""

    def __init__(self, root: Path, split: str, schema: pa.Schema, cells_per_shard: int) -> None:
        self.dir = root / split
        self.split, self.schema, self.cells_per_shard = split, schema, cells_per_shard
        self.files: list[dict[str, Any]] = []
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._sink: _HashingFile | None = None
        self._rows = 0
        self._tokens = 0

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                path = self.dir / f"shard-{len(self.files):05d}.arrow"
                self.files.append({"path": path})
                self._sink = _HashingFile(path)
                self._writer = ipc.new_file(pa.PythonFile(self._sink, mode="w"), self.schema)
                self._rows = self._tokens = 0
            take = min(table.num_rows, self.cells_per_shard - self._rows)
            part = table.slice(0, take)
            self._writer.write_table(part)
            self._rows += take
            self._tokens += int(pc.sum(part["n_genes"]).as_py() or 0)
            table = table.slice(take)
            if self._rows == self.cells_per_shard:
                self._close()

    def _close(self) -> None:
        if self._writer is not None and self._sink is not None:
            self._writer.close()
            self._sink.close()
            self.files[-1].update(
                n_cells=self._rows, n_tokens=self._tokens, sha256=self._sink.hexdigest()
            )
            self._writer = self._sink = None

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        return self.files

    def abort(self) -> None:
        """Close the open file (if any) without finishing it."""
        if self._sink is not None:
            self._sink.close()
        self._writer = self._sink = None


def _table(
    tokens: Tokens,
    *,
    cell_ids: np.ndarray,
    dataset: str,
    split: str,
    labels: dict[str, np.ndarray],
    schema: pa.Schema,
) -> pa.Table:
    offsets = pa.array(tokens.offsets.astype(np.int32 if tokens.offsets[-1] < 2**31 else np.int64))
    list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
    n = len(cell_ids)
    cols = {
        "cell_id": pa.array(cell_ids),
        "dataset": pa.array([dataset] * n),
        "split": pa.array([split] * n),
        **{c: pa.array(labels[c]) for c in OBS_FIELDS},
        "n_genes": pa.array(np.diff(tokens.offsets).astype(np.int32)),
        "genes": list_type.from_arrays(offsets, pa.array(tokens.genes)),
    }
    if tokens.values is not None:
        cols["values"] = list_type.from_arrays(offsets, pa.array(tokens.values))
    return pa.table(cols, schema=schema)


def shard_dataset(
    h5ad: str | Path,
    out_dir: str | Path,
    *,
    dataset: str,
    vocab_path: str | Path,
    tokenizer: dict[str, Any],
    split: Mapping[str, Any],
    filters: Mapping[str, Any] | None = None,
    gene_stats: str | Path | None = None,
    cells_per_shard: int = default("shards.cells_per_shard"),
    chunk_cells: int = default("io.chunk_cells"),
    source_sha256: str | None = None,
) -> dict[str, Any]:
    """Tokenize one QC'd dataset into ``out_dir/<split>/shard-NNNNN.arrow`` + ``manifest.json``.

    The directory is built under a temporary name beside ``out_dir`` and renamed when complete.
    ``source_sha256`` is the input's checksum if already known (hashing a multi-GB h5ad in every
    shard job of every tokenizer would cost as much as tokenizing it). Returns the manifest.
    """
    h5ad, out_dir = Path(h5ad), Path(out_dir)
    cfg = TokenizerConfig.from_config(tokenizer)
    vocab = Vocab.read(vocab_path)
    obs = read_dataframe(h5ad, "obs")
    var = read_dataframe(h5ad, "var")
    col_token = vocab.map_genes(var.index)
    selected = select_cells(obs, filters, path=h5ad)
    if not selected.any():
        raise ScfmInputError(
            h5ad,
            "obs",
            f"no cell of dataset {dataset} passes the corpus filter {dict(filters or {})}",
            "filters that keep some cells",
        )
    splits = assign_splits(obs, dataset=dataset, **split)
    inv_median = inverse_medians(gene_stats, len(vocab)) if cfg.kind == "rank" else None
    meta = {"vocab_hash": vocab.hash, "tokenizer": cfg.params(), "dataset": dataset}
    schema = shard_schema(cfg.value_kind, meta)
    tmp = temp_dir_beside(out_dir)
    writers = {s: _SplitWriter(tmp, s, schema, cells_per_shard) for s in SPLITS}
    try:
        per_gene = np.zeros(len(var), np.float64)
        labels = {
            c: obs[c].astype(str).to_numpy() if c in obs else np.full(len(obs), "unknown")
            for c in OBS_FIELDS
        }
        cell_ids = obs.index.astype(str).to_numpy()
        bar = tqdm(
            total=len(obs), unit="cells", desc=f"shard {dataset}", disable=not sys.stderr.isatty()
        )
        with CsrChunks(h5ad, chunk_cells) as chunks:
            for row0, block in chunks:
                n = block.shape[0]
                # emit the chunk's cells grouped by split: each split is then a slice of the tokens
                groups = [
                    np.flatnonzero(selected[row0 : row0 + n] & (splits[row0 : row0 + n] == s))
                    for s in SPLITS
                ]
                tokens = tokenize_csr(
                    block,
                    col_token,
                    cfg,
                    n_special=vocab.n_special,
                    n_vocab=len(vocab),
                    seeds=cell_seeds(cfg.seed, dataset, np.arange(row0, row0 + n)),
                    inv_median=inv_median,
                    rows=np.concatenate(groups),
                    col_sums=per_gene,
                )
                start = 0
                for s, idx in zip(SPLITS, groups, strict=True):
                    if idx.size:
                        rows = row0 + idx
                        part = tokens.slice(start, start + idx.size)
                        writers[s].write(
                            _table(
                                part,
                                cell_ids=cell_ids[rows],
                                dataset=dataset,
                                split=s,
                                labels={c: v[rows] for c, v in labels.items()},
                                schema=schema,
                            )
                        )
                    start += idx.size
                bar.update(n)
        bar.close()
        frac, n_missing = gene_coverage(per_gene, col_token)
        if frac > cfg.max_missing_fraction:
            raise ScfmInputError(
                h5ad,
                "var_names",
                f"{frac:.0%} of the counts fall on {n_missing} genes missing from the vocabulary",
                f"at most {cfg.max_missing_fraction:.0%} (tokenizers.<name>.max_missing_fraction)",
            )
        shards = []
        for s, w in writers.items():
            for f in w.finish():
                shards.append(
                    {
                        "path": f"{s}/{f['path'].name}",
                        "dataset": dataset,
                        "split": s,
                        "n_cells": f["n_cells"],
                        "n_tokens": f["n_tokens"],
                        "sha256": f["sha256"],
                    }
                )
        manifest = {
            "dataset": dataset,
            "source": str(h5ad),
            "source_sha256": source_sha256 or hash_file(h5ad),
            "created": created(),
            "versions": versions(),
            "vocab_hash": vocab.hash,
            "vocab_size": len(vocab),
            "tokenizer_params": cfg.params(),
            "value_kind": cfg.value_kind,
            "n_value_tokens": cfg.n_value_tokens,
            "max_len": cfg.max_len,
            "n_cells": int(selected.sum()),
            "n_cells_filtered_out": int((~selected).sum()),
            "genes_missing_from_vocab": n_missing,
            "missing_count_fraction": frac,
            "split": dict(split),
            "splits": {s: sum(x["n_cells"] for x in shards if x["split"] == s) for s in SPLITS},
            "shards": shards,
        }
        write_text_atomic(tmp / "manifest.json", json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException as exc:
        for w in writers.values():
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if full := disk_full_error(exc, out_dir):  # pyarrow's ENOSPC names no file
            raise full from exc
        raise
    log.info(
        "%s: %d cells in %d shards (%s)",
        dataset,
        manifest["n_cells"],
        len(shards),
        manifest["splits"],
    )
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a dataset's shard manifest (a corpus manifest: :meth:`CorpusManifest.read`)."""
    return json.loads(Path(path).read_text())


def merge_manifests(
    dataset_manifests: Mapping[str, str | Path],
    out: str | Path,
    *,
    corpus: str,
    tokenizer: str,
    vocab_path: str | Path,
    weights: Mapping[str, Any] | None = None,
) -> CorpusManifest:
    """Combine the per-dataset manifests of a corpus into its ``manifest.json``; return it.

    Every dataset must have been sharded with the same vocabulary (hash) and tokenizer.
    """
    out = Path(out)
    vocab = Vocab.read(vocab_path)
    merged: dict[str, Any] = {"datasets": {}, "shards": []}
    for name, path in dataset_manifests.items():
        m = read_manifest(path)
        if m["vocab_hash"] != vocab.hash:
            raise ScfmInputError(
                path,
                "vocab_hash",
                f"{m['vocab_hash']} differs from {vocab_path} ({vocab.hash})",
                "shards made with the corpus vocabulary (rerun the shard job)",
            )
        if merged.get("tokenizer_params", m["tokenizer_params"]) != m["tokenizer_params"]:
            raise ScfmInputError(
                path,
                "tokenizer_params",
                "differ between datasets of the corpus",
                "one tokenizer for the whole corpus",
            )
        merged["tokenizer_params"] = m["tokenizer_params"]
        for key in ("value_kind", "n_value_tokens", "max_len"):
            merged[key] = m[key]
        base = Path(os.path.relpath(Path(path).parent.resolve(), out.parent.resolve()))
        merged["shards"] += [{**s, "path": str(base / s["path"])} for s in m["shards"]]
        merged["datasets"][name] = {
            "source": m["source"],
            "sha256": m["source_sha256"],
            "n_cells": m["n_cells"],
            "missing_count_fraction": m["missing_count_fraction"],
        }
    n_total = sum(s["n_cells"] for s in merged["shards"])
    if n_total == 0:
        raise ScfmInputError(
            out, "shards", f"corpus {corpus} has no cells after filters", "at least one cell"
        )
    manifest = CorpusManifest(
        corpus=corpus,
        tokenizer=tokenizer,
        tokenizer_params=merged["tokenizer_params"],
        vocab_path=os.path.relpath(Path(vocab_path).resolve(), out.parent.resolve()),
        vocab_hash=vocab.hash,
        vocab_size=len(vocab),
        special_tokens=vocab.special_ids(),
        value_kind=merged["value_kind"],
        n_value_tokens=merged["n_value_tokens"],
        max_len=merged["max_len"],
        shards=tuple(ShardEntry(**s) for s in merged["shards"]),
        splits={s: sum(x["n_cells"] for x in merged["shards"] if x["split"] == s) for s in SPLITS},
        datasets=merged["datasets"],
        weights=dict(weights) if weights else None,
        created=created(),
        versions=versions(),
    )
    manifest.write(out)
    return manifest
