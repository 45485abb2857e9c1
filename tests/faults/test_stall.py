"""A download server that stalls: each stalled attempt times out, is retried, and the download
either completes verified or fails, in bounded time, with an error naming the URL.

The server (tests/conftest.py ``Route.stall_after``) sends the headers and part of the body, then
keeps the connection open without sending more; ``stall_after=-1`` never answers at all.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from scfm.errors import ScfmDownloadError
from scfm.io import download as dl
from scfm.io.download import download, download_configured, hash_file

BODY = os.urandom(3 * (1 << 20) + 12345)  # several 1 MiB chunks: a stall mid-stream
SHA = hashlib.sha256(BODY).hexdigest()
TIMEOUT = 0.5  # datasets.<name>.timeout: seconds without data before an attempt fails


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("stall_after", [0, 1 << 20, len(BODY) - 1, -1])
def test_stalled_attempts_time_out_and_the_retry_completes(
    http_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stall_after: int
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)  # the back-off, recorded not slept
    url = http_server.add("d.h5ad", BODY, stall_after=stall_after, stall_times=2)
    dest = tmp_path / "raw" / "d.h5ad"
    cfg = {"sha256": SHA, "size": len(BODY), "retries": 3, "timeout": TIMEOUT}
    t0 = time.monotonic()
    record = download_configured(url, dest, cfg)
    elapsed = time.monotonic() - t0
    route = http_server.routes["/d.h5ad"]
    assert (route.hits, route.stalls) == (3, 2)  # two stalled attempts, then the good one
    assert waits == [1.0, 2.0]  # the default back-off between them
    assert dest.read_bytes() == BODY
    assert record["sha256"] == SHA == hash_file(dest) and record["size"] == len(BODY)
    assert _listing(dest.parent) == ["d.h5ad"]  # no temporary file of the stalled attempts
    # each stalled attempt ended by the configured 0.5 s, not the 60 s default
    assert 2 * TIMEOUT <= elapsed < 2 * TIMEOUT + 5, elapsed


@pytest.mark.parametrize("stall_after", [1 << 20, -1])
def test_a_server_that_always_stalls_fails_clearly_in_bounded_time(
    http_server, tmp_path: Path, stall_after: int
) -> None:
    url = http_server.add("d.h5ad", BODY, stall_after=stall_after)
    dest = tmp_path / "raw" / "d.h5ad"
    t0 = time.monotonic()
    with pytest.raises(ScfmDownloadError) as err:
        download(url, dest, sha256=SHA, retries=3, timeout=TIMEOUT, backoff=0.1)
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert msg.startswith(f"{url}: giving up after 3 attempt(s): "), msg
    assert "timed out" in msg, msg
    if stall_after > 0:
        assert f"after {stall_after} bytes" in msg, msg  # says how far the transfer got
    route = http_server.routes["/d.h5ad"]
    assert route.hits == route.stalls == 3  # retried, and only the configured number of times
    assert elapsed < 20, elapsed
    assert elapsed >= 3 * TIMEOUT, elapsed  # each attempt waited for its timeout
    assert _listing(dest.parent) == []  # no partial file, no temporary file
