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


# --------------------------------------------------------------------------- reading files
def test_duplicate_key_names_the_key_line_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("datasets:\n  a: {source: demo, demo: pbmc68k}\n  a: {source: demo}\n")
    with pytest.raises(ScfmConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "duplicate key 'a' (first given on line 2); expected each key once" in text
    assert f'in "{path}", line 3' in text


def test_merge_keys_may_be_overridden_and_python_tags_are_refused(tmp_path):
    from scfm.config import read_config_file

    path = tmp_path / "c.yaml"
    path.write_text("x-run: &run {lr: 1, wd: 2}\nr:\n  <<: *run\n  lr: 3\n")
    assert read_config_file(path)["r"] == {"lr": 3, "wd": 2}
    path.write_text("datasets: !!python/name:os.system\n")
    with pytest.raises(ScfmConfigError, match="could not determine a constructor"):
        read_config_file(path)


def test_yte_template_is_refused_without_running_it(tmp_path, capsys):
    from scfm.cli import main

    marker = tmp_path / "ran"
    path = tmp_path / "c.yaml"
    path.write_text(
        "__use_yte__: true\ndatasets:\n  a:\n    source: demo\n"
        f'    demo: ?str(__import__("pathlib").Path("{marker}").touch() or "pbmc68k")\n'
    )
    assert main(["validate-config", str(path)]) == 2
    assert "__use_yte__: yte templating is not supported" in capsys.readouterr().err
    assert not marker.exists()


def test_configfiles_replace_the_default_and_overrides_are_merged(tmp_path, monkeypatch):
    from scfm.config import workflow_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump({"datasets": {"demo": DEMO}}))
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"datasets": {"mine": DEMO}, "io": {"chunk_cells": 7}}))
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump({"io": {"compression": "gzip"}}))
    assert list(workflow_config([], {})["datasets"]) == ["demo"]
    cfg = workflow_config([mine, more], {"io": {"chunk_cells": "9"}})
    assert list(cfg["datasets"]) == ["mine"]
    assert cfg["io"] == {"chunk_cells": 9, "compression": "gzip"}
    (tmp_path / "config" / "config.yaml").unlink()
    with pytest.raises(ScfmConfigError, match=r"no config file: config/config\.yaml not found"):
        workflow_config([], {})


def test_overrides_are_coerced_through_the_schema_types():
    from scfm.config import coerce_overrides

    # as Snakemake's --config parser hands them over (YAML BaseLoader: strings inside)
    given = {
        "io": {"chunk_cells": "5000", "compression": "gzip"},
        "runs": {
            "r": {
                "mask_ratio": "0.3",
                "optimizer": {"lr": "1e-4", "eps": "nan", "betas": ["0.9", "0.99"]},
                "max_steps": "4",
                "clip_norm": "null",
                "compile": "true",
            }
        },
        "datasets": {"a": {"source": "demo", "demo": "pbmc68k", "obs_values": {"batch": "5"}}},
        "benchmarks": {"e": {"dataset": "a", "methods": ["pca"], "seed": "3"}},
    }
    out = coerce_overrides(given)
    assert out["io"] == {"chunk_cells": 5000, "compression": "gzip"}
    assert out["runs"]["r"] == {
        "mask_ratio": 0.3,
        "optimizer": {"lr": 1e-4, "eps": "nan", "betas": [0.9, 0.99]},
        "max_steps": 4,
        "clip_norm": None,
        "compile": True,
    }
    assert out["datasets"]["a"]["obs_values"] == {"batch": "5"}  # a string is allowed there
    assert out["benchmarks"]["e"]["seed"] == 3
    # a value of the wrong type stays a string, and validation names the key
    bad = coerce_overrides({"datasets": {"a": DEMO}, "io": {"chunk_cells": "many"}})
    assert errors_of(bad) == ["io.chunk_cells: 'many' is not of type 'integer'"]


