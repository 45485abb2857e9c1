"""Streaming h5ad I/O: read any matrix in row chunks, write CSR counts chunk by chunk.

The matrix is read and written a block of rows at a time, so its memory is bounded by the chunk
size; only obs and var (names and labels, ~0.3 GB per million cells) are held whole. Reading
goes through h5py plus anndata's element readers (``anndata.io.read_elem`` / ``sparse_dataset``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm.errors import ScfmInputError
from scfm.paths import check_input
from scfm.spec import default

# HDF5 chunk of the growing CSR arrays: large enough for fast sequential I/O, small enough
# that reading one cell touches little extra data.
_H5_CHUNK = 1 << 16


def open_h5(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading; a missing or damaged file raises ScfmInputError."""
    path = Path(path)
    check_input(path, "file", "an h5ad file")  # a FIFO would block h5py forever
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ScfmInputError(
            path, "file", f"cannot be opened as HDF5 ({exc})", "a complete, uncorrupted h5ad file"
        ) from exc


def read_dataframe(
    path: str | Path, group: str = "obs", *, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read an h5ad dataframe (``obs``, ``var``, ``raw/var``), optionally only some columns."""
    with open_h5(path) as f:
        if group not in f:
            raise ScfmInputError(path, group, "missing", f"an h5ad file with a '{group}' group")
        g = f[group]
        if isinstance(g, h5py.Dataset):  # anndata < 0.7: a compound dataset
            return _legacy_dataframe(path, group, columns)
        try:
            if columns is None:
                frame = ad.io.read_elem(g)
                if not isinstance(frame, pd.DataFrame):  # e.g. a group without encoding attrs
                    raise ScfmInputError(
                        path,
                        group,
                        f"read as {type(frame).__name__}, not a dataframe (no encoding-type "
                        f"{g.attrs.get('encoding-type', '')!r})",
                        "an h5ad dataframe (encoding-type 'dataframe', anndata >= 0.7) or "
                        "anndata < 0.7's compound dataset",
                    )
                return frame
            index = ad.io.read_elem(g[g.attrs["_index"]])
            present = list(g.attrs.get("column-order", []))
            missing = [c for c in columns if c not in present]
            if missing:
                raise ScfmInputError(
                    path,
                    f"{group}/{missing[0]}",
                    "column not found",
                    f"one of the columns {present}",
                )
            data = {c: ad.io.read_elem(g[c]) for c in columns}
            return pd.DataFrame(data, index=pd.Index(np.asarray(index).astype(str)))
        except ScfmInputError:
            raise
        except Exception as exc:  # corrupt element: name it rather than surface an h5py trace
            raise ScfmInputError(
                path, group, f"cannot be read ({exc})", "a valid h5ad dataframe"
            ) from exc


def is_legacy_dataframe(path: str | Path, group: str = "obs") -> bool:
    """True if ``group`` is in anndata's pre-0.7 layout (a compound dataset, no encoding)."""
    with open_h5(path) as f:
        return isinstance(f.get(group), h5py.Dataset)


def _legacy_dataframe(path: str | Path, group: str, columns: Sequence[str] | None) -> pd.DataFrame:
    """obs/var/raw.var of an h5ad written by anndata < 0.7, read by anndata itself.

    Those files store a dataframe as one compound HDF5 dataset (the index as its first field,
    categorical columns as codes with the categories in ``uns/<column>_categories``) and carry
    no encoding attributes. ``anndata.read_h5ad`` still reads that layout (backed: the matrix
    stays on disk); we take the dataframe from it rather than parse the layout ourselves.
    """
    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as exc:  # anndata raises many types on a layout it does not know
        raise ScfmInputError(
            path,
            group,
            f"an old (anndata < 0.7) compound dataset that anndata cannot read "
            f"({type(exc).__name__}: {exc})",
            "an h5ad written by anndata >= 0.7 (re-save the file with a recent anndata)",
        ) from exc
    try:
        if group == "raw/var":
            frame = adata.raw.var if adata.raw is not None else None
        else:
            frame = {"obs": adata.obs, "var": adata.var}.get(group)
    finally:
        adata.file.close()
    if frame is None:
        raise ScfmInputError(path, group, "not read by anndata", f"a '{group}' dataframe")
    frame = frame.copy()
    frame.index = pd.Index(np.asarray(frame.index).astype(str))
    if columns is None:
        return frame
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScfmInputError(
            path, f"{group}/{missing[0]}", "column not found", f"one of the columns {list(frame)}"
        )
    return frame[list(columns)]


class MatrixReader:
    """Row-chunked reader of one matrix inside an h5ad file (``X``, ``raw/X`` or a layer)."""

    def __init__(self, path: str | Path, field: str = "X") -> None:
        self.path = Path(path)
        self.field = field
        self._f = open_h5(self.path)
        key = {"raw": "raw/X"}.get(field, field)
        if key not in self._f:
            self._f.close()
            raise ScfmInputError(self.path, key, "missing", "a matrix at this HDF5 path")
        self.key = key
        node = self._f[key]
        try:
            if isinstance(node, h5py.Group):
                self._sparse = ad.io.sparse_dataset(node)
                self.shape = tuple(int(s) for s in self._sparse.shape)
                self.layout = self._sparse.format
            else:
                self._sparse = None
                self.shape = tuple(int(s) for s in node.shape)
                self.layout = "dense"
        except Exception as exc:
            self._f.close()
            raise ScfmInputError(
                self.path, key, f"cannot be read ({exc})", "a CSR/CSC or dense matrix"
            ) from exc
        self._node = node

    @property
    def n_obs(self) -> int:
        """Number of rows (cells)."""
        return self.shape[0]

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as CSR; errors name the file and HDF5 path."""
        try:
            node = self._sparse if self._sparse is not None else self._node
            block = node[start:stop]
        except Exception as exc:
            raise ScfmInputError(
                self.path,
                self.key,
                f"rows {start}:{stop} cannot be read ({exc})",
                "a complete, uncorrupted file",
            ) from exc
        return sp.csr_matrix(block)

    def read_index(self, rows: np.ndarray) -> sp.csr_matrix:
        """The given rows (sorted ascending) as CSR."""
        node = self._sparse if self._sparse is not None else self._node
        return sp.csr_matrix(node[np.asarray(rows)])

    def iter_chunks(self, chunk_cells: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start_row, csr_block)`` over all rows."""
        for start in range(0, self.n_obs, chunk_cells):
            yield start, self.read_rows(start, min(start + chunk_cells, self.n_obs))

    def close(self) -> None:
        """Close the underlying file."""
        self._f.close()

    def __enter__(self) -> MatrixReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CsrH5adWriter:
    """Write an h5ad whose ``X`` is CSR, appending blocks of rows as they come.

    ``obs`` and ``var`` are known up front (they fit in memory even for atlases); ``X`` grows.
    We write the CSR group ourselves, following anndata's on-disk spec (encoding-type
    ``csr_matrix`` 0.1.0): anndata's own append sizes the HDF5 chunks and picks the index dtypes
    from the first block, which gives tiny chunks and an int32 ``indptr`` that overflows past
    2^31 nonzeros.
    """

    INT32_LIMIT = np.iinfo(np.int32).max  # nonzeros up to which indptr is narrowed to int32

    def __init__(
        self,
        path: str | Path,
        *,
        obs: pd.DataFrame,
        var: pd.DataFrame,
        uns: dict[str, Any] | None = None,
        dtype: np.dtype | type = np.int32,
        compression: str | None = default("io.compression"),
    ) -> None:
        self.path = Path(path)
        self.n_obs, self.n_vars = len(obs), len(var)
        self._rows = 0
        self._nnz = 0
        comp = None if compression in (None, "none") else compression
        kw: dict[str, Any] = {"compression": comp}
        if comp == "gzip":
            kw["compression_opts"] = 4
        self._f = h5py.File(self.path, "w")
        try:
            self._create(obs, var, uns or {}, dtype, kw)
        except BaseException:
            self._f.close()
            raise
        self._dtype = np.dtype(dtype)

    def _create(
        self,
        obs: pd.DataFrame,
        var: pd.DataFrame,
        uns: dict[str, Any],
        dtype: Any,
        kw: dict[str, Any],
    ) -> None:
        f = self._f
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", var)
        ad.io.write_elem(f, "uns", uns)
        for empty in ("obsm", "varm", "obsp", "varp", "layers"):
            ad.io.write_elem(f, empty, {})
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([self.n_obs, self.n_vars], dtype=np.int64)
        self._data = g.create_dataset(
            "data", shape=(0,), maxshape=(None,), dtype=dtype, chunks=(_H5_CHUNK,), **kw
        )
        self._indices = g.create_dataset(
            "indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(_H5_CHUNK,), **kw
        )
        self._indptr = g.create_dataset(
            "indptr", shape=(1,), maxshape=(None,), dtype=np.int64, chunks=(_H5_CHUNK,), **kw
        )
        self._indptr[0] = 0

    def append(self, block: sp.csr_matrix) -> None:
        """Append rows; ``block`` must have ``n_vars`` columns."""
        if block.shape[1] != self.n_vars:
            raise ValueError(f"block has {block.shape[1]} columns; writer expects {self.n_vars}")
        if self._rows + block.shape[0] > self.n_obs:
            raise ValueError("more rows appended than obs were declared")
        block = sp.csr_matrix(block)
        block.sort_indices()
        nnz = block.nnz
        for ds, values in (
            (self._data, block.data.astype(self._dtype, copy=False)),
            (self._indices, block.indices.astype(np.int32, copy=False)),
        ):
            ds.resize((self._nnz + nnz,))
            ds[self._nnz :] = values
        n = block.shape[0]
        self._indptr.resize((self._rows + n + 1,))
        self._indptr[self._rows + 1 :] = block.indptr[1:].astype(np.int64) + self._nnz
        self._rows += n
        self._nnz += nnz

    def close(self) -> None:
        """Finish the file; raises if fewer rows were written than declared."""
        try:
            if self._rows != self.n_obs:
                raise ValueError(f"{self.path}: wrote {self._rows} rows, declared {self.n_obs}")
            if self._nnz < self.INT32_LIMIT:
                # scipy wants indptr and indices of one dtype (mixed ones break in-place ops such
                # as scanpy's qc metrics); below 2^31 nonzeros both fit int32.
                indptr = self._indptr[...]
                g = self._indptr.parent
                opts = {k: getattr(self._indptr, k) for k in ("compression", "compression_opts")}
                del g["indptr"]
                g.create_dataset("indptr", data=indptr.astype(np.int32), **opts)
        finally:
            self._f.close()

    def __enter__(self) -> CsrH5adWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()


def provenance(path: str | Path) -> dict[str, Any]:
    """The ``uns['scfm']`` provenance records of an h5ad written by scfm (stage -> dict)."""
    with open_h5(path) as f:
        if "uns/scfm" not in f:
            return {}
        raw = ad.io.read_elem(f["uns/scfm"])
    return {stage: json.loads(text) for stage, text in raw.items()}
