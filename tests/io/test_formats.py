"""Count-matrix formats: 10x HDF5, 10x Matrix Market and h5ad readers, through the local source."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from scfm.config import validate_config
from scfm.errors import ScfmInputError
from scfm.io.formats import (
    H5adCounts,
    MtxCounts,
    TenxH5Counts,
    guess_format,
    is_integer_counts,
    open_counts,
)
from scfm.io.sources import fetch_dataset
from scfm.io.standardize import standardize

N_CELLS = 17
GENE_IDS = [f"ENSG{i:011d}" for i in range(1, 9)]
GENE_NAMES = [f"GENE{i}" for i in range(1, 9)]
# features in file order: an antibody in the middle and one at the end, as Cell Ranger writes
FEATURES = [
    *zip(GENE_IDS[:4], GENE_NAMES[:4], ["Gene Expression"] * 4, strict=True),
    ("CD3_TotalSeqB", "CD3", "Antibody Capture"),
    *zip(GENE_IDS[4:], GENE_NAMES[4:], ["Gene Expression"] * 4, strict=True),
    ("CD19_TotalSeqB", "CD19", "Antibody Capture"),
]
GEX = [i for i, f in enumerate(FEATURES) if f[2] == "Gene Expression"]
BARCODES = [f"AAACCTGAGAAACC{i:02d}-1" for i in range(N_CELLS)]


def _counts(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.poisson(3.0, (N_CELLS, len(FEATURES))) * (rng.random((N_CELLS, len(FEATURES))) < 0.5)
    m[:, 4] += 100  # antibody counts are large: they must not leak into the output
    m[6, GEX] = 0  # a cell with no gene counts
    return m.astype(np.int64)


def write_10x_h5(path: Path, counts: np.ndarray, features: list[tuple[str, str, str]]) -> Path:
    """A Cell Ranger v3 ``filtered_feature_bc_matrix.h5``: features x cells CSC."""
    m = sp.csc_matrix(counts.T)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        g.create_dataset("barcodes", data=np.array(BARCODES[: counts.shape[0]], dtype="S"))
        fe = g.create_group("features")
        fe.create_dataset("id", data=np.array([x[0] for x in features], dtype="S"))
        fe.create_dataset("name", data=np.array([x[1] for x in features], dtype="S"))
        fe.create_dataset("feature_type", data=np.array([x[2] for x in features], dtype="S"))
        fe.create_dataset("genome", data=np.array([b"GRCh38"] * len(features)))
        fe.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return path


def _gz(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    with gzip.open(path, "wb") as fh:
        fh.write(data)


def write_10x_mtx(
    directory: Path, counts: np.ndarray, features: list[tuple[str, str, str]]
) -> Path:
    """A Cell Ranger v3 ``filtered_feature_bc_matrix/`` directory (features x cells)."""
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(counts.T), field="integer")
    _gz(directory / "matrix.mtx.gz", buf.getvalue())
    _gz(directory / "features.tsv.gz", "".join("\t".join(f) + "\n" for f in features))
    _gz(directory / "barcodes.tsv.gz", "".join(b + "\n" for b in BARCODES[: counts.shape[0]]))
    return directory


def _run(
    tmp_path: Path, name: str, ds: dict[str, Any], *, chunk_cells: int = 5
) -> tuple[ad.AnnData, dict[str, Any], dict[str, Any]]:
    cfg = validate_config({"datasets": {name: ds}})["datasets"][name]
    manifest = fetch_dataset(name, cfg, tmp_path / "raw" / name)
    out = tmp_path / "std" / f"{name}.h5ad"
    prov = standardize(
        tmp_path / "raw" / name / "manifest.json",
        out,
        dataset=name,
        cfg=cfg,
        chunk_cells=chunk_cells,
    )
    a = ad.read_h5ad(out)
    assert a.X.format == "csr" and a.X.dtype == np.int32
    return a, prov, manifest


def _assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- 10x HDF5


@pytest.mark.parametrize("chunk_cells", [1, 5, 1000])
def test_10x_h5_gene_expression_only_values_equal(tmp_path: Path, chunk_cells: int) -> None:
    counts = _counts()
    h5 = write_10x_h5(tmp_path / "in" / "filtered_feature_bc_matrix.h5", counts, FEATURES)
    a, prov, manifest = _run(
        tmp_path,
        "tenx",
        {"source": "local", "path": str(h5), "genes": {"symbol_column": "gene_symbol_10x"}},
        chunk_cells=chunk_cells,
    )
    assert manifest["format"] == "10x_h5"
    assert a.shape == (N_CELLS, 8)
    assert list(a.var_names) == GENE_IDS  # antibodies dropped
    assert list(a.var["gene_symbol"]) == GENE_NAMES
    assert list(a.obs_names) == BARCODES
    np.testing.assert_array_equal(a.X.toarray(), counts[:, GEX])
    assert set(a.obs["batch"]) == {"tenx"} and set(a.obs["cell_type"]) == {"unknown"}
    assert prov["counts_field"] == ["matrix"]
    assert prov["genes"]["n_source"] == 8


def test_10x_h5_reader_streams_rows(tmp_path: Path) -> None:
    counts = _counts(seed=2)
    h5 = write_10x_h5(tmp_path / "x.h5", counts, FEATURES)
    r = open_counts(h5, "10x_h5")
    try:
        assert isinstance(r, TenxH5Counts)
        assert r.n_obs == N_CELLS
        assert list(r.var.index) == GENE_IDS
        assert list(r.var["gene_symbol_10x"]) == GENE_NAMES
        starts = []
        blocks = []
        for start, block in r.iter_chunks(4):
            starts.append(start)
            assert block.shape[1] == 8
            blocks.append(block)
        assert starts == [0, 4, 8, 12, 16]
        np.testing.assert_array_equal(sp.vstack(blocks).toarray(), counts[:, GEX])
    finally:
        r.close()


def test_10x_h5_without_feature_type_keeps_all_features(tmp_path: Path) -> None:
    counts = _counts()[:, GEX]
    h5 = write_10x_h5(tmp_path / "old.h5", counts, [FEATURES[i] for i in GEX])
    with h5py.File(h5, "a") as f:
        del f["matrix/features/feature_type"]
    r = TenxH5Counts(h5)
    try:
        assert list(r.var.index) == GENE_IDS
        np.testing.assert_array_equal(next(r.iter_chunks(100))[1].toarray(), counts)
    finally:
        r.close()


def test_10x_h5_with_obs_map_fails_naming_the_column(tmp_path: Path) -> None:
    h5 = write_10x_h5(tmp_path / "in" / "m.h5", _counts(), FEATURES)
    cfg = validate_config(
        {"datasets": {"t": {"source": "local", "path": str(h5), "obs_map": {"cell_type": "ct"}}}}
    )["datasets"]["t"]
    fetch_dataset("t", cfg, tmp_path / "raw")
    with pytest.raises(ScfmInputError, match="not found") as info:
        standardize(
            tmp_path / "raw" / "manifest.json", tmp_path / "std" / "t.h5ad", dataset="t", cfg=cfg
        )
    assert info.value.field == "obs/ct"
    assert info.value.path == str(h5.resolve())
    _assert_nothing_written(tmp_path / "std")


@pytest.mark.parametrize("content", ["h5ad", "random"])
def test_not_a_10x_h5_fails_naming_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "in" / "fake.h5"
    path.parent.mkdir(parents=True)
    if content == "h5ad":
        ad.AnnData(sp.csr_matrix(np.ones((3, 2)))).write_h5ad(path)
    else:
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    cfg = validate_config({"datasets": {"f": {"source": "local", "path": str(path)}}})["datasets"][
        "f"
    ]
    fetch_dataset("f", cfg, tmp_path / "raw")
    with pytest.raises(ScfmInputError, match="not a 10x HDF5 matrix") as info:
        standardize(
            tmp_path / "raw" / "manifest.json", tmp_path / "std" / "f.h5ad", dataset="f", cfg=cfg
        )
    assert info.value.field == "matrix"
    assert info.value.path == str(path.resolve())
    assert str(info.value).startswith(f"{path.resolve()}: matrix: ")
    _assert_nothing_written(tmp_path / "std")


def test_10x_h5_counts_other_than_auto_fail(tmp_path: Path) -> None:
    h5 = write_10x_h5(tmp_path / "m.h5", _counts(), FEATURES)
    with pytest.raises(ScfmInputError, match="applies to h5ad only") as info:
        open_counts(h5, "10x_h5", counts="raw")
    assert info.value.field == "counts"
    assert info.value.path == str(h5)


# --------------------------------------------------------------------------- Matrix Market


@pytest.mark.parametrize("point_at", ["directory", "matrix_file"])
def test_10x_mtx_directory_values_equal(tmp_path: Path, point_at: str) -> None:
    counts = _counts(seed=4)
    d = write_10x_mtx(tmp_path / "in" / "filtered_feature_bc_matrix", counts, FEATURES)
    path = d if point_at == "directory" else d / "matrix.mtx.gz"
    a, prov, manifest = _run(
        tmp_path,
        "mtx",
        {"source": "local", "path": str(path), "genes": {"symbol_column": "gene_symbol_10x"}},
        chunk_cells=3,
    )
    assert manifest["format"] == "mtx"
    [record] = manifest["matrices"]
    assert record["path"] == str(path.resolve())
    if point_at == "directory":
        assert record["sha256"] is None  # a directory has no single checksum
    else:
        assert len(record["sha256"]) == 64
    assert list(a.var_names) == GENE_IDS
    assert list(a.var["gene_symbol"]) == GENE_NAMES
    assert list(a.obs_names) == BARCODES
    np.testing.assert_array_equal(a.X.toarray(), counts[:, GEX])
    assert prov["counts_field"] == ["matrix.mtx"]


def test_10x_mtx_reader(tmp_path: Path) -> None:
    counts = _counts(seed=5)
    d = write_10x_mtx(tmp_path / "m", counts, FEATURES)
    r = open_counts(d, "mtx")
    assert isinstance(r, MtxCounts)
    assert r.n_obs == N_CELLS
    chunks = list(r.iter_chunks(6))
    assert [s for s, _ in chunks] == [0, 6, 12]
    np.testing.assert_array_equal(sp.vstack([b for _, b in chunks]).toarray(), counts[:, GEX])
    r.close()


def test_broken_mtx_directory_fails_naming_it(tmp_path: Path) -> None:
    d = write_10x_mtx(tmp_path / "in" / "m", _counts(), FEATURES)
    (d / "barcodes.tsv.gz").unlink()
    with pytest.raises(ScfmInputError, match="cannot be read") as info:
        MtxCounts(d)
    assert info.value.field == "matrix.mtx"
    assert info.value.path == str(d)


# --------------------------------------------------------------------------- h5ad reader, helpers


def test_h5ad_counts_auto_and_var(tmp_path: Path) -> None:
    counts = _counts()[:, GEX]
    full = ad.AnnData(
        sp.csr_matrix(counts.astype(np.float32)),
        var=pd.DataFrame({"sym": GENE_NAMES}, index=GENE_IDS),
    )
    full.raw = full
    full.X = sp.csr_matrix(np.log1p(counts).astype(np.float32))
    path = tmp_path / "a.h5ad"
    full[:, :3].copy().write_h5ad(path)
    r = H5adCounts(path)
    try:
        assert r.field == "raw"
        assert list(r.var.index) == GENE_IDS
        assert list(r.var["sym"]) == GENE_NAMES
        assert r.n_obs == N_CELLS
    finally:
        r.close()
    r = H5adCounts(path, counts="X")  # explicit: no probing, the caller asked for X
    try:
        assert r.field == "X" and len(r.var) == 3
    finally:
        r.close()


def test_h5ad_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScfmInputError, match="does not exist") as info:
        H5adCounts(tmp_path / "nope.h5ad")
    assert info.value.field == "file"


@pytest.mark.parametrize(
    ("name", "declared", "expected"),
    [
        ("x.h5ad", "auto", "h5ad"),
        ("X.H5AD", "auto", "h5ad"),
        ("filtered_feature_bc_matrix.h5", "auto", "10x_h5"),
        ("m.hdf5", "auto", "10x_h5"),
        ("matrix.mtx", "auto", "mtx"),
        ("matrix.mtx.gz", "auto", "mtx"),
        ("data.bin", "h5ad", "h5ad"),
    ],
)
def test_guess_format(name: str, declared: str, expected: str) -> None:
    assert guess_format(Path("/nowhere") / name, declared) == expected


def test_guess_format_directory_and_unknown(tmp_path: Path) -> None:
    assert guess_format(tmp_path) == "mtx"
    with pytest.raises(ScfmInputError, match="cannot tell the format") as info:
        guess_format(tmp_path / "data.csv")
    assert info.value.field == "format"
    assert info.value.path == str(tmp_path / "data.csv")


def test_local_source_unknown_extension_needs_format(tmp_path: Path) -> None:
    path = tmp_path / "counts.bin"
    ad.AnnData(sp.csr_matrix(_counts()[:, GEX]), var=pd.DataFrame(index=GENE_IDS)).write_h5ad(path)
    cfg = validate_config({"datasets": {"b": {"source": "local", "path": str(path)}}})["datasets"][
        "b"
    ]
    with pytest.raises(ScfmInputError, match="cannot tell the format"):
        fetch_dataset("b", cfg, tmp_path / "raw")
    assert not (tmp_path / "raw" / "manifest.json").exists()
    a, _, manifest = _run(tmp_path, "b", {"source": "local", "path": str(path), "format": "h5ad"})
    assert manifest["format"] == "h5ad"
    np.testing.assert_array_equal(a.X.toarray(), _counts()[:, GEX])


def test_open_counts_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ScfmInputError, match="unknown format 'loom'") as info:
        open_counts(tmp_path / "x.loom", "loom")
    assert info.value.field == "format"


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([], np.float32, True),
        ([1, 2, 300], np.int32, True),
        ([1, -2], np.int64, False),
        ([1.0, 2.0, 3e6], np.float64, True),
        ([1.0, 2.5], np.float32, False),
        ([1.0, np.nan], np.float32, False),
        ([1.0, np.inf], np.float64, False),
        ([0.0, -1.0], np.float32, False),
    ],
)
def test_is_integer_counts(values: list[float], dtype: type, expected: bool) -> None:
    block = sp.csr_matrix(
        (np.asarray(values, dtype=dtype), (np.zeros(len(values), int), np.arange(len(values)))),
        shape=(1, max(len(values), 1)),
    )
    assert is_integer_counts(block) is expected


@pytest.mark.parametrize("layout", ["h5sparse", "dense"])
def test_anndata_before_0_7_layout_is_read_with_its_values(tmp_path: Path, layout: str) -> None:
    """obs/var as compound datasets, categories in uns, no encoding attributes (anndata < 0.7)."""
    rng = np.random.default_rng(1)
    x = rng.poisson(2.0, (N_CELLS, len(GENE_IDS))).astype(np.float32)
    path = tmp_path / "old.h5ad"
    with h5py.File(path, "w") as f:
        if layout == "h5sparse":
            m = sp.csr_matrix(x)
            g = f.create_group("X")
            g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
            g.attrs["h5sparse_format"] = "csr"
            g.attrs["h5sparse_shape"] = np.array(m.shape)
        else:
            f["X"] = x
        obs = np.zeros(N_CELLS, dtype=[("index", "S8"), ("ct", np.int8), ("depth", np.float32)])
        obs["index"] = [f"c{i}".encode() for i in range(N_CELLS)]
        obs["ct"] = [i % 3 for i in range(N_CELLS)]
        obs["depth"] = x.sum(1)
        f["obs"] = obs
        var = np.zeros(len(GENE_IDS), dtype=[("index", "S16")])
        var["index"] = [g.encode() for g in GENE_IDS]
        f["var"] = var
        f.create_group("uns")["ct_categories"] = np.array([b"B", b"NK", b"T"])
    reader = H5adCounts(path)
    assert list(reader.var.index) == GENE_IDS and reader.field == "X"
    assert list(reader.obs_names) == [f"c{i}" for i in range(N_CELLS)]
    assert set(reader.obs_columns) == {"ct", "depth"}
    got = reader.read_obs(["ct"])["ct"]
    assert list(got) == [["B", "NK", "T"][i % 3] for i in range(N_CELLS)]
    blocks = [b.toarray() for _, b in reader.iter_chunks(5)]
    np.testing.assert_array_equal(np.vstack(blocks), x)
    reader.close()
    ds = {"source": "local", "path": str(path), "obs_map": {"cell_type": "ct"}}
    cfg = validate_config({"datasets": {"old": ds}})["datasets"]["old"]
    fetch_dataset("old", cfg, tmp_path / "raw")
    standardize(tmp_path / "raw" / "manifest.json", tmp_path / "std.h5ad", dataset="old", cfg=cfg)
    out = ad.read_h5ad(tmp_path / "std.h5ad")
    np.testing.assert_array_equal(out.X.toarray(), x)
    assert list(out.obs["cell_type"]) == list(got)
