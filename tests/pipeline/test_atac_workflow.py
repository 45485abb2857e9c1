"""The scATAC branch through the real DAG: real 10x PBMC fragments and simulated ones.

Real fragments (../shared/data/atac) go through validation, QC, tiles, MACS3 peaks and gene
activity to a QC'd h5ad; simulated ones (known cell types) go on to a corpus of binary tokens,
a tiny training run and the benchmark rules next to the LSI baseline.
"""

from __future__ import annotations

import copy
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from test_workflow import assert_params_are_projections, copy_workflow, scheduled, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _config(shared) -> dict:
    return {
        "datasets": {
            "pbmc_atac": {
                "source": "local",
                "path": str(shared / "atac" / "pbmc_multiome_fragments.tsv.gz"),
                "modality": "atac",
                "genome": "human",
                "features": "peaks",
                # the excerpt covers +-5 kb around ~45 marker genes: few fragments per cell
                "qc": {"min_fragments": 20, "min_tsse": 1},
            },
            "sim_atac": {
                "source": "demo",
                "demo": "simulated_atac",
                "modality": "atac",
                "genome": "sim",
                "features": "peaks",
                "atac_simulation": {"n_cells": 400, "n_types": 5, "n_batches": 2},
            },
        },
        "references": {
            "human": {
                "genome": {
                    "assembly": "hg38",
                    "annotation": {
                        "path": str(shared / "reference" / "human_gencode_v22_genes_hg38.tsv.gz")
                    },
                }
            },
            "sim": {"genome": {"simulated": {"seed": 0, "n_chroms": 2}}},
        },
        "qc": {"atac": {"min_fragments": 500, "min_tsse": 4}},
        "corpora": {
            "atac": {
                "datasets": ["sim_atac"],
                "split": {"by": "cell", "val": 0.2, "test": 0.1},
                "vocab": {"min_cells": 5},
            }
        },
        "tokenizers": {"binary": {"kind": "binary", "max_len": 128}},
        "models": {"tiny": {"preset": "tiny", "d_model": 32, "n_heads": 2}},
        "runs": {
            "a": {
                "corpus": "atac",
                "tokenizer": "binary",
                "model": "tiny",
                "max_steps": 6,
                "batch_size": 8,
                "objectives": {"ordinal": 1.0},
                "log_every": 2,
                "val_every": 3,
                "val_batches": 2,
                "checkpoint_every": 3,
                "stats_batches": 2,
            }
        },
        "benchmarks": {
            "sa": {
                "dataset": "sim_atac",
                "methods": ["lsi", "random", "a"],
                "metrics": ["scgraph", "annotation", "masked"],
                "scgraph": {"min_batch_cells": 50},
                "umap": False,
            }
        },
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (only CI and developer machines have ../shared)")
    config = _config(SHARED_DATA)
    # a real-format blacklist: the LYZ and MS4A1 promoters (GENCODE v22, TSS +-500 bp), sorted
    genes = pd.read_csv(SHARED_DATA / "reference" / "human_gencode_v22_genes_hg38.tsv.gz", sep="\t")
    rows = []
    for name in ("MS4A1", "LYZ"):
        g = genes[genes["gene_name"] == name].iloc[0]
        tss = g["start"] - 1 if g["strand"] == "+" else g["end"] - 1
        rows.append(f"{g['chrom']}\t{tss - 500}\t{tss + 500}\n")
    blacklist = tmp_path_factory.mktemp("blacklist") / "hg38-test-blacklist.bed"
    blacklist.write_text("".join(sorted(rows)))
    config["datasets"]["pbmc_atac"]["qc"]["blacklist"] = str(blacklist)
    d = copy_workflow(tmp_path_factory.mktemp("atac"), config)
    res = snakemake(d, "--profile", "profiles/local", "--cores", "2")
    return d, res, config


def test_real_pbmc_fragments_to_a_qcd_peak_matrix(run):
    d, res, _ = run
    assert res.returncode == 0, res.stderr[-3000:]
    qc = pd.read_csv(d / "results/atac/pbmc_atac/qc.tsv", sep="\t", index_col="barcode")
    assert len(qc) == 24508 and qc["pass_qc"].sum() > 200  # 263 cells with >= 20 fragments
    # the blacklist (LYZ and MS4A1 promoters) removed their fragments before QC and counting
    assert 1000 < qc["n_blacklist"].sum() < 1300 and qc["frac_blacklist"].max() <= 1
    assert (d / "results/atac/pbmc_atac/fragments.tsv.gz.scfm").is_file()  # the sidecar
    adata = ad.read_h5ad(d / "results/qc/pbmc_atac.h5ad")
    assert adata.n_obs == qc["pass_qc"].sum() and adata.n_vars > 50
    assert adata.X.dtype == np.int32 and (adata.obs["assay"] == "scATAC-seq").all()
    assert {"tsse", "frip", "n_fragment", "nucleosome_signal"} <= set(adata.obs.columns)
    # peaks called on these cells hold their insertions (median 0.29 with the LYZ and MS4A1
    # promoters blacklisted above, which removes insertions of two of the strongest peaks)
    assert adata.obs["frip"].median() > 0.25
    peaks = pd.read_csv(d / "results/atac/peaks/human.bed", sep="\t", header=None)
    assert ((peaks[2] - peaks[1]) == 500).all()
    genes = ad.read_h5ad(d / "results/atac/pbmc_atac.genes.h5ad")
    assert genes.var_names[0].startswith("ENSG") and genes.X.sum() > 0
    tiles = ad.read_h5ad(d / "results/atac/pbmc_atac.tiles.h5ad", backed="r")
    assert tiles.n_vars > 6_000_000  # every 500 bp bin of hg38
    assert (d / "results/atac/pbmc_atac/qc.png").stat().st_size > 20_000


def test_simulated_atac_trains_and_is_benchmarked_next_to_lsi(run):
    d, res, _ = run
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = pd.read_csv(d / "results/train/a/metrics.tsv", sep="\t")
    val = metrics[(metrics["split"] == "val") & (metrics["objective"] == "ordinal")]
    # binary accessibility: the uniform predictor's loss is ln 2
    assert np.allclose(val["trivial_uniform"], np.log(2), atol=1e-4)
    wide = pd.read_csv(d / "results/bench/sa/summary.wide.tsv", sep="\t", index_col="method")
    assert {"lsi", "random", "a", "hvg"} <= set(wide.index)
    assert wide.loc["lsi", "LogReg accuracy"] > 0.9 > wide.loc["random", "LogReg accuracy"]
    assert wide.loc["lsi", "Corr-Weighted"] > wide.loc["random", "Corr-Weighted"]
    long = pd.read_csv(d / "results/bench/sa/summary.tsv", sep="\t")
    assert "ordinal loss" in set(long.loc[long["method"] == "a", "metric"])


def test_atac_rules_get_only_the_qc_keys_they_read(run):
    """promoter_upstream reaches gene activity alone: not fragments, barcode QC, tiles, peaks."""
    d, res, config = run
    assert res.returncode == 0, res.stderr[-3000:]
    rules = {"atac_fragments", "atac_qc", "atac_tiles", "atac_summits", "atac_peakset"}
    rules |= {"atac_peak_matrix", "atac_activity", "atac_features", "reference_genome"}
    assert_params_are_projections(d, config, rules)
    config = copy.deepcopy(config)
    config["qc"]["atac"]["promoter_upstream"] = 5000
    jobs = scheduled(d, yaml.safe_dump(config))
    assert jobs == {"atac_activity[dataset=pbmc_atac]", "atac_activity[dataset=sim_atac]", "all"}
