"""Source ``cellxgene_dataset``: one CELLxGENE Discover dataset, as its published H5AD.

Given a ``dataset_id``, the Curation API lists the dataset's published versions (newest first);
the newest version's H5AD asset is downloaded and checked against the size the API reports.
A direct ``url`` to such an H5AD skips the API.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from scfm.errors import ScfmDownloadError
from scfm.io.download import download, download_configured, fetch_json

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.cellxgene.cziscience.com"

# CELLxGENE schema conventions: raw counts, Ensembl ids in the var index, symbols in
# feature_name, and the harmonised ontology labels in obs.
DEFAULTS = {
    "obs_map": {
        "cell_type": "cell_type",
        "donor": "donor_id",
        "tissue": "tissue",
        "assay": "assay",
    },
    "obs_keep": ["disease", "sex", "development_stage", "cell_type_ontology_term_id"],
    "genes": {"id_type": "ensembl", "symbol_column": "feature_name"},
}

# A version id becomes a file name: accept only what a UUID-like id can contain.
_SAFE_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")


def fetch(name: str, cfg: dict[str, Any], outdir: Path, *, chunk_cells: int) -> dict[str, Any]:
    """Download the dataset's H5AD into ``outdir``.

    Parameters
    ----------
    name
        Dataset name (used in messages).
    cfg
        Validated dataset config with ``dataset_id`` (+ ``api_url``) or ``url``, and optional
        ``sha256``/``size``, ``retries``, ``timeout``.
    outdir
        Directory for the downloaded file.
    chunk_cells
        Unused: the file is downloaded whole.

    Returns
    -------
    dict
        The raw manifest fragment (see :mod:`scfm.io.sources`).

    Raises
    ------
    ScfmDownloadError
        If the API or the file cannot be fetched, or the file fails verification.
    ValueError
        If the dataset has no published version or no H5AD asset.
    """
    outdir = Path(outdir)
    if cfg.get("url"):
        return _fetch_url(name, cfg, outdir)
    return _fetch_dataset_id(name, cfg, outdir)


def _fetch_url(name: str, cfg: dict[str, Any], outdir: Path) -> dict[str, Any]:
    url = cfg["url"]
    filename = Path(unquote(urlparse(url).path)).name
    if not filename.endswith(".h5ad"):
        filename = f"{name}.h5ad"
    record = download_configured(url, outdir / filename, cfg)
    return {
        "format": "h5ad",
        "matrices": [record],
        "defaults": DEFAULTS,
        "source_info": {"url": url},
    }


def _fetch_dataset_id(name: str, cfg: dict[str, Any], outdir: Path) -> dict[str, Any]:
    dataset_id = cfg["dataset_id"]
    version = latest_version(name, cfg)
    version_id = version.get("dataset_version_id")
    if not isinstance(version_id, str) or not _SAFE_ID.match(version_id):
        raise ValueError(
            f"datasets.{name}: CELLxGENE dataset {dataset_id}: newest version has "
            f"dataset_version_id {version_id!r}; expected a UUID string"
        )
    url, filesize = _h5ad_asset(name, dataset_id, version)
    # A size given in the config wins; the API's filesize is -1 when unknown.
    size = cfg.get("size") or (filesize if filesize and filesize > 0 else None)
    log.info(
        "dataset %s: CELLxGENE %s version %s (%r) -> %s",
        name,
        dataset_id,
        version_id,
        version.get("title"),
        url,
    )
    try:
        record = download(
            url,
            outdir / f"{version_id}.h5ad",
            size=size,
            sha256=cfg.get("sha256"),
            retries=cfg.get("retries", 3),
            timeout=cfg.get("timeout", 60),
        )
    except ScfmDownloadError as exc:
        raise ScfmDownloadError(
            f"datasets.{name}: CELLxGENE dataset {dataset_id} version {version_id}: {exc}"
        ) from exc
    return {
        "format": "h5ad",
        "matrices": [record],
        "defaults": DEFAULTS,
        "source_info": {
            "dataset_id": dataset_id,
            "dataset_version_id": version_id,
            "title": version.get("title"),
            "collection_id": version.get("collection_id"),
            "api_url": cfg.get("api_url") or DEFAULT_API_URL,
        },
    }


def latest_version(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The newest published version of ``cfg["dataset_id"]``, from the Curation API.

    Parameters
    ----------
    name
        Dataset name (used in messages).
    cfg
        Dataset config with ``dataset_id``, ``api_url``, ``retries`` and ``timeout``.

    Returns
    -------
    dict
        The API's ``dataset_version`` object (``dataset_version_id``, ``assets``, ...).
    """
    dataset_id = cfg["dataset_id"]
    api = (cfg.get("api_url") or DEFAULT_API_URL).rstrip("/")
    url = f"{api}/curation/v1/datasets/{dataset_id}/versions"
    try:
        body = fetch_json(url, retries=cfg.get("retries", 3), timeout=cfg.get("timeout", 60))
    except ScfmDownloadError as exc:
        raise ScfmDownloadError(
            f"datasets.{name}: cannot list the versions of CELLxGENE dataset {dataset_id} "
            f"({exc}); expected a published dataset id"
        ) from exc
    # The endpoint returned {"datasets": [...]} in older API revisions, a bare list now.
    versions = body if isinstance(body, list) else (body or {}).get("datasets")
    if not isinstance(versions, list) or not versions:
        raise ValueError(
            f"datasets.{name}: CELLxGENE dataset {dataset_id} has no published versions at "
            f"{url}; expected a non-empty list of dataset versions"
        )
    newest = versions[0]  # the API lists versions newest first
    if not isinstance(newest, dict):
        raise ValueError(
            f"datasets.{name}: {url}: versions[0] is {type(newest).__name__}; "
            "expected a dataset version object"
        )
    got_id = newest.get("dataset_id")
    if got_id is not None and got_id != dataset_id:
        raise ValueError(f"datasets.{name}: {url} returned dataset {got_id}; expected {dataset_id}")
    return newest


def _h5ad_asset(name: str, dataset_id: str, version: dict[str, Any]) -> tuple[str, int | None]:
    """``(url, filesize)`` of the version's H5AD asset."""
    assets = version.get("assets") or []
    h5ad = next((a for a in assets if isinstance(a, dict) and a.get("filetype") == "H5AD"), None)
    if h5ad is None or not h5ad.get("url"):
        types = [a.get("filetype") for a in assets if isinstance(a, dict)]
        raise ValueError(
            f"datasets.{name}: CELLxGENE dataset {dataset_id} version "
            f"{version.get('dataset_version_id')} has no H5AD asset (assets: {types}); "
            "expected an asset with filetype 'H5AD' and a url"
        )
    filesize = h5ad.get("filesize")
    return str(h5ad["url"]), int(filesize) if filesize is not None else None
