"""Source cellxgene_dataset against a local HTTP server standing in for the Curation API."""

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
from scfm.errors import ScfmDownloadError
from scfm.io.sources import fetch_dataset, read_manifest

DATASET_ID = "0b4a15a7-4e9e-4555-9733-2423e5c66469"
VERSION_ID = "9f1049e8-1e1c-4a9c-8a4e-000000000002"
OLD_VERSION_ID = "9f1049e8-1e1c-4a9c-8a4e-000000000001"
COLLECTION_ID = "c0ffee00-1111-2222-3333-444444444444"
TITLE = "Test blood atlas"
VERSIONS_PATH = f"/curation/v1/datasets/{DATASET_ID}/versions"


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries would otherwise sleep 1 s, 2 s, ... between attempts."""
    monkeypatch.setattr("scfm.io.download.time.sleep", lambda _s: None)


@pytest.fixture(scope="module")
def h5ad_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A CELLxGENE-style h5ad: normalised X, integer counts in raw.X, Ensembl var index."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (40, 12)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T cell", "B cell"], 40)),
            "donor_id": pd.Categorical(rng.choice(["d1", "d2"], 40)),
            "tissue": "blood",
            "assay": "10x 3' v3",
            "disease": "normal",
            "sex": "female",
            "development_stage": "adult",
            "cell_type_ontology_term_id": "CL:0000084",
        },
        index=[f"cell{i}" for i in range(40)],
    )
    var = pd.DataFrame(
        {"feature_name": [f"GENE{i}" for i in range(12)]},
        index=[f"ENSG{i:011d}" for i in range(12)],
    )
    raw = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    norm = np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4)
    adata = ad.AnnData(X=sp.csr_matrix(norm.astype(np.float32)), obs=obs, var=var)
    adata.raw = raw
    path = tmp_path_factory.mktemp("h5ad") / "dataset.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes()


def _version(server: Any, vid: str, *, filesize: int | None, assets: list | None = None) -> dict:
    if assets is None:
        assets = [
            {"filetype": "RDS", "url": server.url(f"{vid}.rds"), "filesize": 5},
            {"filetype": "H5AD", "url": server.url(f"{vid}.h5ad"), "filesize": filesize},
        ]
    return {
        "dataset_id": DATASET_ID,
        "dataset_version_id": vid,
        "collection_id": COLLECTION_ID,
        "title": TITLE,
        "assets": assets,
        "cell_count": 40,
    }


def _serve(
    server: Any, body: bytes, *, versions: Any = None, filesize: int | None = None, **route: Any
) -> None:
    """Serve the versions JSON (a bare list unless given) and the newest version's h5ad."""
    if versions is None:
        size = len(body) if filesize is None else filesize
        versions = [_version(server, VERSION_ID, filesize=size)]
    server.add(VERSIONS_PATH, json.dumps(versions), content_type="application/json")
    server.add(f"{VERSION_ID}.h5ad", body, **route)


def _cfg(server: Any, **kw: Any) -> dict[str, Any]:
    cfg = {
        "source": "cellxgene_dataset",
        "api_url": server.base_url,
        "retries": 3,
        "timeout": 5,
        **kw,
    }
    if "url" not in kw:
        cfg["dataset_id"] = DATASET_ID
    return validate_config({"datasets": {"cx": cfg}})["datasets"]["cx"]


def _leftovers(outdir: Path) -> list[str]:
    return sorted(p.name for p in outdir.iterdir()) if outdir.exists() else []


def test_downloads_the_newest_h5ad_and_writes_the_manifest(
    http_server: Any, h5ad_bytes: bytes, tmp_path: Path
) -> None:
    # The older {"datasets": [...]} response shape, newest version first.
    versions = {
        "datasets": [
            _version(http_server, VERSION_ID, filesize=len(h5ad_bytes)),
            _version(http_server, OLD_VERSION_ID, filesize=1),
        ]
    }
    _serve(http_server, h5ad_bytes, versions=versions)
    manifest = fetch_dataset("cx", _cfg(http_server), tmp_path)

    dest = tmp_path / f"{VERSION_ID}.h5ad"
    assert dest.read_bytes() == h5ad_bytes
    adata = ad.read_h5ad(dest)
    assert adata.raw is not None and adata.raw.X.shape == (40, 12)
    np.testing.assert_array_equal(adata.raw.X.data, np.round(adata.raw.X.data))

    assert manifest == read_manifest(tmp_path / "manifest.json")
    assert manifest["source"] == "cellxgene_dataset" and manifest["format"] == "h5ad"
    assert manifest["matrices"] == [
        {
            "url": http_server.url(f"{VERSION_ID}.h5ad"),
            "path": str(dest),
            "size": len(h5ad_bytes),
            "sha256": hashlib.sha256(h5ad_bytes).hexdigest(),
        }
    ]
    assert manifest["defaults"] == {
        "obs_map": {
            "cell_type": "cell_type",
            "donor": "donor_id",
            "tissue": "tissue",
            "assay": "assay",
        },
        "obs_keep": ["disease", "sex", "development_stage", "cell_type_ontology_term_id"],
        "genes": {"id_type": "ensembl", "symbol_column": "feature_name"},
    }
    info = manifest["source_info"]
    assert (info["dataset_id"], info["dataset_version_id"]) == (DATASET_ID, VERSION_ID)
    assert (info["title"], info["collection_id"]) == (TITLE, COLLECTION_ID)
    assert _leftovers(tmp_path) == sorted([dest.name, "manifest.json"])