# --------------------------------------------------------------------------- start-up checks
def _trained(**changes):
    cfg = {
        "datasets": {"a": DEMO},
        "corpora": {"c": {"datasets": ["a"]}},
        "tokenizers": {"b": {"kind": "binned"}, "r": {"kind": "rank"}},
        "models": {"m": {"preset": "tiny"}},
        "runs": {"x": {"corpus": "c", "tokenizer": "b", "model": "m", "max_steps": 1}},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split("/")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return cfg


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"models/m/d_model": 66},
            "models.m.d_model: 66 is not divisible by n_heads (as runs.x uses it)",
        ),
        (
            {"models/m": {"d_model": 65536, "n_layers": 48, "n_heads": 8}},
            "models.m: cannot fit in memory: training it needs at least 39,583 GB per process",
        ),
        ({"models/m/norm_eps": 1}, "models.m.norm_eps: 1 is not a positive float"),
        (
            {"runs/x/mask_ratio": 0, "runs/x/objectives": {"mse": 1, "contrastive": 1}},
            "runs.x.mask_ratio: 0 masks no position, but mse learn(s) from masked positions",
        ),
        ({"runs/x/mask_ratio": 1}, "runs.x.mask_ratio: 1 is greater than or equal to the maximum"),
        ({"runs/x/seed": 2**40}, "runs.x.seed: 1099511627776 is not an integer in [0, 2**31)"),
        (
            {"runs/x/optimizer": {"betas": [0.9, 1.0]}},
            "runs.x.optimizer.betas: (0.9, 1.0) is not two numbers in [0, 1)",
        ),
        (
            {"runs/x/tokenizer": "r", "runs/x/objectives": {"mse": 1}},
            "runs.x.objectives.mse: not defined for tokenizer 'r' (kind 'rank', value kind "
            "'none'); expected one of: ce, contrastive",
        ),
        (
            {"runs/x/objectives": {"mse": {"weight": 1, "temperature": 2}}},
            "runs.x.objectives.mse.temperature: unknown parameter; expected weight only",
        ),
        ({"runs/x/loader": {"block_size": 0}}, "runs.x.loader.block_size: 0 is less than"),
        (
            {"corpora/c/split": {"val": 0.5, "test": 0.5}},
            "corpora.c.split: val + test = 1.0 leaves no training cells; expected val + test < 1",
        ),
    ],
)
def test_what_the_train_job_would_refuse_is_refused_at_start_up(changes, expected):
    problems = errors_of(_trained(**changes))
    assert any(p.startswith(expected) for p in problems), problems


def test_the_start_up_checks_pass_the_shipped_configs_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys; from scfm.config import load_config\n"
        "for f in sys.argv[1:]: load_config(f)\n"
        "assert 'torch' not in sys.modules and 'numba' not in sys.modules, 'imported'\n"
    )
    files = [REPO / "config" / "config.yaml", *sorted((REPO / "config" / "experiments").glob("*"))]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def test_mirrored_tables_agree_with_the_objectives_tokenizers_and_model():
    import inspect

    from scfm import config
    from scfm.models import ModelConfig
    from scfm.models.heads import OBJECTIVES
    from scfm.models.transformer import CellTransformer
    from scfm.tokenize import TokenizerConfig

    schema_objectives = config.load_schema()["$defs"]["run"]["properties"]["objectives"]
    names = schema_objectives["propertyNames"]["enum"]
    assert set(config.OBJECTIVE_VALUE_KINDS) == set(config.OBJECTIVE_PARAMS) == set(names)
    for name in names:
        cls = OBJECTIVES[name]
        assert config.OBJECTIVE_VALUE_KINDS[name] == cls.value_kinds, name
        params = list(inspect.signature(cls.__init__).parameters)[3:]  # after self, cfg, weight
        assert config.OBJECTIVE_PARAMS[name] == tuple(params), name
        masked = "_masked_states(" in inspect.getsource(cls.forward)
        assert (name in config.MASKED_OBJECTIVES) == masked, name
    tokenizer = config.load_schema()["$defs"]["tokenizer"]["properties"]
    kinds = tokenizer["kind"]["enum"]
    assert set(config.TOKEN_VALUES) == set(kinds)
    for kind in kinds:
        for genes in tokenizer["genes"]["enum"]:
            try:
                TokenizerConfig(kind=kind, genes=genes)
                refused = False
            except ValueError as exc:
                refused = "genes:" in str(exc)
            problems = config._cross_references(
                {"tokenizers": {"t": {"kind": kind, "genes": genes}}}
            )
            assert refused == any(p.startswith("tokenizers.t.genes:") for p in problems), (
                kind,
                genes,
            )
    for kind, (value_kind, n_tokens) in config.TOKEN_VALUES.items():
        tok = TokenizerConfig(kind=kind, n_bins=7, vocab_size=9)
        expected = getattr(tok, n_tokens) if isinstance(n_tokens, str) else n_tokens
        assert (tok.value_kind, tok.n_value_tokens) == (value_kind, expected), kind
    for activation, positional in (("gelu", True), ("swiglu", False)):
        cfg = ModelConfig.preset(
            "tiny", vocab_size=50, value_kind="float", max_len=30, activation=activation,
            positional=positional,
        )  # fmt: skip
        model = CellTransformer(cfg)
        outside = {"gene_embedding", "value_embedding", "mask_value", "norm"}
        counted = sum(
            p.numel() for n, p in model.named_parameters() if n.split(".")[0] not in outside
        )
        assert config._transformer_params(cfg) == counted, activation
