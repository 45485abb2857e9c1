"""Harness shared by the benchmark scripts: child processes, peak RSS, machine info, reports.

Every benchmark runs each of its steps in a fresh Python interpreter: the driver calls
:func:`run_step`, which re-invokes the benchmark script by file path with
``--child-step STEP --child-spec JSON`` (see :func:`arg_parser`); the child's ``main``
hands the step to :func:`child_dispatch` -> :func:`run_child`, which times it and writes its
result, with the child's own peak RSS (:func:`peak_rss`), as JSON for the driver to read.

Only the standard library is imported at module level: the children of the peer steps run in
other virtualenvs (scGPT, scvi-tools) and import this module too.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE_PACKAGES = ("scfm", "anndata", "scanpy", "numpy", "scipy", "h5py", "pandas")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

Step = Callable[[dict[str, Any]], dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Sizes and memory
# --------------------------------------------------------------------------------------------


def gib(n_bytes: float) -> float:
    """Bytes to GiB."""
    return n_bytes / 2**30


def file_size(path: str | Path) -> int:
    """Size in bytes, 0 if missing."""
    p = Path(path)
    return p.stat().st_size if p.exists() else 0


def h5ad_nnz(path: str | Path) -> int:
    """Stored nonzeros of ``X`` in an h5ad (CSR or CSC)."""
    import h5py

    with h5py.File(path, "r") as f:
        return int(f["X/data"].shape[0])


def peak_rss() -> int:
    """Peak RSS of this process in bytes: ``VmHWM`` from ``/proc/self/status`` on Linux.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark over ``fork``+``exec`` into the
    child's ``ru_maxrss`` (and ``RUSAGE_CHILDREN`` is the maximum over all children so far), so
    a driver that just generated a large input would inflate every step. ``VmHWM`` belongs to
    the address space that ``exec`` created.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def synthetic_obs(n_cells: int, dataset: str = "synthetic") -> Any:
    """QC'd-style obs: ``cell_type`` (20), ``batch`` (8, contiguous), ``donor`` (16) and
    ``dataset``, indexed by ``cell00000000``, ``cell00000001``, ..."""
    import numpy as np
    import pandas as pd

    i = np.arange(n_cells)
    batch = (i * 8) // max(n_cells, 1)
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in (i * 7919) % 20]),
            "batch": pd.Categorical([f"b{b}" for b in batch]),
            "donor": pd.Categorical([f"d{2 * b + (j % 2)}" for j, b in enumerate(batch)]),
            "dataset": pd.Categorical([dataset] * n_cells),
        },
        index=pd.Index([f"cell{j:08d}" for j in i]),
    )


