"""Source cellxgene_census against a real (small, local) SOMA Census store built with tiledbsoma."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm.config import validate_config
from scfm.io.sources import fetch_dataset, read_manifest

soma = pytest.importorskip("tiledbsoma")
soma_io = pytest.importorskip("tiledbsoma.io")
cellxgene_census = pytest.importorskip("cellxgene_census")

N_CELLS, N_GENES = 300, 50
VERSION = "2025-01-30"
CARRIED = [
    "soma_joinid",
    "dataset_id",
    "assay",
    "cell_type",
    "cell_type_ontology_term_id",
    "tissue",
    "tissue_general",
    "disease",
    "donor_id",
    "sex",
    "development_stage",
    "suspension_type",
    "is_primary_data",
]


def _source_adata() -> ad.AnnData:
    rng = np.random.default_rng(42)
    pick = lambda values: rng.choice(values, N_CELLS)  # noqa: E731
    cell_types = pick(["T cell", "B cell", "monocyte"])
    obs = pd.DataFrame(
        {
            "dataset_id": pd.Categorical(pick(["ds-a", "ds-b"])),
            "assay": pd.Categorical(pick(["10x 3' v3", "Smart-seq2"])),
            "cell_type": pd.Categorical(cell_types),
            "cell_type_ontology_term_id": [
                {"T cell": "CL:0000084", "B cell": "CL:0000236", "monocyte": "CL:0000576"}[c]
                for c in cell_types
            ],
            "tissue": pick(["blood", "bone marrow", "lung"]),
            "disease": pick(["normal", "COVID-19"]),
            "donor_id": pick([f"donor{i}" for i in range(5)]),
            "sex": pick(["female", "male"]),
            "development_stage": pick(["adult", "child"]),
            "suspension_type": "cell",
            "is_primary_data": rng.random(N_CELLS) < 0.7,
            "self_reported_ethnicity": "unknown",  # a Census column the source does not carry
        }
    )
    obs["tissue_general"] = obs["tissue"].map(
        {"blood": "blood", "bone marrow": "blood", "lung": "lung"}
    )
    obs.index = obs.index.astype(str)  # stored as obs_id; soma_joinid = row position
    var = pd.DataFrame(
        {
            "feature_id": [f"ENSG{i:011d}" for i in range(N_GENES)],
            "feature_name": [f"GENE{i}" for i in range(N_GENES)],
        }
    )
    var.index = var.index.astype(str)
    shape = (N_CELLS, N_GENES)
    counts = rng.negative_binomial(2, 0.5, shape) * (rng.random(shape) < 0.3)
    counts[7] = 0  # a selected empty cell must survive as an empty CSR row
    obs.loc["7", ["tissue", "tissue_general", "is_primary_data"]] = ["blood", "blood", True]
    return ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)


@pytest.fixture(scope="module")
def census_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ad.AnnData]:
    """A Census-shaped SOMA store (census_info, census_data/homo_sapiens) and its source data."""
    root = str(tmp_path_factory.mktemp("soma") / "census")
    adata = _source_adata()
    with soma.Collection.create(root) as coll:
        coll.add_new_collection("census_info")
        data = coll.add_new_collection("census_data")
        exp_uri = soma_io.from_anndata(
            f"{root}/census_data/homo_sapiens",
            adata.copy(),
            measurement_name="RNA",
            X_layer_name="raw",
            var_id_name="feature_id",
        )
        with soma.Experiment.open(exp_uri) as exp:
            data.set("homo_sapiens", exp)
    return root, adata


def _cfg(name: str, root: str | None, **kw: Any) -> dict[str, Any]:
    cfg = {
        "source": "cellxgene_census",
        "census_version": VERSION,
        "census_uri": root,
        "obs_filter": "tissue_general == 'blood'",
        **kw,
    }
    return validate_config({"datasets": {name: cfg}})["datasets"][name]


@pytest.fixture
def spy_get_anndata(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Record the obs_coords of every get_anndata call."""
    calls: list[np.ndarray] = []
    real = cellxgene_census.get_anndata

    def spy(*args: Any, **kw: Any) -> ad.AnnData:
        calls.append(np.asarray(kw["obs_coords"]))
        return real(*args, **kw)

    monkeypatch.setattr(cellxgene_census, "get_anndata", spy)
    return calls


