"""Registry fixtures: an offline guard for the worker processes, a server that never answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import GUARD


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """Registry workers started in this test cannot reach the network; returns the log of tries."""
    guard = tmp_path / "netguard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "network_attempts.log"
    monkeypatch.setenv("PYTHONPATH", str(guard))
    monkeypatch.setenv("SCFM_TEST_NET_LOG", str(log))
    probe = "import socket; socket.getaddrinfo('example.org', 443)"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "network blocked by the scfm registry tests" in res.stderr, res.stderr
    log.unlink()
    return log


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An HTTP URL on 127.0.0.1 that accepts connections and never answers (a hung network)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for conn in held:
        conn.close()
