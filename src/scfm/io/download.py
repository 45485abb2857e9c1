"""HTTP(S) downloads that verify what they fetched and never leave a partial file behind.

requests does the transfer; this module adds what a pipeline needs on top: hashing while
streaming (files reach tens of GB), size/checksum verification, retries with back-off on
transient failures only, and an atomic rename so a killed job leaves no file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import requests
from tqdm.auto import tqdm

from scfm.atomic import atomic_path
from scfm.errors import ScfmDownloadError, disk_full_error
from scfm.paths import input_problem
from scfm.redact import redact_url

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "scfm (single-cell foundation model pipeline)"


class _Transient(Exception):
    """A failure worth retrying (connection dropped, 5xx, 429, truncated body)."""


def hash_file(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60,
    backoff: float = 1.0,
) -> dict[str, Any]:
    """Download ``url`` to ``dest`` and verify it.

    Parameters
    ----------
    url
        ``http(s)://`` or ``file://`` URL.
    dest
        Final path; written only once the transfer is complete and verified.
    sha256, md5, size
        Expected checksum(s) and size in bytes; any that are given are checked.
    retries
        Attempts for transient failures (dropped connections, truncated bodies, HTTP 5xx/429).
        Other HTTP errors and checksum mismatches fail at once.
    timeout
        Seconds without data before an attempt fails.
    backoff
        Seconds before the second attempt; doubled for each further one.

    Returns
    -------
    dict
        ``url``, ``path``, ``size`` and ``sha256`` of the verified file.
    """
    dest = Path(dest)

    def attempt() -> dict[str, Any]:
        try:
            with atomic_path(dest) as tmp:
                digests = _fetch(url, tmp, timeout=timeout)
                got_size = tmp.stat().st_size
                _verify(url, got_size, digests, sha256=sha256, md5=md5, size=size)
        except OSError as exc:
            if full := disk_full_error(exc, dest):
                raise full from exc
            raise
        log.info("downloaded %s -> %s (%d bytes)", redact_url(url), dest, got_size)
        return {
            "url": redact_url(url),
            "path": str(dest),
            "size": got_size,
            "sha256": digests["sha256"],
        }

    return _retrying(url, attempt, retries=retries, backoff=backoff)


def download_configured(url: str, dest: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """:func:`download` with the checks and retry settings of a ``datasets.<name>`` block."""
    return download(
        url,
        dest,
        sha256=cfg.get("sha256"),
        size=cfg.get("size"),
        retries=cfg.get("retries", 3),
        timeout=cfg.get("timeout", 60),
    )


def _retrying(url: str, attempt: Callable[[], Any], *, retries: int, backoff: float) -> Any:
    """Call ``attempt`` until it succeeds; only transient failures are retried."""
    last: Exception | None = None
    for n in range(1, retries + 1):
        try:
            return attempt()
        except (requests.ConnectionError, requests.Timeout, _Transient) as exc:
            last = exc
            if n < retries:
                wait = backoff * 2 ** (n - 1)
                log.warning(
                    "%s (try %d of %d); retry in %.1fs",
                    redact_url(f"{url}: {exc}"),
                    n,
                    retries,
                    wait,
                )
                time.sleep(wait)
    raise ScfmDownloadError(redact_url(f"{url}: giving up after {retries} attempt(s): {last}"))


def _verify(
    url: str,
    got_size: int,
    digests: dict[str, str],
    *,
    sha256: str | None,
    md5: str | None,
    size: int | None,
) -> None:
    if size is not None and got_size != size:
        raise ScfmDownloadError(
            f"{redact_url(url)}: size mismatch: got {got_size} bytes; expected {size}"
        )
    for name, expected in (("sha256", sha256), ("md5", md5)):
        if expected and digests[name] != expected.lower():
            raise ScfmDownloadError(
                f"{redact_url(url)}: {name} mismatch: got {digests[name]}; "
                f"expected {expected.lower()} "
                "(the file changed upstream, or the configured checksum is wrong)"
            )


def _fetch(url: str, out: Path, *, timeout: float) -> dict[str, str]:
    hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    parsed = urlparse(url)
    if parsed.scheme == "file":
        src = Path(unquote(parsed.path))
        problem = input_problem(src)
        if problem is not None:  # a FIFO or device would block or never end
            what = "no such file" if problem == "does not exist" else problem
            raise ScfmDownloadError(f"{redact_url(url)}: {what}")
        with src.open("rb") as fin, out.open("wb") as fout:
            while block := fin.read(CHUNK):
                fout.write(block)
                for h in hashes.values():
                    h.update(block)
        return {k: h.hexdigest() for k, h in hashes.items()}
    if parsed.scheme not in ("http", "https"):
        raise ScfmDownloadError(
            f"{redact_url(url)}: unsupported URL scheme {parsed.scheme!r}; expected http(s) or file"
        )
    try:
        resp = requests.get(url, stream=True, timeout=timeout, headers={"User-Agent": USER_AGENT})
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    with resp:
        _raise_for_status(url, resp)
        total = int(resp.headers.get("Content-Length", 0)) or None
        n = 0
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=Path(parsed.path).name,
            disable=not sys.stderr.isatty(),
            leave=False,
        )
        try:
            with out.open("wb") as fout:
                for block in resp.iter_content(CHUNK):
                    fout.write(block)
                    n += len(block)
                    bar.update(len(block))
                    for h in hashes.values():
                        h.update(block)
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            raise _Transient(f"transfer interrupted after {n} bytes: {exc}") from exc
        finally:
            bar.close()
        if total is not None and n != total and "Content-Encoding" not in resp.headers:
            raise _Transient(f"server closed the connection after {n} of {total} bytes")
    return {k: h.hexdigest() for k, h in hashes.items()}


def _raise_for_status(url: str, resp: requests.Response) -> None:
    if resp.status_code < 400:
        return
    msg = f"{redact_url(url)}: HTTP {resp.status_code} {resp.reason}"
    if resp.status_code >= 500 or resp.status_code == 429:
        raise _Transient(msg)
    raise ScfmDownloadError(msg)


def fetch_json(url: str, *, retries: int = 3, timeout: float = 60, backoff: float = 1.0) -> Any:
    """GET a JSON document (API response, manifest) with the same retry policy as downloads."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        try:
            return json.loads(Path(unquote(parsed.path)).read_text())
        except (OSError, ValueError) as exc:
            raise ScfmDownloadError(f"{redact_url(url)}: cannot read JSON: {exc}") from exc

    def attempt() -> Any:
        resp = requests.get(url, timeout=timeout, headers={"User-Agent": USER_AGENT})
        _raise_for_status(url, resp)
        try:
            return resp.json()
        except ValueError as exc:
            raise ScfmDownloadError(f"{redact_url(url)}: response is not JSON: {exc}") from exc

    return _retrying(url, attempt, retries=retries, backoff=backoff)