# --------------------------------------------------------------------------------------------
# Machine and versions
# --------------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def git_commit() -> str:
    """Short commit of the repository, marked when tracked files have uncommitted changes."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (+ uncommitted changes)" if dirty else "")


def package_versions(packages: Iterable[str], skip_missing: bool = False) -> dict[str, str]:
    """Installed version per package; a missing package raises unless ``skip_missing``."""
    versions = {}
    for p in packages:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            if not skip_missing:
                raise
    return versions


def machine_info(packages: Iterable[str] = BASE_PACKAGES) -> dict[str, Any]:
    """Date, cores, memory, Python and package versions, git commit."""
    import psutil

    vm = psutil.virtual_memory()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "mem_total_gib": round(gib(vm.total), 1),
        "mem_available_gib": round(gib(vm.available), 1),
        "python": platform.python_version(),
        "versions": package_versions(packages),
        "commit": git_commit(),
    }


def print_machine(m: Mapping[str, Any]) -> None:
    """The machine (from :func:`machine_info`) and package versions, two lines."""
    print(
        f"machine: {m['nproc']} cores ({m['cpu']}), {m['mem_total_gib']} GiB RAM "
        f"({m['mem_available_gib']} GiB available), Python {m['python']}, commit {m['commit']}, "
        f"{m['date']}"
    )
    print(versions_line(m["versions"]))


def versions_line(versions: Mapping[str, str]) -> str:
    """``versions: a 1.0, b 2.0``."""
    return "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())


def report_args(args: Any) -> dict[str, Any]:
    """The command-line options for a report: no ``--child-*``, paths as strings."""
    return {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if not k.startswith("child")
    }


# --------------------------------------------------------------------------------------------
# Child side: one step in a fresh interpreter
# --------------------------------------------------------------------------------------------


def arg_parser(doc: str, steps: Collection[str]) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc``, with the hidden
    ``--child-step``/``--child-spec`` options that :func:`run_step` passes to the child."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--child-step", choices=sorted(steps), help=argparse.SUPPRESS)
    ap.add_argument("--child-spec", help=argparse.SUPPRESS)
    return ap


def child_dispatch(args: Any, run: Callable[[str, dict[str, Any]], None]) -> bool:
    """If ``args`` ask for a child step, run it with ``run(step, spec)``; return whether it did."""
    if not args.child_step:
        return False
    run(args.child_step, json.loads(args.child_spec))
    return True


def run_child(
    step: str,
    spec: dict[str, Any],
    steps: Mapping[str, Step],
    baseline: Step,
    *,
    no_baseline: Collection[str] = (),
    ignore_warnings: type[Warning] = FutureWarning,
    setup: Callable[[], None] | None = None,
    seconds_key: str = "seconds_step",
    top: int = 25,
    top_cumulative: int = 0,
    loadavg: bool = False,
) -> None:
    """Inside the child: run ``steps[step](spec)`` and write its result to ``spec['result']``.

    Before the timer: logging at WARNING, ``ignore_warnings`` silenced, ``baseline(spec)``
    (the imports every step shares, so that they are not timed; skipped for the steps in
    ``no_baseline``, e.g. those that run in a peer's interpreter without scfm), then
    ``setup()`` if given. The result gets the step's time under ``seconds_key``, ``peak_rss``
    and, with ``loadavg``, ``loadavg_1min`` [before, after]. With ``spec['profile']`` the step
    runs under cProfile: the top ``top`` functions by own time (and ``top_cumulative`` by
    cumulative time) go into ``result['profile']``, the stats into
    ``<work>/profile_<label>.pstats``.
    """
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore", ignore_warnings)
    if step not in no_baseline:
        baseline(spec)
    if setup:
        setup()
    profiler = cProfile.Profile() if spec.get("profile") else None
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    result = steps[step](spec)
    if profiler:
        profiler.disable()
    result[seconds_key] = time.perf_counter() - t0
    result["peak_rss"] = peak_rss()
    if loadavg:
        result["loadavg_1min"] = [load0, os.getloadavg()[0]]
    if profiler:
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf).sort_stats("tottime")
        stats.print_stats(top)
        if top_cumulative:
            buf.write("\n--- by cumulative time ---\n")
            stats.sort_stats("cumulative").print_stats(top_cumulative)
        stats.dump_stats(Path(spec["work"]) / f"profile_{spec['label']}.pstats")
        result["profile"] = buf.getvalue()
    Path(spec["result"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------


def run_step(
    script: str | Path,
    step: str,
    label: str,
    spec: dict[str, Any],
    *,
    work: Path,
    python: str | None = None,
    cpu: int | None = None,
    one_thread: bool = False,
    env: Mapping[str, str] | None = None,
    announce: str = "  {label} ...",
    exit_on_failure: bool = True,
) -> tuple[dict[str, Any], dict[str, Any], float] | None:
    """Run ``step`` of ``script`` in a fresh interpreter; return (result, spec, wall seconds).

    The child is ``<python> <script> --child-step STEP --child-spec JSON`` (``python``
    defaults to this interpreter), under ``taskset -c <cpu>`` when ``cpu`` is given and
    ``taskset`` exists, with :data:`THREAD_VARS` set to 1 when ``one_thread``, plus ``env``;
    its output goes to ``<work>/<label>.log``. ``spec`` is extended with ``label``, ``work``
    and ``result`` (``<work>/<label>.json``, which the child writes); that spec is returned
    with the child's result. Prints ``announce`` (formatted with ``label``) without a newline;
    the caller finishes the line. A failed child prints `` failed`` and exits with the end of
    its log, or, without ``exit_on_failure``, prints the end of its log and returns None.
    """
    spec = {**spec, "label": label, "work": str(work), "result": str(work / f"{label}.json")}
    Path(spec["result"]).unlink(missing_ok=True)
    cmd = [python or sys.executable, str(Path(script).resolve()), "--child-step", step]
    cmd += ["--child-spec", json.dumps(spec)]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    threads = dict.fromkeys(THREAD_VARS, "1") if one_thread else {}
    child_env = {**os.environ, **threads, **(env or {})}
    log_path = work / f"{label}.log"
    print(announce.format(label=label), end="", flush=True)
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        if exit_on_failure:
            print(" failed")
            sys.exit(
                f"step {label} failed (exit {proc.returncode}); see {log_path}:\n"
                + log_path.read_text()[-3000:]
            )
        print(f" failed (exit {proc.returncode}); see {log_path}")
        print(log_path.read_text()[-2000:])
        return None
    return json.loads(Path(spec["result"]).read_text()), spec, wall


# --------------------------------------------------------------------------------------------
# Report helpers
# --------------------------------------------------------------------------------------------


def save_report(report: Mapping[str, Any], stem: Path, markdown: str) -> None:
    """Write ``<stem>.json`` (the whole report) and ``<stem>.md`` (its tables); say where."""
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")
    print(f"\nresults: {stem}.json / .md")


def md_row(cells: Iterable[Any]) -> str:
    """One Markdown table row: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_header(columns: Sequence[str], align: str) -> list[str]:
    """Header and rule of a Markdown table; ``align`` has one ``l`` or ``r`` per column."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return [md_row(columns), rule]


def print_profiles(results: Iterable[dict[str, Any]], title: str = " (top by own time)") -> None:
    """The cProfile text of every result that has one."""
    for r in results:
        if r.get("profile"):
            print(f"\n--- profile {r['label']}{title} ---\n{r['profile']}")


def one_torch_thread() -> None:
    """Child set-up for torch steps: one intra-op thread, like the pinned core."""
    import torch

    torch.set_num_threads(1)
