"""`snakemake --directory <lab>` from the checkout: the lab's config, the lab's outputs.

A reduced demo (one simulated dataset, one tokenizer) up to the corpus, the stage before
training: download, standardize, QC, vocabulary, shards and manifest, 7 jobs. The other way, scfm
as a module of a lab's Snakefile, runs to the report in test_external_methods.py.
"""

from __future__ import annotations

import pytest
from _lab import REPO, changed_in_checkout, checkout_files, make_lab
from test_workflow import snakemake

pytestmark = pytest.mark.slow

CONFIG = {
    "datasets": {
        "lab_cells": {
            "source": "demo",
            "demo": "simulated",
            "simulation": {"n_cells": 300, "n_genes": 300},
            "qc": {"min_genes": 50, "max_pct_mito": 50},
        },
    },
    "qc": {"rna": {"doublets": "none"}},
    "corpora": {"lab": {"datasets": ["lab_cells"], "split": {"by": "cell"}}},
    "tokenizers": {"binned": {"kind": "binned", "max_len": 100}},
    "runs": {},
    "benchmarks": {},
}
TARGET = "results/corpus/lab/binned/manifest.json"


def test_directory_writes_everything_in_the_lab_directory(tmp_path):
    lab = make_lab(tmp_path / "lab", CONFIG, module=False)
    before = checkout_files()
    # from the checkout, as README shows: its Snakefile and profile, the lab's directory
    res = snakemake(
        REPO, "--directory", str(lab), "--profile", "profiles/local", "--cores", "2", TARGET
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (lab / TARGET).is_file()
    # the lab's config, not the checkout's demo: its dataset and corpus only
    assert sorted(p.name for p in (lab / "results" / "qc").iterdir()) == [
        "lab_cells.h5ad",
        "lab_cells.h5ad.sha256",
        "lab_cells.metrics.tsv",
        "lab_cells.qc.png",
    ]
    assert [p.name for p in (lab / "results" / "corpus").iterdir()] == ["lab"]
    assert (lab / "logs" / "qc" / "lab_cells.log").is_file()
    assert (lab / ".snakemake" / "metadata").is_dir()
    assert changed_in_checkout(before) == []


def test_the_snakefile_process_validates_with_the_checkouts_scfm(tmp_path):
    """Another scfm first on the import path (an older install in the lab's environment) is not
    the one that validates the config: common.smk puts the checkout's src/ first, as the jobs'
    scripts/_scfm_path.py does."""
    other = tmp_path / "other" / "scfm"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise ImportError('the other scfm was imported')\n")
    lab = make_lab(tmp_path / "lab", CONFIG, module=False)
    env = {"PYTHONPATH": str(other.parent)}
    res = snakemake(REPO, "--directory", str(lab), "-n", TARGET, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "the other scfm" not in res.stdout + res.stderr
