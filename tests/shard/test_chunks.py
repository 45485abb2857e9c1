"""The shard job's chunk reader against anndata's (MatrixReader) on CSR, CSC and broken files."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from scfm.errors import ScfmInputError
from scfm.io.h5ad import MatrixReader
from scfm.shard.chunks import CsrChunks


def _h5ad(path, X):
    ad.AnnData(X=X).write_h5ad(path)
    return path


@pytest.mark.parametrize("read_ahead", [True, False])
@pytest.mark.parametrize("layout", ["csr", "csc"])
def test_chunks_equal_matrix_reader(tmp_path, layout, read_ahead):
    rng = np.random.default_rng(0)
    X = sp.random(103, 40, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 9)
    X = X.tolil()
    X[10:30] = 0  # a chunk of empty rows
    X = X.tocsr() if layout == "csr" else X.tocsc()
    path = _h5ad(tmp_path / "x.h5ad", X)
    with MatrixReader(path) as reader:
        expected = [(s, b.toarray()) for s, b in reader.iter_chunks(10)]
    with CsrChunks(path, 10, read_ahead=read_ahead) as chunks:
        got = []
        for start, block in chunks:  # each block is used before the next one is asked for
            assert block.shape == (min(10, 103 - start), 40) and block.dtype == np.float32
            got.append((start, block.toarray()))
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(0, 103, 10))
    for (_, a), (_, b) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_truncated_matrix_names_file_and_rows(tmp_path):
    X = sp.random(50, 20, density=0.3, format="csr", dtype=np.float32)
    path = _h5ad(tmp_path / "x.h5ad", X)
    with h5py.File(path, "r+") as f:  # indptr points past the stored values
        indptr = f["X/indptr"][:]
        indptr[30:] += 1000
        del f["X/indptr"]
        f["X/indptr"] = indptr
    with CsrChunks(path, 20) as chunks, pytest.raises(ScfmInputError) as err:
        list(chunks)
    assert "x.h5ad" in str(err.value) and "rows 20:40" in str(err.value)
