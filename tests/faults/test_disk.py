"""A full disk: each long writer fails with an error naming its output, and leaves nothing behind.

The writers run in a child process set up like a pipeline job (``setup_logging`` with a log
file), writing onto a 2 MiB tmpfs that a ballast file has filled up to ``FREE`` bytes, so every
output (each > 1 MiB) runs out of space mid-write. Needs ``mount -t tmpfs`` (root, as in CI);
as another user run the file inside ``unshare -rm``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _simcorpus import simulated

from scfm.config import validate_config
from scfm.io.sources import fetch_dataset
from scfm.io.standardize import standardize
from scfm.tokenize import build_vocab, write_vocab

pytestmark = pytest.mark.slow  # ~7 s: four child processes that import the stack

REPO = Path(__file__).resolve().parents[2]
FREE = 192 * 1024  # bytes left free on the tmpfs when a writer starts
N_CELLS, N_GENES = 2000, 500

# Each writer as a pipeline job would call it; {inp} holds the inputs, {out} is on the full disk.
WRITERS = {
    "standardize": (
        "std.h5ad",
        """
        from scfm.io.standardize import standardize
        standardize(inp / "raw" / "manifest.json", out / "std.h5ad", dataset="sim",
                    cfg=cfg["datasets"]["sim"], chunk_cells=256)
        """,
    ),
    "qc": (
        "qc.h5ad",
        """
        from scfm.qc import qc_rna
        qc_rna(inp / "std.h5ad", out / "qc.h5ad", out / "qc.metrics.tsv", out / "qc.png",
               params=cfg["qc"]["rna"], chunk_cells=256)
        """,
    ),
    "shard": (
        "shards",
        """
        from scfm.shard import shard_dataset
        shard_dataset(inp / "qc.h5ad", out / "shards", dataset="a",
                      vocab_path=inp / "vocab.tsv", tokenizer={"kind": "binned"},
                      split={"by": "cell", "val": 0.1, "test": 0.1, "seed": 0},
                      cells_per_shard=250, chunk_cells=256)
        """,
    ),
    "download": (
        "raw.h5ad",
        """
        from scfm.io.download import download
        download((inp / "std.h5ad").as_uri(), out / "raw.h5ad")
        """,
    ),
}

DRIVER = """
import json, sys
from pathlib import Path
from scfm.logs import setup_logging
inp, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = json.loads((inp / "cfg.json").read_text())
setup_logging(sys.argv[3])
"""


def _mount_tmpfs(where: Path) -> None:
    where.mkdir(parents=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount(8): cannot make a small tmpfs to fill")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs ({res.stderr.strip() or res.returncode}; needs root): "
            "run as root, as CI does, or inside `unshare -rm .venv/bin/pytest "
            "tests/faults/test_disk.py`"
        )


def _fill(disk: Path, free: int) -> None:
    """Write a ballast file so that ``free`` bytes stay available on ``disk``."""
    st = os.statvfs(disk)
    with (disk / "ballast").open("wb") as fh:
        fh.write(b"\0" * (st.f_bavail * st.f_frsize - free))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Run every writer once onto the full disk; collect exit code, log and output listing."""
    root = tmp_path_factory.mktemp("disk")
    inp = root / "inputs"  # on the normal file system
    cfg = validate_config(
        {
            "datasets": {
                "sim": {
                    "source": "demo",
                    "demo": "simulated",
                    "simulation": {"n_cells": N_CELLS, "n_genes": N_GENES},
                }
            }
        }
    )
    fetch_dataset("sim", cfg["datasets"]["sim"], inp / "raw")
    standardize(
        inp / "raw" / "manifest.json", inp / "std.h5ad", dataset="sim", cfg=cfg["datasets"]["sim"]
    )
    simulated(N_CELLS, N_GENES).write_h5ad(inp / "qc.h5ad")  # QC'd input of the shard job
    write_vocab(build_vocab({"a": inp / "qc.h5ad"}, min_cells=1), inp / "vocab.tsv")
    (inp / "cfg.json").write_text(json.dumps(cfg))
    assert (inp / "std.h5ad").stat().st_size > 4 * FREE  # every output is bigger than the room

    disk = root / "disk"  # logs stay on the normal file system, as logs/ would
    _mount_tmpfs(disk)
    results = {}
    try:
        for name, (final, code) in WRITERS.items():
            out = disk / name
            out.mkdir()
            _fill(disk, FREE)
            t0 = time.monotonic()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    DRIVER + textwrap.dedent(code),
                    str(inp),
                    str(out),
                    str(root / f"{name}.log"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=REPO,
            )
            results[name] = {
                "final": out / final,
                "returncode": proc.returncode,
                "stderr": proc.stderr,
                "log": (root / f"{name}.log").read_text(),
                "listing": sorted(p.name for p in out.iterdir()),  # hidden entries included
                "seconds": time.monotonic() - t0,
            }
            (disk / "ballast").unlink()
    finally:
        res = subprocess.run(["umount", str(disk)], capture_output=True)
        if res.returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    return results


@pytest.mark.parametrize("writer", list(WRITERS))
def test_disk_full_leaves_no_partial_output(runs: dict[str, dict], writer: str) -> None:
    r = runs[writer]
    # a clean failure (exit 1 from the excepthook), not a success and not a crash (SIGSEGV)
    assert r["returncode"] == 1, r["stderr"][-3000:]
    assert r["listing"] == [], f"{writer} left {r['listing']} in {r['final'].parent}"


@pytest.mark.parametrize(
    "writer",
    [
        "standardize",
        "qc",
        "shard",
        "download",
    ],
)
def test_disk_full_error_names_the_output(runs: dict[str, dict], writer: str) -> None:
    r = runs[writer]
    final = str(r["final"])
    critical = [line for line in r["log"].splitlines() if " CRITICAL " in line]
    assert critical, r["log"][-3000:]
    line = critical[0]
    assert "ScfmDiskFullError: No space left on device while writing " + final in line, line
    assert " bytes free there" in line, line
    assert line in r["stderr"], "the error also goes to stderr"
