"""Registry test helpers: a snakemake-like job object, files, the offline guard's code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Loaded by every Python process started with this directory on PYTHONPATH (the registry
# workers): any connection to a non-loopback address is logged and refused, so a test fails
# if lamindb tries to reach its hub or anything else on the network.
GUARD = """
import os, socket
_LOG = os.environ.get("SCFM_TEST_NET_LOG")
_connect, _gai = socket.socket.connect, socket.getaddrinfo

def _refuse(what):
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(what + "\\n")
    raise OSError(101, "network blocked by the scfm registry tests: " + what)

def _is_local(host):
    return host in (None, "", "localhost") or str(host).startswith(("127.", "::1"))

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        _refuse(f"connect {address}")
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        _refuse(f"getaddrinfo {host}")
    return _gai(host, *args, **kwargs)

socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
"""


@dataclass
class Job:
    """The parts of Snakemake's ``snakemake`` object that ``register_outputs`` reads."""

    rule: str
    output: list[str]
    input: list[str] = field(default_factory=list)
    wildcards: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def write(path: Path, text: str) -> Path:
    """Write a small file (creating its directory) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
