"""Security review (issue 8, part 3): each point of docs/security.md, tested.

(a) source scans (ast for Python, the tokenizer for Snakemake files), each checked on a bad
    snippet first so that a scanner that finds nothing cannot pass silently;
(b) a model.pt / checkpoint with a code-running pickle is refused and the code does not run;
(c) names are pattern-checked, paths and URLs are data (no shell anywhere);
(d) downloads are verified before use (what tests/io does not cover already);
(e) secrets in the environment or in a URL reach no log, manifest, provenance or checkpoint.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import logging
import runpy
import string
import subprocess
import sys
import tokenize
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from scfm.config import validate_config
from scfm.errors import ScfmConfigError, ScfmDownloadError, ScfmInputError

REPO = Path(__file__).resolve().parents[1]
# a file or directory name with everything a shell would act on
NASTY = "we ird 'q\" ;$(touch pwned)`touch pwned2`"

# --------------------------------------------------------------------------- (a) scanners

_CALLS_BANNED = {
    "os.system": "os.system runs a shell",
    "os.popen": "os.popen runs a shell",
    "subprocess.getoutput": "subprocess.getoutput runs a shell",
    "subprocess.getstatusoutput": "subprocess.getstatusoutput runs a shell",
    "pickle.load": "pickle.load can run code",
    "pickle.loads": "pickle.loads can run code",
    "pickle.Unpickler": "pickle.Unpickler can run code",
    "dill.load": "dill.load can run code",
    "dill.loads": "dill.loads can run code",
    "cloudpickle.load": "cloudpickle.load can run code",
    "cloudpickle.loads": "cloudpickle.loads can run code",
    "joblib.load": "joblib.load can run code",
    "pandas.read_pickle": "pandas.read_pickle can run code",
    "yaml.full_load": "yaml.full_load is not safe_load",
    "yaml.full_load_all": "yaml.full_load_all is not safe_load",
    "yaml.unsafe_load": "yaml.unsafe_load is not safe_load",
    "yaml.unsafe_load_all": "yaml.unsafe_load_all is not safe_load",
    "eval": "eval runs code",
    "exec": "exec runs code",
}
_SUBPROCESS = {"subprocess.run", "subprocess.call", "subprocess.check_call"}
_SUBPROCESS |= {"subprocess.check_output", "subprocess.Popen"}
_SAFE_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader"}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` of a Name/Attribute chain, its first part resolved through the imports."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def scan_python(source: str, filename: str = "<snippet>") -> list[str]:
    """``line: problem`` for every unsafe load, shell or code-running call in ``source``."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                aliases[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        where = f"{node.lineno}"
        shell = kw.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(f"{where}: shell= not False")
        if name is None:
            continue
        if name == "torch.load":
            w = kw.get("weights_only")
            if not (isinstance(w, ast.Constant) and w.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = kw.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader, aliases) not in _SAFE_LOADERS:
                found.append(f"{where}: {name} without yaml.SafeLoader")
        elif name == "numpy.load":
            p = kw.get("allow_pickle")
            if p is not None and not (isinstance(p, ast.Constant) and p.value is False):
                found.append(f"{where}: numpy.load with allow_pickle")
        elif name in _SUBPROCESS and node.args:
            cmd = node.args[0]
            if isinstance(cmd, ast.JoinedStr | ast.BinOp) or (
                isinstance(cmd, ast.Constant) and isinstance(cmd.value, str)
            ):
                found.append(f"{where}: {name} with a command string, not a list")
        elif name in _CALLS_BANNED:
            found.append(f"{where}: {_CALLS_BANNED[name]}")
    return sorted(found, key=lambda s: int(s.split(":")[0]))


def _unquoted(text: str) -> list[str]:
    """Placeholders of a Snakemake shell command that lack ``:q``."""
    return [
        "{" + field + (f":{spec}" if spec else "") + "}"
        for _, field, spec, _ in string.Formatter().parse(text)
        if field is not None and spec != "q"
    ]


ACTIONS = ("shell", "script", "run", "wrapper", "notebook", "cwl", "template_engine")


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    skip = (tokenize.COMMENT, tokenize.NL)
    return [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]


