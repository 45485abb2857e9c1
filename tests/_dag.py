"""One small DAG with every long rule, run the same way by the determinism and fault tests.

The config covers download (a ``url`` dataset served over HTTP by :class:`ThrottledServer`,
slow enough to be caught mid-transfer), standardize, QC, sharding, deterministic CPU training
with checkpoints, embedding, the benchmark tables, and scATAC genome binning (simulated
fragments). :func:`reference_run` runs it once per test session without interruption; the
tests compare other runs of the same config against it, file by file.
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# every `created` field is this time, so two runs can be compared byte for byte
ENV = {"SOURCE_DATE_EPOCH": "1767225600"}
RUN = "t"


class ThrottledServer:
    """An HTTP server on 127.0.0.1 that sends one file in small, slow chunks."""

    def __init__(self, body: bytes, *, chunk: int = 16384, pause: float = 0.004) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                try:
                    for i in range(0, len(server.body), server.chunk):
                        self.wfile.write(server.body[i : i + server.chunk])
                        time.sleep(server.pause)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed: that is the point

            def log_message(self, *args: Any) -> None:
                pass

        self.body, self.chunk, self.pause = body, chunk, pause
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/rna_counts.h5ad"


_SESSION: dict[str, Any] = {}


def server(tmp_path_factory: pytest.TempPathFactory) -> ThrottledServer:
    """The session's server of the ``rna`` dataset (one URL, so every run has one config)."""
    if "server" not in _SESSION:
        from scfm.io.simulate import simulate_counts

        adata = simulate_counts(n_cells=600, n_genes=800, seed=3)
        del adata.uns["simulation"]["hierarchy"]
        path = tmp_path_factory.mktemp("served") / "rna_counts.h5ad"
        adata.write_h5ad(path)
        _SESSION["server"] = ThrottledServer(path.read_bytes())
    return _SESSION["server"]


def config(url: str, body: bytes) -> dict[str, Any]:
    return {
        "datasets": {
            "rna": {
                "source": "url",
                "url": url,
                "sha256": hashlib.sha256(body).hexdigest(),
                "obs_map": {"cell_type": "cell_type", "batch": "batch", "donor": "donor"},
                "genes": {"id_type": "as_is", "symbol_column": "gene_symbol"},
                "qc": {"min_genes": 20, "max_pct_mito": 50},
            },
            "sim_atac": {
                "source": "demo",
                "demo": "simulated_atac",
                "modality": "atac",
                "genome": "sim",
                "features": "tiles",
                "atac_simulation": {"n_cells": 300, "n_types": 4, "n_batches": 2},
            },
        },
        "references": {
            "human": {
                "genes": {
                    "package": "celltypist/data/samples/GENCODEv44_Gene_id2name.csv",
                    "format": "csv",
                }
            },
            "sim": {"genome": {"simulated": {"seed": 0, "n_chroms": 2}}},
        },
        "qc": {"rna": {"doublets": "none"}, "atac": {"min_fragments": 200, "min_tsse": 1}},
        "corpora": {
            "demo": {"datasets": ["rna"], "split": {"by": "donor", "val": 0.2, "test": 0.2}}
        },
        "tokenizers": {"binned": {"kind": "binned", "max_len": 200}},
        "models": {"tiny": {"preset": "tiny", "d_model": 32, "n_heads": 2}},
        "runs": {
            RUN: {
                "corpus": "demo",
                "tokenizer": "binned",
                "model": "tiny",
                "max_steps": 24,
                "batch_size": 16,
                "objectives": {"mse": 1.0},
                "deterministic": True,
                "log_every": 2,
                "val_every": 4,
                "val_batches": 2,
                "checkpoint_every": 4,
                "keep_checkpoints": 2,
                "stats_batches": 2,
            }
        },
        "benchmarks": {
            "s": {
                "dataset": "rna",
                "split_key": "donor",
                "methods": ["pca", "random", RUN],
                "scgraph": {"min_batch_cells": 30},
            }
        },
    }