def test_bare_list_response_and_configured_sha256(
    http_server: Any, h5ad_bytes: bytes, tmp_path: Path
) -> None:
    _serve(http_server, h5ad_bytes)
    digest = hashlib.sha256(h5ad_bytes).hexdigest()
    manifest = fetch_dataset("cx", _cfg(http_server, sha256=digest), tmp_path)
    assert manifest["matrices"][0]["sha256"] == digest
    assert manifest["source_info"]["dataset_version_id"] == VERSION_ID


def test_wrong_configured_sha256_fails(http_server: Any, h5ad_bytes: bytes, tmp_path: Path) -> None:
    _serve(http_server, h5ad_bytes)
    with pytest.raises(ScfmDownloadError, match=rf"{DATASET_ID}.*sha256 mismatch"):
        fetch_dataset("cx", _cfg(http_server, sha256="0" * 64), tmp_path)
    assert _leftovers(tmp_path) == []


def test_unknown_dataset_404_is_a_clear_error(http_server: Any, tmp_path: Path) -> None:
    with pytest.raises(ScfmDownloadError, match=rf"datasets\.cx: .*{DATASET_ID}.*HTTP 404"):
        fetch_dataset("cx", _cfg(http_server), tmp_path)
    assert _leftovers(tmp_path) == []


def test_no_published_versions(http_server: Any, tmp_path: Path) -> None:
    http_server.add(VERSIONS_PATH, "[]", content_type="application/json")
    with pytest.raises(ValueError, match=rf"{DATASET_ID} has no published versions"):
        fetch_dataset("cx", _cfg(http_server), tmp_path)


def test_no_h5ad_asset(http_server: Any, tmp_path: Path) -> None:
    rds_only = [{"filetype": "RDS", "url": http_server.url("x.rds"), "filesize": 5}]
    versions = [_version(http_server, VERSION_ID, filesize=None, assets=rds_only)]
    http_server.add(VERSIONS_PATH, json.dumps(versions), content_type="application/json")
    with pytest.raises(ValueError, match=rf"{DATASET_ID} .*no H5AD asset.*'RDS'"):
        fetch_dataset("cx", _cfg(http_server), tmp_path)
    assert _leftovers(tmp_path) == []


def test_size_mismatch_leaves_no_file(http_server: Any, h5ad_bytes: bytes, tmp_path: Path) -> None:
    _serve(http_server, h5ad_bytes, filesize=len(h5ad_bytes) + 1)
    with pytest.raises(ScfmDownloadError, match="size mismatch"):
        fetch_dataset("cx", _cfg(http_server), tmp_path)
    assert not (tmp_path / f"{VERSION_ID}.h5ad").exists()
    assert _leftovers(tmp_path) == []


def test_truncated_transfer_is_retried_then_fails(
    http_server: Any, h5ad_bytes: bytes, tmp_path: Path
) -> None:
    _serve(http_server, h5ad_bytes, truncate_at=len(h5ad_bytes) // 2)
    with pytest.raises(ScfmDownloadError, match=r"giving up after 3 attempt\(s\)"):
        fetch_dataset("cx", _cfg(http_server), tmp_path)
    assert http_server.routes[f"/{VERSION_ID}.h5ad"].hits == 3
    assert not any(VERSION_ID in name for name in _leftovers(tmp_path))
    assert _leftovers(tmp_path) == []


def test_a_503_is_retried(http_server: Any, h5ad_bytes: bytes, tmp_path: Path) -> None:
    _serve(http_server, h5ad_bytes, fail_times=1)
    http_server.routes[VERSIONS_PATH].fail_times = 1  # the API call is retried too
    manifest = fetch_dataset("cx", _cfg(http_server), tmp_path)
    assert (tmp_path / f"{VERSION_ID}.h5ad").read_bytes() == h5ad_bytes
    assert http_server.routes[f"/{VERSION_ID}.h5ad"].hits == 2
    assert http_server.routes[VERSIONS_PATH].hits == 2
    assert manifest["matrices"][0]["size"] == len(h5ad_bytes)


def test_url_variant_skips_the_api(http_server: Any, h5ad_bytes: bytes, tmp_path: Path) -> None:
    url = http_server.add("files/blood.h5ad", h5ad_bytes)
    manifest = fetch_dataset("cx", _cfg(http_server, url=url, size=len(h5ad_bytes)), tmp_path)
    dest = tmp_path / "blood.h5ad"
    assert dest.read_bytes() == h5ad_bytes
    assert manifest["matrices"][0]["path"] == str(dest)
    assert manifest["matrices"][0]["url"] == url
    assert manifest["source_info"] == {"url": url}
    assert manifest["defaults"]["genes"] == {"id_type": "ensembl", "symbol_column": "feature_name"}
    assert VERSIONS_PATH not in http_server.routes
