"""scfm.rule_params: the per-rule projections of the config that the rules receive as params."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scfm.config import load_schema, validate_config
from scfm.rule_params import KEYS, canonical, markdown_table, project

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg() -> dict:
    return validate_config(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text()), schema=load_schema()
    )


def test_canonical_repr_does_not_depend_on_key_order():
    a = {"b": 1, "a": {"y": [{"q": 1, "p": 2}], "x": (1, 2)}}
    b = {"a": {"x": [1, 2], "y": [{"p": 2, "q": 1}]}, "b": 1}
    assert repr(a) != repr(b) and repr(canonical(a)) == repr(canonical(b))
    assert list(canonical(a)) == ["a", "b"] and canonical([3, 1, 2]) == [
        3,
        1,
        2,
    ]  # lists keep order


def test_canonical_refuses_what_snakemake_cannot_compare():
    @dataclass
    class Spec:
        lr: float

    with pytest.raises(TypeError, match="Spec is not a builtin value"):
        canonical({"run": Spec(0.1)})


def test_projections_hold_only_the_keys_a_job_reads(cfg):
    sim = cfg["benchmarks"]["sim"]
    assert project("scgraph", "bench", sim) == {"scgraph": {"trim_rate": 0.05}}
    assert project("masked", "bench", sim) == {
        "batch_size": 256,
        "masked": {"max_cells": 10000},
        "seed": 0,
    }
    assert project("embed", "bench", sim) == {"batch_size": 256}
    data = project("bench_data", "bench", sim)
    assert "methods" not in data and "scib" not in data and data["metrics"] == sim["metrics"]
    assert project("baseline", "baseline", sim, method="pca") == {"n_pcs": 50, "seed": 0}
    assert project("baseline", "baseline", sim, method="scvi") == {"seed": 0, **sim["scvi"]}
    assert project("baseline", "baseline", sim, method="hvg") == {"seed": 0}
    atac_qc = cfg["qc"]["atac"]
    assert project("atac_activity", "qc", atac_qc) == {
        "counting": "insertion",
        "promoter_upstream": 2000,
    }
    assert "promoter_upstream" not in project("atac_tiles", "qc", atac_qc)
    # the tokens' keys depend on the kind: a rank tokenizer has no bins
    rank = project("shard", "tokenizer", cfg["tokenizers"]["rank"])
    assert rank == {
        "genes": "nonzero",
        "kind": "rank",
        "max_len": 2048,
        "max_missing_fraction": 0.5,
        "target_sum": 10000,
    }


def test_download_gets_the_source_keys_only(cfg):
    datasets = cfg["datasets"]
    assert project("download", "dataset", datasets["pbmc_demo"]) == {
        "demo": "pbmc68k",
        "source": "demo",
    }
    assert set(project("download", "dataset", datasets["sim_demo"])) == {
        "source",
        "demo",
        "simulation",
    }
    local = {
        **copy.deepcopy(datasets["pbmc_demo"]),
        "source": "local",
        "path": "x.h5ad",
        "format": "h5ad",
    }
    del local["demo"]
    got = project("download", "dataset", local)
    assert got == {
        "format": "h5ad",
        "organism": "human",
        "path": "x.h5ad",
        "source": "local",
    }
    # standardize's and QC's keys change nothing the download does
    assert not {"obs_map", "obs_values", "genes", "qc", "counts"} & set(got)


def _rule_params(text: str) -> dict[str, set[str]]:
    """rule -> names of its params, read from a .smk file (``use rule a as b`` inherits a's)."""
    found: dict[str, set[str]] = {}
    for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", text, re.M):
        block = re.search(r"^    params:\n((?:        .*\n)+)", body, re.M)
        if block:
            found[rule] = set(re.findall(r"^        (\w+)=", block.group(1), re.M))
    for base, rule in re.findall(r"^use rule (\w+) as (\w+) with:", text, re.M):
        if base in found:
            found[rule] = found[base]
    return found


def test_the_table_names_every_param_of_every_rule():
    rules: dict[str, set[str]] = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        rules.update(_rule_params(smk.read_text()))
    assert {"bench_data", "shard", "train", "atac_activity", "registry_gene_stats"} <= set(rules)
    assert rules == {rule: set(params) for rule, params in KEYS.items()}
    # each rule applies its own row of the table
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", smk.read_text(), re.M):
            assert set(re.findall(r'params_of\("(\w+)"', body)) <= {rule}, (smk.name, rule)


def test_docs_show_the_table():
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert markdown_table() in doc, "docs/architecture.md: paste scfm.rule_params.markdown_table()"
