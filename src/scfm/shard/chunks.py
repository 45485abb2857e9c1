"""Row chunks of an h5ad's matrix for the shard job: reused buffers, the next chunk read ahead.

``MatrixReader.iter_chunks`` (anndata's sparse dataset) allocates fresh arrays for every chunk;
at 20k cells x 2,000 genes that is 0.3 GB per chunk whose pages the kernel faults in again each
time (~1 s of CPU per 200k cells here). For the common on-disk layout, a CSR group, this reads
``data`` and ``indices`` straight into two reused buffer pairs with h5py's ``read_direct`` and
reads chunk k + 1 in a thread while the caller tokenizes chunk k (h5py and the numba kernel both
release the GIL, so the read overlaps the kernel when a second core or a disk wait allows).
The read-ahead only runs when the process may use more than one core: on one core the thread
only adds switches and a second buffer pair (+0.14 GB at 20k x 2,000), which do not pay.
Any other layout (CSC, dense) falls back to ``MatrixReader``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp

from scfm.errors import ScfmInputError
from scfm.io.h5ad import MatrixReader, open_h5


class CsrChunks:
    """Iterate ``(start_row, csr_block)`` over the rows of ``X``, ``chunk_cells`` at a time.

    A yielded block is a view of a buffer that is refilled when the next chunk is read (with
    read-ahead: two chunks later): use each block before asking for the next one.
    ``read_ahead`` None: on when the process may run on more than one core.
    Use as a context manager (the read-ahead thread and the file are closed on exit).
    """

    def __init__(
        self, path: str | Path, chunk_cells: int, *, read_ahead: bool | None = None
    ) -> None:
        self.path = Path(path)
        self.chunk_cells = chunk_cells
        self._f = open_h5(self.path)
        group = self._f.get("X")
        self._csr = (
            isinstance(group, h5py.Group)
            and group.attrs.get("encoding-type") == "csr_matrix"
            and all(k in group for k in ("data", "indices", "indptr"))
        )
        if read_ahead is None:  # only where it can pay: a second core to read on
            read_ahead = (
                len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else True
            )
        self._pool = ThreadPoolExecutor(1) if read_ahead and self._csr else None
        if self._csr:
            assert isinstance(group, h5py.Group)
            self.shape = tuple(int(s) for s in group.attrs["shape"])
            self._data, self._indices = group["data"], group["indices"]
            self._indptr = group["indptr"]
            self._buffers: list[list[np.ndarray]] = [[], []]

    def __enter__(self) -> CsrChunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the read-ahead thread and close the file."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._f.close()

    def __iter__(self) -> Iterator[tuple[int, sp.csr_matrix]]:
        if not self._csr:
            with MatrixReader(self.path) as reader:
                yield from reader.iter_chunks(self.chunk_cells)
            return
        starts = range(0, self.shape[0], self.chunk_cells)
        pending: Future[Any] | None = None
        for k, start in enumerate(starts):
            slot = k % 2 if self._pool is not None else 0  # one buffer pair without read-ahead
            block = pending.result() if pending is not None else self._read(start, slot)
            if self._pool is not None and k + 1 < len(starts):
                pending = self._pool.submit(self._read, starts[k + 1], (k + 1) % 2)
            else:
                pending = None
            yield start, block

    def _read(self, start: int, slot: int) -> sp.csr_matrix:
        """Rows ``start:start + chunk_cells`` into buffer pair ``slot``."""
        stop = min(start + self.chunk_cells, self.shape[0])
        try:
            ptr = self._indptr[start : stop + 1].astype(np.int64)
            lo, nnz = int(ptr[0]), int(ptr[-1] - ptr[0])
            bufs = self._buffers[slot]
            if not bufs or bufs[0].shape[0] < nnz:  # grow with room, so few chunks reallocate
                size = max(nnz + nnz // 4, 1)
                bufs[:] = [np.empty(size, self._data.dtype), np.empty(size, self._indices.dtype)]
            data, indices = bufs[0][:nnz], bufs[1][:nnz]
            if nnz:
                self._data.read_direct(data, np.s_[lo : lo + nnz], np.s_[0:nnz])
                self._indices.read_direct(indices, np.s_[lo : lo + nnz], np.s_[0:nnz])
            return sp.csr_matrix(
                (data, indices, ptr - lo), shape=(stop - start, self.shape[1]), copy=False
            )
        except Exception as exc:
            raise ScfmInputError(
                self.path,
                "X",
                f"rows {start}:{stop} cannot be read ({exc})",
                "a complete, uncorrupted file",
            ) from exc
