"""External methods: embeddings made outside scfm, scored exactly like scfm's own.

The literature's central comparison is a foundation model's zero-shot embedding (scGPT,
Geneformer, UCE, ...) next to simple baselines on the same cells. These models come with their
own code and environments, so scfm does not re-implement them: an evaluation set may name
methods defined in ``benchmarks.<set>.external``, of two kinds:

``precomputed``
    An h5ad (embedding in ``obsm[obsm_key]``, cell IDs in ``obs_names``) or a parquet file
    (cell IDs in the column ``cell_id`` or the index, every other column one embedding
    dimension), made once by the lab, e.g. for a whole dataset.
``command``
    A command template run by the job with ``{input}`` = the evaluation set's h5ad (raw integer
    counts in ``X``, the evaluation set's cells), ``{output}`` = the h5ad the command must write
    (an embedding in ``obsm``, cell IDs in ``obs_names``) and ``{threads}``. The template is
    split like a shell line (:func:`shlex.split`) but never run by a shell: placeholders are
    filled per argument, so paths with spaces or quotes are data, not code.

Either way the embedding is joined to the evaluation set by cell ID and written as every other
method's embedding file (:func:`scfm.io.embedding.write_embedding`). Whatever would make the
scores wrong stops the job with the method and the file named, and nothing written: cells of
the evaluation set that are missing, cells it does not have (unless ``allow_extra_cells``),
duplicated cell IDs, NaN or infinite values, and a width other than ``n_dims``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from scfm.atomic import temp_dir_beside
from scfm.errors import ScfmInputError
from scfm.io.embedding import write_embedding
from scfm.io.h5ad import read_dataframe
from scfm.paths import check_input, check_outputs_not_inputs
from scfm.provenance import versions
from scfm.spec import default

log = logging.getLogger("scfm.bench")

#: The placeholders a command template may use.
PLACEHOLDERS = ("input", "output", "threads")


class ExternalMethodError(RuntimeError):
    """An external method's command failed or wrote nothing usable; names method and file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_external(
    path: str | Path, *, obsm_key: str | None = None, cell_id: str | None = None
) -> tuple[pd.Index, np.ndarray]:
    """Cell IDs and the embedding matrix of an external method's file (h5ad or parquet).

    h5ad: ``obs_names`` and ``obsm[obsm_key]`` (default: the only ``obsm`` entry). parquet:
    the column ``cell_id`` (default: the stored pandas index) and every other column as one
    dimension, in file order; all of them must be numeric.
    """
    path = Path(path)
    check_input(path, "file", "an embedding file (h5ad or parquet)")
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        adata = ad.read_h5ad(path, backed="r")
        try:
            keys = list(adata.obsm.keys())
            if obsm_key is None:
                if len(keys) != 1:
                    raise ScfmInputError(
                        path,
                        "obsm",
                        f"{len(keys)} matrices {keys}",
                        "exactly one, or set obsm_key to the one to score",
                    )
                obsm_key = keys[0]
            if obsm_key not in keys:
                raise ScfmInputError(
                    path, f"obsm[{obsm_key!r}]", "no such matrix", f"one of {keys}"
                )
            matrix = np.asarray(adata.obsm[obsm_key])
            ids = pd.Index(adata.obs_names.astype(str))
        finally:
            adata.file.close()
    elif suffix in (".parquet", ".pq"):
        table = pq.read_table(path).to_pandas()
        if cell_id is not None:
            if cell_id not in table.columns:
                raise ScfmInputError(
                    path, cell_id, "no such column (cell_id)", f"one of {list(table.columns)}"
                )
            ids = pd.Index(table.pop(cell_id).astype(str))
        elif isinstance(table.index, pd.RangeIndex):
            raise ScfmInputError(
                path,
                "index",
                "no cell IDs (a plain row number index)",
                "cell IDs in the stored index, or cell_id naming the column that holds them",
            )
        else:
            ids = pd.Index(table.index.astype(str))
        bad = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
        if bad:
            raise ScfmInputError(
                path,
                str(bad[0]),
                f"column of type {table[bad[0]].dtype} ({len(bad)} non-numeric column(s))",
                "numeric embedding columns only (besides the cell ID column)",
            )
        matrix = table.to_numpy(dtype=np.float64)
    else:
        raise ScfmInputError(
            path, "file", f"unknown extension {path.suffix!r}", ".h5ad or .parquet"
        )
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ScfmInputError(
            path, "embedding", f"shape {matrix.shape}", "a cells x dimensions matrix"
        )
    return ids, matrix


