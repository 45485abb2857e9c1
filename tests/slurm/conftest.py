"""A real one-node Slurm cluster for the tests in this directory (tests/slurm/cluster.sh).

Session-scoped: installed with apt-get when missing (root only), started without systemd in a
temporary directory, stopped by PID at the end. Without root or apt-get (a user's laptop) the
tests skip and say why; CI runs as root and always runs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "cluster.sh"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch")


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF and the SCFM_SLURM_* of the profile

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, **kw)


def _free_port_base(n: int = 4) -> int:
    """A base port with n free ports after it on 127.0.0.1."""
    for base in range(26817, 40000, 16):
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports for the test cluster")


def _skip_reason() -> str | None:
    if all(shutil.which(d) for d in DAEMONS):
        return None if os.geteuid() == 0 else "the Slurm test cluster must be started as root"
    if os.geteuid() != 0:
        return "Slurm is not installed and installing it needs root (CI runs as root)"
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if reason := _skip_reason():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SCFM_SLURM_PORT_BASE": str(_free_port_base())}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(root)], env=env, capture_output=True, text=True
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        env.update(
            SLURM_CONF=str(root / "etc" / "slurm.conf"),
            SCFM_SLURM_ACCOUNT="scfm",
            SCFM_SLURM_PARTITION="cpu",
            SCFM_SLURM_GPU_PARTITION="gpu",
        )
        yield Cluster(root, env)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(root)], env=env, capture_output=True)
