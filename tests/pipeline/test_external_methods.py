"""External methods through the real DAG: a precomputed file and a command, scored like pca.

The run is a lab's: its own directory holds the config, the lab's files and every output, and
uses scfm from the checkout as a Snakemake module (tests/_lab.py, README).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _lab import PROFILE, changed_in_checkout, checkout_files, make_lab
from test_workflow import snakemake

pytestmark = pytest.mark.slow

# What a lab's embedding script looks like (scGPT's or Geneformer's own code in their own env):
# read {input} (raw counts), write {output} (embedding in obsm, cell IDs in obs_names).
EMBED_SCRIPT = """\
import sys
import anndata as ad
import numpy as np

data = ad.read_h5ad(sys.argv[1])
x = np.log1p(data.X.toarray())
x -= x.mean(axis=0)
u, s, _ = np.linalg.svd(x, full_matrices=False)
ad.AnnData(obs=data.obs[[]], obsm={"X_lab": (u[:, :10] * s[:10]).astype("float32")}).write_h5ad(
    sys.argv[2]
)
"""

N_CELLS = 300
CONFIG = {
    "datasets": {
        "sim_demo": {
            "source": "demo",
            "demo": "simulated",
            "simulation": {"n_cells": N_CELLS, "n_genes": 400},
            "qc": {"min_genes": 50, "max_pct_mito": 50},
        },
    },
    "qc": {"rna": {"doublets": "none"}},
    "benchmarks": {
        "s": {
            "dataset": "sim_demo",
            "split_key": "donor",
            "methods": ["pca", "fm_file", "fm_cmd"],
            "metrics": ["scib", "annotation"],
            "umap": False,
            "scgraph": {"min_batch_cells": 50},
            "external": {
                # an embedding of the whole raw dataset (QC removed some cells: extra cells)
                "fm_file": {
                    "kind": "precomputed",
                    "path": "lab/fm.parquet",
                    "allow_extra_cells": True,
                    "n_dims": 16,
                },
                "fm_cmd": {
                    "kind": "command",
                    "command": f"{sys.executable} lab/embed.py {{input}} {{output}}",
                    "n_dims": 10,
                    "threads": 1,
                },
            },
        }
    },
}


def _write_lab_files(workdir: Path) -> None:
    lab = workdir / "lab"
    lab.mkdir()
    (lab / "embed.py").write_text(EMBED_SCRIPT)
    rng = np.random.default_rng(1)
    ids = [f"sim{i:06d}" for i in range(N_CELLS)]  # the simulated demo's cell IDs
    pd.DataFrame(rng.normal(size=(N_CELLS, 16)), index=pd.Index(ids, name="cell")).rename(
        columns=str
    ).to_parquet(lab / "fm.parquet")


@pytest.fixture(scope="module")
def checkout_before() -> dict:
    return checkout_files()


@pytest.fixture(scope="module")
def run(tmp_path_factory, checkout_before) -> Path:
    workdir = make_lab(tmp_path_factory.mktemp("ext") / "lab-dir", CONFIG, module=True)
    _write_lab_files(workdir)
    res = snakemake(workdir, "--profile", PROFILE, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    return workdir


def test_external_methods_are_scored_like_baselines(run):
    long = pd.read_csv(run / "results" / "bench" / "s" / "summary.tsv", sep="\t")
    assert set(long["method"]) == {"pca", "hvg", "fm_file", "fm_cmd"}
    wide = pd.read_csv(
        run / "results" / "bench" / "s" / "summary.wide.tsv", sep="\t", index_col="method"
    )
    # the command computes a PCA-like embedding, the file holds noise: the scores say so
    assert (
        wide.loc["fm_cmd", "LogReg accuracy"] > 0.9 > 0.6 > wide.loc["fm_file", "LogReg accuracy"]
    )
    assert wide.loc["fm_cmd", "Bio conservation"] > wide.loc["fm_file", "Bio conservation"]
    # ...and noise mixes batches perfectly: the batch score every method is read against
    assert wide.loc["fm_file", "iLISI"] > 0.5 > wide.loc["fm_cmd", "iLISI"]
    for method in ("fm_file", "fm_cmd"):
        assert (run / "logs" / "external_embedding" / method / "s.log").stat().st_size > 0
    assert "running" in (run / "logs" / "external_embedding" / "fm_cmd" / "s.log").read_text()


def test_the_lab_directory_holds_every_output_and_the_report(run, checkout_before):
    """scfm as a module: outputs, logs, Snakemake's state and the report are the lab's."""
    res = snakemake(run, "--profile", PROFILE, "--report", "report.html")
    assert res.returncode == 0, res.stderr[-2000:]
    html = (run / "report.html").read_text()
    # captions are found next to the module's rules, rendered with the lab's wildcards
    assert "Results table of evaluation set s: every method" in html
    assert (run / "results" / "bench" / "summary.tsv").is_file()
    assert (run / "logs" / "bench_summary" / "s.log").is_file()
    assert (run / ".snakemake" / "metadata").is_dir()
    assert changed_in_checkout(checkout_before) == []


def test_a_new_precomputed_file_reruns_only_its_jobs(run):
    path = run / "lab" / "fm.parquet"
    table = pd.read_parquet(path)
    table.iloc[:, 0] += 1.0
    table.to_parquet(path)
    res = snakemake(run, "--profile", PROFILE, "--cores", "2", "-n")
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = dict(
        re.findall(r"^(\w+)\s+(\d+)$", (res.stdout + res.stderr).split("Job stats:")[1], re.M)
    )
    assert jobs == {
        "external_embedding": "1",
        "scib": "1",
        "annotation": "1",
        "bench_summary": "1",
        "bench_all": "1",
        "all": "1",
        "total": "6",
    }


def test_bad_external_method_fails_naming_method_and_file(run):
    # a file that misses cells of the evaluation set: the job fails, nothing is written
    path = run / "lab" / "fm.parquet"
    pd.read_parquet(path).iloc[:10].to_parquet(path)
    res = snakemake(run, "--profile", PROFILE, "--cores", "2", "results/embed/fm_file/s.h5ad")
    assert res.returncode != 0
    log = (run / "logs" / "external_embedding" / "fm_file" / "s.log").read_text()
    assert "lab/fm.parquet: embedding of method 'fm_file'" in log and "are missing" in log
    assert not (run / "results" / "embed" / "fm_file" / "s.h5ad").exists()
