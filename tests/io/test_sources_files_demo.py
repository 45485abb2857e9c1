"""Sources local, url and demo (pbmc68k, simulated), and the simulator behind the demo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm.config import validate_config
from scfm.errors import ScfmConfigError, ScfmDownloadError
from scfm.io import download as dl
from scfm.io.genes import read_gene_source, write_gene_table
from scfm.io.h5ad import provenance
from scfm.io.simulate import HIERARCHY, SimulationParams, simulate_counts
from scfm.io.sources import fetch_dataset, read_manifest
from scfm.io.sources.demo import pbmc68k_counts
from scfm.io.standardize import standardize

ENS = [f"ENSG{i:011d}" for i in range(1, 11)]


def _counts(n_cells: int = 15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.poisson(2.0, (n_cells, len(ENS))) * (rng.random((n_cells, len(ENS))) < 0.7)).astype(
        np.int64
    )


def _h5ad_bytes(tmp_path: Path, counts: np.ndarray) -> bytes:
    path = tmp_path / "src" / "counts.h5ad"
    path.parent.mkdir(parents=True, exist_ok=True)
    obs = pd.DataFrame(
        {"ct": [f"t{i % 2}" for i in range(len(counts))]},
        index=[f"c{i}" for i in range(len(counts))],
    )
    ad.AnnData(
        sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=pd.DataFrame(index=ENS)
    ).write_h5ad(path)
    return path.read_bytes()


def _cfg(name: str, ds: dict[str, Any], references: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"datasets": {name: ds}}
    if references:
        config["references"] = references
    return validate_config(config)["datasets"][name]


def _standardize(
    tmp_path: Path, name: str, cfg: dict[str, Any], gene_table: Path | None = None
) -> tuple[ad.AnnData, dict[str, Any]]:
    out = tmp_path / "std" / f"{name}.h5ad"
    prov = standardize(
        tmp_path / "raw" / name / "manifest.json",
        out,
        dataset=name,
        cfg=cfg,
        gene_table=gene_table,
        chunk_cells=64,
    )
    a = ad.read_h5ad(out)
    assert a.X.format == "csr" and a.X.dtype == np.int32
    assert provenance(out)["standardize"]["dataset"] == name
    return a, prov


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    return waits


# --------------------------------------------------------------------------- local


def test_local_manifest(tmp_path: Path) -> None:
    src = tmp_path / "in" / "data.h5ad"
    src.parent.mkdir()
    src.write_bytes(_h5ad_bytes(tmp_path, _counts()))
    cfg = _cfg("loc", {"source": "local", "path": str(src)})
    outdir = tmp_path / "raw" / "loc"
    manifest = fetch_dataset("loc", cfg, outdir)
    assert read_manifest(outdir / "manifest.json") == json.loads(json.dumps(manifest))
    assert [p.name for p in outdir.iterdir()] == ["manifest.json"]  # the data is not copied
    assert manifest["dataset"] == "loc" and manifest["source"] == "local"
    assert manifest["format"] == "h5ad"
    assert manifest["config"] == cfg
    assert manifest["obs_table"] is None and manifest["defaults"] == {}
    assert manifest["matrices"] == [
        {
            "path": str(src.resolve()),
            "url": None,
            "size": src.stat().st_size,
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        }
    ]


def test_local_path_with_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data.h5ad").write_bytes(_h5ad_bytes(tmp_path, _counts()))
    cfg = _cfg("home", {"source": "local", "path": "~/data.h5ad"})
    manifest = fetch_dataset("home", cfg, tmp_path / "raw" / "home")
    assert manifest["matrices"][0]["path"] == str((tmp_path / "data.h5ad").resolve())
    a, _ = _standardize(tmp_path, "home", cfg)
    np.testing.assert_array_equal(a.X.toarray(), _counts())


# --------------------------------------------------------------------------- url


def test_url_source_sha256(http_server: Any, tmp_path: Path) -> None:
    counts = _counts()
    body = _h5ad_bytes(tmp_path, counts)
    digest = hashlib.sha256(body).hexdigest()
    url = http_server.add("files/pbmc_counts.h5ad", body)
    ds = {"source": "url", "url": url, "sha256": digest, "obs_map": {"cell_type": "ct"}}
    cfg = _cfg("web", ds)
    outdir = tmp_path / "raw" / "web"
    manifest = fetch_dataset("web", cfg, outdir)
    dest = outdir / "pbmc_counts.h5ad"
    assert manifest["format"] == "h5ad"
    assert manifest["matrices"] == [
        {"url": url, "path": str(dest), "size": len(body), "sha256": digest}
    ]
    assert manifest["source_info"] == {"url": url}
    assert dest.read_bytes() == body
    assert sorted(p.name for p in outdir.iterdir()) == ["manifest.json", "pbmc_counts.h5ad"]
    a, prov = _standardize(tmp_path, "web", cfg)
    np.testing.assert_array_equal(a.X.toarray(), counts)
    assert list(a.obs["cell_type"]) == [f"t{i % 2}" for i in range(len(counts))]
    assert prov["source"] == "url" and prov["inputs"][0]["url"] == url


def test_url_source_size_only_and_query_string(http_server: Any, tmp_path: Path) -> None:
    body = _h5ad_bytes(tmp_path, _counts())
    http_server.add("dl/counts.h5ad", body)
    url = http_server.url("dl/counts.h5ad") + "?download=1"
    cfg = _cfg("sz", {"source": "url", "url": url, "size": len(body)})
    manifest = fetch_dataset("sz", cfg, tmp_path / "raw" / "sz")
    assert manifest["matrices"][0]["path"] == str(tmp_path / "raw" / "sz" / "counts.h5ad")
    assert manifest["matrices"][0]["sha256"] == hashlib.sha256(body).hexdigest()


def test_url_without_file_name_uses_the_dataset_name(http_server: Any, tmp_path: Path) -> None:
    body = _h5ad_bytes(tmp_path, _counts())
    url = http_server.add("/", body)
    cfg = _cfg("bare", {"source": "url", "url": url, "size": len(body)})
    manifest = fetch_dataset("bare", cfg, tmp_path / "raw" / "bare")
    assert manifest["matrices"][0]["path"] == str(tmp_path / "raw" / "bare" / "bare.h5ad")


def test_url_source_file_scheme(tmp_path: Path) -> None:
    src = tmp_path / "mirror" / "x.h5ad"
    src.parent.mkdir()
    src.write_bytes(_h5ad_bytes(tmp_path, _counts()))
    cfg = _cfg("f", {"source": "url", "url": src.as_uri(), "size": src.stat().st_size})
    manifest = fetch_dataset("f", cfg, tmp_path / "raw" / "f")
    assert Path(manifest["matrices"][0]["path"]).read_bytes() == src.read_bytes()


def test_url_source_needs_sha256_or_size() -> None:
    with pytest.raises(ScfmConfigError, match=r"datasets\.u: needs one of") as info:
        _cfg("u", {"source": "url", "url": "https://example.org/x.h5ad"})
    assert "sha256" in str(info.value) and "size" in str(info.value)


def _assert_fetch_left_nothing(outdir: Path) -> None:
    assert not (outdir / "manifest.json").exists()
    assert list(outdir.iterdir()) == []


def test_url_checksum_mismatch(http_server: Any, tmp_path: Path, sleeps: list[float]) -> None:
    body = _h5ad_bytes(tmp_path, _counts())
    url = http_server.add("x.h5ad", body)
    cfg = _cfg("bad", {"source": "url", "url": url, "sha256": "ab" * 32})
    outdir = tmp_path / "raw" / "bad"
    with pytest.raises(ScfmDownloadError, match="sha256 mismatch") as info:
        fetch_dataset("bad", cfg, outdir)
    assert str(info.value).startswith(url)
    assert hashlib.sha256(body).hexdigest() in str(info.value)
    assert sleeps == []
    _assert_fetch_left_nothing(outdir)


def test_url_size_mismatch(http_server: Any, tmp_path: Path) -> None:
    body = _h5ad_bytes(tmp_path, _counts())
    url = http_server.add("x.h5ad", body)
    cfg = _cfg("bad", {"source": "url", "url": url, "size": len(body) - 1})
    outdir = tmp_path / "raw" / "bad"
    with pytest.raises(ScfmDownloadError, match=f"size mismatch: got {len(body)} bytes"):
        fetch_dataset("bad", cfg, outdir)
    _assert_fetch_left_nothing(outdir)


def test_url_404(http_server: Any, tmp_path: Path, sleeps: list[float]) -> None:
    url = http_server.url("gone.h5ad")
    cfg = _cfg("gone", {"source": "url", "url": url, "size": 10})
    outdir = tmp_path / "raw" / "gone"
    with pytest.raises(ScfmDownloadError, match="HTTP 404") as info:
        fetch_dataset("gone", cfg, outdir)
    assert url in str(info.value)
    assert sleeps == []
    _assert_fetch_left_nothing(outdir)


def test_url_server_closes_mid_transfer(
    http_server: Any, tmp_path: Path, sleeps: list[float]
) -> None:
    body = _h5ad_bytes(tmp_path, _counts())
    url = http_server.add("x.h5ad", body, truncate_at=len(body) // 3)
    cfg = _cfg("cut", {"source": "url", "url": url, "size": len(body), "retries": 2})
    outdir = tmp_path / "raw" / "cut"
    with pytest.raises(ScfmDownloadError, match=r"giving up after 2 attempt\(s\)"):
        fetch_dataset("cut", cfg, outdir)
    assert http_server.routes["/x.h5ad"].hits == 2
    assert sleeps == [1.0]
    _assert_fetch_left_nothing(outdir)


# --------------------------------------------------------------------------- demo: pbmc68k


@pytest.fixture(scope="module")
def pbmc() -> tuple[ad.AnnData, ad.AnnData]:
    import scanpy as sc

    return pbmc68k_counts(), sc.datasets.pbmc68k_reduced()


def test_pbmc68k_counts_are_recovered(pbmc: tuple[ad.AnnData, ad.AnnData]) -> None:
    counts, src = pbmc
    assert counts.shape == (700, 765)
    assert list(counts.var_names) == list(src.raw.var_names)
    assert list(counts.obs_names) == list(src.obs_names)
    assert sp.issparse(counts.X) and counts.X.dtype == np.int32
    dense = counts.X.toarray()
    assert (dense >= 0).all()
    assert counts.uns["recovery_max_residual"] < 0.25
    # the recovered counts give back the stored log-normalised values
    n_counts = src.obs["n_counts"].to_numpy()
    relog = np.log1p(dense / n_counts[:, None] * 1e4)
    np.testing.assert_allclose(relog, src.raw.X.toarray(), atol=2e-3)
    # n_counts was computed on all genes, these are 765 of them: totals are below n_counts and
    # follow it (observed Pearson r = 0.76, totals 11-28% of n_counts)
    totals = dense.sum(axis=1)
    assert (totals <= n_counts + 1).all()
    assert (totals > 0).all()
    assert np.corrcoef(totals, n_counts)[0, 1] > 0.7
    assert list(counts.obs["bulk_labels"]) == list(src.obs["bulk_labels"].astype(str))
    assert counts.obs["bulk_labels"].nunique() == 10


@pytest.mark.shared_data
def test_demo_pbmc68k_standardized(shared_data: Path, tmp_path: Path) -> None:
    table = tmp_path / "ref" / "human.tsv"
    write_gene_table(
        read_gene_source(shared_data / "reference" / "human_gencode_v44_gene_id2name.csv"), table
    )
    refs = {"human": {"genes": {"path": str(table)}}}
    cfg = _cfg("pbmc", {"source": "demo", "demo": "pbmc68k"}, refs)
    manifest = fetch_dataset("pbmc", cfg, tmp_path / "raw" / "pbmc")
    h5 = tmp_path / "raw" / "pbmc" / "pbmc68k.h5ad"
    assert manifest["matrices"][0]["path"] == str(h5)
    assert manifest["matrices"][0]["sha256"] == hashlib.sha256(h5.read_bytes()).hexdigest()
    assert manifest["defaults"]["genes"] == {"id_type": "symbol"}
    assert manifest["source_info"]["recovery_max_residual"] < 0.25
    a, prov = _standardize(tmp_path, "pbmc", cfg, gene_table=table)
    # observed: 65 of 765 symbols (8.5%: old names such as ATPIF1, RP11-* clones) are not in v44
    assert prov["genes"]["n_unmapped"] == 65
    assert a.shape == (700, 700)
    counts = pbmc68k_counts()
    np.testing.assert_array_equal(a.X.toarray(), counts[:, list(a.var["gene_symbol"])].X.toarray())
    assert list(a.obs["cell_type"]) == list(counts.obs["bulk_labels"])
    assert list(a.obs["phase"]) == list(counts.obs["phase"])
    assert set(a.obs["batch"]) == {"pbmc"}
    assert prov["obs_map"] == {"cell_type": "bulk_labels"}


# --------------------------------------------------------------------------- demo: simulated


SIM = {"n_cells": 240, "n_genes": 120, "n_batches": 2, "batch_effect": 0.5, "seed": 7}


def test_demo_simulated_standardized(tmp_path: Path) -> None:
    cfg = _cfg("sim", {"source": "demo", "demo": "simulated", "simulation": SIM})
    manifest = fetch_dataset("sim", cfg, tmp_path / "raw" / "sim")
    assert manifest["source_info"]["params"]["n_cells"] == 240
    a, prov = _standardize(tmp_path, "sim", cfg)
    expected = simulate_counts(SimulationParams(**SIM))
    assert a.shape == (240, 120)
    np.testing.assert_array_equal(a.X.toarray(), expected.X.toarray())
    assert list(a.var_names) == list(expected.var_names)
    assert list(a.var["gene_symbol"]) == list(expected.var["gene_symbol"])
    assert prov["genes"]["id_type"] == "as_is"
    for key in ("cell_type", "batch", "donor"):
        assert list(a.obs[key]) == list(expected.obs[key].astype(str))
    assert list(a.obs["lineage"]) == list(expected.obs["lineage"].astype(str))
    assert set(a.obs["dataset"]) == {"sim"}
    assert set(a.obs["tissue"]) == {"unknown"}


def _lognorm(a: ad.AnnData) -> np.ndarray:
    x = a.X.toarray().astype(float)
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


def test_simulator_is_deterministic() -> None:
    a = simulate_counts(n_cells=200, n_genes=80, seed=3)
    b = simulate_counts(SimulationParams(n_cells=200, n_genes=80, seed=3))
    c = simulate_counts(n_cells=200, n_genes=80, seed=4)
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert (a.X != c.X).nnz > 0


def test_simulator_layout() -> None:
    a = simulate_counts(n_cells=300, n_genes=100, n_batches=3, seed=0)
    assert a.shape == (300, 100)
    assert sp.issparse(a.X) and a.X.dtype == np.int32 and a.X.format == "csr"
    assert list(a.obs.columns) == ["cell_type", "lineage", "batch", "donor"]
    assert set(a.obs["batch"]) == {"batch0", "batch1", "batch2"}
    assert a.obs.groupby("donor", observed=True)["batch"].nunique().max() == 1  # nested
    lineage_of = {t: lin for lin, ts in HIERARCHY.items() for t in ts}
    assert all(
        lineage_of[t] == lin for t, lin in zip(a.obs["cell_type"], a.obs["lineage"], strict=True)
    )
    assert sum(a.var_names.str.startswith("MT-")) == 13
    assert list(a.var["gene_symbol"]) == list(a.var_names)
    assert a.uns["simulation"]["hierarchy"] == {k: list(v) for k, v in HIERARCHY.items()}
    with pytest.raises(ValueError, match="n_cells >= 10"):
        SimulationParams(n_cells=5)


def _batch_distance(a: ad.AnnData) -> float:
    """Mean distance between batch centroids within each cell type (composition-free)."""
    x = _lognorm(a)
    ct = a.obs["cell_type"].astype(str).to_numpy()
    batch = a.obs["batch"].astype(str).to_numpy()
    dists = []
    for t in np.unique(ct):
        cents = [
            x[(ct == t) & (batch == b)].mean(axis=0)
            for b in np.unique(batch)
            if ((ct == t) & (batch == b)).sum() >= 10
        ]
        dists += [
            np.linalg.norm(cents[i] - cents[j])
            for i in range(len(cents))
            for j in range(i + 1, len(cents))
        ]
    return float(np.mean(dists))


def test_simulator_batch_effect() -> None:
    kw = {"n_cells": 900, "n_genes": 300, "n_batches": 3, "seed": 0}
    with_fx = simulate_counts(batch_effect=0.5, **kw)
    without = simulate_counts(batch_effect=0.0, **kw)
    # observed: ~12 with batch_effect 0.5, ~3.4 (sampling noise) with 0
    assert _batch_distance(with_fx) > 2.5 * _batch_distance(without)

    # and a library-size shift between batches only when there is a batch effect
    def median_lib(a: ad.AnnData) -> np.ndarray:
        lib = np.asarray(a.X.sum(axis=1)).ravel()
        return np.array([np.median(lib[a.obs["batch"] == b]) for b in ("batch0", "batch2")])

    lo, hi = median_lib(with_fx)
    assert hi / lo > 1.4
    lo, hi = median_lib(without)
    assert abs(hi / lo - 1) < 0.1


@pytest.mark.parametrize("batch_effect", [0.0, 0.5])
def test_simulator_cell_types_are_separable(batch_effect: float) -> None:
    a = simulate_counts(n_cells=900, n_genes=300, batch_effect=batch_effect, seed=1)
    x = _lognorm(a)
    ct = a.obs["cell_type"].astype(str).to_numpy()
    types = np.unique(ct)
    assert len(types) == 6
    train = np.arange(len(ct)) % 2 == 0
    cents = np.stack([x[train & (ct == t)].mean(axis=0) for t in types])
    test = x[~train]
    pred = types[np.argmin(((test[:, None, :] - cents[None]) ** 2).sum(axis=-1), axis=1)]
    assert (pred == ct[~train]).mean() > 0.9  # nearest centroid, held-out half
    # the hierarchy shows: types of one lineage are closer than types of different lineages
    lineage_of = {t: lin for lin, ts in HIERARCHY.items() for t in ts}
    d = np.linalg.norm(cents[:, None] - cents[None], axis=-1)
    same = [
        d[i, j] for i in range(6) for j in range(i) if lineage_of[types[i]] == lineage_of[types[j]]
    ]
    diff = [
        d[i, j] for i in range(6) for j in range(i) if lineage_of[types[i]] != lineage_of[types[j]]
    ]
    assert np.mean(same) < np.mean(diff)
