"""An unreachable lab instance: the rule fails, or warns and goes on, within registry.timeout."""

from __future__ import annotations

import logging
import time

import pytest
from _helpers import Job, write

from scfm.registry import ScfmRegistryError, register_outputs
from scfm.registry._lock import file_lock

pytest.importorskip("lamindb", reason="the registry tests need pip install 'scfm[registry]'")

TIMEOUT = 3.0


def job(tmp_path, **registry) -> Job:
    out = write(tmp_path / "results" / "qc" / "d.metrics.tsv", "x\n")
    config = {"datasets": {}, "registry": {"enabled": True, "timeout": TIMEOUT, **registry}}
    return Job("qc", [str(out)], wildcards={"dataset": "d"}, config=config)


@pytest.fixture
def hung_hub(monkeypatch, silent_server):
    """lamindb's hub (its own LAMIN_ENV switch) on a server that accepts and never answers."""
    monkeypatch.setenv("LAMIN_ENV", "scfm-test")
    monkeypatch.setenv("SUPABASE_API_URL", silent_server)
    monkeypatch.setenv("SUPABASE_ANON_KEY", "none")


def test_hung_lab_instance_fails_the_rule_within_the_timeout(tmp_path, monkeypatch, hung_hub):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(ScfmRegistryError) as err:
        register_outputs(job(tmp_path, instance="mylab/scfm"), kind="qc")
    elapsed = time.monotonic() - start
    assert TIMEOUT <= elapsed < TIMEOUT + 5
    assert "lamindb instance mylab/scfm" in str(err.value)
    assert f"not reachable within {TIMEOUT:g} s (registry.timeout)" in str(err.value)


def test_hung_lab_instance_only_warns_when_not_required(tmp_path, monkeypatch, caplog, hung_hub):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="scfm.registry"):
        result = register_outputs(job(tmp_path, instance="mylab/scfm", required=False), kind="qc")
    assert result is None and time.monotonic() - start < TIMEOUT + 5
    assert "not registered" in caplog.text and "registry.required is false" in caplog.text
    assert (tmp_path / "results" / "qc" / "d.metrics.tsv").read_text() == "x\n"


def test_refused_lab_instance_fails_fast_saying_how_to_check(tmp_path, monkeypatch, offline):
    """No network at all (the offline guard refuses every non-local connection)."""
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(ScfmRegistryError) as err:  # lamindb's own error, before the timeout
        register_outputs(job(tmp_path, instance="mylab/scfm", timeout=60), kind="qc")
    assert time.monotonic() - start < 30
    assert "cannot connect" in str(err.value) and "lamin connect" in str(err.value)


def test_a_lock_held_too_long_is_reported(tmp_path, monkeypatch):
    """A registry job stuck on the embedded instance does not block others forever."""
    monkeypatch.chdir(tmp_path)
    with file_lock(tmp_path / ".scfm-registry" / "registry.lock", timeout=1):
        start = time.monotonic()
        with pytest.raises(ScfmRegistryError, match="held"):
            register_outputs(job(tmp_path), kind="qc")
        assert time.monotonic() - start < TIMEOUT + 5
