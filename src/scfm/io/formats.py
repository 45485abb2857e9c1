"""Readers for the count-matrix formats labs receive: h5ad, 10x HDF5 and 10x Matrix Market.

Each reader exposes the same small interface used by :mod:`scfm.io.standardize`: ``n_obs``,
``obs_names``, ``var`` (a DataFrame), ``read_obs(columns)``, ``field`` (where the counts were
found) and ``iter_chunks(chunk_cells)`` yielding CSR blocks of cells x genes. h5ad and 10x HDF5
stream in row chunks; Matrix Market has no row order guarantee and is read whole (documented).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm.errors import ScfmInputError
from scfm.io.h5ad import MatrixReader, is_legacy_dataframe, open_h5, read_dataframe

log = logging.getLogger(__name__)

FORMATS = ("h5ad", "10x_h5", "mtx")


def guess_format(path: Path, declared: str = "auto") -> str:
    """The file format from ``declared`` or, for ``auto``, from the file name."""
    if declared != "auto":
        return declared
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith((".h5", ".hdf5")):
        return "10x_h5"
    if name.endswith((".mtx", ".mtx.gz")) or path.is_dir():
        return "mtx"
    if name.endswith((".tsv.gz", ".tsv", ".bed.gz", ".tsv.bgz")):
        return "fragments"
    raise ScfmInputError(
        path,
        "format",
        "cannot tell the format from the file name",
        "a name ending in .h5ad, .h5, .mtx[.gz] or (scATAC fragments) .tsv[.gz], or an "
        "explicit `format`",
    )


def is_integer_counts(block: sp.csr_matrix) -> bool:
    """True if every stored value is a finite non-negative integer."""
    d = block.data
    if d.size == 0:
        return True
    if np.issubdtype(d.dtype, np.integer):
        return bool((d >= 0).all())
    return bool(np.isfinite(d).all() and (d >= 0).all() and (d == np.round(d)).all())


class H5adCounts:
    """Counts inside an h5ad: ``X``, ``raw.X`` or ``layers/<name>``.

    ``auto`` picks the first of X / raw.X / layers['counts'] whose first chunk holds integer counts.
    """

    def __init__(self, path: str | Path, counts: str = "auto", *, probe_cells: int = 2000) -> None:
        self.path = Path(path)
        field = self._choose_field(counts, probe_cells) if counts == "auto" else counts
        self.field = field
        self._reader = MatrixReader(self.path, field)
        var_group = "raw/var" if field == "raw" else "var"
        self.var = read_dataframe(self.path, var_group)
        self.var.index = self.var.index.astype(str)
        if self._reader.shape[1] != len(self.var):
            raise ScfmInputError(
                self.path,
                self._reader.key,
                f"has {self._reader.shape[1]} columns but {var_group} has {len(self.var)} rows",
                "one var row per matrix column",
            )
        if is_legacy_dataframe(self.path, "obs"):  # anndata < 0.7 (see read_dataframe)
            obs_frame = read_dataframe(self.path, "obs")
            self._init_obs(obs_frame.index, list(obs_frame.columns))
            return
        with open_h5(self.path) as f:
            try:
                obs = f["obs"]
                index = obs[obs.attrs["_index"]][...]
                self._obs_columns = list(obs.attrs.get("column-order", []))
            except (KeyError, OSError, RuntimeError) as exc:
                raise ScfmInputError(
                    self.path,
                    "obs",
                    f"cell names cannot be read ({exc})",
                    "an h5ad obs dataframe with an _index",
                ) from exc
        self._init_obs(index, self._obs_columns)

    def _init_obs(self, index: Any, columns: list[str]) -> None:
        self._obs_columns = columns
        self.obs_names = pd.Index(np.asarray(index).astype(str))
        self.n_obs = self._reader.n_obs
        if len(self.obs_names) != self.n_obs:
            raise ScfmInputError(
                self.path,
                "obs",
                f"has {len(self.obs_names)} rows but {self._reader.key} has {self.n_obs}",
                "one obs row per matrix row",
            )

    def _choose_field(self, counts: str, probe_cells: int) -> str:
        candidates = []
        with open_h5(self.path) as f:
            for field, key in (("X", "X"), ("raw", "raw/X"), ("layers/counts", "layers/counts")):
                if key in f:
                    candidates.append(field)
        if not candidates:
            raise ScfmInputError(
                self.path, "X", "no count matrix in the file", "X, raw/X or layers/counts"
            )
        found = []
        for field in candidates:
            with MatrixReader(self.path, field) as r:
                block = r.read_rows(0, min(probe_cells, r.n_obs))
            if is_integer_counts(block):
                if field != "X":
                    log.info("%s: X is not integer counts; using %s", self.path, field)
                return field
            found.append(field)
        raise ScfmInputError(
            self.path,
            "/".join(found) or "X",
            "holds no raw integer counts (values are non-integer, negative or not finite)",
            "raw integer counts in X, raw.X or layers['counts'] (log-normalised data cannot be "
            "turned back into counts), or set `counts:` to the field that holds them",
        )

    def read_obs(self, columns: Sequence[str]) -> pd.DataFrame:
        """Only the named obs columns (errors name the missing column)."""
        return read_dataframe(self.path, "obs", columns=list(columns))

    @property
    def obs_columns(self) -> list[str]:
        """Columns available in obs."""
        return self._obs_columns

    def iter_chunks(self, chunk_cells: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start_row, CSR block)``."""
        yield from self._reader.iter_chunks(chunk_cells)

    def close(self) -> None:
        """Close the file."""
        self._reader.close()