def _directives(source: str) -> list[str]:
    """Names that open a logical line followed by ``:`` (rule keywords and directives)."""
    toks = _tokens(source)
    starts = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    return [
        t.string
        for i, t in enumerate(toks[:-1])
        if t.type == tokenize.NAME
        and toks[i + 1].string == ":"
        and (i == 0 or toks[i - 1].type in starts)
    ]


def scan_snakemake(source: str) -> list[str]:
    """``line: problem`` for each ``run:`` block and each unquoted ``shell`` placeholder."""
    toks = _tokens(source)
    found: list[str] = []
    starts = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    for i, t in enumerate(toks[:-1]):
        if t.type != tokenize.NAME or toks[i + 1].string not in (":", "("):
            continue
        at_line_start = i == 0 or toks[i - 1].type in starts
        directive = at_line_start and toks[i + 1].string == ":"
        if directive and t.string == "run":
            found.append(f"{t.start[0]}: run: block (Python in the Snakefile; use script:)")
        if t.string != "shell" or not (directive or toks[i + 1].string == "("):
            continue
        j, depth = i + 2, 0
        while j < len(toks) and toks[j].type in (tokenize.NEWLINE, tokenize.INDENT):
            j += 1
        while j < len(toks):
            tk = toks[j]
            depth += tk.string in "([{" if tk.type == tokenize.OP else 0
            depth -= tk.string in ")]}" if tk.type == tokenize.OP else 0
            if tk.type == tokenize.STRING and "f" in tk.string.split(tk.string[-1])[0].lower():
                found.append(f"{tk.start[0]}: shell command is an f-string (not quoted with :q)")
            elif tk.type == tokenize.STRING:
                for p in _unquoted(ast.literal_eval(tk.string)):
                    found.append(f"{tk.start[0]}: shell placeholder {p} not quoted with :q")
            if depth < 0 or (tk.type == tokenize.NEWLINE and depth <= 0):
                break
            j += 1
    return found


def _files(*patterns: tuple[str, str]) -> list[Path]:
    return sorted(p for root, pat in patterns for p in (REPO / root).glob(pat) if p.is_file())


BAD_PY = """\
import os, pickle, subprocess, yaml
import numpy as np
import torch as T
from torch import load as tload
from subprocess import run
T.load(path)
tload(path, weights_only=False)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.full_load(text)
run(cmd, shell=True)
subprocess.Popen("ls " + path)
subprocess.check_output(f"ls {path}")
os.system("ls")
pickle.load(fh)
np.load(path, allow_pickle=True)
eval(text)
"""
GOOD_PY = """\
import subprocess, torch, yaml
import numpy as np
torch.load(path, map_location="cpu", weights_only=True)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
subprocess.run([exe, "--version"], capture_output=True, shell=False)
np.load(path)
net.eval()
"""


def test_python_scanner_finds_every_bad_call() -> None:
    assert scan_python(BAD_PY) == [
        "6: torch.load without weights_only=True",
        "7: torch.load without weights_only=True",
        "8: yaml.load without yaml.SafeLoader",
        "9: yaml.load without yaml.SafeLoader",
        "10: yaml.full_load is not safe_load",
        "11: shell= not False",
        "12: subprocess.Popen with a command string, not a list",
        "13: subprocess.check_output with a command string, not a list",
        "14: os.system runs a shell",
        "15: pickle.load can run code",
        "16: numpy.load with allow_pickle",
        "17: eval runs code",
    ]
    assert scan_python(GOOD_PY) == []


def test_no_unsafe_call_in_src_scripts_benchmarks_workflow() -> None:
    files = _files(("src", "**/*.py"), ("scripts", "*.py"), ("benchmarks", "**/*.py"))
    files += _files(("workflow", "**/*.py"))
    assert len(files) > 100, files  # the globs found the code
    problems = [
        f"{f.relative_to(REPO)}:{p}" for f in files for p in scan_python(f.read_text(), str(f))
    ]
    assert problems == []
    # the scan saw the loads it is about
    calls = "".join(f.read_text() for f in files)
    assert calls.count("weights_only=True)") >= 3 and "yaml.safe_load(" in calls


