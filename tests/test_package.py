"""The package stands alone: the built wheel, installed (not editable) into a fresh venv; and
rule scripts, with the processes they start, import the checkout's scfm in any environment.

The wheel is built from a copy of the sources (setuptools writes build/ and *.egg-info beside
pyproject.toml) without network. The fresh venv has no packages of its own but scfm: it reuses
the test venv's installed packages through a .pth file (``site.addsitedir`` on a directory of
links to every entry of this venv's site-packages except scfm's own: its editable .pth and
dist-info). Every command runs from a directory outside the checkout, with no PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml
from _simcorpus import one_dataset_corpus

from scfm.embed import embed_file

REPO = Path(__file__).resolve().parents[1]
OFFLINE = ["--no-index", "--no-deps", "--quiet"]  # pip: the local wheel only, no network


def _run(cmd: list, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=300, **kw
    )


def _scfm(installed: dict[str, Path], *args, cwd: Path | None = None):
    """The installed ``scfm`` command, run outside the checkout."""
    return _run([installed["bin"] / "scfm", *args], cwd or installed["outside"])


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"{res.args}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``venv``, ``bin`` and ``outside`` (the working directory of the commands)."""
    root = tmp_path_factory.mktemp("wheel")
    assert not root.is_relative_to(REPO)
    src = root / "source"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    _ok(
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                *OFFLINE,
                "--no-build-isolation",
                "-w",
                root / "dist",
                src,
            ],
            cwd=root,
        )
    )
    (wheel,) = (root / "dist").glob("scfm-*.whl")
    venv = root / "venv"
    _ok(_run([sys._base_executable, "-m", "venv", "--without-pip", venv], cwd=root))
    python = venv / "bin" / "python"
    site = Path(
        _ok(
            _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root)
        ).stdout.strip()
    )
    shared = root / "shared-site-packages"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("scfm", "__editable__")):
            (shared / entry.name).symlink_to(entry)
    (site / "_shared_packages.pth").write_text(f"import site; site.addsitedir({str(shared)!r})\n")
    # pip itself comes from the shared packages; it installs into the fresh venv (sys.prefix)
    _ok(_run([python, "-m", "pip", "install", *OFFLINE, wheel], root))
    outside = root / "outside"
    outside.mkdir()
    return {"venv": venv, "bin": venv / "bin", "outside": outside}


@pytest.mark.slow
def test_the_venv_imports_the_installed_wheel_not_the_checkout(installed):
    code = (
        "import json, importlib.metadata as md, scfm, scfm.config; print(json.dumps("
        "[scfm.__file__, str(scfm.config.SCHEMA_PATH), md.distribution('scfm').read_text("
        "'direct_url.json')]))"
    )
    res = _ok(_run([installed["bin"] / "python", "-c", code], installed["outside"]))
    module, schema, direct_url = json.loads(res.stdout)
    assert Path(module).is_relative_to(installed["venv"]), module
    assert Path(schema).is_relative_to(installed["venv"]) and Path(schema).is_file(), schema
    origin = json.loads(direct_url)
    assert origin["url"].endswith(".whl") and "dir_info" not in origin, origin
    # every file of the package's source (modules, schema, chromosome sizes) was installed
    package = REPO / "src" / "scfm"
    missing = [
        str(f.relative_to(package))
        for f in package.rglob("*")
        if f.is_file()
        and "__pycache__" not in f.parts
        and not (Path(module).parent / f.relative_to(package)).is_file()
    ]
    assert missing == []


@pytest.mark.slow
def test_validate_config_checks_the_demo_and_names_a_bad_key(installed):
    demo = REPO / "config" / "config.yaml"
    n_datasets = len(yaml.safe_load(demo.read_text())["datasets"])
    res = _ok(_scfm(installed, "validate-config", demo))
    assert res.stdout.startswith(f"{demo}: valid ({n_datasets} datasets")
    resolved = _ok(_scfm(installed, "validate-config", "--resolved", demo))
    assert yaml.safe_load(resolved.stdout)["io"]["compression"]  # defaults from the schema

    bad = installed["outside"] / "bad.yaml"
    bad.write_text("datasets:\n  mine:\n    sourc: demo\n")
    res = _scfm(installed, "validate-config", bad)
    assert res.returncode == 2, res.stderr
    assert "bad.yaml" in res.stderr and "datasets.mine.sourc: unknown key" in res.stderr
    assert "did you mean 'source'" in res.stderr and "Traceback" not in res.stderr