def workdir(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the workflow with the shared config, as a lab would have it."""
    srv = server(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)
    for item in ("Snakefile", "workflow", "scripts", "envs", "profiles", "config"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config(srv.url, srv.body)))
    return root


def snakemake_cmd(*args: str) -> list[str]:
    return [str(BIN / "snakemake"), "--profile", "profiles/local", "--cores", "2", *args]


def run_env() -> dict[str, str]:
    return {**os.environ, **ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake(wd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        snakemake_cmd(*args), cwd=wd, capture_output=True, text=True, env=run_env(), timeout=900
    )


def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (once per session)."""
    if "reference" not in _SESSION:
        wd = workdir(tmp_path_factory.mktemp("reference"), tmp_path_factory)
        done = snakemake(wd)
        assert done.returncode == 0, done.stderr[-4000:]
        _SESSION["reference"] = wd
    return _SESSION["reference"]


# --------------------------------------------------------------------------- comparing runs

# columns of metrics.tsv that measure the machine (speed), not the training
SPEED_COLUMNS = ("tokens_per_s", "cells_per_s", "mfu")


def outputs(wd: Path) -> list[str]:
    """Every file the pipeline made that looks finished (hidden names are temporaries)."""
    found = []
    for top in ("results", "resources"):
        for path in (wd / top).rglob("*"):
            rel = path.relative_to(wd)
            if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                found.append(str(rel))
    return sorted(found)


def hidden(wd: Path) -> list[str]:
    """Hidden (temporary) paths under results/ and resources/."""
    return sorted(
        str(p.relative_to(wd)) for top in ("results", "resources") for p in (wd / top).rglob(".*")
    )


def metrics_rows(path: Path) -> list[dict[str, str]]:
    """metrics.tsv without the speed columns."""
    rows = csv.DictReader(io.StringIO(path.read_text()), delimiter="\t")
    return [{k: v for k, v in r.items() if k not in SPEED_COLUMNS} for r in rows]


def checkpoint_tensors(path: Path) -> dict[str, Any]:
    state = torch.load(path, weights_only=True, map_location="cpu")
    return {k: state[k] for k in ("model", "heads", "optimizer", "schedule", "loader", "rng")}


def same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def differences(wd: Path, ref: Path, files: list[str], *, prefix_ok: bool = False) -> list[str]:
    """The files of ``wd`` that differ from the reference's, each with the reason.

    Byte for byte, except: metrics.tsv is compared without its speed columns (with
    ``prefix_ok``, a run still in progress may have fewer rows); a checkpoint (whose metrics
    rows carry those speed columns) by its weights, optimizer, schedule, loader and RNG state,
    and its ``.json`` note (size, sha256 of that file) not at all.
    """
    bad = []
    for rel in files:
        mine, theirs = wd / rel, ref / rel
        if not theirs.is_file() and prefix_ok and "/checkpoints/" in rel:
            continue  # an earlier checkpoint, which the finished run has pruned by now
        if not theirs.is_file():
            bad.append(f"{rel}: not made by the uninterrupted run")
        elif rel.endswith("metrics.tsv"):
            a, b = metrics_rows(mine), metrics_rows(theirs)
            if a != (b[: len(a)] if prefix_ok else b):
                bad.append(f"{rel}: rows differ from the uninterrupted run's")
        elif "/checkpoints/" in rel and rel.endswith(".json"):
            continue
        elif "/checkpoints/" in rel and rel.endswith(".pt"):
            a, b = checkpoint_tensors(mine), checkpoint_tensors(theirs)
            if keys := [k for k in a if not same_state(a[k], b[k])]:
                bad.append(f"{rel}: training state differs in {keys}")
        elif mine.read_bytes() != theirs.read_bytes():
            bad.append(f"{rel}: bytes differ")
    return bad
