"""scfm.io.download against a local HTTP server: verification, retries, atomicity."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from scfm.errors import ScfmDownloadError
from scfm.io import download as dl
from scfm.io.download import download, fetch_json, hash_file

BODY = bytes(range(256)) * 400 + b"tail"  # 102,404 bytes
SHA256 = hashlib.sha256(BODY).hexdigest()
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Skip back-off waits; record them."""
    waits: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    return waits


def _assert_nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temporary file either


def test_download_verifies_and_returns_record(http_server: Any, tmp_path: Path) -> None:
    url = http_server.add("data/file.h5ad", BODY)
    dest = tmp_path / "sub" / "dir" / "file.h5ad"  # parents are created
    record = download(url, dest, sha256=SHA256.upper(), md5=MD5, size=len(BODY))
    assert record == {"url": url, "path": str(dest), "size": len(BODY), "sha256": SHA256}
    assert dest.read_bytes() == BODY
    assert [p.name for p in dest.parent.iterdir()] == ["file.h5ad"]


def test_download_without_expectations(http_server: Any, tmp_path: Path) -> None:
    url = http_server.add("x.bin", b"")
    record = download(url, tmp_path / "x.bin")
    assert record["size"] == 0
    assert record["sha256"] == hashlib.sha256(b"").hexdigest()


def test_retries_on_503_then_succeeds(
    http_server: Any, tmp_path: Path, sleeps: list[float]
) -> None:
    url = http_server.add("flaky.bin", BODY, fail_times=2)
    record = download(url, tmp_path / "flaky.bin", sha256=SHA256, retries=3, backoff=0.5)
    assert record["sha256"] == SHA256
    assert http_server.routes["/flaky.bin"].hits == 3
    assert sleeps == [0.5, 1.0]  # back-off doubles
    assert (tmp_path / "flaky.bin").read_bytes() == BODY


def test_503_every_time_gives_up(http_server: Any, tmp_path: Path, sleeps: list[float]) -> None:
    url = http_server.add("down.bin", BODY, fail_times=99)
    with pytest.raises(ScfmDownloadError, match=r"giving up after 4 attempt\(s\)") as info:
        download(url, tmp_path / "down.bin", sha256=SHA256, retries=4)
    assert url in str(info.value) and "HTTP 503" in str(info.value)
    assert http_server.routes["/down.bin"].hits == 4
    assert sleeps == [1.0, 2.0, 4.0]
    _assert_nothing_left(tmp_path / "down.bin")


def test_404_fails_at_once(http_server: Any, tmp_path: Path, sleeps: list[float]) -> None:
    url = http_server.url("missing.bin")
    with pytest.raises(ScfmDownloadError, match="HTTP 404") as info:
        download(url, tmp_path / "missing.bin", retries=3)
    assert str(info.value).startswith(url)
    assert sleeps == []  # not retried
    _assert_nothing_left(tmp_path / "missing.bin")


def test_other_4xx_fails_at_once(http_server: Any, tmp_path: Path, sleeps: list[float]) -> None:
    url = http_server.add("secret.bin", BODY, status=403)
    with pytest.raises(ScfmDownloadError, match="HTTP 403"):
        download(url, tmp_path / "secret.bin")
    assert http_server.routes["/secret.bin"].hits == 1
    _assert_nothing_left(tmp_path / "secret.bin")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"sha256": "0" * 64}, f"sha256 mismatch: got {SHA256}; expected {'0' * 64}"),
        ({"md5": "f" * 32}, f"md5 mismatch: got {MD5}; expected {'f' * 32}"),
        (
            {"size": len(BODY) + 1},
            f"size mismatch: got {len(BODY)} bytes; expected {len(BODY) + 1}",
        ),
        ({"sha256": SHA256, "size": 10}, "size mismatch"),
    ],
)
def test_mismatch_fails_at_once_and_leaves_nothing(
    http_server: Any, tmp_path: Path, sleeps: list[float], kw: dict[str, Any], match: str
) -> None:
    url = http_server.add("f.bin", BODY)
    dest = tmp_path / "f.bin"
    with pytest.raises(ScfmDownloadError) as info:
        download(url, dest, **kw)
    assert match in str(info.value)
    assert str(info.value).startswith(url)
    assert http_server.routes["/f.bin"].hits == 1  # a wrong checksum is not retried
    _assert_nothing_left(dest)