def _assert_subset(path: Path, source: ad.AnnData, mask: np.ndarray) -> ad.AnnData:
    out = ad.read_h5ad(path)
    expected_ids = np.flatnonzero(mask)
    assert out.n_obs == mask.sum() and out.n_vars == N_GENES
    assert list(out.obs.columns) == CARRIED
    np.testing.assert_array_equal(out.obs["soma_joinid"].to_numpy(), expected_ids)
    assert list(out.obs_names) == [str(i) for i in expected_ids]
    for col in CARRIED[1:]:
        assert list(out.obs[col].astype(object)) == list(source.obs[col].astype(object)[mask]), col
    assert list(out.var_names) == list(source.var["feature_id"])
    assert list(out.var["feature_name"]) == list(source.var["feature_name"])
    assert sp.issparse(out.X) and out.X.format == "csr" and out.X.dtype == np.float32
    np.testing.assert_array_equal(out.X.toarray(), source.X[mask].toarray())
    return out


def test_fetch_primary_cells_matching_the_filter(
    census_store: tuple[str, ad.AnnData], tmp_path: Path, spy_get_anndata: list[np.ndarray]
) -> None:
    root, source = census_store
    cfg = _cfg("blood", root)
    manifest = fetch_dataset("blood", cfg, tmp_path, chunk_cells=64)

    obs = source.obs
    mask = (obs["tissue_general"] == "blood").to_numpy() & obs["is_primary_data"].to_numpy()
    n = int(mask.sum())
    assert n > 128 and n % 64  # several full chunks and a partial one
    h5ad = tmp_path / "census.h5ad"
    out = _assert_subset(h5ad, source, mask)
    assert out.obs["is_primary_data"].all()
    assert out.X[list(out.obs["soma_joinid"]).index(7)].nnz == 0

    # Chunks: ceil(n / 64) requests of consecutive, sorted joinids covering the subset once.
    assert len(spy_get_anndata) == math.ceil(n / 64)
    assert [len(c) for c in spy_get_anndata] == [64] * (n // 64) + [n % 64]
    np.testing.assert_array_equal(np.concatenate(spy_get_anndata), np.flatnonzero(mask))

    assert manifest == read_manifest(tmp_path / "manifest.json")
    assert manifest["dataset"] == "blood" and manifest["source"] == "cellxgene_census"
    assert manifest["format"] == "h5ad"
    assert manifest["matrices"] == [
        {"path": str(h5ad), "url": root, "sha256": None, "size": h5ad.stat().st_size}
    ]
    assert manifest["defaults"] == {
        "obs_map": {
            "cell_type": "cell_type",
            "donor": "donor_id",
            "tissue": "tissue",
            "assay": "assay",
            "batch": "dataset_id",
        },
        "obs_keep": ["disease", "sex", "development_stage", "cell_type_ontology_term_id"],
        "genes": {"id_type": "ensembl", "symbol_column": "feature_name"},
    }
    info = manifest["source_info"]
    assert info["census_version"] == VERSION
    assert info["value_filter"] == "(tissue_general == 'blood') and is_primary_data == True"
    assert (info["n_cells"], info["n_genes"]) == (n, N_GENES)
    assert manifest["config"]["obs_filter"] == "tissue_general == 'blood'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["census.h5ad", "manifest.json"]


def test_primary_only_false_keeps_duplicate_cells(
    census_store: tuple[str, ad.AnnData], tmp_path: Path
) -> None:
    root, source = census_store
    manifest = fetch_dataset("all", _cfg("all", root, primary_only=False), tmp_path, chunk_cells=64)
    mask = (source.obs["tissue_general"] == "blood").to_numpy()
    out = _assert_subset(tmp_path / "census.h5ad", source, mask)
    assert not out.obs["is_primary_data"].all()
    assert manifest["source_info"]["value_filter"] == "tissue_general == 'blood'"


def test_primary_clause_binds_to_the_whole_filter(
    census_store: tuple[str, ad.AnnData], tmp_path: Path
) -> None:
    # Without parentheses, `a or b and primary` would let non-primary `a` cells through.
    root, source = census_store
    cfg = _cfg("or", root, obs_filter="tissue == 'lung' or cell_type == 'B cell'")
    fetch_dataset("or", cfg, tmp_path, chunk_cells=1000)
    obs = source.obs
    mask = ((obs["tissue"] == "lung") | (obs["cell_type"] == "B cell")).to_numpy() & obs[
        "is_primary_data"
    ].to_numpy()
    _assert_subset(tmp_path / "census.h5ad", source, mask)


def test_filter_matching_nothing_is_a_clear_error(
    census_store: tuple[str, ad.AnnData], tmp_path: Path
) -> None:
    root, _ = census_store
    cfg = _cfg("none", root, obs_filter="tissue == 'heart'")
    with pytest.raises(ValueError, match=r"datasets\.none: no cells .*tissue == 'heart'"):
        fetch_dataset("none", cfg, tmp_path, chunk_cells=64)
    assert list(tmp_path.iterdir()) == []


def test_bad_filter_names_the_filter(census_store: tuple[str, ad.AnnData], tmp_path: Path) -> None:
    root, _ = census_store
    cfg = _cfg("bad", root, obs_filter="no_such_column == 'x'")
    with pytest.raises(ValueError, match=r"datasets\.bad: .*no_such_column == 'x'.*does not exist"):
        fetch_dataset("bad", cfg, tmp_path, chunk_cells=64)
    assert list(tmp_path.iterdir()) == []


def test_unknown_organism_experiment(census_store: tuple[str, ad.AnnData], tmp_path: Path) -> None:
    root, _ = census_store
    with pytest.raises(ValueError, match=r"datasets\.m: .*no experiment 'mus_musculus'"):
        fetch_dataset("m", _cfg("m", root, organism="mouse"), tmp_path, chunk_cells=64)
    assert list(tmp_path.iterdir()) == []


def test_misordered_chunk_fails_and_leaves_no_file(
    census_store: tuple[str, ad.AnnData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = census_store
    real = cellxgene_census.get_anndata

    def reversed_rows(*args: Any, **kw: Any) -> ad.AnnData:
        return real(*args, **kw)[::-1].copy()

    monkeypatch.setattr(cellxgene_census, "get_anndata", reversed_rows)
    with pytest.raises(RuntimeError, match="soma_joinid order"):
        fetch_dataset("rev", _cfg("rev", root), tmp_path, chunk_cells=64)
    assert list(tmp_path.iterdir()) == []


def test_public_release_is_opened_by_version(
    census_store: tuple[str, ad.AnnData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # census_uri: null means the public release; redirect open_soma to the local store.
    root, source = census_store
    real = cellxgene_census.open_soma
    seen: list[dict[str, Any]] = []

    def fake_open_soma(**kw: Any) -> Any:
        seen.append(kw)
        return real(uri=root)

    monkeypatch.setattr(cellxgene_census, "open_soma", fake_open_soma)
    manifest = fetch_dataset("pub", _cfg("pub", None), tmp_path, chunk_cells=500)
    assert seen == [{"census_version": VERSION}]
    assert manifest["matrices"][0]["url"] == f"census:{VERSION}"
    assert manifest["source_info"]["n_cells"] == int(
        ((source.obs["tissue_general"] == "blood") & source.obs["is_primary_data"]).sum()
    )
