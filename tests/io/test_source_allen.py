"""Source allen_abc against a small ABC release (real manifest layout) on a local HTTP server."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from scfm.config import validate_config
from scfm.errors import ScfmDownloadError, ScfmInputError
from scfm.io.sources import allen, fetch_dataset

RELEASE = "20231215"
MATRIX_VERSION = "20230630"  # matrices are versioned apart from the release, as in the real one
S3 = "https://allen-brain-cell-atlas.s3.us-west-2.amazonaws.com"
REQUESTED = ["WMB-10Xv3-CB", "WMB-10Xv3-TH"]
# In the manifest and in cell_metadata.csv, but not requested: must be neither fetched nor kept.
NOT_REQUESTED = "WMB-10Xv3-HPF"
# Only in cell_metadata.csv (another directory), like the other 20 matrices of the atlas.
OTHER_DIRECTORY = "WMB-10Xv2-TH"
N_CELLS, N_GENES = 50, 30
PIVOT_NAME = "cluster_to_cluster_annotation_membership_pivoted"
META_REL = f"metadata/WMB-10X/{RELEASE}/cell_metadata.csv"
PIVOT_REL = f"metadata/WMB-taxonomy/{RELEASE}/views/{PIVOT_NAME}.csv"

# cluster_alias -> (neurotransmitter, class, subclass, supertype, cluster); values as published.
TAXONOMY = {
    "1": (
        "Glut",
        "01 IT-ET Glut",
        "018 L2 IT PPP-APr Glut",
        "0081 L2 IT PPP-APr Glut_3",
        "0327 L2 IT PPP-APr Glut_3",
    ),
    "2": (
        "GABA",
        "27 MY GABA",
        "291 CB PLI Gly-Gaba",
        "1167 CB PLI Gly-Gaba_1",
        "4955 CB PLI Gly-Gaba_1",
    ),
    "3": (
        "Glut",
        "29 CB Glut",
        "314 CB Granule Glut",
        "1144 CB Granule Glut_1",
        "4935 CB Granule Glut_1",
    ),
    "4": ("", "30 Astro-Epen", "319 Astro-TE NN", "1163 Astro-TE NN_3", "5112 Astro-TE NN_3"),
    "5": (
        "Glut",
        "18 TH Glut",
        "151 TH Prkcd Grin2c Glut",
        "0651 TH Prkcd Grin2c Glut_5",
        "2686 TH Prkcd Grin2c Glut_5",
    ),
    "6": ("", "33 Vascular", "333 Endo NN", "1193 Endo NN_1", "5304 Endo NN_1"),
    "7": ("GABA", "06 CTX-CGE GABA", "046 Vip Gaba", "0199 Vip Gaba_2", "0794 Vip Gaba_2"),
}
ALIASES = {  # which clusters each matrix's cells come from
    "WMB-10Xv3-CB": ["2", "3", "4", "6"],
    "WMB-10Xv3-TH": ["5", "4", "6"],
    NOT_REQUESTED: ["1", "7"],
    OTHER_DIRECTORY: ["5", "6"],
}
ORPHAN_ALIAS = "9999"  # one TH cell's cluster is absent from the taxonomy
REGION = {"WMB-10Xv3-CB": "CB", "WMB-10Xv3-TH": "TH", NOT_REQUESTED: "HPF", OTHER_DIRECTORY: "TH"}
TAXONOMY_COLUMNS = ["class", "subclass", "supertype", "cluster", "neurotransmitter"]


@dataclass
class Release:
    """A release on disk: bucket files by relative path, plus the manifest describing them."""

    bucket: Path
    manifest: dict[str, Any]
    cells: dict[str, list[str]]
    metadata: pd.DataFrame
    pivot: pd.DataFrame
    files: dict[str, str] = field(default_factory=dict)  # label -> relative path

    def serve(self, server: Any) -> None:
        for rel in self.files.values():
            server.add_file(rel, self.bucket / rel)
        server.add(
            f"releases/{RELEASE}/manifest.json",
            json.dumps(self.manifest),
            content_type="application/json",
        )


def _matrix_rel(label: str, variant: str = "raw") -> str:
    return f"expression_matrices/WMB-10Xv3/{MATRIX_VERSION}/{label}-{variant}.h5ad"


def _entry(bucket: Path, rel: str, version: str) -> dict[str, Any]:
    data = (bucket / rel).read_bytes()
    return {
        "version": version,
        "relative_path": rel,
        "url": f"{S3}/{rel}",
        "size": len(data),
        "file_hash": hashlib.md5(data).hexdigest(),
    }


def _cell_labels(rng: np.random.Generator, n: int, library: str) -> list[str]:
    bases = np.array(list("ACGT"))
    return [f"{''.join(rng.choice(bases, 16))}-{library}" for _ in range(n)]


def _write_matrix(path: Path, cells: list[str], rng: np.random.Generator) -> None:
    # Raw ABC matrices: CSR, integer counts stored as float32, obs index cell_label,
    # var index the Ensembl gene_identifier with a gene_symbol column.
    counts = rng.poisson(0.8, size=(len(cells), N_GENES)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_barcode": [c.split("-")[0] for c in cells],
            "library_label": [f"L8TX_{c.split('-')[1]}" for c in cells],
        },
        index=pd.Index(cells, name="cell_label"),
    )
    var = pd.DataFrame(
        {"gene_symbol": [f"Gm{1000 + i}" for i in range(N_GENES)]},
        index=pd.Index([f"ENSMUSG{i:011d}" for i in range(N_GENES)], name="gene_identifier"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var).write_h5ad(path)


def _metadata(cells: dict[str, list[str]], rng: np.random.Generator, legacy: bool) -> pd.DataFrame:
    rows = []
    for label, labels in cells.items():
        aliases = ALIASES[label]
        for i, cell in enumerate(labels):
            barcode, library = cell.split("-")
            alias = aliases[i % len(aliases)]
            if label == "WMB-10Xv3-TH" and i == 7:
                alias = ORPHAN_ALIAS
            rows.append(
                {
                    "cell_label": cell,
                    "cell_barcode": barcode,
                    "barcoded_cell_sample_label": library,
                    "library_label": f"L8TX_{library}",
                    "feature_matrix_label": label,
                    "entity": "cell",
                    "brain_section_label": "",
                    "library_method": label.split("-")[1],
                    "region_of_interest_acronym": REGION[label],
                    "donor_label": f"Snap25-IRES2-Cre;Ai14-{400000 + i % 3}",
                    "donor_genotype": "Snap25-IRES2-Cre/wt;Ai14(RCL-tdT)/wt",
                    "donor_sex": "M" if i % 2 else "F",
                    "dataset_label": label.rsplit("-", 1)[0],
                    "x": round(float(rng.normal()), 4),
                    "y": round(float(rng.normal()), 4),
                    "cluster_alias": alias,
                }
            )
    meta = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # matrices interleave
    if legacy:  # 20230630 layout: matrix_label, no barcoded_cell_sample_label/entity/section
        meta = meta.rename(columns={"feature_matrix_label": "matrix_label"}).drop(
            columns=["barcoded_cell_sample_label", "entity", "brain_section_label"]
        )
    return meta


def _pivot(legacy: bool) -> pd.DataFrame:
    pivot = pd.DataFrame(
        [(alias, *values) for alias, values in TAXONOMY.items()],
        columns=["cluster_alias", "neurotransmitter", "class", "subclass", "supertype", "cluster"],
    )
    if legacy:
        pivot.insert(1, "division", "1 Pallium glutamatergic")
    return pivot


def build_release(
    bucket: Path,
    *,
    legacy: bool = False,
    drop_metadata: tuple[str, ...] = (),
    omit_from_metadata: tuple[str, ...] = (),
) -> Release:
    """Write matrices, cell metadata, taxonomy and a manifest.json in the real layout."""
    rng = np.random.default_rng(7)
    cells = {
        label: _cell_labels(rng, N_CELLS, f"{410 + k}_B0{k}")
        for k, label in enumerate([*REQUESTED, NOT_REQUESTED, OTHER_DIRECTORY])
    }
    files = {label: _matrix_rel(label) for label in [*REQUESTED, NOT_REQUESTED]}
    for label, rel in files.items():
        _write_matrix(bucket / rel, cells[label], rng)
    meta = _metadata({k: v for k, v in cells.items() if k not in omit_from_metadata}, rng, legacy)
    meta = meta.drop(columns=list(drop_metadata))
    pivot = _pivot(legacy)
    for rel, table in ((META_REL, meta), (PIVOT_REL, pivot)):
        (bucket / rel).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(bucket / rel, index=False)
    files |= {"cell_metadata": META_REL, PIVOT_NAME: PIVOT_REL}

    matrices = {
        label: {
            "raw": {"files": {"h5ad": _entry(bucket, rel, MATRIX_VERSION)}},
            # log2 files are listed but never served: only raw counts may be fetched.
            "log2": {
                "files": {
                    "h5ad": {
                        **_entry(bucket, rel, MATRIX_VERSION),
                        "relative_path": _matrix_rel(label, "log2"),
                    }
                }
            },
        }
        for label, rel in files.items()
        if label.startswith("WMB-10Xv3")
    }
    manifest = {
        "version": RELEASE,
        "resource_uri": "s3://allen-brain-cell-atlas/",
        "directory_listing": {
            "WMB-10Xv3": {
                "directories": {
                    "expression_matrices": {
                        "version": MATRIX_VERSION,
                        "relative_path": f"expression_matrices/WMB-10Xv3/{MATRIX_VERSION}",
                    }
                }
            }
        },
        "file_listing": {
            "WMB-10Xv3": {"expression_matrices": matrices},
            "WMB-10X": {
                "metadata": {
                    "cell_metadata": {"files": {"csv": _entry(bucket, META_REL, RELEASE)}},
                    "gene": {
                        "files": {
                            "csv": {
                                **_entry(bucket, META_REL, RELEASE),
                                "relative_path": f"metadata/WMB-10X/{RELEASE}/gene.csv",
                            }
                        }
                    },
                }
            },
            "WMB-taxonomy": {
                "metadata": {
                    PIVOT_NAME: {"files": {"csv": _entry(bucket, PIVOT_REL, RELEASE)}},
                }
            },
        },
    }
    return Release(bucket, manifest, cells, meta, pivot, files)


def _cfg(server: Any, **overrides: Any) -> dict[str, Any]:
    cfg = {
        "source": "allen_abc",
        "release": RELEASE,
        "base_url": server.base_url,
        "directory": "WMB-10Xv3",
        "matrices": list(REQUESTED),
        "organism": "mouse",
        "retries": 1,
        "timeout": 10,
        **overrides,
    }
    return validate_config({"datasets": {"abc": cfg}})["datasets"]["abc"]


def _fetch(server: Any, out: Path, **overrides: Any) -> dict[str, Any]:
    return fetch_dataset("abc", _cfg(server, **overrides), out, chunk_cells=16)


def _expected_obs(release: Release, label_col: str = "feature_matrix_label") -> pd.DataFrame:
    """What obs.parquet must hold, computed the obvious (whole file in memory) way."""
    meta = pd.read_csv(release.bucket / META_REL, dtype=str).astype({"x": float, "y": float})
    pivot = pd.read_csv(release.bucket / PIVOT_REL, dtype=str, keep_default_na=False)
    meta = meta[meta[label_col].isin(REQUESTED)]
    return meta.merge(pivot, on="cluster_alias", how="left")


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in cell order; every missing value as None (Parquet gives None, read_csv NaN)."""
    df = df.sort_values("cell_label").reset_index(drop=True).astype(object)
    return df.where(df.notna(), None)


