"""How `snakemake` reads a lab's config, through the real command (dry runs: start-up only).

--configfile replaces config/config.yaml, --config values are merged on top and coerced through
the schema's types, duplicate keys and yte templates are refused, and checks that would first
fire inside a job stop the run at start-up with the key path. The reserved-name table of
scfm.config is compared with the names the rules' own output paths take.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scfm.config import RESERVED_NAMES, load_schema

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MINE = {"datasets": {"mine": {"source": "demo", "demo": "simulated"}}}


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "-n", "--quiet", "rules", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )


def failure(proc: subprocess.CompletedProcess) -> str:
    """What a run that stopped at start-up printed (Snakemake prints the error on stdout)."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Job stats:" not in proc.stdout  # stopped before the DAG was built
    return proc.stdout + proc.stderr


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^([A-Za-z_]\w*)\s+(\d+)$", proc.stdout.split("Job stats:")[-1], re.M)
    return {rule: int(n) for rule, n in rows}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_configfile_replaces_the_default_and_nested_config_is_coerced(tmp_path):
    mine = write(tmp_path / "my.yaml", yaml.safe_dump(MINE))
    # before: the demo's datasets, runs and benchmarks were scheduled beside the lab's dataset,
    # and io={chunk_cells: 5000} failed as "'5000' is not of type 'integer'"
    jobs = job_counts(snakemake("--configfile", str(mine), "--config", "io={chunk_cells: 5000}"))
    assert jobs == {"download": 1, "standardize": 1, "qc": 1, "all": 1, "total": 4}

    wrong = failure(snakemake("--configfile", str(mine), "--config", "io={chunk_cells: many}"))
    assert "io.chunk_cells: 'many' is not of type 'integer'" in wrong


@pytest.mark.slow
def test_default_config_gets_config_overrides_and_startup_checks():
    # no --configfile: config/config.yaml, with the nested override merged into its run
    proc = failure(
        snakemake("--config", "runs={demo_tiny: {mask_ratio: 0}}", "models={tiny: {d_model: 66}}")
    )
    assert "models.tiny.d_model: 66 is not divisible by n_heads (as runs.demo_tiny uses it)" in proc
    assert (
        "runs.demo_tiny.mask_ratio: 0 masks no position, but ordinal learn(s) from masked "
        "positions only; expected mask_ratio > 0 (or only contrastive)"
    ) in proc