BAD_SMK = '''\
rule a:
    output: "x"
    shell: "cat {input} > {output:q}"

rule b:
    shell:
        """
        echo {wildcards.name:q} {params.x}
        """

rule c:
    run:
        shell("touch {output}")
        shell(f"echo {{x}}")
'''
GOOD_SMK = """\
rule a:
    input: "in"
    output: "x"
    shell: "cat {input:q} > {output:q} # {{literal}}"

rule b:
    script: "scripts/b.py"
"""


def test_snakemake_scanner_finds_run_blocks_and_unquoted_placeholders() -> None:
    assert scan_snakemake(BAD_SMK) == [
        "3: shell placeholder {input} not quoted with :q",
        "7: shell placeholder {params.x} not quoted with :q",
        "12: run: block (Python in the Snakefile; use script:)",
        "13: shell placeholder {output} not quoted with :q",
        "14: shell command is an f-string (not quoted with :q)",
    ]
    assert scan_snakemake(GOOD_SMK) == []


def test_workflow_rules_use_script_not_shell() -> None:
    files = [REPO / "Snakefile", *_files(("workflow", "**/*.smk"))]
    assert len(files) > 3
    problems = [f"{f.relative_to(REPO)}:{p}" for f in files for p in scan_snakemake(f.read_text())]
    assert problems == []
    directives: dict[str, int] = {}
    for f in files:
        for name in _directives(f.read_text()):
            directives[name] = directives.get(name, 0) + 1
    actions = {k: v for k, v in directives.items() if k in ACTIONS}
    assert set(actions) == {"script"} and actions["script"] >= 30, directives


# --------------------------------------------------------------------------- (b) pickles


class _RunsCode:
    """Unpickling this opens (creates) ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _evil_file(path: Path, marker: Path, payload: dict[str, Any]) -> Path:
    torch.save({**payload, "hook": _RunsCode(marker)}, path)
    return path


def test_the_evil_file_does_run_code_when_unpickled(tmp_path: Path) -> None:
    """The control: without weights_only the file does create the marker."""
    marker = tmp_path / "marker"
    path = _evil_file(tmp_path / "evil.pt", marker, {"format": "x"})
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_model_file_with_pickled_code_is_refused(tmp_path: Path) -> None:
    from scfm.embed import open_model_file
    from scfm.train import load_model_file

    marker = tmp_path / "marker"
    path = _evil_file(tmp_path / "model.pt", marker, {"format": "scfm-model/1", "state_dict": {}})
    with pytest.raises(ValueError) as info:
        load_model_file(path)
    assert str(info.value) == (
        f"{path}: not loadable with torch.load(weights_only=True) "
        "(UnpicklingError: a pickled io.open)"
    )
    with pytest.raises(ScfmInputError) as info2:
        open_model_file(path)
    assert str(info2.value) == (
        f"{path}: file: not loadable with torch.load(weights_only=True) (UnpicklingError); "
        "expected a model.pt written by scfm training (scfm-model/1)"
    )
    assert not marker.exists()


def test_checkpoint_with_pickled_code_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Even with a matching size/sha256 record the checkpoint is not unpickled beyond tensors."""
    from scfm.train import CheckpointManager

    marker = tmp_path / "marker"
    manager = CheckpointManager(tmp_path / "ckpt")
    manager.directory.mkdir()
    path = _evil_file(manager.path(4), marker, {"format": "x", "step": 4})
    data = path.read_bytes()
    record = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"not loadable with weights_only=True"):
        manager.load(4)
    with caplog.at_level(logging.WARNING):
        assert manager.load_latest() is None  # a fresh start, not an unpickled object
    assert "skipping checkpoint of step 4" in caplog.text
    assert not marker.exists()


# --------------------------------------------------------------------------- (c) names, paths