@pytest.fixture
def release(tmp_path: Path, http_server: Any) -> Release:
    rel = build_release(tmp_path / "bucket")
    rel.serve(http_server)
    return rel


def test_fetch_downloads_verified_files_and_writes_manifest(
    release: Release, http_server: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    manifest = _fetch(http_server, out)

    for key in [*REQUESTED, "cell_metadata", PIVOT_NAME]:
        rel = release.files[key]
        assert (out / rel).read_bytes() == (release.bucket / rel).read_bytes(), rel
    assert not (out / release.files[NOT_REQUESTED]).exists()
    assert http_server.routes["/" + release.files[NOT_REQUESTED]].hits == 0
    # The release manifest is kept for provenance.
    kept = json.loads((out / "releases" / RELEASE / "manifest.json").read_text())
    assert kept == release.manifest

    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["dataset"] == "abc"
    assert manifest["source"] == "allen_abc"
    assert manifest["format"] == "h5ad"
    assert manifest["config"]["matrices"] == REQUESTED
    records = manifest["matrices"]
    assert [Path(r["path"]) for r in records] == [out / release.files[k] for k in REQUESTED]
    for rec, label in zip(records, REQUESTED, strict=True):
        data = (release.bucket / release.files[label]).read_bytes()
        # Built from base_url (the mirror), not from the manifest's S3 url.
        assert rec["url"] == http_server.url(release.files[label])
        assert rec["size"] == len(data)
        assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["obs_table"] == {"path": str(out / "obs.parquet"), "key": "cell_label"}
    assert manifest["defaults"] == {
        "obs_map": {
            "cell_type": "subclass",
            "donor": "donor_label",
            "batch": "library_label",
            "tissue": "region_of_interest_acronym",
            "assay": "library_method",
        },
        "obs_keep": ["class", "subclass", "supertype", "cluster", "neurotransmitter", "donor_sex"],
        "genes": {"id_type": "ensembl", "symbol_column": "gene_symbol"},
    }
    info = manifest["source_info"]
    assert info["release"] == RELEASE
    assert info["manifest_url"] == http_server.url(f"releases/{RELEASE}/manifest.json")
    assert [m["label"] for m in info["matrices"]] == REQUESTED
    assert info["matrices"][0]["version"] == MATRIX_VERSION
    assert (
        info["matrices"][0]["md5"]
        == (
            release.manifest["file_listing"]["WMB-10Xv3"]["expression_matrices"]["WMB-10Xv3-CB"][
                "raw"
            ]["files"]["h5ad"]["file_hash"]
        )
    )
    assert info["n_metadata_rows"] == len(release.metadata) == 4 * N_CELLS
    assert info["n_cells"] == 2 * N_CELLS
    assert info["cells_per_matrix"] == dict.fromkeys(REQUESTED, N_CELLS)


def test_obs_table_has_requested_cells_with_taxonomy(
    release: Release, http_server: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _fetch(http_server, out)
    obs = pd.read_parquet(out / "obs.parquet")

    wanted = release.cells["WMB-10Xv3-CB"] + release.cells["WMB-10Xv3-TH"]
    assert sorted(obs["cell_label"]) == sorted(wanted)  # exactly these, each once
    assert set(obs["feature_matrix_label"]) == set(REQUESTED)
    # The obs table covers every cell of the downloaded matrices (standardize joins on it).
    for label in REQUESTED:
        adata = ad.read_h5ad(out / release.files[label])
        assert set(adata.obs_names) <= set(obs["cell_label"])
        assert adata.var_names[0].startswith("ENSMUSG")

    by_cell = obs.set_index("cell_label")
    cb, th = release.cells["WMB-10Xv3-CB"], release.cells["WMB-10Xv3-TH"]
    # CB cell 1 -> cluster_alias 3 (granule cells); TH cell 0 -> alias 5.
    columns = ["cluster_alias", "class", "subclass", "supertype", "cluster"]
    assert by_cell.loc[cb[1], columns].tolist() == [
        "3",
        "29 CB Glut",
        "314 CB Granule Glut",
        "1144 CB Granule Glut_1",
        "4935 CB Granule Glut_1",
    ]
    assert by_cell.loc[th[0], "subclass"] == "151 TH Prkcd Grin2c Glut"
    assert by_cell.loc[th[0], "region_of_interest_acronym"] == "TH"
    # Astrocytes (alias 4) have no neurotransmitter: an empty string, not a missing value.
    assert by_cell.loc[cb[2], "cluster_alias"] == "4"
    assert by_cell.loc[cb[2], "neurotransmitter"] == ""
    # A cluster absent from the taxonomy leaves the taxonomy columns missing.
    assert by_cell.loc[th[7], "cluster_alias"] == ORPHAN_ALIAS
    assert by_cell.loc[th[7], TAXONOMY_COLUMNS].isna().all()
    assert by_cell["x"].dtype == np.float64

    expected = _expected_obs(release)
    pd.testing.assert_frame_equal(
        _sorted(obs)[list(expected.columns)], _sorted(expected), check_dtype=False
    )


def test_small_csv_chunks_give_identical_obs(
    release: Release, http_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fetch(http_server, tmp_path / "whole")
    monkeypatch.setattr(allen, "METADATA_CHUNK_ROWS", 7)
    _fetch(http_server, tmp_path / "chunked")

    whole = pq.ParquetFile(tmp_path / "whole" / "obs.parquet")
    chunked = pq.ParquetFile(tmp_path / "chunked" / "obs.parquet")
    assert whole.metadata.num_row_groups == 1
    assert chunked.metadata.num_row_groups > 10  # really streamed, one row group per chunk
    assert chunked.schema_arrow == whole.schema_arrow
    pd.testing.assert_frame_equal(
        _sorted(chunked.read().to_pandas()), _sorted(whole.read().to_pandas())
    )


def test_legacy_release_with_matrix_label_and_division(tmp_path: Path, http_server: Any) -> None:
    release = build_release(tmp_path / "bucket", legacy=True)
    release.serve(http_server)
    out = tmp_path / "out"
    manifest = _fetch(http_server, out)

    obs = pd.read_parquet(out / "obs.parquet")
    assert "matrix_label" in obs.columns
    assert "feature_matrix_label" not in obs.columns
    assert (obs["division"].dropna() == "1 Pallium glutamatergic").all()
    expected = _expected_obs(release, "matrix_label")
    pd.testing.assert_frame_equal(
        _sorted(obs)[list(expected.columns)], _sorted(expected), check_dtype=False
    )
    assert manifest["source_info"]["n_cells"] == 2 * N_CELLS


def test_verified_files_are_not_downloaded_twice(
    release: Release, http_server: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _fetch(http_server, out, base_url=http_server.base_url + "/")
    cb, th = ("/" + release.files[k] for k in REQUESTED)
    assert http_server.routes[cb].hits == http_server.routes[th].hits == 1

    # Same size, different bytes: the MD5 check catches it and the file is fetched again.
    damaged = out / release.files["WMB-10Xv3-TH"]
    damaged.write_bytes(b"\0" * damaged.stat().st_size)
    manifest = _fetch(http_server, out)
    assert http_server.routes[cb].hits == 1
    assert http_server.routes[th].hits == 2
    assert damaged.read_bytes() == (release.bucket / release.files["WMB-10Xv3-TH"]).read_bytes()
    assert manifest["matrices"][1]["sha256"] == hashlib.sha256(damaged.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- bad input


def test_md5_mismatch_leaves_no_file_and_no_manifest(tmp_path: Path, http_server: Any) -> None:
    release = build_release(tmp_path / "bucket")
    release.manifest = copy.deepcopy(release.manifest)
    entry = release.manifest["file_listing"]["WMB-10Xv3"]["expression_matrices"]["WMB-10Xv3-TH"][
        "raw"
    ]["files"]["h5ad"]
    entry["file_hash"] = hashlib.md5(b"something else").hexdigest()
    release.serve(http_server)
    out = tmp_path / "out"

    with pytest.raises(ScfmDownloadError, match="md5 mismatch") as err:
        _fetch(http_server, out)
    assert "WMB-10Xv3-TH-raw.h5ad" in str(err.value)
    final = out / release.files["WMB-10Xv3-TH"]
    assert not final.exists()
    assert not [p for p in final.parent.iterdir() if "TH" in p.name]  # no temporary left over
    assert not (out / "manifest.json").exists()
    assert not (out / "obs.parquet").exists()


def test_unknown_matrix_label_lists_available_ones(
    release: Release, http_server: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ScfmInputError) as err:
        _fetch(http_server, out, matrices=["WMB-10Xv3-CB", "WMB-10Xv3-XX"])
    msg = str(err.value)
    for part in (
        "WMB-10Xv3-XX",
        RELEASE,
        "directory WMB-10Xv3",
        "WMB-10Xv3-CB",
        "WMB-10Xv3-HPF",
        "WMB-10Xv3-TH",
    ):
        assert part in msg
    # Every label is checked before anything is downloaded.
    assert not (out / release.files["WMB-10Xv3-CB"]).exists()
    assert not (out / "manifest.json").exists()


def test_unknown_directory_lists_available_ones(
    release: Release, http_server: Any, tmp_path: Path
) -> None:
    with pytest.raises(ScfmInputError, match=r"WMB-10Xv9.*WMB-10X', 'WMB-10Xv3', 'WMB-taxonomy"):
        _fetch(http_server, tmp_path / "out", directory="WMB-10Xv9")


@pytest.mark.parametrize(
    ("dropped", "field"),
    [
        (("cluster_alias",), "cluster_alias"),
        (("cell_label",), "cell_label"),
        (("feature_matrix_label",), "feature_matrix_label or matrix_label"),
    ],
)
def test_metadata_missing_required_column(
    tmp_path: Path, http_server: Any, dropped: tuple[str, ...], field: str
) -> None:
    release = build_release(tmp_path / "bucket", drop_metadata=dropped)
    release.serve(http_server)
    out = tmp_path / "out"
    with pytest.raises(ScfmInputError) as err:
        _fetch(http_server, out)
    assert err.value.path == str(out / META_REL)
    assert err.value.field == field
    assert "cell_metadata.csv" in str(err.value)
    assert field in str(err.value)
    assert not (out / "obs.parquet").exists()
    assert not (out / "manifest.json").exists()


def test_no_metadata_row_for_requested_matrices(tmp_path: Path, http_server: Any) -> None:
    release = build_release(tmp_path / "bucket", omit_from_metadata=tuple(REQUESTED))
    release.serve(http_server)
    out = tmp_path / "out"
    with pytest.raises(ScfmInputError, match="no row belongs to the matrices") as err:
        _fetch(http_server, out)
    assert err.value.field == "feature_matrix_label"
    assert not (out / "obs.parquet").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".obs.parquet")]


def test_manifest_404_is_a_clear_error(http_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ScfmDownloadError, match=rf"releases/{RELEASE}/manifest.json: HTTP 404"):
        _fetch(http_server, out)
    assert not (out / "manifest.json").exists()


def test_relative_path_escaping_outdir_is_rejected(tmp_path: Path, http_server: Any) -> None:
    release = build_release(tmp_path / "bucket")
    entry = release.manifest["file_listing"]["WMB-10X"]["metadata"]["cell_metadata"]["files"]["csv"]
    entry["relative_path"] = "../../escaped.csv"
    release.serve(http_server)
    with pytest.raises(ScfmInputError, match="not a plain relative path"):
        _fetch(http_server, tmp_path / "out")
    assert not (tmp_path / "escaped.csv").exists()
