"""Benchmark: scfm ``CorpusLoader`` throughput on one core, beside anndata and scvi-tools (issue 3).

The question: how many cells per second does the training loader deliver as tokenized, masked,
padded batches of 64 cells (max_len 1200) on one core, against a goal of 30k cells/s, and how
does that compare with reading the same cells as raw count rows through anndata's backed mode
and through scvi-tools' ``AnnDataLoader``?

Input (generated once, cached under ``benchmarks/out/``): a synthetic QC'd-style h5ad (float32
integer counts in CSR, uncompressed; ``var.gene_symbol``/``var.n_cells``; obs ``cell_type``,
``batch``, ``donor``, ``dataset``), written chunk by chunk with ``CsrH5adWriter`` from
``bench_standardize_qc``'s generator (Zipf-like gene popularity, genes per cell lognormal); its
vocabulary (``build_vocab`` + ``write_vocab``) and binned shards (``shard_dataset``, n_bins 51,
max_len 1200, every cell in ``train``) + corpus manifest (``merge_manifests``).

Steps, each in a fresh Python process pinned to one core (``taskset -c <cpu>``,
``OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS=1``, ``torch.set_num_threads(1)``); peak RSS is the child's
``VmHWM`` (helpers in ``_harness.py``); imports and opening are not timed:

* ``baseline``        imports only (scfm loader, anndata, torch);
* ``scfm_longest``    ``CorpusLoader(num_workers=0)``, shuffle, mask 0.15, batch 64, max_len 1200,
                      ``pad_to="longest"``, ``--epochs`` full epochs, each epoch timed;
* ``scfm_max_len``    the same with ``pad_to="max_len"`` (every batch [64, 1201]: <cls> + 1200);
* ``peer_backed``     ``anndata.read_h5ad(backed="r")``, a random permutation of the cells cut in
                      64-cell batches, indices sorted per batch, ``adata.X[idx]`` -> scipy CSR
                      (no densifying), one epoch;
* ``peer_scvi``       scvi-tools ``AnnDataLoader`` (batch 64, shuffle) over the same h5ad read
                      whole into memory (as it requires), default settings (dense float32 ``X``
                      tensors per batch), one epoch; runs in a separate virtualenv
                      (``--scvi-python``); skipped when that interpreter is missing.

The scfm and peer steps run in ``--rounds`` interleaved rounds (default 3), so that a burst of
load from other jobs hits one round of every step; the table shows each step's median round.
The 1-minute load average is recorded around every step. ``--skip-peers --profile`` cProfiles
the scfm steps alone.

The peers deliver raw count rows (all nonzeros of each cell, no tokenization, masking or
padding); scfm delivers model-ready tensors. Quick check (~1 min)::

    .venv/bin/python benchmarks/bench_loader.py --n-cells 20000 --skip-scvi
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness  # noqa: E402
from _harness import file_size, gib  # noqa: E402
from bench_standardize_qc import gene_cdf, synthetic_chunk, synthetic_var  # noqa: E402

DEFAULT_OUT = HERE / "out"
DATASET = "synthetic"
GOAL = 30_000  # cells/s per core, the goal
TOKENIZER = {"kind": "binned", "n_bins": 51, "max_len": 1200}  # config/config.yaml default
SPLIT = {"by": "cell", "val": 0.0, "test": 0.0, "seed": 0}  # every cell in train
PACKAGES = ("torch", "pyarrow", "numba")
SCFM_FREE = {"peer_scvi"}  # steps that run in the peer's interpreter, without scfm


# --------------------------------------------------------------------------------------------
# Input: synthetic QC'd h5ad -> vocab -> shards -> corpus manifest
# --------------------------------------------------------------------------------------------


def generate_h5ad(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write the h5ad chunk by chunk (float32 CSR, uncompressed), then store ``var.n_cells``."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    from scfm.atomic import atomic_path
    from scfm.io.h5ad import CsrH5adWriter

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    var = synthetic_var(args.n_genes)
    var["n_cells"] = np.zeros(args.n_genes, np.int64)
    cdf = gene_cdf(args.n_genes, rng)
    n_cells_per_gene = np.zeros(args.n_genes, np.int64)
    nnz = 0
    obs = _harness.synthetic_obs(args.n_cells, DATASET)
    with atomic_path(path, suffix=".tmp.h5ad") as tmp:
        with CsrH5adWriter(tmp, obs=obs, var=var, dtype=np.float32, compression=None) as writer:
            for start in range(0, args.n_cells, 20000):
                n = min(20000, args.n_cells - start)
                data, indices, indptr = synthetic_chunk(rng, n, args.n_genes, args.draws, cdf)
                writer.append(sp.csr_matrix((data, indices, indptr), shape=(n, args.n_genes)))
                n_cells_per_gene += np.bincount(indices, minlength=args.n_genes)
                nnz += data.size
        # QC'd files carry var.n_cells (what build_vocab reads); known only after the matrix
        var["n_cells"] = n_cells_per_gene
        with h5py.File(tmp, "r+") as f:
            del f["var"]
            ad.io.write_elem(f, "var", var)
    return {"seconds": time.perf_counter() - t0, "nnz": nnz}


def prepare(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Generate (or reuse) the h5ad, vocabulary, shards and corpus manifest."""
    from scfm.shard.writer import merge_manifests, shard_dataset
    from scfm.tokenize.vocab import build_vocab, write_vocab

    name = f"loader_{args.n_cells}c_{args.n_genes}g_{args.draws}draws_s{args.seed}"
    h5ad = out / f"{name}.h5ad"
    root = out / f"{name}_corpus"
    vocab, shards, manifest = root / "vocab.tsv", root / "shards", root / "manifest.json"
    info: dict[str, Any] = {"h5ad": str(h5ad), "manifest": str(manifest)}
    if args.regenerate:
        h5ad.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    if not h5ad.exists():
        print(f"generating {h5ad.name} ...", end="", flush=True)
        gen = generate_h5ad(h5ad, args)
        print(f" {gen['seconds']:.1f} s", flush=True)
        info["generate_seconds"] = gen["seconds"]
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"reusing {h5ad.name}")
    if not manifest.exists():
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_vocab(build_vocab({DATASET: h5ad}, min_cells=0), vocab)
        print("sharding (binned, max_len 1200) ...", end="", flush=True)
        shard_dataset(
            h5ad, shards, dataset=DATASET, vocab_path=vocab, tokenizer=TOKENIZER, split=SPLIT
        )
        merge_manifests(
            {DATASET: shards / "manifest.json"},
            manifest,
            corpus="bench",
            tokenizer="binned",
            vocab_path=vocab,
        )
        info["shard_seconds"] = time.perf_counter() - t0
        print(f" {info['shard_seconds']:.1f} s", flush=True)
    import h5py

    with h5py.File(h5ad, "r") as f:
        indptr = f["X/indptr"][...]
    per_cell = np.diff(indptr)
    m = json.loads(manifest.read_text())
    n_tokens = sum(s["n_tokens"] for s in m["shards"])
    info.update(
        n_cells=len(per_cell),
        nnz=int(indptr[-1]),
        nnz_per_cell_mean=float(per_cell.mean()),
        nnz_per_cell_p5_50_95=[float(x) for x in np.percentile(per_cell, [5, 50, 95])],
        frac_cells_over_1199=float((per_cell > 1199).mean()),
        h5ad_bytes=file_size(h5ad),
        shard_bytes=sum(p.stat().st_size for p in shards.rglob("*.arrow")),
        n_shards=len(m["shards"]),
        train_cells=m["splits"]["train"],
        tokens_per_cell_in_shards=n_tokens / max(m["splits"]["train"], 1),
    )
    # warm the page cache for every reader alike (the shards were just written; the h5ad maybe not)
    for p in [h5ad, *sorted(shards.rglob("*.arrow"))]:
        with p.open("rb") as fh:
            while fh.read(1 << 24):
                pass
    return info