BAD_NAMES = [
    *["..", ".", "a/b", "/etc", "../up", "a b", "a;b", "$(touch pwned)", "`id`", "a'b"],
    *["a\n", "\n", "a\nb"],  # a `$` anchor matches before a trailing newline
]
NAME_PROBLEM = (
    "invalid name {!r}; expected letters, digits, '_', '.' or '-' only, and not '.' or '..' (the "
    "name becomes a file path and a wildcard)"
)
LONG_PROBLEM = (
    "invalid name {!r}; expected at most 80 characters (names become parts of file names, which "
    "have at most 255 bytes)"
)
SECTIONS = ["datasets", "references", "corpora", "tokenizers", "models", "runs", "benchmarks"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_rejected_naming_the_key(bad: str) -> None:
    cfg: dict[str, Any] = {"datasets": {"ok": {"source": "demo", "demo": "simulated"}}}
    for section in SECTIONS:
        cfg.setdefault(section, {})[bad] = {}
    with pytest.raises(ScfmConfigError) as info:
        validate_config(cfg)
    expected = NAME_PROBLEM.format(bad)
    for section in SECTIONS:
        assert f"{section}: {expected}" in info.value.problems, section


@pytest.mark.parametrize("bad", ["..", "/abs/path", "a b", "x;rm -rf", "$(touch pwned)", "c\n"])
def test_bad_name_references_are_rejected_naming_the_key(bad: str) -> None:
    cfg = {
        "datasets": {"d": {"source": "demo", "demo": "simulated"}},
        "tokenizers": {"t": {"kind": "binned"}},
        "corpora": {"c": {"datasets": [bad]}},
        "models": {"m": {}},
        "runs": {"r": {"corpus": bad, "tokenizer": "t", "model": "m"}},
        "benchmarks": {"e": {"dataset": bad, "methods": ["pca", bad]}},
    }
    with pytest.raises(ScfmConfigError) as info:
        validate_config(cfg)
    keys = {p.split(":")[0] for p in info.value.problems}
    wanted = {"corpora.c.datasets[0]", "runs.r.corpus", "benchmarks.e.dataset"}
    assert wanted | {"benchmarks.e.methods[1]"} <= keys, info.value.problems
    for key in wanted:
        assert f"{key}: {NAME_PROBLEM.format(bad)}" in info.value.problems


def test_names_too_long_for_a_file_name_are_rejected_naming_the_key() -> None:
    long = "x" * 81
    cfg: dict[str, Any] = {"datasets": {"ok": {"source": "demo", "demo": "simulated"}}}
    for section in SECTIONS:
        cfg.setdefault(section, {})[long] = {}
    cfg["benchmarks"]["e"] = {"dataset": "ok", "methods": ["pca", long]}
    with pytest.raises(ScfmConfigError) as info:
        validate_config(cfg)
    for key in [*SECTIONS, "benchmarks.e.methods[1]"]:
        assert f"{key}: {LONG_PROBLEM.format(long)}" in info.value.problems, key
    with pytest.raises(ScfmConfigError, match=r"datasets: invalid name ''; expected at least one"):
        validate_config({"datasets": {"": {"source": "demo", "demo": "simulated"}}})


def test_good_names_still_pass() -> None:
    names = ["pbmc.v2-x_1", "z" * 80]
    cfg = validate_config({"datasets": {n: {"source": "demo", "demo": "simulated"} for n in names}})
    assert list(cfg["datasets"]) == names


def _small_h5ad(path: Path) -> Path:
    from _simcorpus import simulated

    path.parent.mkdir(parents=True, exist_ok=True)
    simulated(40, 60).write_h5ad(path)
    return path


def test_nasty_local_path_and_file_url_are_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path/URL with spaces, quotes, ';', $() and backticks is downloaded and read as is."""
    from scfm.io.h5ad import provenance
    from scfm.io.sources import fetch_dataset
    from scfm.io.standardize import standardize

    monkeypatch.chdir(tmp_path)
    src = _small_h5ad(tmp_path / NASTY / f"{NASTY}.h5ad")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    blocks = {
        "loc": {"source": "local", "path": str(src), "genes": {"id_type": "as_is"}},
        "web": {
            "source": "url",
            "url": f"file://{src}",
            "sha256": sha,
            "genes": {"id_type": "as_is"},
        },
    }
    cfg = validate_config({"datasets": blocks})["datasets"]
    for name in blocks:
        man = fetch_dataset(name, cfg[name], tmp_path / "raw" / name)
        assert man["matrices"][0]["sha256"] == sha
        out = tmp_path / "std" / f"{name}.h5ad"
        standardize(tmp_path / "raw" / name / "manifest.json", out, dataset=name, cfg=cfg[name])
        assert provenance(out)["standardize"]["inputs"][0]["sha256"] == sha
    assert (tmp_path / "raw" / "web" / f"{NASTY}.h5ad").read_bytes() == src.read_bytes()
    import anndata as ad

    assert ad.read_h5ad(tmp_path / "std" / "web.h5ad").n_obs == 40
    assert sorted(p.name for p in tmp_path.rglob("pwned*")) == []


def test_macs3_gets_an_argument_list_and_a_nasty_path_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scfm.atac import peaks
    from scfm.atac.genome import Genome

    monkeypatch.chdir(tmp_path)
    root = tmp_path / NASTY
    root.mkdir()
    rng = np.random.default_rng(0)
    cells = [f"C{i}" for i in range(8)]
    rows = [
        ("chrA", int(s), int(s) + int(rng.integers(50, 200)), str(rng.choice(cells)))
        for center in (2000, 6000)
        for s in rng.normal(center, 60, 1500).astype(int)
    ]
    frags = root / f"{NASTY}.tsv.gz"
    with gzip.open(frags, "wt") as fh:
        fh.writelines("\t".join(map(str, r)) + "\n" for r in sorted(rows))
    calls: list[tuple[Any, dict[str, Any]]] = []
    real = subprocess.run

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append((args, kw))
        return real(*args, **kw)

    monkeypatch.setattr(peaks.subprocess, "run", spy)
    out = peaks.call_peaks(
        frags, Genome(name="toy", chrom_sizes={"chrA": 10_000}), root / "out dir", barcodes=cells
    )
    summits = out.read_text().splitlines()
    assert [line.split("\t")[0] for line in summits] == ["chrA", "chrA"]
    starts = [int(line.split("\t")[1]) for line in summits]
    assert [abs(x - c) < 60 for x, c in zip(starts, (2000, 6000), strict=True)] == [True, True]
    macs = [a[0] for a, kw in calls if a[0][1:2] == ["callpeak"]]
    assert len(macs) == 1 and isinstance(macs[0], list)
    assert all("shell" not in kw for _, kw in calls)
    assert str(root / "out dir") in " ".join(macs[0])  # the nasty path, one argument each
    assert sorted(p.name for p in tmp_path.rglob("pwned*")) == []


def test_train_launch_command_is_a_list_with_paths_verbatim(tmp_path: Path) -> None:
    from scfm.train.launch import launch_command

    d = tmp_path / NASTY
    cmd = launch_command(d / "run.json", d / "model.json", d / "m.json", d, log=d / "l.log")
    assert cmd == [
        sys.executable,
        "-m",
        "scfm.train",
        "--run-config",
        f"{d}/run.json",
        "--model-config",
        f"{d}/model.json",
        "--manifest",
        f"{d}/m.json",
        "--out",
        str(d),
        "--log",
        f"{d}/l.log",
    ]


# --------------------------------------------------------------------------- (d) downloads


def test_reference_and_annotation_urls_need_a_sha256() -> None:
    cases = [
        (
            {"genes": {"url": "https://example.org/g.gtf"}},
            "references.hs.genes: needs exactly the keys of one of: "
            "['package'] or ['path'] or ['sha256', 'url']",
        ),
        (
            {"genome": {"assembly": "hg38", "annotation": {"url": "https://example.org/a.gtf"}}},
            "references.hs.genome.annotation: needs exactly the keys of one of: "
            "['path'] or ['sha256', 'url']",
        ),
    ]
    datasets = {"d": {"source": "demo", "demo": "simulated"}}
    for ref, problem in cases:
        with pytest.raises(ScfmConfigError) as info:
            validate_config({"datasets": datasets, "references": {"hs": ref}})
        assert info.value.problems == [problem]


def test_annotation_with_wrong_sha256_leaves_no_file(tmp_path: Path, http_server: Any) -> None:
    """scATAC gene annotation download (atac/pipeline.py): verified before it is parsed."""
    from scfm.atac.pipeline import reference_genome

    body = b"chrA\t100\t900\tG1\tGENE1\t+\n"
    url = http_server.add("ann/genes.tsv", body)
    spec = {"assembly": "hg38", "annotation": {"url": url, "sha256": "0" * 64, "retries": 1}}
    with pytest.raises(ScfmDownloadError) as info:
        reference_genome(spec, tmp_path / "ref")
    assert str(info.value) == (
        f"{url}: sha256 mismatch: got {hashlib.sha256(body).hexdigest()}; expected {'0' * 64} "
        "(the file changed upstream, or the configured checksum is wrong)"
    )
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == []


# --------------------------------------------------------------------------- (e) secrets

SECRETS = {
    "SCFM_SLURM_ACCOUNT": "acct-S3CR3T-slurm",
    "LAMIN_API_KEY": "lamin-S3CR3T-apikey",
    "LAMIN_TOKEN": "lamin-S3CR3T-token",
    "HF_TOKEN": "hf_S3CR3T_token",
    "AWS_SECRET_ACCESS_KEY": "aws-S3CR3T-key",
}
URL_SECRETS = ("urlpass-S3CR3T", "urlsig-S3CR3T", "urltok-S3CR3T")


def _leaks(root: Path, secrets: tuple[str, ...] | list[str]) -> list[str]:
    """``file: secret`` for every secret found in a file under ``root`` (bytes, and unpickled)."""
    found = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        data = f.read_bytes()
        text = data.decode("latin-1")
        if f.suffix == ".pt":  # zip members may be compressed: look inside too
            text += repr(torch.load(f, weights_only=True))
        found += [f"{f.relative_to(root)}: {s}" for s in secrets if s in text]
    return found


def test_leak_finder_finds_a_planted_secret(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text(f"account={SECRETS['SCFM_SLURM_ACCOUNT']}\n")
    torch.save({"x": SECRETS["HF_TOKEN"]}, tmp_path / "m.pt")
    assert _leaks(tmp_path, list(SECRETS.values())) == [
        f"a.log: {SECRETS['SCFM_SLURM_ACCOUNT']}",
        f"m.pt: {SECRETS['HF_TOKEN']}",
    ]


@pytest.fixture
def job_logging() -> Any:
    """scfm.logs.setup_logging for one test; the root logger's handlers are restored after."""
    from scfm.logs import setup_logging

    root = logging.getLogger()
    before, level, hook = list(root.handlers), root.level, sys.excepthook
    yield setup_logging
    for h in root.handlers[len(before) :]:
        h.close()
    root.handlers[:], sys.excepthook = before, hook
    root.setLevel(level)


def test_url_credentials_reach_no_log_manifest_or_provenance(
    tmp_path: Path, http_server: Any, monkeypatch: pytest.MonkeyPatch, job_logging: Any
) -> None:
    from scfm.io.h5ad import provenance
    from scfm.io.sources import fetch_dataset
    from scfm.io.standardize import standardize

    monkeypatch.setattr("scfm.io.download.time.sleep", lambda s: None)
    body = _small_h5ad(tmp_path / "src" / "x.h5ad").read_bytes()
    http_server.add("data/x.h5ad", body, fail_times=1)  # one retry: the warning is logged
    pw, sig, tok = URL_SECRETS
    host = http_server.base_url.split("://")[1]
    url = f"http://user:{pw}@{host}/data/x.h5ad?X-Amz-Signature={sig}&token={tok}&v=2"
    shown = f"http://***@{host}/data/x.h5ad?X-Amz-Signature=***&token=***&v=2"
    cfg = validate_config(
        {
            "datasets": {
                "d": {
                    "source": "url",
                    "url": url,
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "genes": {"id_type": "as_is"},
                }
            }
        }
    )["datasets"]["d"]
    work = tmp_path / "work"
    job_logging(work / "logs" / "download.log")
    man = fetch_dataset("d", cfg, work / "raw" / "d")
    assert man["matrices"][0]["url"] == shown and man["config"]["url"] == shown
    standardize(work / "raw" / "d" / "manifest.json", work / "std" / "d.h5ad", dataset="d", cfg=cfg)
    assert provenance(work / "std" / "d.h5ad")["standardize"]["config"]["url"] == shown
    bad = {**cfg, "sha256": "0" * 64, "retries": 1}
    with pytest.raises(ScfmDownloadError) as info:
        fetch_dataset("d", bad, work / "raw" / "again")
    assert str(info.value).startswith(f"{shown}: sha256 mismatch")
    log = (work / "logs" / "download.log").read_text()
    assert f"{shown}: HTTP 503 Service Unavailable (try 1 of 3)" in log
    assert f"downloaded {shown} ->" in log
    assert _leaks(work, URL_SECRETS) == []
    assert cfg["url"] == url  # the download itself still had the credentials


def _corpus(root: Path) -> Path:
    from _simcorpus import one_dataset_corpus, simulated

    tok = validate_config(
        {
            "datasets": {"a": {"source": "demo", "demo": "simulated"}},
            "tokenizers": {"t": {"kind": "binned", "n_bins": 7, "max_len": 24}},
        }
    )["tokenizers"]["t"]
    return one_dataset_corpus(root, simulated(128, 60), tok, "t")


def test_env_secrets_reach_no_training_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scripts/train.py (the rule's adapter) with secrets in the environment, into a nasty dir."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    manifest = _corpus(tmp_path / "corpus")
    out = tmp_path / "results" / "train" / NASTY
    log = tmp_path / "logs" / "train" / f"{NASTY}.log"
    run = {
        "corpus": "c",
        "tokenizer": "t",
        "model": "m",
        "objectives": {"mse": 1.0},
        "batch_size": 16,
        "max_steps": 4,
        "seed": 1,
        "log_every": 2,
        "val_every": 2,
        "val_batches": 1,
        "checkpoint_every": 2,
        "stats_batches": 2,
        "loader": {"block_size": 16, "shuffle_buffer": 32},
    }
    smk = SimpleNamespace(
        params=SimpleNamespace(out=str(out), run=run, model={"d_model": 16, "n_heads": 2}),
        input=SimpleNamespace(manifest=str(manifest)),
        resources={"gpu": 0},
        log=[str(log)],
        config={},
        output=[str(out / "model.pt")],
    )
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / "train.py"), init_globals={"snakemake": smk})
    assert done.value.code == 0, log.read_text()
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert {"model.pt", "metrics.tsv", "config.yaml", "run.json"} <= set(made), made
    assert any(m.startswith("checkpoints/step-") for m in made), made
    assert log.stat().st_size > 0
    assert _leaks(out, list(SECRETS.values())) == []
    assert _leaks(log.parent, list(SECRETS.values())) == []
    assert sorted(p.name for p in tmp_path.rglob("pwned*")) == []


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://u:p4ss@h.org/a.h5ad", "https://***@h.org/a.h5ad"),
        ("https://TOKEN@github.com/x", "https://***@github.com/x"),
        (
            "https://h/a?X-Amz-Signature=s&x=1&token=t",
            "https://h/a?X-Amz-Signature=***&x=1&token=***",
        ),
        ("https://h/a?api_key=k&keep=1", "https://h/a?api_key=***&keep=1"),
        (
            "with url: /a.h5ad?access_token=t (Caused by",
            "with url: /a.h5ad?access_token=*** (Caused by",
        ),
        ("https://h.org/a.h5ad?v=2", "https://h.org/a.h5ad?v=2"),
        (f"file:///x/{NASTY}/a@b.h5ad", f"file:///x/{NASTY}/a@b.h5ad"),
    ],
)
def test_redact_url(text: str, shown: str) -> None:
    from scfm.redact import redact, redact_url

    assert redact_url(text) == shown
    assert redact({"a": [text, (text, 3)]}) == {"a": [shown, (shown, 3)]}
