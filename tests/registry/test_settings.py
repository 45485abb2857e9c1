"""Registry config, the disabled path and the missing-lamindb policy: no lamindb needed."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
from _helpers import Job, write

import scfm.registry._client as client
from scfm.config import validate_config
from scfm.errors import ScfmConfigError
from scfm.registry import (
    RegistrySettings,
    ScfmRegistryError,
    check_installed,
    config_hash,
    register_outputs,
)

BASE = {"datasets": {"d": {"source": "demo", "demo": "simulated"}}}


def test_registry_defaults_are_off_and_local():
    cfg = validate_config(BASE)
    assert cfg["registry"] == {
        "enabled": False,
        "required": True,
        "instance": None,
        "path": ".scfm-registry",
        "settings_dir": None,
        "timeout": 60,
        "python": None,
    }


def test_registry_keys_are_checked():
    bad = {**BASE, "registry": {"enable": True, "instance": "no-slash", "timeout": 0}}
    with pytest.raises(ScfmConfigError) as err:
        validate_config(bad)
    text = str(err.value)
    assert "registry.enable: unknown key (did you mean 'enabled'?)" in text
    assert "registry.instance: 'no-slash' does not match" in text
    assert "registry.timeout" in text


def test_lamindb_source_reads_from_the_top_level_registry_unless_it_names_one():
    cfg = copy.deepcopy(BASE)
    cfg["registry"] = {"path": "/lab/registry", "timeout": 5}
    cfg["datasets"]["a"] = {"source": "lamindb", "key": "results/qc/x.h5ad"}
    cfg["datasets"]["b"] = {
        "source": "lamindb",
        "uid": "abcdefghijklmnop",
        "registry": {"path": "/other"},
    }
    out = validate_config(cfg)
    assert out["datasets"]["a"]["registry"] == {
        "instance": None,
        "path": "/lab/registry",
        "settings_dir": None,
        "timeout": 5,
        "python": None,
    }
    assert out["datasets"]["b"]["registry"]["path"] == "/other"
    assert out["datasets"]["b"]["registry"]["timeout"] == 5
    assert validate_config(out) == out  # the resolved config validates again unchanged


def test_lamindb_source_needs_a_key_or_a_uid():
    cfg = copy.deepcopy(BASE)
    cfg["datasets"]["a"] = {"source": "lamindb", "path": "x.h5ad"}
    with pytest.raises(ScfmConfigError) as err:
        validate_config(cfg)
    assert "datasets.a.path: unknown key" in str(err.value)
    assert "needs exactly the keys of one of: ['key'] or ['uid']" in str(err.value)


def test_config_hash_ignores_the_registry_block():
    a = validate_config(BASE)
    b = validate_config({**BASE, "registry": {"enabled": True, "path": "/x"}})
    c = validate_config({**BASE, "qc": {"rna": {"min_genes": 1}}})
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_relative_paths_are_relative_to_the_working_directory(tmp_path):
    s = RegistrySettings.from_config({"path": "reg", "settings_dir": "lamin"}, workdir=tmp_path)
    assert s.root == tmp_path / "reg" and s.lamin_settings_dir == tmp_path / "lamin"
    assert RegistrySettings.from_config({}, workdir=tmp_path).lamin_settings_dir == (
        tmp_path / ".scfm-registry" / "settings"
    )


def test_disabled_registry_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = write(tmp_path / "results" / "x.tsv", "a\n")
    job = Job("qc", [str(out)], config=validate_config(BASE))
    assert register_outputs(job, kind="qc") is None
    assert not (tmp_path / ".scfm-registry").exists()


@pytest.fixture
def no_lamindb(monkeypatch):
    monkeypatch.setattr(client, "lamindb_installed", lambda python=None: False)
    monkeypatch.setattr("scfm.registry.lamindb_installed", lambda python=None: False)


def test_missing_lamindb_fails_a_required_registry_with_the_install_command(
    tmp_path, monkeypatch, no_lamindb
):
    monkeypatch.chdir(tmp_path)
    out = write(tmp_path / "results" / "x.tsv", "a\n")
    cfg = validate_config({**BASE, "registry": {"enabled": True}})
    with pytest.raises(ScfmRegistryError, match=r"pip install 'scfm\[registry\]'"):
        register_outputs(Job("qc", [str(out)], config=cfg), kind="qc")
    with pytest.raises(ScfmRegistryError, match=r"registry.enabled: .*pip install"):
        check_installed(cfg)


def test_missing_lamindb_only_warns_when_not_required(tmp_path, monkeypatch, caplog, no_lamindb):
    monkeypatch.chdir(tmp_path)
    out = write(tmp_path / "results" / "x.tsv", "a\n")
    cfg = validate_config({**BASE, "registry": {"enabled": True, "required": False}})
    with caplog.at_level(logging.WARNING, logger="scfm.registry"):
        assert register_outputs(Job("qc", [str(out)], config=cfg), kind="qc") is None
    assert "not registered" in caplog.text and "scfm[registry]" in caplog.text
    check_installed(cfg)  # nothing needs lamindb at start-up
    reader = copy.deepcopy(cfg)
    reader["datasets"]["r"] = {"source": "lamindb", "key": "k"}
    with pytest.raises(ScfmRegistryError, match=r"datasets\.r read from it"):
        check_installed(validate_config(reader))


def test_the_worker_path_holds_this_scfm_and_nothing_else(tmp_path):
    """An installed scfm's parent is all of site-packages: the worker gets a link to scfm only."""
    import scfm
    from scfm.registry._client import worker_pythonpath

    path = worker_pythonpath(tmp_path)
    assert [p.name for p in path.iterdir()] == ["scfm"]
    assert (path / "scfm").resolve() == Path(scfm.__file__).resolve().parent
    assert worker_pythonpath(tmp_path) == path
    assert [p.name for p in path.iterdir()] == ["scfm"]
