"""Benchmark: training tokens/s on one CPU core, scfm vs nn.TransformerEncoder; data wait (issue 4).

The questions (issue 4): on CPU, how many tokens/s does a full training step of scfm's
``CellTransformer`` reach against ``torch.nn.TransformerEncoder`` of the same size, in the same
run (goal >= 1.0x); what share of the real trainer's step time is spent waiting for data
(goal < 5%); and what FLOPs per token does the MFU accounting count (GPU MFU cannot be
measured here: no GPU).

Every step runs in a fresh Python process (``_harness.run_step``) pinned to one core
(``taskset -c <cpu>``, ``OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS=1``, ``torch.set_num_threads(1)``);
imports are not timed (``baseline``). Steps:

* ``sgemm``    fp32 ``torch.mm`` of two 2048x2048 matrices on one thread: the attainable matmul
               FLOP/s of this core, the reference the model FLOP/s are compared with (not a
               data-sheet peak, which this virtualised CPU does not name).
* ``step``     part 1: full training steps (forward, loss, backward, grad clip, AdamW) on
               synthetic batches, ``impl`` "scfm" (``build_model(ModelConfig(...))``) or
               "torch" (gene + value embeddings, ``nn.TransformerEncoder(nn.TransformerEncoderLayer
               (d, nhead, 4d, dropout 0, gelu, batch_first, norm_first), n_layers,
               norm=LayerNorm(d))`` with ``src_key_padding_mask``). Both have the same parameter
               count (checked) and the same head and loss: scfm's ``ce`` objective (a
               ``Linear(d, n_bins)`` over masked positions, cross-entropy). Batches: gene ids
               over a 30k vocabulary, bins 0..50, lengths lognormal around 0.65 L (sigma 0.35,
               clipped to [16, L], the longest set to L), padded to L, 15% of gene positions
               masked; 4 distinct batches cycled. ``--warmup`` untimed steps, then ``--steps``
               timed ones, each split into forward+loss / backward / clip+AdamW.
* ``train``    part 2: the real ``scfm.train.train`` on a binned synthetic corpus (max_len 1200,
               from ``bench_loader``'s generator) with ``val_every`` 0, for ``--train-steps``
               steps, under ``num_workers`` 0 or 1. Data wait is measured from outside: the
               child replaces ``scfm.train.trainer._endless`` (the generator the loop calls
               ``next`` on once per step) with a wrapper that times every ``next``; a step's
               time is the interval between the starts of consecutive ``next`` calls, so it
               covers everything the loop does per step (loader wait, forward, backward, clip,
               AdamW, logging). With num_workers 0, the same batches are then read by a fresh
               ``CorpusLoader`` alone, as a cross-check of the wait. tokens/s and cells/s are
               read back from ``metrics.tsv``.

Part 1 runs in ``--rounds`` interleaved rounds (scfm, torch, scfm, torch, ...) so that a burst
of load from other jobs hits both; the report gives each configuration's median round.

Quick check (~4 min)::

    .venv/bin/python benchmarks/bench_train.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness  # noqa: E402
from _harness import gib  # noqa: E402

DEFAULT_OUT = HERE / "out"
PACKAGES = ("torch", "pyarrow")
N_BINS = 51  # the binned tokenizer's n_bins in config/config.yaml and bench_loader
VOCAB = 30_038  # 30,000 genes + specials, as bench_loader's corpus
SIZES = {"tiny": (2, 64, 4), "small": (4, 256, 4), "base": (12, 512, 8)}  # layers, d, heads
SHAPES = {"tiny": [(32, 256), (8, 512)], "small": [(32, 256), (8, 512)]}
RATIO_GOAL = 1.0
WAIT_GOAL = 0.05


# --------------------------------------------------------------------------------------------
# Steps (each runs in a fresh child process)
# --------------------------------------------------------------------------------------------


def step_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Import what every step imports; nothing else."""
    import torch  # noqa: F401

    import scfm.models
    import scfm.train  # noqa: F401

    return {}


def step_sgemm(spec: dict[str, Any]) -> dict[str, Any]:
    """Attainable fp32 matmul FLOP/s of one thread (2048^3, after 2 warm-up products)."""
    import torch

    n, reps = 2048, spec.get("reps", 10)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    best, med = min(times), statistics.median(times)
    return {
        "n": n,
        "gflops_best": 2 * n**3 / best / 1e9,
        "gflops_median": 2 * n**3 / med / 1e9,
    }


