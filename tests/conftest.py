"""Shared fixtures: a local HTTP server, paths to ../shared/data, small AnnData builders."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip: a user's clone has no ../shared (CI always has it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (only CI and developer machines have ../shared)")
    return SHARED_DATA


@dataclass
class Route:
    body: bytes
    status: int = 200
    content_type: str = "application/octet-stream"
    truncate_at: int | None = None  # announce the full length, send this many bytes, hang up
    fail_times: int = 0  # answer 503 this many times first
    # stall: send the headers and this many body bytes, then nothing (connection left open);
    # negative: accept the request and never answer at all
    stall_after: int | None = None
    stall_times: int | None = None  # stall the first N requests only (None: all of them)
    hits: int = 0
    stalls: int = 0


@dataclass
class LocalServer:
    """An HTTP server on 127.0.0.1 whose routes a test sets up (body, status, misbehaviour)."""

    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)  # ends stalls (teardown)

    def add(self, path: str, body: bytes | str, **kw: object) -> str:
        if isinstance(body, str):
            body = body.encode()
        self.routes["/" + path.lstrip("/")] = Route(body=body, **kw)  # type: ignore[arg-type]
        return self.url(path)

    def add_file(self, path: str, file: Path, **kw: object) -> str:
        return self.add(path, Path(file).read_bytes(), **kw)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"


def _handler(server_state: LocalServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            route = server_state.routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404, "Not Found")
                return
            route.hits += 1
            if route.hits <= route.fail_times:
                self.send_error(503, "Service Unavailable")
                return
            if route.status != 200:
                self.send_error(route.status)
                return
            stall = route.stall_after is not None and (
                route.stall_times is None or route.stalls < route.stall_times
            )
            if stall:
                route.stalls += 1
            if stall and route.stall_after < 0:
                self._stall()
                return
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if stall:
                self.wfile.write(route.body[: route.stall_after])
                self.wfile.flush()
                self._stall()
                return
            if route.truncate_at is not None:
                self.wfile.write(route.body[: route.truncate_at])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(route.body)

        def _stall(self) -> None:
            # keep the connection open, silent, until the client gives up or the test ends
            server_state.release.wait(timeout=60)
            self.close_connection = True

    return Handler


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    """Start a threaded HTTP server on 127.0.0.1 (random port) for the test; stop it after."""
    state = LocalServer(base_url="")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