def _embed_models():
    """tests/embed/_models: simulated cells, and models exported as training exports them."""
    spec = importlib.util.spec_from_file_location("_embed_models", REPO / "tests/embed/_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_embed_gives_the_checkouts_embedding(installed, tmp_path):
    models = _embed_models()
    h5ad, vocab = tmp_path / "cells.h5ad", tmp_path / "vocab.tsv"
    one_dataset_corpus(tmp_path / "corpus", models.simulated(), models.BINNED, "binned")
    shutil.copy(tmp_path / "corpus" / "a.h5ad", h5ad)
    shutil.copy(tmp_path / "corpus" / "vocab.tsv", vocab)
    model = models.export_fresh(tmp_path / "tinyrun", vocab)

    out = installed["outside"] / "emb.h5ad"
    args = ["--output", "emb.h5ad", "--device", "cpu", "--batch-size", "16"]
    res = _ok(_scfm(installed, "embed", "--model", model, "--input", h5ad, *args))
    assert res.stdout.startswith("emb.h5ad: 96 cells x 32 dims in obsm['X_tinyrun']"), res.stdout
    mine = tmp_path / "checkout.h5ad"
    embed_file(model, h5ad, mine, batch_size=16, device="cpu")
    got, want = ad.read_h5ad(out), ad.read_h5ad(mine)
    assert got.obsm["X_tinyrun"].shape == (96, 32)
    assert list(got.obs_names) == list(want.obs_names)
    np.testing.assert_allclose(got.obsm["X_tinyrun"], want.obsm["X_tinyrun"], rtol=1e-5, atol=1e-6)

    bad = _scfm(installed, "embed", "--model", h5ad, "--input", h5ad, "--output", "x.h5ad")
    assert bad.returncode == 2 and str(h5ad) in bad.stderr and "Traceback" not in bad.stderr
    assert not (installed["outside"] / "x.h5ad").exists()


@pytest.mark.slow
def test_registry_registers_lists_and_shows_from_the_installed_package(installed):
    pytest.importorskip("lamindb", reason="the registry needs pip install 'scfm[registry]'")
    lab = installed["outside"] / "lab"
    table = lab / "results" / "bench" / "s" / "summary.tsv"
    table.parent.mkdir(parents=True)
    table.write_text("method\tscore\npca\t1\n")
    register = (
        "from scfm.registry import RegistrySettings, register_files; "
        "s = RegistrySettings.from_config({}, workdir='.'); "
        "register_files('benchmark', ['results/bench/s/summary.tsv'], rule='bench_summary', "
        "settings=s)"
    )
    _ok(_run([installed["bin"] / "python", "-c", register], lab))
    listed = _ok(_scfm(installed, "registry", "--json", "list", cwd=lab))
    assert [r["key"] for r in json.loads(listed.stdout)] == ["results/bench/s/summary.tsv"]
    key = "results/bench/s/summary.tsv"
    shown = json.loads(_ok(_scfm(installed, "registry", "--json", "show", key, cwd=lab)).stdout)
    assert shown["key"] == key and shown["run"]["rule"] == "bench_summary"
    missing = _scfm(installed, "registry", "show", "results/none.tsv", cwd=lab)
    assert missing.returncode == 1 and "results/none.tsv" in missing.stderr
    assert (lab / ".scfm-registry").is_dir()


def test_rule_scripts_and_the_processes_they_start_import_the_checkouts_scfm(tmp_path):
    """A job environment without scfm (a per-rule conda env): the rule script and the trainer
    it starts (``python -m scfm.train``, a new interpreter) both import the checkout's src/."""
    child = "import scfm; print(scfm.__file__)"
    code = (
        f"import subprocess, sys; sys.path.insert(0, {str(REPO / 'scripts')!r}); "
        "import _scfm_path, scfm; print(scfm.__file__); "
        f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, "
        "text=True, check=True).stdout.strip())"
    )
    # the interpreter the venvs are made from: no numpy, no scfm (scfm/__init__ needs neither)
    res = _ok(_run([sys._base_executable, "-c", code], tmp_path))
    assert res.stdout.split() == [str(REPO / "src" / "scfm" / "__init__.py")] * 2