def align_embedding(
    ids: pd.Index,
    matrix: np.ndarray,
    cells: pd.Index,
    *,
    path: str | Path,
    method: str,
    n_dims: int | None = None,
    allow_extra_cells: bool = False,
) -> np.ndarray:
    """The rows of ``matrix`` for ``cells`` (the evaluation set's order), after every check."""
    field = f"embedding of method {method!r}"
    if n_dims is not None and matrix.shape[1] != n_dims:
        raise ScfmInputError(
            path, field, f"{matrix.shape[1]} dimensions", f"n_dims = {n_dims} (as configured)"
        )
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ScfmInputError(
            path,
            field,
            f"{len(dup)} duplicated cell ID(s), first {str(dup[0])!r}",
            "unique cell IDs",
        )
    missing = cells.difference(ids, sort=False)
    if len(missing):
        raise ScfmInputError(
            path,
            field,
            f"{len(missing)} of the evaluation set's {len(cells)} cells are missing, first "
            f"{str(missing[0])!r}",
            "an embedding for every cell of the evaluation set (joined by cell ID)",
        )
    extra = ids.difference(cells, sort=False)
    if len(extra) and not allow_extra_cells:
        raise ScfmInputError(
            path,
            field,
            f"{len(extra)} cell(s) not in the evaluation set, first {str(extra[0])!r}",
            "only the evaluation set's cells (or allow_extra_cells: true, e.g. for an "
            "embedding of the whole dataset)",
        )
    rows = ids.get_indexer(cells)
    emb = np.asarray(matrix[rows], dtype=np.float32)
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        first = str(cells[np.flatnonzero(~finite)[0]])
        raise ScfmInputError(
            path,
            field,
            f"{int((~finite).sum())} cell(s) with NaN or infinite values, first {first!r}",
            "finite values",
        )
    if len(extra):
        log.info(
            "%s: %d cells not in the evaluation set ignored (allow_extra_cells)", method, len(extra)
        )
    return emb


def command_args(template: str, *, input: str, output: str, threads: int) -> list[str]:
    """The argument list of a command template, placeholders filled per argument."""
    values = {"input": input, "output": output, "threads": str(threads)}
    try:
        return [arg.format_map(values) for arg in shlex.split(template)]
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(
            f"command template {template!r}: {exc}; expected placeholders among "
            f"{{{'}, {'.join(PLACEHOLDERS)}}} (double the braces for a literal one)"
        ) from exc


def run_command(
    template: str,
    data: Path,
    tmp_out: Path,
    *,
    method: str,
    threads: int,
    log_file: str | Path | None,
) -> None:
    """Run a command method; its output and errors go to the job's log."""
    args = command_args(template, input=str(data), output=str(tmp_out), threads=threads)
    log.info("%s: running %s", method, shlex.join(args))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    sink = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        try:
            code = subprocess.run(args, stdout=sink, stderr=sink, env=env, check=False).returncode
        except FileNotFoundError as exc:
            raise ExternalMethodError(
                f"method {method!r}: command {args[0]!r} not found ({exc.strerror}); expected an "
                "executable on PATH or a path to one"
            ) from exc
    finally:
        if log_file:
            sink.close()
    if code != 0:
        raise ExternalMethodError(
            f"method {method!r}: command exited with status {code} ({shlex.join(args)}); its "
            f"output is in {log_file or 'the job log'}"
        )
    if not tmp_out.is_file() or tmp_out.stat().st_size == 0:
        raise ExternalMethodError(
            f"method {method!r}: command exited 0 but wrote nothing at {{output}} = {tmp_out}; "
            "expected an h5ad with the embedding in obsm and cell IDs in obs_names"
        )


def external_embedding(
    method: str,
    data_h5ad: str | Path,
    out_h5ad: str | Path,
    spec: Mapping[str, Any],
    *,
    threads: int = default("benchmarks.*.external.*.threads"),
    log_file: str | Path | None = None,
) -> Path:
    """Write the embedding file of an external method for one evaluation set.

    ``spec`` is ``benchmarks.<set>.external.<method>`` (kind, path or command, obsm_key,
    cell_id, n_dims, allow_extra_cells). Returns the output path.
    """
    data_h5ad, out_h5ad = Path(data_h5ad), Path(out_h5ad)
    source = spec.get("path") if spec.get("kind") == "precomputed" else None
    check_outputs_not_inputs({"output": out_h5ad}, {"evalset": data_h5ad, "path": source})
    obs = read_dataframe(data_h5ad, "obs")
    cells = pd.Index(obs.index.astype(str))
    kind = spec["kind"]
    record: dict[str, Any] = {"method": method, "kind": kind, "versions": versions()}
    checks = {
        "n_dims": spec.get("n_dims"),
        "allow_extra_cells": spec.get("allow_extra_cells", False),
    }
    if kind == "precomputed":
        source = Path(spec["path"])
        ids, matrix = read_external(
            source, obsm_key=spec.get("obsm_key"), cell_id=spec.get("cell_id")
        )
        emb = align_embedding(ids, matrix, cells, path=source, method=method, **checks)
        record.update(path=str(source), sha256=_sha256(source))
    elif kind == "command":
        # the command writes into spill space beside the output, removed whatever happens
        spill = temp_dir_beside(out_h5ad, spill=True)
        try:
            tmp = spill / "embedding.h5ad"
            run_command(
                spec["command"], data_h5ad, tmp, method=method, threads=threads, log_file=log_file
            )
            ids, matrix = read_external(tmp, obsm_key=spec.get("obsm_key"))
            emb = align_embedding(ids, matrix, cells, path=tmp, method=method, **checks)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        record.update(command=spec["command"])
    else:
        raise ValueError(
            f"method {method!r}: unknown kind {kind!r}; expected precomputed or command"
        )
    record["n_dims"] = int(emb.shape[1])
    write_embedding(out_h5ad, obs, f"X_{method}", emb, record, stage="external")
    log.info(
        "%s: %d cells x %d dimensions written to %s", method, emb.shape[0], emb.shape[1], out_h5ad
    )
    return out_h5ad
