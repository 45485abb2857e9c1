"""standardize: config block -> fetch_dataset (local source) -> one h5ad contract.

Every dataset is built through the real path (validate_config, fetch_dataset, standardize);
synthetic AnnData cover the edge cases, ../shared/data the real ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm.config import validate_config
from scfm.errors import ScfmInputError
from scfm.io.genes import read_gene_source, write_gene_table
from scfm.io.h5ad import provenance
from scfm.io.sources import fetch_dataset
from scfm.io.standardize import OBS_KEYS, standardize

N_CELLS, N_GENES = 23, 12
ENS = [f"ENSG{i:011d}" for i in range(1, N_GENES + 1)]
SYMBOLS = [f"GENE{i}" for i in range(1, N_GENES + 1)]


# --------------------------------------------------------------------------- helpers


def _counts(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.poisson(2.0, (n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.6)
    m[0, 0] = 1234  # one large count
    m[5] = 0  # an empty cell
    return m.astype(np.int64)


def _obs(n_cells: int = N_CELLS) -> pd.DataFrame:
    plate = [f"p{i % 3}" for i in range(n_cells)]
    plate[1] = ""  # empty -> missing
    plate[2] = None  # missing -> missing (NaN, not a category)
    return pd.DataFrame(
        {
            "ct": pd.Categorical([["T", "B", "NK"][i % 3] for i in range(n_cells)]),
            "plate": plate,
            "donor_id": [f"d{i % 2}" for i in range(n_cells)],
            "score": np.linspace(0.0, 1.0, n_cells),
            "lab": [f"lab{i % 4}" for i in range(n_cells)],
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )


def _lognorm(counts: np.ndarray) -> np.ndarray:
    tot = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.maximum(tot, 1) * 1e4).astype(np.float32)


def _write(adata: ad.AnnData, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


def _counts_file(tmp_path: Path, name: str, *, var: list[str]) -> Path:
    """The standard integer counts and obs with the given var names, as ``tmp_path/in/<name>``."""
    return _write(
        ad.AnnData(sp.csr_matrix(_counts()), obs=_obs(), var=pd.DataFrame(index=var)),
        tmp_path / "in" / name,
    )


def _gene_table(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    csv = tmp_path / "ref" / "genes.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("".join(f"{i},{s}\n" for i, s in rows))
    out = tmp_path / "ref" / "genes.tsv"
    write_gene_table(read_gene_source(csv), out)
    return out


def _prepare(
    tmp_path: Path, name: str, ds: dict[str, Any], *, references: dict[str, Any] | None = None
) -> tuple[Path, dict[str, Any]]:
    config: dict[str, Any] = {"datasets": {name: ds}}
    if references is not None:
        config["references"] = references
    cfg = validate_config(config)["datasets"][name]
    fetch_dataset(name, cfg, tmp_path / "raw" / name)
    return tmp_path / "raw" / name / "manifest.json", cfg


def _run(
    tmp_path: Path,
    name: str,
    ds: dict[str, Any],
    *,
    gene_table: Path | None = None,
    chunk_cells: int = 7,
    out: Path | None = None,
    references: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    manifest, cfg = _prepare(tmp_path, name, ds, references=references)
    out = out or tmp_path / "std" / f"{name}.h5ad"
    prov = standardize(
        manifest, out, dataset=name, cfg=cfg, gene_table=gene_table, chunk_cells=chunk_cells
    )
    return out, prov


def _fails(
    tmp_path: Path,
    name: str,
    ds: dict[str, Any],
    *,
    path: Path,
    field: str,
    match: str,
    gene_table: Path | None = None,
    chunk_cells: int = 4,
    references: dict[str, Any] | None = None,
) -> ScfmInputError:
    """standardize must raise naming ``path`` and ``field`` and write nothing."""
    manifest, cfg = _prepare(tmp_path, name, ds, references=references)
    out = tmp_path / "std" / f"{name}.h5ad"
    with pytest.raises(ScfmInputError, match=match) as info:
        standardize(
            manifest, out, dataset=name, cfg=cfg, gene_table=gene_table, chunk_cells=chunk_cells
        )
    _assert_names(info.value, path, field)
    _assert_nothing_written(out)
    return info.value


def _assert_names(err: ScfmInputError, path: Path, field: str) -> None:
    assert Path(err.path).resolve() == path.resolve()
    assert err.field == field
    assert str(err).startswith(f"{err.path}: {field}: ")


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():  # atomic_path may have created the directory; it must be empty
        assert sorted(p.name for p in out.parent.iterdir()) == []


def _x(out: Path) -> sp.csr_matrix:
    return ad.read_h5ad(out).X


def _assert_contract(out: Path) -> ad.AnnData:
    """X is int32 CSR on disk and in memory; var is indexed by gene_id with gene_symbol."""
    with h5py.File(out, "r") as f:
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
        assert f["X/data"].dtype == np.int32
        # below 2^31 nonzeros indptr is narrowed to the indices' int32 (scipy wants one dtype)
        assert f["X/indptr"].dtype == f["X/indices"].dtype == np.int32
    a = ad.read_h5ad(out)
    assert sp.issparse(a.X) and a.X.format == "csr"
    assert a.X.dtype == np.int32
    assert a.var.index.name == "gene_id"
    assert list(a.var.columns) == ["gene_symbol"]
    assert list(a.obs.columns[: len(OBS_KEYS)]) == list(OBS_KEYS)
    assert a.obs_names.is_unique
    return a


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_counts_in_x_int_or_float_integer(tmp_path: Path, dtype: type) -> None:
    counts = _counts()
    versioned = [f"{g}.{i % 3 + 1}" if i % 2 else g for i, g in enumerate(ENS)]
    src = _write(
        ad.AnnData(
            sp.csr_matrix(counts.astype(dtype)), obs=_obs(), var=pd.DataFrame(index=versioned)
        ),
        tmp_path / "in" / "data.h5ad",
    )
    out, prov = _run(
        tmp_path,
        "pbmc",
        {
            "source": "local",
            "path": str(src),
            "obs_map": {"cell_type": "ct", "donor": "donor_id"},
            "obs_keep": ["lab", "score"],
        },
    )
    a = _assert_contract(out)
    np.testing.assert_array_equal(a.X.toarray(), counts)
    assert list(a.var_names) == ENS  # versions stripped
    assert list(a.var["gene_symbol"]) == ENS  # no gene table: the ID stands in for the symbol
    assert list(a.obs_names) == [f"cell{i}" for i in range(N_CELLS)]
    src_obs = _obs()
    assert list(a.obs["cell_type"]) == list(src_obs["ct"].astype(str))
    assert list(a.obs["donor"]) == list(src_obs["donor_id"])
    assert set(a.obs["batch"]) == {"pbmc"}  # default batch = dataset name
    assert set(a.obs["dataset"]) == {"pbmc"}
    assert set(a.obs["tissue"]) == {"unknown"} and set(a.obs["assay"]) == {"unknown"}
    for key in OBS_KEYS:
        assert isinstance(a.obs[key].dtype, pd.CategoricalDtype)
    assert list(a.obs["lab"]) == list(src_obs["lab"])
    np.testing.assert_allclose(a.obs["score"].to_numpy(), src_obs["score"].to_numpy())
    assert prov["counts_field"] == ["X"]
    assert prov["genes"] == {"id_type": "ensembl", "n_source": N_GENES, "n_kept": N_GENES}


def test_provenance_is_json_in_uns(tmp_path: Path) -> None:
    src = _counts_file(tmp_path, "data.h5ad", var=ENS)
    ds = {"source": "local", "path": str(src), "obs_map": {"cell_type": "ct"}}
    out, returned = _run(tmp_path, "prov", ds)
    with h5py.File(out, "r") as f:
        raw = f["uns/scfm/standardize"][()]
    stored = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    rec = provenance(out)["standardize"]
    assert rec == stored == json.loads(json.dumps(returned, default=str))
    assert rec["stage"] == "standardize"
    assert rec["dataset"] == "prov"
    assert rec["source"] == "local"
    assert rec["counts_field"] == ["X"]
    assert rec["obs_map"] == {"cell_type": "ct"}
    assert rec["cells_without_metadata"] == 0
    assert rec["config"]["path"] == str(src)
    assert rec["config"]["genes"]["id_type"] == "auto"  # the validated block, defaults filled
    assert rec["source_info"] == {"path": str(src.resolve())}
    [inp] = rec["inputs"]
    assert inp["path"] == str(src.resolve())
    assert inp["size"] == src.stat().st_size
    assert inp["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert set(rec["versions"]) == {"scfm", "anndata", "numpy", "scipy", "h5py"}
    assert rec["versions"]["anndata"] == version("anndata")
    assert datetime.fromisoformat(rec["created"]).tzinfo is not None


def test_dense_and_csc_x_are_read(tmp_path: Path) -> None:
    counts = _counts()
    for layout, X in (("dense", counts.astype(np.float32)), ("csc", sp.csc_matrix(counts))):
        src = _write(
            ad.AnnData(X, obs=_obs(), var=pd.DataFrame(index=ENS)),
            tmp_path / "in" / f"{layout}.h5ad",
        )
        out, _ = _run(tmp_path, layout, {"source": "local", "path": str(src)}, chunk_cells=5)
        np.testing.assert_array_equal(_assert_contract(out).X.toarray(), counts)


def test_auto_picks_raw_when_x_is_normalised(tmp_path: Path) -> None:
    counts = _counts()
    full = ad.AnnData(
        sp.csr_matrix(counts.astype(np.float32)),
        obs=_obs(),
        var=pd.DataFrame({"feat": SYMBOLS}, index=ENS),
    )
    full.raw = full
    full.X = sp.csr_matrix(_lognorm(counts))
    adata = full[:, 3:9].copy()  # X holds 6 "highly variable" genes, raw all 12
    src = _write(adata, tmp_path / "in" / "norm.h5ad")
    out, prov = _run(tmp_path, "rawds", {"source": "local", "path": str(src)})
    a = _assert_contract(out)
    assert prov["counts_field"] == ["raw"]
    assert a.shape == (N_CELLS, N_GENES)  # var comes from raw/var, not var
    assert list(a.var_names) == ENS
    np.testing.assert_array_equal(a.X.toarray(), counts)


def test_auto_picks_layers_counts(tmp_path: Path) -> None:
    counts = _counts()
    adata = ad.AnnData(
        sp.csr_matrix(_lognorm(counts)),
        obs=_obs(),
        var=pd.DataFrame(index=ENS),
        layers={"counts": sp.csr_matrix(counts.astype(np.float32))},
    )
    src = _write(adata, tmp_path / "in" / "layer.h5ad")
    out, prov = _run(tmp_path, "layer", {"source": "local", "path": str(src)})
    assert prov["counts_field"] == ["layers/counts"]
    np.testing.assert_array_equal(_assert_contract(out).X.toarray(), counts)


def test_explicit_counts_field(tmp_path: Path) -> None:
    counts = _counts()
    other = _counts(seed=1)
    full = ad.AnnData(
        sp.csr_matrix(other.astype(np.float32)),
        obs=_obs(),
        var=pd.DataFrame(index=ENS),
        layers={"umi": sp.csr_matrix(counts)},
    )
    src = _write(full, tmp_path / "in" / "two.h5ad")
    # X holds integers too, so auto would take X; the config says the counts are in layers/umi
    out, prov = _run(tmp_path, "auto", {"source": "local", "path": str(src)})
    np.testing.assert_array_equal(_x(out).toarray(), other)
    out, prov = _run(tmp_path, "umi", {"source": "local", "path": str(src), "counts": "layers/umi"})
    assert prov["counts_field"] == ["layers/umi"]
    np.testing.assert_array_equal(_assert_contract(out).X.toarray(), counts)


def test_explicit_counts_raw(tmp_path: Path) -> None:
    counts = _counts()
    full = ad.AnnData(sp.csr_matrix(counts), obs=_obs(), var=pd.DataFrame(index=ENS))
    full.raw = full
    adata = full[:, :4].copy()  # X: integer counts of 4 genes; raw: all 12
    src = _write(adata, tmp_path / "in" / "sub.h5ad")
    out, prov = _run(tmp_path, "r", {"source": "local", "path": str(src), "counts": "raw"})
    assert prov["counts_field"] == ["raw"]
    a = _assert_contract(out)
    assert a.shape == (N_CELLS, N_GENES)
    np.testing.assert_array_equal(a.X.toarray(), counts)


def test_obs_map_values_and_defaults(tmp_path: Path) -> None:
    obs = _obs()
    obs["cell_type"] = "source label"  # a source column named like a harmonised key
    src = _write(
        ad.AnnData(sp.csr_matrix(_counts()), obs=obs, var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / "obs.h5ad",
    )
    ds = {
        "source": "local",
        "path": str(src),
        "obs_map": {"cell_type": "ct", "batch": "plate", "tissue": "lab"},
        "obs_values": {"assay": "10x 3' v3", "tissue": "blood"},  # obs_values wins over obs_map
        "obs_keep": ["donor_id", "cell_type"],  # harmonised cell_type is not overwritten
    }
    out, _ = _run(tmp_path, "obs", ds)
    a = _assert_contract(out)
    assert list(a.obs.columns) == [*OBS_KEYS, "donor_id"]
    assert list(a.obs["cell_type"]) == list(obs["ct"].astype(str))
    expected_batch: list = [f"p{i % 3}" for i in range(N_CELLS)]
    expected_batch[1] = expected_batch[2] = None
    # missing values stay missing: never a category called "unknown" (or "nan")
    assert a.obs["batch"].isna().tolist() == [b is None for b in expected_batch]
    assert list(a.obs["batch"].dropna()) == [b for b in expected_batch if b is not None]
    assert set(a.obs["batch"].cat.categories) == {"p0", "p1", "p2"}
    assert set(a.obs["assay"]) == {"10x 3' v3"}
    assert set(a.obs["tissue"]) == {"blood"}
    assert set(a.obs["donor"]) == {"unknown"}
    assert set(a.obs["dataset"]) == {"obs"}
    assert list(a.obs["donor_id"]) == list(_obs()["donor_id"])


def test_duplicate_cell_names_are_made_unique(tmp_path: Path) -> None:
    obs = _obs()
    obs.index = ["a", "b", "a", *[f"c{i}" for i in range(N_CELLS - 4)], "a"]
    src = _write(
        ad.AnnData(sp.csr_matrix(_counts()), obs=obs, var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / "dups.h5ad",
    )
    out, _ = _run(tmp_path, "dups", {"source": "local", "path": str(src)})
    names = list(_assert_contract(out).obs_names)
    assert names[:3] == ["a", "b", "a-1"] and names[-1] == "a-2"


def test_symbols_mapped_through_gene_table(tmp_path: Path) -> None:
    counts = _counts()
    symbols = [*SYMBOLS[:9], "Gene10", "NOTAGENE", "ALSO_NOT"]  # Gene10: case fallback
    table = _gene_table(
        tmp_path,
        [(f"{ENS[i]}.{i + 1}", SYMBOLS[i]) for i in range(N_GENES)]
        + [("ENSG00000999999", "GENE1")],
    )
    src = _write(
        ad.AnnData(sp.csr_matrix(counts), obs=_obs(), var=pd.DataFrame(index=symbols)),
        tmp_path / "in" / "sym.h5ad",
    )
    ds = {"source": "local", "path": str(src), "genes": {"max_unmapped_fraction": 0.2}}
    out, prov = _run(tmp_path, "sym", ds, gene_table=table)
    a = _assert_contract(out)
    assert list(a.var_names) == ENS[:10]  # first ID per symbol; unmapped dropped
    assert list(a.var["gene_symbol"]) == symbols[:10]  # the source's symbols are kept
    np.testing.assert_array_equal(a.X.toarray(), counts[:, :10])
    assert prov["genes"] == {
        "id_type": "symbol",
        "n_source": N_GENES,
        "n_unmapped": 2,
        "unmapped_examples": ["NOTAGENE", "ALSO_NOT"],
        "n_kept": 10,
    }
    assert provenance(out)["standardize"]["genes"] == prov["genes"]


def test_ensembl_ids_get_symbols_from_gene_table(tmp_path: Path) -> None:
    table = _gene_table(tmp_path, [(ENS[i], SYMBOLS[i]) for i in range(6)])
    src = _counts_file(tmp_path, "ens.h5ad", var=ENS)
    out, _ = _run(tmp_path, "ens", {"source": "local", "path": str(src)}, gene_table=table)
    a = _assert_contract(out)
    assert list(a.var_names) == ENS
    assert list(a.var["gene_symbol"]) == SYMBOLS[:6] + ENS[6:]  # unknown IDs keep their ID


def test_as_is_keeps_source_ids(tmp_path: Path) -> None:
    counts = _counts()
    names = [f"my-gene_{i}" for i in range(N_GENES)]
    src = _write(
        ad.AnnData(sp.csr_matrix(counts), obs=_obs(), var=pd.DataFrame(index=names)),
        tmp_path / "in" / "asis.h5ad",
    )
    out, prov = _run(
        tmp_path, "asis", {"source": "local", "path": str(src), "genes": {"id_type": "as_is"}}
    )
    a = _assert_contract(out)
    assert list(a.var_names) == names
    assert list(a.var["gene_symbol"]) == names
    assert prov["genes"]["id_type"] == "as_is"
    np.testing.assert_array_equal(a.X.toarray(), counts)


def test_id_column_and_symbol_column(tmp_path: Path) -> None:
    counts = _counts()
    var = pd.DataFrame(
        {"ensembl": [f"{g}.7" for g in ENS], "symbol": SYMBOLS},
        index=[f"row{i}" for i in range(N_GENES)],
    )
    src = _write(
        ad.AnnData(sp.csr_matrix(counts), obs=_obs(), var=var), tmp_path / "in" / "cols.h5ad"
    )
    ds = {
        "source": "local",
        "path": str(src),
        "genes": {"id_column": "ensembl", "symbol_column": "symbol"},
    }
    out, prov = _run(tmp_path, "cols", ds)
    a = _assert_contract(out)
    assert list(a.var_names) == ENS
    assert list(a.var["gene_symbol"]) == SYMBOLS
    assert prov["genes"]["id_type"] == "ensembl"
    np.testing.assert_array_equal(a.X.toarray(), counts)


def test_chunked_output_equals_unchunked(tmp_path: Path) -> None:
    counts = _counts(n_cells=61, seed=3)
    full = ad.AnnData(
        sp.csr_matrix(counts.astype(np.float32)), obs=_obs(61), var=pd.DataFrame(index=ENS)
    )
    full.raw = full
    full.X = sp.csr_matrix(_lognorm(counts))
    src = _write(full, tmp_path / "in" / "chunks.h5ad")
    ds = {"source": "local", "path": str(src), "obs_map": {"cell_type": "ct"}, "obs_keep": ["lab"]}
    small, _ = _run(tmp_path, "c", ds, chunk_cells=7, out=tmp_path / "small" / "c.h5ad")
    large, _ = _run(tmp_path, "c", ds, chunk_cells=100_000, out=tmp_path / "large" / "c.h5ad")
    a, b = _assert_contract(small), _assert_contract(large)
    for key in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(a.X, key), getattr(b.X, key))
    np.testing.assert_array_equal(a.X.toarray(), counts)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)


# --------------------------------------------------------------------------- bad input


def test_lognormalised_x_without_raw_fails(tmp_path: Path) -> None:
    src = _write(
        ad.AnnData(sp.csr_matrix(_lognorm(_counts())), obs=_obs(), var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / "lognorm.h5ad",
    )
    err = _fails(
        tmp_path,
        "ln",
        {"source": "local", "path": str(src)},
        path=src,
        field="X",
        match="holds no raw integer counts",
    )
    assert "log-normalised data cannot be" in str(err)


def test_lognormalised_x_explicit_counts_fails_naming_cell_and_gene(tmp_path: Path) -> None:
    src = _write(
        ad.AnnData(sp.csr_matrix(_lognorm(_counts())), obs=_obs(), var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / "lognorm.h5ad",
    )
    err = _fails(
        tmp_path,
        "ln",
        {"source": "local", "path": str(src), "counts": "X"},
        path=src,
        field="X",
        match="non-integer value",
    )
    assert "at cell 'cell0' (row 0)" in str(err)


BAD_VALUES = [
    pytest.param(np.nan, "non-finite value nan", id="nan"),
    pytest.param(np.inf, "non-finite value inf", id="inf"),
    pytest.param(-np.inf, "non-finite value -inf", id="-inf"),
    pytest.param(-3.0, "negative count -3.0", id="negative"),
    pytest.param(2.5, "non-integer value 2.5", id="fraction"),
]


def _bad_value_file(tmp_path: Path, bad: float) -> Path:
    """Integer counts except ``bad`` at cell 9, gene 4."""
    counts = _counts().astype(np.float32)
    counts[9, 4] = bad
    return _write(
        ad.AnnData(sp.csr_matrix(counts), obs=_obs(), var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / "bad.h5ad",
    )


@pytest.mark.parametrize(("bad", "problem"), BAD_VALUES)
def test_bad_values_auto(tmp_path: Path, bad: float, problem: str) -> None:
    src = _bad_value_file(tmp_path, bad)
    _fails(
        tmp_path,
        "bad",
        {"source": "local", "path": str(src)},
        path=src,
        field="X",
        match="holds no raw integer counts",
    )


@pytest.mark.parametrize(("bad", "problem"), BAD_VALUES)
def test_bad_values_explicit_x_name_cell_and_gene(tmp_path: Path, bad: float, problem: str) -> None:
    src = _bad_value_file(tmp_path, bad)
    err = _fails(
        tmp_path,
        "bad",
        {"source": "local", "path": str(src), "counts": "X"},
        path=src,
        field="X",
        match="raw integer counts >= 0",
        chunk_cells=4,  # the bad cell is in the third chunk: the row offset must be right
    )
    assert problem.rsplit(" ", 1)[0] in str(err)  # the kind of problem, e.g. "negative count"
    assert f"at cell 'cell9' (row 9), gene '{ENS[4]}'" in str(err)
    assert f"{problem} at cell 'cell9'" in str(
        err
    )  # the value plainly ('nan', not np.float32(nan))


def test_negative_integer_counts_fail(tmp_path: Path) -> None:
    counts = _counts().astype(np.int32)
    counts[3, 2] = -1
    src = _write(
        ad.AnnData(sp.csr_matrix(counts), obs=_obs(), var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / "neg.h5ad",
    )
    _fails(
        tmp_path,
        "neg",
        {"source": "local", "path": str(src)},
        path=src,
        field="X",
        match="no raw integer",
    )
    err = _fails(
        tmp_path,
        "neg",
        {"source": "local", "path": str(src), "counts": "X"},
        path=src,
        field="X",
        match="negative count -1 at cell 'cell3'",
    )
    assert f"gene '{ENS[2]}'" in str(err)


def test_bad_value_after_the_probe_is_caught_while_streaming(tmp_path: Path) -> None:
    # auto checks only the first 2000 cells; the rest is checked chunk by chunk while writing,
    # so the error comes mid-write and the temporary output must be removed.
    n = 2100
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.0, (n, 5)).astype(np.float32)
    counts[2050, 1] = 0.5
    src = _write(
        ad.AnnData(
            sp.csr_matrix(counts),
            obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
            var=pd.DataFrame(index=ENS[:5]),
        ),
        tmp_path / "in" / "late.h5ad",
    )
    err = _fails(
        tmp_path,
        "late",
        {"source": "local", "path": str(src)},
        path=src,
        field="X",
        match="non-integer value",
        chunk_cells=500,
    )
    assert "at cell 'c2050' (row 2050)" in str(err)


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_count_above_int32_range_is_rejected(tmp_path: Path, dtype: type) -> None:
    # X is written as int32: a larger count must not wrap around to a negative number
    counts = _counts().astype(dtype)
    counts[8, 1] = 2**31
    src = _write(
        ad.AnnData(sp.csr_matrix(counts), obs=_obs(), var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / "huge.h5ad",
    )
    err = _fails(
        tmp_path,
        "huge",
        {"source": "local", "path": str(src)},
        path=src,
        field="X",
        match="count above the int32 range",
    )
    assert re.search(rf"2147483648(\.0)? at cell 'cell8' \(row 8\), gene '{ENS[1]}'", str(err))


def test_int32_max_count_is_kept(tmp_path: Path) -> None:
    counts = _counts()
    counts[8, 1] = 2**31 - 1
    src = _write(
        ad.AnnData(sp.csr_matrix(counts), obs=_obs(), var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / "max.h5ad",
    )
    out, _ = _run(tmp_path, "max", {"source": "local", "path": str(src)})
    np.testing.assert_array_equal(_x(out).toarray(), counts)


def test_duplicated_gene_ids_fail(tmp_path: Path) -> None:
    # two versions of one gene collapse to one ID once versions are stripped
    var = [*ENS[:-1], f"{ENS[0]}.2"]
    src = _counts_file(tmp_path, "dupgenes.h5ad", var=var)
    err = _fails(
        tmp_path,
        "dg",
        {"source": "local", "path": str(src)},
        path=src,
        field="var/_index",
        match="1 duplicated gene ID",
    )
    assert ENS[0] in str(err)


def test_duplicated_symbols_fail(tmp_path: Path) -> None:
    table = _gene_table(tmp_path, list(zip(ENS, SYMBOLS, strict=True)))
    var = [*SYMBOLS[:-1], "gene1"]  # GENE1 and gene1 map to the same ID
    src = _counts_file(tmp_path, "dupsym.h5ad", var=var)
    _fails(
        tmp_path,
        "ds",
        {"source": "local", "path": str(src)},
        path=src,
        field="var/_index",
        match="duplicated gene ID",
        gene_table=table,
    )


def test_too_many_unmapped_symbols_fail(tmp_path: Path) -> None:
    table = _gene_table(tmp_path, list(zip(ENS[:8], SYMBOLS[:8], strict=True)))
    src = _counts_file(tmp_path, "unmapped.h5ad", var=SYMBOLS)
    err = _fails(
        tmp_path,
        "um",
        {"source": "local", "path": str(src), "genes": {"max_unmapped_fraction": 0.3}},
        path=src,
        field="var/_index",
        match=r"4 of 12 symbols \(33%\) map to no gene ID",
        gene_table=table,
    )
    assert "GENE9" in str(err) and "at most 30% unmapped" in str(err)


def test_symbols_without_gene_table_fail(tmp_path: Path) -> None:
    src = _counts_file(tmp_path, "notable.h5ad", var=SYMBOLS)
    _fails(
        tmp_path,
        "nt",
        {"source": "local", "path": str(src)},
        path=src,
        field="var/_index",
        match="gene symbols but no gene table",
    )


def test_missing_id_column_fails(tmp_path: Path) -> None:
    src = _counts_file(tmp_path, "idcol.h5ad", var=ENS)
    _fails(
        tmp_path,
        "ic",
        {"source": "local", "path": str(src), "genes": {"id_column": "gene_ids"}},
        path=src,
        field="var/gene_ids",
        match="column not found",
    )


def test_empty_matrix_zero_cells_fails(tmp_path: Path) -> None:
    src = _write(
        ad.AnnData(
            sp.csr_matrix((0, N_GENES), dtype=np.float32),
            obs=pd.DataFrame(index=pd.Index([], dtype=str)),
            var=pd.DataFrame(index=ENS),
        ),
        tmp_path / "in" / "nocells.h5ad",
    )
    _fails(
        tmp_path,
        "e0",
        {"source": "local", "path": str(src)},
        path=src,
        field="X",
        match=r"empty matrix \(0 cells x 12 genes\)",
    )


def test_empty_matrix_zero_genes_fails(tmp_path: Path) -> None:
    src = _write(
        ad.AnnData(
            sp.csr_matrix((N_CELLS, 0), dtype=np.float32),
            obs=_obs(),
            var=pd.DataFrame(index=pd.Index([], dtype=str)),
        ),
        tmp_path / "in" / "nogenes.h5ad",
    )
    _fails(
        tmp_path,
        "g0",
        {"source": "local", "path": str(src)},
        path=src,
        field="var/_index",
        match="no genes",
    )


@pytest.mark.parametrize("key", ["obs_map", "obs_keep"])
def test_missing_obs_column_fails(tmp_path: Path, key: str) -> None:
    src = _counts_file(tmp_path, "obs.h5ad", var=ENS)
    value: Any = {"cell_type": "celltype"} if key == "obs_map" else ["celltype"]
    err = _fails(
        tmp_path,
        "mo",
        {"source": "local", "path": str(src), key: value},
        path=src,
        field="obs/celltype",
        match="not found",
    )
    assert "'ct'" in str(err)  # lists the columns that exist


def test_missing_counts_layer_fails(tmp_path: Path) -> None:
    src = _counts_file(tmp_path, "nolayer.h5ad", var=ENS)
    _fails(
        tmp_path,
        "nl",
        {"source": "local", "path": str(src), "counts": "layers/umi"},
        path=src,
        field="layers/umi",
        match="missing",
    )


def _damaged(tmp_path: Path, how: str) -> Path:
    good = _counts_file(tmp_path, "good.h5ad", var=ENS)
    bad = tmp_path / "in" / f"{how}.h5ad"
    if how == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(np.random.default_rng(0).bytes(20_000))
    return bad


@pytest.mark.parametrize("how", ["truncated", "random_bytes"])
@pytest.mark.parametrize("counts", ["auto", "X"])
def test_damaged_h5ad_names_the_file(tmp_path: Path, how: str, counts: str) -> None:
    bad = _damaged(tmp_path, how)
    _fails(
        tmp_path,
        "dmg",
        {"source": "local", "path": str(bad), "counts": counts},
        path=bad,
        field="file",
        match="cannot be opened as HDF5",
    )


def _malformed(tmp_path: Path, how: str) -> Path:
    path = _write(
        ad.AnnData(sp.csr_matrix(_counts()), obs=_obs(), var=pd.DataFrame(index=ENS)),
        tmp_path / "in" / f"{how}.h5ad",
    )
    with h5py.File(path, "a") as f:
        if how == "no_obs":
            del f["obs"]
        elif how == "obs_index_missing":
            f["obs"].attrs["_index"] = "no_such_dataset"
        elif how == "obs_too_short":  # 2 cell names for 23 matrix rows
            del f["obs/_index"]
            f["obs"].create_dataset("_index", data=np.array([b"c0", b"c1"]))
    return path


@pytest.mark.parametrize("how", ["no_obs", "obs_index_missing"])
def test_broken_obs_group_names_the_file(tmp_path: Path, how: str) -> None:
    bad = _malformed(tmp_path, how)
    manifest, cfg = _prepare(tmp_path, "mal", {"source": "local", "path": str(bad)})
    out = tmp_path / "std" / "mal.h5ad"
    with pytest.raises(ScfmInputError) as info:
        standardize(manifest, out, dataset="mal", cfg=cfg, chunk_cells=4)
    assert Path(info.value.path).resolve() == bad.resolve()
    assert info.value.field.startswith("obs")
    _assert_nothing_written(out)


def test_obs_rows_must_match_matrix_rows(tmp_path: Path) -> None:
    bad = _malformed(tmp_path, "obs_too_short")
    manifest, cfg = _prepare(tmp_path, "short", {"source": "local", "path": str(bad)})
    out = tmp_path / "std" / "short.h5ad"
    with pytest.raises(ScfmInputError) as info:
        standardize(manifest, out, dataset="short", cfg=cfg, chunk_cells=4)
    assert Path(info.value.path).resolve() == bad.resolve()
    assert info.value.field.startswith("obs") or info.value.field == "X"
    _assert_nothing_written(out)


def test_nonexistent_local_path_fails_at_fetch(tmp_path: Path) -> None:
    missing = tmp_path / "in" / "nope.h5ad"
    cfg = validate_config({"datasets": {"nope": {"source": "local", "path": str(missing)}}})
    outdir = tmp_path / "raw" / "nope"
    with pytest.raises(ScfmInputError, match="does not exist") as info:
        fetch_dataset("nope", cfg["datasets"]["nope"], outdir)
    _assert_names(info.value, missing, "datasets.nope.path")
    assert not (outdir / "manifest.json").exists()
    assert list(outdir.iterdir()) == []


# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_real_cellbench_ensembl(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "rna" / "cellbench_5batch.h5ad"
    src = ad.read_h5ad(path)
    ds = {
        "source": "local",
        "path": str(path),
        "obs_map": {"cell_type": "cell_type", "batch": "batch"},
        "obs_keep": ["demuxlet_cls", "cell_number"],
    }
    out, prov = _run(tmp_path, "cellbench", ds, chunk_cells=300)
    a = _assert_contract(out)
    assert a.shape == (992, 11533)
    assert list(a.var_names) == list(src.var_names)
    assert (src.X != a.X).nnz == 0
    np.testing.assert_array_equal(a.X.toarray(), src.X.toarray().astype(np.int64))
    assert list(a.obs["cell_type"]) == list(src.obs["cell_type"].astype(str))
    assert list(a.obs["batch"]) == list(src.obs["batch"].astype(str))
    assert a.obs["batch"].nunique() == 5 and a.obs["cell_type"].nunique() == 5
    assert set(a.obs["dataset"]) == {"cellbench"}
    np.testing.assert_array_equal(a.obs["cell_number"], src.obs["cell_number"])
    assert prov["genes"] == {"id_type": "ensembl", "n_source": 11533, "n_kept": 11533}


@pytest.fixture
def gencode_v44_table(shared_data: Path, tmp_path: Path) -> Path:
    csv = shared_data / "reference" / "human_gencode_v44_gene_id2name.csv"
    out = tmp_path / "ref" / "human.tsv"
    write_gene_table(read_gene_source(csv), out)
    return out


@pytest.mark.shared_data
def test_real_baron_symbols_mapped_through_gencode(
    shared_data: Path, gencode_v44_table: Path, tmp_path: Path
) -> None:
    path = shared_data / "rna" / "baron_pancreas_350.h5ad"
    src = ad.read_h5ad(path)
    ds = {
        "source": "local",
        "path": str(path),
        "obs_map": {"cell_type": "cell_type", "batch": "batch", "donor": "donor"},
        "genes": {"id_type": "symbol", "max_unmapped_fraction": 0.1},
    }
    refs = {"human": {"genes": {"path": str(gencode_v44_table)}}}
    out, prov = _run(
        tmp_path, "baron", ds, gene_table=gencode_v44_table, chunk_cells=100, references=refs
    )
    a = _assert_contract(out)
    genes = prov["genes"]
    # observed: 474 of 12,474 symbols (3.8%, outdated names such as AARS) are not in GENCODE v44
    assert genes["n_source"] == 12474
    assert genes["n_unmapped"] == 474
    assert genes["n_kept"] == 12474 - 474 == a.n_vars
    assert genes["n_unmapped"] / genes["n_source"] == pytest.approx(0.038, abs=5e-4)
    assert genes["unmapped_examples"][:2] == ["AAED1", "AARS"]
    assert provenance(out)["standardize"]["genes"] == genes
    assert a.shape == (350, 12000)
    assert a.var.loc["ENSG00000115263", "gene_symbol"] == "GCG"
    assert a.var_names.str.match(r"^ENSG\d{11}$").all()
    kept = src[:, list(a.var["gene_symbol"])].X
    np.testing.assert_array_equal(a.X.toarray(), kept.toarray())
    for key in ("cell_type", "batch", "donor"):
        assert list(a.obs[key]) == list(src.obs[key].astype(str))
    assert set(a.obs["batch"]) == {"human", "mouse"}
    # the source repeats 22 cell names; the output's are unique and keep the source order
    assert src.obs_names.duplicated().sum() == 22
    assert a.obs_names.is_unique
    first = ~src.obs_names.duplicated()
    assert list(a.obs_names[first]) == list(src.obs_names[first])
    # a stricter threshold stops the run naming the file and the field
    _fails(
        tmp_path / "strict",
        "baron_strict",
        {**ds, "genes": {"id_type": "symbol", "max_unmapped_fraction": 0.01}},
        path=path,
        field="var/_index",
        match=r"474 of 12474 symbols \(4%\) map to no gene ID",
        gene_table=gencode_v44_table,
        references=refs,
    )


def test_writer_keeps_int64_indptr_past_int32_nonzeros(tmp_path: Path, monkeypatch) -> None:
    """The narrowing depends on the nonzero count: with a tiny limit, int64 is kept."""
    import scfm.io.h5ad as h5

    monkeypatch.setattr(h5.CsrH5adWriter, "INT32_LIMIT", 3)
    obs = pd.DataFrame(index=["a", "b"])
    var = pd.DataFrame(index=["g0", "g1"])
    with h5.CsrH5adWriter(tmp_path / "w.h5ad", obs=obs, var=var) as w:
        w.append(sp.csr_matrix(np.array([[1, 2], [3, 4]])))
    with h5py.File(tmp_path / "w.h5ad", "r") as f:
        assert f["X/indptr"].dtype == np.int64