def _model_config(size: str, max_len: int) -> Any:
    from scfm.models import ModelConfig

    n_layers, d, heads = SIZES[size]
    return ModelConfig(
        vocab_size=VOCAB,
        value_kind="bin",
        n_value_tokens=N_BINS,
        max_len=max_len,
        d_model=d,
        n_layers=n_layers,
        n_heads=heads,
        activation="gelu",
    )


def _synthetic_batches(b: int, length: int, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` binned batches [b, length] shaped like the loader's, padded to ``length``."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lens = np.clip(rng.lognormal(np.log(0.65 * length), 0.35, b), 16, length).astype(int)
        lens[rng.integers(b)] = length  # pad to the longest, as pad_to="longest" does
        pos = np.arange(length)[None, :]
        padding = pos >= lens[:, None]
        genes = rng.integers(2, VOCAB, (b, length))
        genes[:, 0] = 1  # <cls>
        genes[padding] = 0
        values = rng.integers(0, N_BINS, (b, length))
        values[padding] = 0
        mask = (rng.random((b, length)) < 0.15) & ~padding
        mask[:, 0] = False
        target = values.copy()
        values[mask] = N_BINS  # the collator's mask value (extra embedding row)
        out.append(
            {
                "genes": torch.from_numpy(genes),
                "values": torch.from_numpy(values),
                "target_values": torch.from_numpy(target),
                "padding_mask": torch.from_numpy(padding),
                "mask": torch.from_numpy(mask),
            }
        )
    return out


def _torch_model(cfg: Any) -> Any:
    """Embeddings + ``nn.TransformerEncoder`` (pre-LN, GELU) of ``cfg``'s size."""
    from torch import nn

    class TorchEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.d_model
            self.gene_embedding = nn.Embedding(cfg.vocab_size, d)
            self.value_embedding = nn.Embedding(cfg.n_value_tokens + 1, d)
            layer = nn.TransformerEncoderLayer(
                d,
                cfg.n_heads,
                dim_feedforward=4 * d,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
                layer_norm_eps=cfg.norm_eps,
            )
            self.encoder = nn.TransformerEncoder(
                layer,
                cfg.n_layers,
                norm=nn.LayerNorm(d, eps=cfg.norm_eps),
                enable_nested_tensor=False,
            )

        def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
            x = self.gene_embedding(batch["genes"]) + self.value_embedding(batch["values"])
            x = self.encoder(x, src_key_padding_mask=batch["padding_mask"])
            return {"token_states": x, "position_states": x, "cell_embedding": x[:, 0]}

    return TorchEncoder()


def step_train_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Part 1: timed full training steps of one model on synthetic padded batches."""
    import torch
    from torch import nn

    from scfm.models import build_model, build_objectives, transformer_flops_per_token

    b, length = spec["batch"], spec["length"]
    cfg = _model_config(spec["size"], length)
    torch.manual_seed(0)
    model = build_model(cfg) if spec["impl"] == "scfm" else _torch_model(cfg)
    (head,) = build_objectives({"ce": 1.0}, cfg)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    batches = _synthetic_batches(b, length, 4, seed=spec["seed"])
    real = [int((~x["padding_mask"]).sum()) for x in batches]

    def one(i: int) -> tuple[float, float, float]:
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = head(model, batch, model(batch)).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for i in range(spec["warmup"]):
        one(i)
    parts = [one(spec["warmup"] + i) for i in range(spec["steps"])]
    totals = [sum(p) for p in parts]
    tokens = sum(real[(spec["warmup"] + i) % len(real)] for i in range(spec["steps"]))
    seconds = sum(totals)
    n_model = sum(p.numel() for p in model.parameters())
    fpt = transformer_flops_per_token(cfg, length)
    return {
        "impl": spec["impl"],
        "size": spec["size"],
        "batch": b,
        "length": length,
        "params": n_model,
        "params_encoder": n_model - cfg.vocab_size * cfg.d_model - (N_BINS + 1) * cfg.d_model,
        "real_tokens_per_step": tokens / spec["steps"],
        "pad_fraction": 1 - tokens / (spec["steps"] * b * length),
        "seconds": seconds,
        "step_seconds_median": statistics.median(totals),
        "step_seconds_min": min(totals),
        "tokens_per_s": tokens / seconds,
        "padded_tokens_per_s": spec["steps"] * b * length / seconds,
        "forward_s": sum(p[0] for p in parts) / len(parts),
        "backward_s": sum(p[1] for p in parts) / len(parts),
        "optimizer_s": sum(p[2] for p in parts) / len(parts),
        "flops_per_token_fwd": fpt,
        # the trainer's MFU convention: 3 x forward FLOPs over padded positions
        "model_gflops_per_s": 3 * fpt * spec["steps"] * b * length / seconds / 1e9,
    }


def step_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Part 2: the real trainer; every ``next(batches)`` of its loop timed from outside."""
    import csv

    from scfm.data import CorpusLoader, LoaderConfig
    from scfm.train import train
    from scfm.train import trainer as trainer_mod

    starts: list[float] = []
    waits: list[float] = []
    endless = trainer_mod._endless

    def timed_endless(loader: Any) -> Any:
        it = endless(loader)
        while True:
            t0 = time.perf_counter()
            batch = next(it)
            starts.append(t0)
            waits.append(time.perf_counter() - t0)
            yield batch

    trainer_mod._endless = timed_endless  # not src: this process's copy of the module only
    out = Path(spec["work"]) / f"{spec['label']}_run"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    summary = train(spec["run"], spec["model"], spec["manifest"], out, device="cpu")
    train_s = time.perf_counter() - t0
    n = len(starts)
    periods = [starts[i + 1] - starts[i] for i in range(n - 1)]  # steps 1..n-1
    with (out / "metrics.tsv").open(newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f, delimiter="\t")
            if r["split"] == "train" and r["objective"] == "total"
        ]
    metrics = [
        {
            "step": int(r["step"]),
            "tokens_per_s": float(r["tokens_per_s"]),
            "cells_per_s": float(r["cells_per_s"]),
            "loss": float(r["loss"]),
        }
        for r in rows
    ]
    result: dict[str, Any] = {
        "status": summary["status"],
        "steps": summary["step"],
        "train_call_seconds": train_s,
        "loop_seconds": starts[-1] - starts[0] if n > 1 else None,
        "first_wait": waits[0],
        "waits": waits,
        "periods": periods,
        # steady state: steps 2..n-1 (step 1 includes creating the DataLoader / its worker;
        # step n has no following next(): it ends in the final checkpoint and export)
        "wait_steady": sum(waits[1 : n - 1]),
        "time_steady": sum(periods[1:]),
        "wait_all": sum(waits[: n - 1]),
        "time_all": sum(periods),
        "metrics": metrics,
    }
    if spec["loader_check"]:
        run = spec["run"]
        cfg = LoaderConfig(
            split="train",
            batch_size=run["batch_size"],
            mask_ratio=run.get("mask_ratio", 0.15),
            seed=run["seed"],
            max_len=run["loader"]["max_len"],
        )
        loader = CorpusLoader(spec["manifest"], cfg, num_workers=0)
        it = iter(loader)
        t0 = time.perf_counter()
        tokens = cells = width = 0
        for _ in range(n):
            batch = next(it)
            cells += len(batch["genes"])
            width += batch["genes"].shape[1]
            tokens += int((~batch["padding_mask"]).sum())
        result["loader_alone"] = {
            "batches": n,
            "seconds": time.perf_counter() - t0,
            "cells": cells,
            "tokens": tokens,
            "mean_width": width / n,
        }
    return result


STEPS = {
    "baseline": step_baseline,
    "sgemm": step_sgemm,
    "step": step_train_step,
    "train": step_train,
}


def run_child(step: str, spec: dict[str, Any]) -> None:
    """Inside the child: run one step, write its result as JSON."""
    _harness.run_child(
        step,
        spec,
        STEPS,
        step_baseline,
        ignore_warnings=Warning,
        setup=_harness.one_torch_thread,
        loadavg=True,
    )


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def prepare_corpus(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """bench_loader's synthetic h5ad -> vocab -> binned shards (max_len 1200), cached."""
    from bench_loader import prepare

    ns = argparse.Namespace(
        n_cells=args.n_cells, n_genes=30_000, draws=args.draws, seed=0, regenerate=False
    )
    return prepare(ns, out)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / f"run_train{args.tag}"
    work.mkdir(parents=True, exist_ok=True)
    cpu = None if args.cpu < 0 else args.cpu
    load_start = os.getloadavg()
    t_start = time.perf_counter()

    def run(step: str, label: str, spec: dict[str, Any], pin: bool = True) -> dict[str, Any]:
        res = _harness.run_step(
            __file__, step, label, spec, work=work, cpu=cpu if pin else None, one_thread=True
        )
        assert res is not None
        result, _, wall = res
        print(f" {wall:.1f} s", flush=True)
        return {**result, "label": label, "wall": wall}

    results: dict[str, Any] = {"baseline": run("baseline", "baseline", {})}
    results["sgemm"] = run("sgemm", "sgemm", {})

    # ---- part 1: scfm vs torch training steps, interleaved rounds
    steps: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        print(f"part 1, round {rnd + 1}/{args.rounds}")
        for size in args.sizes:
            for b, length in SHAPES[size]:
                for impl in ("scfm", "torch"):
                    spec = {
                        "impl": impl,
                        "size": size,
                        "batch": b,
                        "length": length,
                        "warmup": args.warmup,
                        "steps": args.steps if size == "tiny" else args.steps_small,
                        "seed": rnd,
                    }
                    r = run("step", f"step_{impl}_{size}_{b}x{length}_r{rnd}", spec)
                    steps.append({**r, "round": rnd})
    results["steps"] = steps

    # ---- part 2: the real trainer, data wait
    corpus = prepare_corpus(args, out)
    trains = []
    for name, model, max_len, batch, n_steps, variants in _train_plan(args):
        for nw, pin in variants:
            run_cfg = {
                "objectives": {"ordinal": 1.0},
                "optimizer": {"lr": 1e-3, "weight_decay": 0.01},
                "schedule": {"warmup_steps": 20, "min_lr_ratio": 0.1},
                "batch_size": batch,
                "max_steps": n_steps,
                "precision": "fp32",
                "log_every": 10,
                "val_every": 0,
                "checkpoint_every": 10_000,
                "seed": 0,
                "num_workers": nw,
                "loader": {"max_len": max_len},
            }
            where = "core0" if pin and cpu is not None else "2cores"
            label = f"train_{name}_L{max_len}_nw{nw}_{where}"
            spec = {
                "run": run_cfg,
                "model": model,
                "manifest": corpus["manifest"],
                "loader_check": nw == 0,
            }
            r = run("train", label, spec, pin=pin)
            trains.append(
                {
                    **r,
                    "name": name,
                    "num_workers": nw,
                    "where": where,
                    "max_len": max_len,
                    "batch": batch,
                    "model_cfg": model,
                }
            )
    results["train"] = trains
    return {
        "args": _harness.report_args(args),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_train.py", *sys.argv[1:]]),
        "machine": {
            **_harness.machine_info(),
            "more_versions": _harness.package_versions(PACKAGES, skip_missing=True),
        },
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "total_seconds": time.perf_counter() - t_start,
        "corpus": corpus,
        "results": results,
        "flops": flop_table(),
    }


def _train_plan(args: argparse.Namespace) -> list[tuple[str, dict, int, int, int, list]]:
    """(name, model config, loader max_len, batch, steps, [(num_workers, pinned), ...])."""
    tiny = {"preset": "tiny", "activation": "swiglu"}  # config/config.yaml models.tiny
    plan = [
        ("tiny", tiny, 1200, 32, args.train_steps, [(0, True), (1, True), (1, False)]),
    ]
    if not args.quick:  # shorter cells: faster steps, so the largest data share
        plan.append(("tiny", tiny, 512, 32, args.train_steps, [(0, True)]))
    if not args.quick:
        plan.append(("small", {"preset": "small"}, 512, 32, args.train_steps_small, [(0, True)]))
    return plan


def flop_table() -> list[dict[str, Any]]:
    """Forward FLOPs per token (the trainer's MFU numerator / 3) per preset and length."""
    from scfm.models import PEAK_FLOPS_BF16, ModelConfig, transformer_flops_per_token

    rows = []
    for preset in ("tiny", "small", "base"):
        for length in (512, 1200):
            cfg = ModelConfig.preset(
                preset, vocab_size=VOCAB, value_kind="bin", n_value_tokens=N_BINS, max_len=length
            )
            fwd = transformer_flops_per_token(cfg, length)
            peak = PEAK_FLOPS_BF16["H100 SXM"]
            rows.append(
                {
                    "preset": preset,
                    "length": length,
                    "fwd_flops_per_token": fwd,
                    "train_flops_per_token": 3 * fwd,
                    # tokens (padded positions) per second an H100 SXM needs for 40% MFU
                    "h100_tokens_per_s_at_40pct": 0.4 * peak / (3 * fwd),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def median_steps(steps: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Per (impl, size, batch, length): the median round by tokens/s, with all rounds."""
    by: dict[tuple, list[dict[str, Any]]] = {}
    for r in steps:
        by.setdefault((r["impl"], r["size"], r["batch"], r["length"]), []).append(r)
    out = {}
    for key, rs in by.items():
        rs = sorted(rs, key=lambda r: r["tokens_per_s"])
        out[key] = {**rs[(len(rs) - 1) // 2], "all_rounds": [r["tokens_per_s"] for r in rs]}
    return out


def step_table(report: dict[str, Any]) -> str:
    med = median_steps(report["results"]["steps"])
    sg = report["results"]["sgemm"]["gflops_median"]
    lines = _harness.md_header(
        [
            *("model", "B×L", "pad", "impl", "params"),
            *("tokens/s (median round)", "rounds", "step (s)", "fwd / bwd / opt (s)"),
            *("scfm / torch", "model GFLOP/s", "/ sgemm", "load"),
        ],
        "lllrlrlrlrrrl",
    )

    def order(kv: tuple) -> tuple:
        impl, size, b, length = kv[0]
        return (list(SIZES).index(size), -b, length, impl)

    for (impl, size, b, length), r in sorted(med.items(), key=order):
        other = med.get(("torch", size, b, length))
        ratio = (
            f"**{r['tokens_per_s'] / other['tokens_per_s']:.2f}**"
            if impl == "scfm" and other
            else ""
        )
        lines.append(
            _harness.md_row(
                [
                    f"{size} ({SIZES[size][0]}×{SIZES[size][1]})",
                    f"{b}×{length}",
                    f"{r['pad_fraction']:.0%}",
                    impl,
                    f"{r['params']:,}",
                    f"{r['tokens_per_s']:,.0f}",
                    "; ".join(f"{x:,.0f}" for x in r["all_rounds"]),
                    f"{r['step_seconds_median']:.3f}",
                    f"{r['forward_s']:.3f} / {r['backward_s']:.3f} / {r['optimizer_s']:.3f}",
                    ratio,
                    f"{r['model_gflops_per_s']:.1f}",
                    f"{r['model_gflops_per_s'] / sg:.0%}",
                    f"{r['loadavg_1min'][0]:.1f}–{r['loadavg_1min'][1]:.1f}",
                ]
            )
        )
    return "\n".join(lines)


def train_table(report: dict[str, Any]) -> str:
    lines = _harness.md_header(
        [
            *("run", "workers / cores", "steps", "step (ms, steady)", "data wait (ms/step)"),
            *("wait share, steady", "wait share incl. step 1", "1st batch wait (s)"),
            *("tokens/s (metrics.tsv)", "cells/s (metrics.tsv)", "loader alone (ms/batch)"),
            "load",
        ],
        "llrrrrrrrrrl",
    )
    for r in report["results"]["train"]:
        n = len(r["periods"]) - 1  # steady steps
        la = r.get("loader_alone")
        m = r["metrics"][1:]  # skip the first window (DataLoader start, warm-up)
        tps = statistics.median(x["tokens_per_s"] for x in m)
        cps = statistics.median(x["cells_per_s"] for x in m)
        cores = (
            "1 core (main only)"
            if r["num_workers"] == 0
            else (
                "worker on the same core" if r["where"] == "core0" else "worker free to use core 2"
            )
        )
        lines.append(
            _harness.md_row(
                [
                    f"{r['name']} B{r['batch']} max_len {r['max_len']}",
                    f"{r['num_workers']}, {cores}",
                    r["steps"],
                    f"{1000 * r['time_steady'] / n:.1f}",
                    f"{1000 * r['wait_steady'] / n:.2f}",
                    f"**{r['wait_steady'] / r['time_steady']:.1%}**",
                    f"{r['wait_all'] / r['time_all']:.1%}",
                    f"{r['first_wait']:.2f}",
                    f"{tps:,.0f}",
                    f"{cps:,.1f}",
                    f"{1000 * la['seconds'] / la['batches']:.2f}" if la else "–",
                    f"{r['loadavg_1min'][0]:.1f}–{r['loadavg_1min'][1]:.1f}",
                ]
            )
        )
    return "\n".join(lines)


def flops_md(report: dict[str, Any]) -> str:
    lines = _harness.md_header(
        [
            "preset",
            "L",
            "forward FLOPs/token",
            "train FLOPs/token (3×)",
            "H100 SXM tokens/s at 40% MFU",
        ],
        "lrrrr",
    )
    for r in report["flops"]:
        lines.append(
            _harness.md_row(
                [
                    r["preset"],
                    r["length"],
                    f"{r['fwd_flops_per_token'] / 1e6:.2f} M",
                    f"{r['train_flops_per_token'] / 1e6:.2f} M",
                    f"{r['h100_tokens_per_s_at_40pct']:,.0f}",
                ]
            )
        )
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    res = report["results"]
    print()
    print(
        f"sgemm (fp32, 2048^3, 1 thread): {res['sgemm']['gflops_median']:.1f} GFLOP/s median, "
        f"{res['sgemm']['gflops_best']:.1f} best; baseline peak RSS "
        f"{gib(res['baseline']['peak_rss']):.2f} GiB"
    )
    print("\nPart 1: full training step, scfm CellTransformer vs nn.TransformerEncoder")
    print(step_table(report))
    c = report["corpus"]
    print(
        f"\nPart 2: scfm.train.train on {c['n_cells']:,} cells ({c['nnz_per_cell_mean']:.0f} "
        f"genes/cell, p5/50/95 {[round(x) for x in c['nnz_per_cell_p5_50_95']]}; "
        f"{c['tokens_per_cell_in_shards']:.0f} tokens/cell in shards)"
    )
    print(train_table(report))
    for r in res["train"]:
        la = r.get("loader_alone")
        if la:
            print(
                f"  {r['label']}: loader alone {la['batches']} batches {la['seconds']:.2f} s, "
                f"mean width {la['mean_width']:.0f}, {la['tokens'] / la['cells']:.0f} real "
                f"tokens/cell; train() call {r['train_call_seconds']:.1f} s"
            )
    print("\nPart 3: FLOPs per token (scfm.models.transformer_flops_per_token)")
    print(flops_md(report))
    print(
        f"\nload average at start {report['loadavg_start']}, end {report['loadavg_end']}; "
        f"total {report['total_seconds']:.0f} s"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _harness.arg_parser(__doc__, STEPS)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SHAPES))
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per part-1 child")
    ap.add_argument("--steps", type=int, default=30, help="timed part-1 steps, tiny")
    ap.add_argument("--steps-small", type=int, default=8, help="timed part-1 steps, small")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved part-1 repeats")
    ap.add_argument("--train-steps", type=int, default=60, help="trainer steps, tiny")
    ap.add_argument("--train-steps-small", type=int, default=20, help="trainer steps, small")
    ap.add_argument("--n-cells", type=int, default=20_000, help="cells of the synthetic corpus")
    ap.add_argument(
        "--draws", type=int, default=1000, help="gene draws per cell before deduplication"
    )
    ap.add_argument("--cpu", type=int, default=0, help="core to pin children to (-1: no pin)")
    ap.add_argument("--quick", action="store_true", help="1 round, few steps, tiny trainer only")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.steps_small, args.warmup = 1, 10, 3, 2
        args.train_steps, args.n_cells = 30, 5000
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if _harness.child_dispatch(args, run_child):
        return
    report = run_all(args)
    print_report(report)
    stem = args.out.resolve() / f"results_train{args.tag}"
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    _harness.save_report(
        report,
        stem,
        step_table(report) + "\n\n" + train_table(report) + "\n\n" + flops_md(report),
    )


if __name__ == "__main__":
    main()