@pytest.mark.slow
def test_without_any_config_file_the_error_says_what_to_pass(tmp_path):
    proc = failure(
        snakemake("-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), cwd=tmp_path)
    )
    assert "no config file: config/config.yaml not found in the working directory" in proc
    assert "expected --configfile <your config.yaml>" in proc


@pytest.mark.slow
def test_duplicate_key_is_an_error_naming_key_line_and_file(tmp_path):
    text = "datasets:\n  mine: {source: demo, demo: simulated}\nio:\n  chunk_cells: 5\n"
    dup = write(tmp_path / "dup.yaml", text + "  chunk_cells: 6\n")
    proc = failure(snakemake("--configfile", str(dup)))
    assert "duplicate key 'chunk_cells' (first given on line 4)" in proc
    assert f'in "{dup}", line 5' in proc


@pytest.mark.slow
def test_yte_config_is_refused_but_snakemake_has_already_run_it(tmp_path):
    """Snakemake's CLI reads --configfile with yte (snakemake.settings.types.ConfigSettings ->
    common.configfile.load_configfile -> yte.process_yaml) before the Snakefile is parsed, so
    the expression runs; the workflow then refuses the file. `scfm validate-config` reads it
    with the safe loader only, and nothing runs."""
    marker = tmp_path / "ran"
    expression = f'?str(__import__("pathlib").Path("{marker}").touch() or "simulated")'
    evil = write(
        tmp_path / "evil.yaml",
        f"__use_yte__: true\ndatasets:\n  mine:\n    source: demo\n    demo: {expression}\n",
    )
    check = subprocess.run(
        [str(BIN / "scfm"), "validate-config", str(evil)], capture_output=True, text=True
    )
    assert check.returncode == 2 and "__use_yte__: yte templating is not supported" in check.stderr
    assert not marker.exists()

    proc = failure(snakemake("--configfile", str(evil)))
    assert "__use_yte__: yte templating is not supported" in proc
    assert "`snakemake --configfile` has already evaluated this file's" in proc
    assert marker.exists()  # the documented limitation (docs/config.md, docs/security.md)


@pytest.mark.slow
def test_reserved_and_long_names_stop_the_run_naming_the_key(tmp_path):
    config = {
        "datasets": {
            "mine": {"source": "demo", "demo": "simulated"},
            "d" * 81: MINE["datasets"]["mine"],
        },
        "tokenizers": {"vocab.tsv": {"kind": "binned"}},
    }
    proc = failure(
        snakemake("--configfile", str(write(tmp_path / "c.yaml", yaml.safe_dump(config))))
    )
    assert (
        "tokenizers.vocab.tsv: the name is taken by the pipeline's own "
        "results/corpus/<corpus>/vocab.tsv; expected another name"
    ) in proc
    assert f"datasets: invalid name '{'d' * 81}'; expected at most 80 characters" in proc


@pytest.mark.slow
@pytest.mark.parametrize(
    "read",
    [
        'configfile: "lab.yaml"',
        'from scfm.config import read_config_file\n\nconfig = read_config_file("lab.yaml")',
    ],
    ids=["configfile", "read_config_file"],
)
def test_module_given_config_uses_it_not_the_default(tmp_path, read):
    """A lab's Snakefile that reads its own config and hands it to the module."""
    write(tmp_path / "lab.yaml", yaml.safe_dump(MINE))
    module = (
        f'module scfm:\n    snakefile:\n        "{REPO / "Snakefile"}"\n    config:\n        config'
    )
    write(tmp_path / "Snakefile", f"{read}\n\n\n{module}\n\n\nuse rule * from scfm\n")
    jobs = job_counts(snakemake(cwd=tmp_path))
    assert jobs == {"download": 1, "standardize": 1, "qc": 1, "all": 1, "total": 4}


# --------------------------------------------------------------------------- reserved names
ALIASES = {"d": "dataset", "ds": "dataset", "c": "corpus", "t": "tokenizer", "m": "method"}
ALIASES["name"] = "evalset"  # results/bench/{name}/...: an evaluation set


def rule_paths() -> list[str]:
    """The output/input/log path templates written in the Snakefile and the rules."""
    out = set()
    for f in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for s in re.findall(r"\"((?:results|resources|logs)/[^\"]*)\"", f.read_text()):
            s = re.sub(r"\{wildcards\.(\w+)\}", r"{\1}", s)
            if re.search(r"[\[\]()]", s):  # a Python expression inside an f-string
                continue
            out.add(re.sub(r"\{(\w+)\}", lambda m: "{" + ALIASES.get(m[1], m[1]) + "}", s))
    return sorted(out)


def reserved_from_rules(paths: list[str]) -> dict[str, set[str]]:
    """Wildcard -> literal names that share a directory with it (a name equal to one collides)."""
    found: dict[str, set[str]] = {}
    split = [p.split("/") for p in paths]
    for p in split:
        for i, component in enumerate(p):
            names = re.findall(r"\{(\w+)\}", component)
            if len(names) != 1:
                continue
            regex = re.escape(component).replace(re.escape("{" + names[0] + "}"), "(.+)")
            for q in split:
                if len(q) <= i or "{" in q[i] or p[:i] != q[:i]:
                    continue
                match = re.fullmatch(regex, q[i])
                if match:
                    found.setdefault(names[0], set()).add(match[1])
    return found


def test_reserved_names_are_the_names_the_rules_own_files_take():
    derived = reserved_from_rules(rule_paths())
    assert derived.pop("metric") >= {"scib", "scgraph", "annotation", "masked"}  # not a config name
    assert {k: set(v) for k, v in RESERVED_NAMES.items()} == derived


def test_names_of_maximal_length_fit_every_file_name_the_pipeline_makes():
    longest = load_schema()["$defs"]["name"]["maxLength"]
    # scfm.atomic writes results and resources through .<name>.XXXXXXXX.tmp<suffix> beside
    # them (suffix: the file's own, <= 8 characters here); logs are written in place
    temporary = len("." + ".XXXXXXXX.tmp" + ".h5ad.gz")
    longest_seen = 0
    for path in rule_paths():
        extra = 0 if path.startswith("logs/") else temporary
        for component in path.split("/"):
            filled = re.sub(r"\{\w+\}", "x" * longest, component)
            assert len(filled.encode()) + extra <= 255, (path, component)
            longest_seen = max(longest_seen, len(filled.encode()) + extra)
    assert longest_seen > 200  # logs/shard/<corpus>.<tokenizer>.<dataset>.log: 3 names