def test_failure_keeps_an_existing_file_untouched(http_server: Any, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"previous version")
    url = http_server.add("f.bin", BODY)
    with pytest.raises(ScfmDownloadError, match="sha256 mismatch"):
        download(url, dest, sha256="1" * 64)
    assert dest.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_truncated_transfer_is_retried_then_fails(
    http_server: Any, tmp_path: Path, sleeps: list[float]
) -> None:
    url = http_server.add("cut.bin", BODY, truncate_at=1000)
    with pytest.raises(ScfmDownloadError, match=r"giving up after 3 attempt\(s\)") as info:
        download(url, tmp_path / "cut.bin", sha256=SHA256)
    msg = str(info.value)
    assert "1000" in msg  # how far it got
    assert "transfer interrupted" in msg or "closed the connection" in msg
    assert http_server.routes["/cut.bin"].hits == 3
    _assert_nothing_left(tmp_path / "cut.bin")


def test_truncated_once_then_complete(
    http_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_server.add("cut.bin", BODY, truncate_at=len(BODY) // 2)
    route = http_server.routes["/cut.bin"]

    def heal(_: float) -> None:  # the server recovers during the back-off
        route.truncate_at = None

    monkeypatch.setattr(dl.time, "sleep", heal)
    record = download(url, tmp_path / "cut.bin", sha256=SHA256, size=len(BODY))
    assert route.hits == 2
    assert record["size"] == len(BODY)
    assert [p.name for p in tmp_path.iterdir()] == ["cut.bin"]


def test_connection_refused_is_retried(tmp_path: Path, sleeps: list[float]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(ScfmDownloadError, match=r"giving up after 2 attempt\(s\)") as info:
        download(url, tmp_path / "x.bin", retries=2, timeout=5)
    assert "ConnectionError" in str(info.value)
    assert sleeps == [1.0]
    _assert_nothing_left(tmp_path / "x.bin")


def test_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src dir" / "data file.h5ad"  # spaces are percent-encoded in the URI
    src.parent.mkdir()
    src.write_bytes(BODY)
    url = src.as_uri()
    assert "%20" in url
    dest = tmp_path / "out" / "copy.h5ad"
    record = download(url, dest, sha256=SHA256, md5=MD5, size=len(BODY))
    assert record == {"url": url, "path": str(dest), "size": len(BODY), "sha256": SHA256}
    assert dest.read_bytes() == BODY


def test_file_url_mismatch_and_missing(tmp_path: Path, sleeps: list[float]) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(BODY)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ScfmDownloadError, match="md5 mismatch"):
        download(src.as_uri(), out / "a.bin", md5="0" * 32)
    _assert_nothing_left(out / "a.bin")
    missing = (tmp_path / "nope.bin").as_uri()
    with pytest.raises(ScfmDownloadError, match="no such file") as info:
        download(missing, out / "b.bin")
    assert str(info.value).startswith(missing)
    assert sleeps == []
    _assert_nothing_left(out / "b.bin")


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(ScfmDownloadError, match="unsupported URL scheme 'ftp'"):
        download("ftp://example.org/x.h5ad", tmp_path / "x.h5ad")
    assert list(tmp_path.iterdir()) == []


def test_hash_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(BODY * 12)  # more than one 1 MiB read
    assert hash_file(p) == hashlib.sha256(BODY * 12).hexdigest()
    assert hash_file(p, "md5") == hashlib.md5(BODY * 12).hexdigest()


def test_fetch_json(http_server: Any, tmp_path: Path, sleeps: list[float]) -> None:
    doc = {"versions": [1, 2], "name": "x"}
    url = http_server.add(
        "api.json", json.dumps(doc), content_type="application/json", fail_times=1
    )
    assert fetch_json(url) == doc
    assert http_server.routes["/api.json"].hits == 2 and sleeps == [1.0]
    p = tmp_path / "doc.json"
    p.write_text(json.dumps(doc))
    assert fetch_json(p.as_uri()) == doc
    bad = http_server.add("bad.json", "<html>")
    with pytest.raises(ScfmDownloadError, match="response is not JSON"):
        fetch_json(bad)
    with pytest.raises(ScfmDownloadError, match="HTTP 404"):
        fetch_json(http_server.url("none.json"))