class TenxH5Counts:
    """A Cell Ranger ``filtered_feature_bc_matrix.h5`` (v3 layout); Gene Expression features.

    The matrix is stored genes x cells in CSC, i.e. each cell's counts are contiguous, so rows
    of cells x genes stream straight from ``indptr`` without loading the file.
    """

    field = "matrix"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._f = h5py.File(self.path, "r")
            m = self._f["matrix"]
            feats = m["features"]
            ids = feats["id"][...].astype(str)
            names = feats["name"][...].astype(str)
            ftype = feats["feature_type"][...].astype(str) if "feature_type" in feats else None
            self._indptr = m["indptr"][...]
            self._data, self._indices = m["data"], m["indices"]
            self.obs_names = pd.Index(m["barcodes"][...].astype(str))
        except (OSError, KeyError) as exc:
            raise ScfmInputError(
                self.path,
                "matrix",
                f"not a 10x HDF5 matrix ({exc})",
                "a Cell Ranger v3 .h5 with matrix/{data,indices,indptr,barcodes,features}",
            ) from exc
        n_cells = len(self._indptr) - 1
        if len(self.obs_names) != n_cells:
            raise ScfmInputError(
                self.path,
                "matrix/barcodes",
                f"{len(self.obs_names)} barcodes but matrix/indptr has {n_cells} cells",
                "one barcode per cell (matrix/indptr has n_cells + 1 entries)",
            )
        if int(self._indptr[-1]) != len(self._data) or len(self._data) != len(self._indices):
            raise ScfmInputError(
                self.path,
                "matrix/indptr",
                f"ends at {int(self._indptr[-1])} but matrix/data has {len(self._data)} and "
                f"matrix/indices {len(self._indices)} entries",
                "indptr[-1] == len(data) == len(indices) (a complete file)",
            )
        keep = np.ones(len(ids), bool) if ftype is None else ftype == "Gene Expression"
        self._keep = np.flatnonzero(keep)
        self.var = pd.DataFrame({"gene_symbol_10x": names[keep]}, index=pd.Index(ids[keep]))
        self._n_features = len(ids)
        self.n_obs = len(self.obs_names)
        self.obs_columns: list[str] = []

    def read_obs(self, columns: Sequence[str]) -> pd.DataFrame:
        """10x files carry no cell metadata; any requested column is missing."""
        if columns:
            raise ScfmInputError(
                self.path,
                f"obs/{columns[0]}",
                "10x HDF5 files carry no cell metadata",
                "obs_map/obs_keep to name no columns for this dataset",
            )
        return pd.DataFrame(index=self.obs_names)

    def iter_chunks(self, chunk_cells: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start_row, CSR block)`` of cells x Gene Expression features."""
        for start in range(0, self.n_obs, chunk_cells):
            stop = min(start + chunk_cells, self.n_obs)
            lo, hi = int(self._indptr[start]), int(self._indptr[stop])
            block = sp.csr_matrix(
                (self._data[lo:hi], self._indices[lo:hi], self._indptr[start : stop + 1] - lo),
                shape=(stop - start, self._n_features),
            )
            yield start, block[:, self._keep] if len(self._keep) < self._n_features else block

    def close(self) -> None:
        """Close the file."""
        self._f.close()


class MtxCounts:
    """A 10x Matrix Market directory (matrix.mtx[.gz], features/genes.tsv[.gz], barcodes.tsv[.gz]).

    Coordinate entries have no guaranteed order, so the matrix is read whole with scanpy; convert
    atlas-sized data to h5ad or 10x HDF5 first.
    """

    field = "matrix.mtx"

    def __init__(self, path: str | Path) -> None:
        import scanpy as sc

        path = Path(path)
        self.path = path
        directory = path if path.is_dir() else path.parent
        _check_mtx_files(directory)
        try:
            adata = sc.read_10x_mtx(directory, var_names="gene_ids", gex_only=True)
        except (OSError, ValueError, IndexError) as exc:
            raise ScfmInputError(
                directory,
                "matrix.mtx",
                f"cannot be read ({exc})",
                "a 10x directory with matrix.mtx[.gz], features.tsv[.gz], barcodes.tsv[.gz]",
            ) from exc
        self._X = sp.csr_matrix(adata.X)
        self.var = pd.DataFrame(
            {"gene_symbol_10x": adata.var["gene_symbols"].astype(str).values},
            index=adata.var_names.astype(str),
        )
        self.obs_names = adata.obs_names.astype(str)
        self.n_obs = adata.n_obs
        self.obs_columns: list[str] = []

    read_obs = TenxH5Counts.read_obs

    def iter_chunks(self, chunk_cells: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start_row, CSR block)``."""
        for start in range(0, self.n_obs, chunk_cells):
            yield start, self._X[start : start + chunk_cells]

    def close(self) -> None:
        """Nothing to close."""


