"""Config schema: defaults, and errors that name the key path and what was expected."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from scfm.config import load_config, validate_config
from scfm.errors import ScfmConfigError

REPO = Path(__file__).resolve().parents[1]
DEMO = {"source": "demo", "demo": "pbmc68k"}


def errors_of(config: dict) -> list[str]:
    with pytest.raises(ScfmConfigError) as info:
        validate_config(config)
    return info.value.problems


def test_shipped_config_is_valid_and_gets_defaults():
    cfg = load_config(REPO / "config" / "config.yaml")
    pbmc = cfg["datasets"]["pbmc_demo"]
    assert pbmc["counts"] == "auto"
    assert pbmc["genes"]["id_type"] == "symbol"
    assert cfg["qc"]["rna"]["min_cells_per_gene"] == 3
    assert cfg["io"]["chunk_cells"] == 20000
    assert set(cfg) >= {"datasets", "qc", "corpora", "tokenizers", "models", "runs", "benchmarks"}


def test_defaults_do_not_mutate_input_and_fill_source_branch_only():
    raw = {
        "datasets": {"a": dict(DEMO), "b": {"source": "url", "url": "https://x/y.h5ad", "size": 3}}
    }
    before = copy.deepcopy(raw)
    cfg = validate_config(raw)
    assert raw == before
    assert cfg["datasets"]["b"]["retries"] == 3 and cfg["datasets"]["b"]["format"] == "auto"
    # keys of other sources' branches are not filled in
    assert "retries" not in cfg["datasets"]["a"] and "census_uri" not in cfg["datasets"]["b"]
    assert cfg["datasets"]["a"]["simulation"]["seed"] == 0


def test_dataset_qc_override_has_no_defaults():
    cfg = validate_config({"datasets": {"a": {**DEMO, "qc": {"min_genes": 5}}}})
    assert cfg["datasets"]["a"]["qc"] == {"min_genes": 5}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"datasets": {"a": {"sourc": "demo"}}},
            "datasets.a.sourc: unknown key (did you mean 'source'?)",
        ),
        ({"datasets": {"a": DEMO}, "corpra": {}}, "corpra: unknown key (did you mean 'corpora'?)"),
        (
            {"datasets": {"a": {"source": "zenodo"}}},
            "datasets.a.source: 'zenodo' is not allowed; expected one of: cellxgene_census",
        ),
        ({"datasets": {"a": {**DEMO, "path": "/x"}}}, "datasets.a.path: unknown key"),
        ({"datasets": {"a b": DEMO}}, "datasets: invalid name 'a b'"),
        ({"datasets": {"a/b": DEMO}}, "invalid name 'a/b'"),
        (
            {"datasets": {"a": {**DEMO, "obs_map": {"celltype": "x"}}}},
            "datasets.a.obs_map: invalid key 'celltype'; expected one of: cell_type",
        ),
        (
            {"datasets": {"a": DEMO}, "qc": {"rna": {"min_genes": "200"}}},
            "qc.rna.min_genes: '200' is not of type 'integer'",
        ),
        (
            {"datasets": {"a": {**DEMO, "qc": {"max_pct_mito": 120}}}},
            "datasets.a.qc.max_pct_mito: 120 is greater than the maximum of 100",
        ),
        (
            {"datasets": {"a": {"source": "url", "url": "https://x/y.h5ad"}}},
            "datasets.a: needs one of: ['sha256'] or ['size']",
        ),
        (
            {"datasets": {"a": {"source": "url", "url": "ftp://x/y", "size": 1}}},
            "datasets.a.url: 'ftp://x/y' does not match",
        ),
        ({"datasets": {"a": {"source": "local"}}}, "datasets.a: 'path' is a required property"),
        (
            {
                "datasets": {
                    "a": {
                        "source": "cellxgene_census",
                        "census_version": "stable",
                        "obs_filter": "x",
                    }
                }
            },
            "datasets.a.census_version: 'stable' does not match",
        ),
        (
            {"datasets": {"a": {"source": "cellxgene_dataset"}}},
            "needs exactly the keys of one of: ['dataset_id'] or ['url']",
        ),
        (
            {
                "datasets": {
                    "a": {"source": "allen_abc", "release": "20231215", "directory": "WMB-10Xv3"}
                }
            },
            "datasets.a: 'matrices' is a required property",
        ),
        ({"datasets": {}}, "datasets: no datasets; expected at least one"),
        (
            {"datasets": {"a": {**DEMO, "genes": {"id_type": "symbol"}}}},
            "references.human.genes to be set",
        ),
        (
            {"datasets": {"a": DEMO}, "corpora": {"bad name": {}}},
            "corpora: invalid name 'bad name'",
        ),
    ],
)
def test_errors_name_key_path_and_expectation(config, expected):
    problems = errors_of(config)
    assert any(expected in p for p in problems), problems


def test_missing_source_reports_only_that():
    problems = errors_of({"datasets": {"a": {"demo": "pbmc68k"}}})
    assert problems[0] == "datasets.a: 'source' is a required property"


def test_load_config_names_file_and_rejects_bad_yaml(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("datasets: {a: [unclosed\n")
    with pytest.raises(ScfmConfigError, match=str(bad)):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"datasets": {"a": {"source": "nope"}}}))
    with pytest.raises(ScfmConfigError, match=r"c\.yaml.*\n.*datasets\.a\.source"):
        load_config(bad)


def test_cli_validate_config(tmp_path, capsys):
    from scfm.cli import main

    assert main(["validate-config", str(REPO / "config" / "config.yaml")]) == 0
    assert "valid (3 datasets, 2 corpora)" in capsys.readouterr().out
    assert main(["validate-config", "--resolved", str(REPO / "config" / "config.yaml")]) == 0
    assert "chunk_cells: 20000" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {a: {source: demo, demo: pbmc68k, sourc: x}}\n")
    assert main(["validate-config", str(bad)]) == 2
    assert "datasets.a.sourc: unknown key" in capsys.readouterr().err


def _bench(**bench):
    return {"datasets": {"a": DEMO}, "benchmarks": {"e": {"dataset": "a", **bench}}}


FM = {"kind": "precomputed", "path": "fm.h5ad"}


@pytest.mark.parametrize(
    ("bench", "expected"),
    [
        (
            {"methods": ["pca", "fm"]},
            "benchmarks.e.methods[1]: 'fm' is neither a baseline, a run nor an external method",
        ),
        (
            {"methods": ["pca"], "external": {"fm": FM}},
            "benchmarks.e.external.fm: defined but not scored; expected 'fm' in benchmarks.e.meth",
        ),
        (
            {"methods": ["pca"], "external": {"pca": FM}},
            "benchmarks.e.external.pca: the name is taken by a baseline",
        ),
        (
            {"methods": ["fm"], "external": {"fm": {"kind": "precomputed"}}},
            "benchmarks.e.external.fm: 'path' is a required property",
        ),
        (
            {
                "methods": ["fm"],
                "external": {"fm": {"kind": "command", "command": "x", "path": "y"}},
            },
            "benchmarks.e.external.fm.path: not used by kind 'command'; expected command only",
        ),
        (
            {"methods": ["fm"], "external": {"fm": {**FM, "kind": "docker"}}},
            "benchmarks.e.external.fm.kind: 'docker' is not allowed",
        ),
    ],
)
def test_external_methods_are_checked_before_any_job(bench, expected):
    problems = errors_of(_bench(**bench))
    assert any(expected in p for p in problems), problems


def test_external_method_width_must_agree_across_sets():
    config = _bench(methods=["fm"], external={"fm": {**FM, "n_dims": 512}})
    config["benchmarks"]["f"] = {
        "dataset": "a",
        "methods": ["fm"],
        "external": {"fm": {**FM, "n_dims": 256}},
    }
    problems = errors_of(config)
    assert any(
        "benchmarks.f.external.fm.n_dims: 256, but benchmarks.e.external.fm.n_dims is 512" in p
        for p in problems
    ), problems
    config["benchmarks"]["f"]["external"]["fm"]["n_dims"] = 512
    out = validate_config(config)
    assert out["benchmarks"]["e"]["external"]["fm"] == {
        **FM,
        "n_dims": 512,
        "obsm_key": None,
        "cell_id": None,
        "allow_extra_cells": False,
        "threads": 2,
    }


def test_paths_expand_home_and_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCFM_TEST_DATA", "/lab/data")
    cfg = validate_config(
        {
            "datasets": {
                "a": {"source": "local", "path": "~/run1.h5ad"},
                "b": {"source": "local", "path": "${SCFM_TEST_DATA}/run2.h5ad"},
            },
            "references": {"human": {"genes": {"path": "$SCFM_TEST_DATA/genes.csv"}}},
            "corpora": {
                "c": {
                    "datasets": ["a"],
                    "vocab": {"policy": "file", "genes_file": "~/hvgs.txt"},
                }
            },
            "registry": {"path": "~/reg", "settings_dir": "~"},
        }
    )
    home = str(tmp_path / "home")
    assert cfg["datasets"]["a"]["path"] == f"{home}/run1.h5ad"
    assert cfg["datasets"]["b"]["path"] == "/lab/data/run2.h5ad"
    assert cfg["references"]["human"]["genes"]["path"] == "/lab/data/genes.csv"
    assert cfg["corpora"]["c"]["vocab"]["genes_file"] == f"{home}/hvgs.txt"
    assert cfg["registry"]["path"] == f"{home}/reg" and cfg["registry"]["settings_dir"] == home
    # names, URLs and filters are not paths: a '~' or '$' in them is kept as written
    cfg = validate_config({"datasets": {"a": {**DEMO, "obs_values": {"tissue": "~$x"}}}})
    assert cfg["datasets"]["a"]["obs_values"]["tissue"] == "~$x"


def test_unset_variable_in_a_path_names_key_and_variable(monkeypatch):
    monkeypatch.delenv("SCFM_NOT_SET", raising=False)
    problems = errors_of({"datasets": {"a": {"source": "local", "path": "$SCFM_NOT_SET/x.h5ad"}}})
    assert len(problems) == 1
    assert problems[0].startswith("datasets.a.path: '$SCFM_NOT_SET/x.h5ad' uses the environment")
    assert "$SCFM_NOT_SET, which are not set" in problems[0]