# --------------------------------------------------------------------------------------------
# Steps (each runs in a fresh child process)
# --------------------------------------------------------------------------------------------


def step_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Import what the scfm and backed steps import; nothing else."""
    import anndata  # noqa: F401
    import torch  # noqa: F401

    import scfm.data.loader  # noqa: F401

    return {}


def step_scfm(spec: dict[str, Any]) -> dict[str, Any]:
    """``CorpusLoader`` batches for ``spec['epochs']`` epochs; each epoch timed on its own."""
    from scfm.data.loader import CorpusLoader, LoaderConfig

    cfg = LoaderConfig(
        batch_size=spec["batch_size"],
        max_len=spec["max_len"],
        pad_to=spec["pad_to"],
        mask_ratio=spec["mask_ratio"],
        shuffle=True,
        seed=0,
    )
    t0 = time.perf_counter()
    loader = CorpusLoader(spec["manifest"], cfg, num_workers=0)
    open_s = time.perf_counter() - t0
    epochs = []
    for epoch in range(spec["epochs"]):
        # real tokens are counted in the first epoch only (~0.2 ms per batch): the last epoch,
        # the headline, times the loader alone
        count = epoch == 0 and spec["epochs"] > 1
        cells = tokens = width = batches = 0
        t0 = time.perf_counter()
        for batch in loader:
            genes = batch["genes"]
            cells += genes.shape[0]
            width += genes.shape[1]
            batches += 1
            if count:
                tokens += int((~batch["padding_mask"]).sum())
        sec = time.perf_counter() - t0
        epochs.append(
            {
                "cells": cells,
                "batches": batches,
                "seconds": sec,
                "cells_per_s": cells / sec,
                "mean_width": width / max(batches, 1),
                "tokens": tokens,
                "tokens_counted": count,
            }
        )
    keys = sorted(batch)
    return {
        "open_seconds": open_s,
        "epochs": epochs,
        "batch_keys": keys,
        "last_batch_shapes": {k: list(getattr(batch[k], "shape", [len(batch[k])])) for k in keys},
    }


def step_peer_backed(spec: dict[str, Any]) -> dict[str, Any]:
    """anndata backed: random 64-cell batches (indices sorted per batch) -> scipy CSR rows."""
    import anndata as ad

    t0 = time.perf_counter()
    adata = ad.read_h5ad(spec["h5ad"], backed="r")
    x = adata.X
    open_s = time.perf_counter() - t0
    n, bs = adata.n_obs, spec["batch_size"]
    perm = np.random.default_rng(0).permutation(n)
    cells = nnz = batches = 0
    t0 = time.perf_counter()
    for start in range(0, n, bs):
        rows = x[np.sort(perm[start : start + bs])]
        cells += rows.shape[0]
        nnz += rows.nnz
        batches += 1
    sec = time.perf_counter() - t0
    out_type = type(rows).__name__
    adata.file.close()
    return {
        "open_seconds": open_s,
        "epochs": [
            {
                "cells": cells,
                "batches": batches,
                "seconds": sec,
                "cells_per_s": cells / sec,
                "nnz": nnz,
            }
        ],
        "batch_type": out_type,
        "anndata": version("anndata"),
    }


def step_peer_scvi(spec: dict[str, Any]) -> dict[str, Any]:
    """scvi-tools ``AnnDataLoader`` (shuffle, batch 64, defaults) over the h5ad in memory."""
    import anndata as ad
    import scvi
    import torch
    from scvi.dataloaders import AnnDataLoader

    torch.set_num_threads(1)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(spec["h5ad"])
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    loader = AnnDataLoader(model.adata_manager, shuffle=True, batch_size=spec["batch_size"])
    setup_s = time.perf_counter() - t0
    cells = batches = 0
    t0 = time.perf_counter()
    for batch in loader:
        cells += batch["X"].shape[0]
        batches += 1
    sec = time.perf_counter() - t0
    return {
        "open_seconds": read_s + setup_s,
        "parts": {"read_h5ad": read_s, "setup": setup_s},
        "epochs": [
            {"cells": cells, "batches": batches, "seconds": sec, "cells_per_s": cells / sec}
        ],
        "batch_keys": sorted(batch),
        "x": {
            "type": type(batch["X"]).__name__,
            "dtype": str(batch["X"].dtype),
            "shape": list(batch["X"].shape),
        },
        "versions": {p: version(p) for p in ("scvi-tools", "anndata", "torch", "numpy", "scipy")},
    }


STEPS = {
    "baseline": step_baseline,
    "scfm": step_scfm,
    "peer_backed": step_peer_backed,
    "peer_scvi": step_peer_scvi,
}


def run_child(step: str, spec: dict[str, Any]) -> None:
    """Inside the child: run one step, write its result as JSON."""
    # imports are not timed: step_baseline runs first, except in the peer's interpreter
    _harness.run_child(
        step,
        spec,
        STEPS,
        step_baseline,
        no_baseline=SCFM_FREE,
        ignore_warnings=Warning,
        setup=_harness.one_torch_thread,
        top_cumulative=30,
        loadavg=True,
    )


def run_step(
    step: str, label: str, spec: dict[str, Any], ctx: dict[str, Any], python: str | None = None
) -> dict[str, Any] | None:
    """Run ``step`` in a fresh interpreter pinned to one core; None if it failed."""
    run = _harness.run_step(
        __file__, step, label, spec, python=python, one_thread=True, exit_on_failure=False, **ctx
    )
    if run is None:
        return None
    result, _, wall = run
    result.update(label=label, step=step, wall_process=wall)
    rates = ", ".join(f"{e['cells_per_s']:,.0f}" for e in result.get("epochs", []))
    print(
        f" {result['seconds_step']:.1f} s, cells/s per epoch [{rates}], "
        f"peak RSS {gib(result['peak_rss']):.2f} GiB",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------

DELIVERS = {
    "baseline": "imports only",
    "scfm_longest": "tokenized (binned) + masked + padded to the batch's longest: int64 genes/"
    "values/targets, bool masks, cell_index, obs strings",
    "scfm_max_len": "the same, padded to max_len: every batch [64, 1201]",
    "peer_backed": "raw count rows (all nonzeros), scipy CSR float32; no tokenizing/masking/"
    "padding",
    "peer_scvi": "raw count rows densified to float32 [64, n_genes] torch tensors (+ batch, "
    "labels); no tokenizing/masking/padding",
}


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """The warm figure: the last epoch (scfm), the only epoch (peers)."""
    return r["epochs"][-1]


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / f"run_loader_{args.n_cells}c{args.tag}"
    work.mkdir(parents=True, exist_ok=True)
    ctx = {"work": work, "cpu": None if args.cpu < 0 else args.cpu}
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    data = prepare(args, out)
    base = {
        "manifest": data["manifest"],
        "h5ad": data["h5ad"],
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "mask_ratio": args.mask_ratio,
        "epochs": args.epochs,
    }
    steps: list[tuple[str, str, dict[str, Any], str | None]] = [
        ("scfm_longest", "scfm", {"pad_to": "longest", "profile": args.profile}, None),
        ("scfm_max_len", "scfm", {"pad_to": "max_len", "profile": args.profile}, None),
    ]
    scvi_note = None
    if not args.skip_peers:
        steps.append(("peer_backed", "peer_backed", {}, None))
    if args.skip_scvi or args.skip_peers:
        scvi_note = "skipped (--skip-scvi/--skip-peers)"
    elif not Path(args.scvi_python).exists():
        scvi_note = f"skipped: {args.scvi_python} not found"
    else:
        steps.append(("peer_scvi", "peer_scvi", {}, args.scvi_python))
    r = run_step("baseline", "baseline", base, ctx)
    if r is None:
        sys.exit("step baseline failed")
    results = [{**r, "round": 0}]
    # Rounds interleave the steps, so that a burst of load from other jobs hits one round of
    # every step rather than all rounds of one; the report shows each step's median round.
    for rnd in range(args.rounds):
        if args.rounds > 1:
            print(f"round {rnd + 1}/{args.rounds}")
        for label, step, extra, python in steps:
            r = run_step(step, f"{label}_r{rnd}", {**base, **extra}, ctx, python=python)
            if r is None:
                if step != "peer_scvi":
                    sys.exit(f"step {label} failed")
                scvi_note = f"failed; see {ctx['work']}/peer_scvi_r{rnd}.log"
                continue
            results.append({**r, "label": label, "round": rnd})
    if scvi_note:
        print(f"  peer_scvi: {scvi_note}")
    versions = _harness.package_versions(PACKAGES, skip_missing=True)
    return {
        "args": _harness.report_args(args),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_loader.py", *sys.argv[1:]]),
        "machine": {**_harness.machine_info(), "more_versions": versions},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "total_seconds": time.perf_counter() - t_start,
        "input": data,
        "results": results,
        "scvi_note": scvi_note,
    }


def median_rounds(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step, the round with the median warm cells/s, plus every round's figure."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["label"], []).append(r)
    picked = []
    for label, rs in by.items():
        if label == "baseline":
            picked.append(rs[0])
            continue
        rs = sorted(rs, key=lambda r: headline(r)["cells_per_s"])
        med = rs[(len(rs) - 1) // 2]
        picked.append({**med, "all_rounds": [headline(r)["cells_per_s"] for r in rs]})
    return picked


def markdown_table(report: dict[str, Any]) -> str:
    rows = median_rounds(report["results"])
    by = {r["label"]: r for r in rows}
    scfm = by.get("scfm_longest")
    lines = _harness.md_header(
        [
            *("step", "delivers", "cells timed", "time (s)", "cells/s (warm, median round)"),
            *("rounds (cells/s)", "vs goal 30k", "scfm_longest / this", "peak RSS (GiB)"),
            "load avg (1 min)",
        ],
        "llrrrlrrrr",
    )
    for r in rows:
        if r["label"] == "baseline":
            lines.append(
                f"| baseline | {DELIVERS['baseline']} | – | – | – | – | – | – | "
                f"{gib(r['peak_rss']):.2f} | {r['loadavg_1min'][0]:.1f} |"
            )
            continue
        e = headline(r)
        ratio = scfm and headline(scfm)["cells_per_s"] / e["cells_per_s"]
        rounds = "; ".join(f"{x:,.0f}" for x in r["all_rounds"])
        first = (
            f" (epoch 1 of this round: {r['epochs'][0]['cells_per_s']:,.0f})"
            if len(r["epochs"]) > 1
            else ""
        )
        lines.append(
            f"| {r['label']} | {DELIVERS[r['label']]} | {e['cells']:,} | {e['seconds']:.1f} | "
            f"{e['cells_per_s']:,.0f}{first} | {rounds} | {e['cells_per_s'] / GOAL:.2f} | "
            f"{ratio:.2f} | {gib(r['peak_rss']):.2f} | "
            f"{r['loadavg_1min'][0]:.1f}–{r['loadavg_1min'][1]:.1f} |"
        )
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    d = report["input"]
    print()
    print(
        f"input: {d['n_cells']:,} cells, {d['nnz']:,} nonzeros ({d['nnz_per_cell_mean']:.0f} "
        f"per cell, p5/50/95 {d['nnz_per_cell_p5_50_95']}), h5ad {gib(d['h5ad_bytes']):.2f} "
        f"GiB; {d['n_shards']} shards {gib(d['shard_bytes']):.2f} GiB, "
        f"{d['tokens_per_cell_in_shards']:.0f} tokens/cell"
    )
    print(markdown_table(report))
    for r in median_rounds(report["results"]):
        if r.get("open_seconds") is not None:
            print(
                f"  {r['label']}: open {r['open_seconds']:.2f} s"
                + (
                    f", mean width {headline(r)['mean_width']:.0f}, "
                    f"{r['epochs'][0]['tokens'] / r['epochs'][0]['cells']:.0f} real tokens/cell"
                    if "mean_width" in headline(r)
                    else ""
                )
            )
    if report["scvi_note"]:
        print(f"  peer_scvi: {report['scvi_note']}")
    print(
        f"load average at start {report['loadavg_start']}, end {report['loadavg_end']}; "
        f"total {report['total_seconds']:.0f} s"
    )
    _harness.print_profiles(report["results"], title="")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _harness.arg_parser(__doc__, STEPS)
    ap.add_argument("--n-cells", type=int, default=200_000)
    ap.add_argument("--n-genes", type=int, default=30_000)
    ap.add_argument(
        "--draws",
        type=int,
        default=2000,
        help="gene draws per cell before deduplication (2000 -> ~1.6k nonzeros)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=1200, help="loader tokens per cell incl. <cls>")
    ap.add_argument("--mask-ratio", type=float, default=0.15)
    ap.add_argument("--epochs", type=int, default=2, help="scfm epochs (each timed)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every step")
    ap.add_argument("--cpu", type=int, default=0, help="core to pin children to (-1: no pin)")
    ap.add_argument("--scvi-python", default="/tmp/peers_scvi/bin/python")
    ap.add_argument("--skip-scvi", action="store_true")
    ap.add_argument("--skip-peers", action="store_true", help="scfm steps only")
    ap.add_argument("--profile", action="store_true", help="cProfile the scfm steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tag", default="")
    ap.add_argument("--regenerate", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if _harness.child_dispatch(args, run_child):
        return
    report = run_all(args)
    print_report(report)
    stem = args.out.resolve() / f"results_loader_{args.n_cells}c{args.tag}"
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    _harness.save_report(report, stem, markdown_table(report))


if __name__ == "__main__":
    main()