def _mtx_file(directory: Path, *names: str) -> Path | None:
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _open_maybe_gz(path: Path) -> IO[str]:
    import gzip

    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _check_mtx_files(directory: Path) -> None:
    """Header of matrix.mtx and line counts of features/barcodes, each error naming its file.

    Matrix Market stores genes x cells: one features line per row, one barcode per column.
    """
    mtx = _mtx_file(directory, "matrix.mtx")
    if mtx is None:
        return  # scanpy's own error names the missing file
    with _open_maybe_gz(mtx) as fh:
        header = fh.readline().strip()
        line = header
        while line.startswith("%"):
            line = fh.readline().strip()
    parts = header.lower().split()
    if parts[:3] != ["%%matrixmarket", "matrix", "coordinate"] or (
        len(parts) > 3 and parts[3] not in ("integer", "real")
    ):
        raise ScfmInputError(
            mtx,
            "header",
            f"{header[:80]!r}",
            "'%%MatrixMarket matrix coordinate integer general' (sparse counts)",
        )
    try:
        n_rows, n_cols, _ = (int(v) for v in line.split())
    except ValueError:
        raise ScfmInputError(
            mtx, "size line", f"{line[:80]!r}", "'<rows> <columns> <entries>' after the header"
        ) from None
    for names, n, what in (
        (("features.tsv", "genes.tsv"), n_rows, "rows (genes)"),
        (("barcodes.tsv",), n_cols, "columns (cells)"),
    ):
        table = _mtx_file(directory, *names)
        if table is None:
            continue
        with _open_maybe_gz(table) as fh:
            n_lines = sum(1 for row in fh if row.strip())
        if n_lines != n:
            raise ScfmInputError(
                table,
                "lines",
                f"{n_lines} lines but {mtx.name} has {n} {what}",
                f"one line per matrix {what.split()[0][:-1]}",
            )


def open_counts(
    path: str | Path, fmt: str, *, counts: str = "auto"
) -> H5adCounts | TenxH5Counts | MtxCounts:
    """Open a count matrix of format ``fmt`` (``h5ad``, ``10x_h5``, ``mtx``)."""
    if fmt == "h5ad":
        return H5adCounts(path, counts)
    if counts not in ("auto", "X"):
        raise ScfmInputError(
            path, "counts", f"{counts!r} applies to h5ad only", "auto for this format"
        )
    if fmt == "10x_h5":
        return TenxH5Counts(path)
    if fmt == "mtx":
        return MtxCounts(path)
    raise ScfmInputError(path, "format", f"unknown format {fmt!r}", f"one of {FORMATS}")
