"""Benchmark: scfm tokenize + shard on one core, beside scGPT's released binning code.

Three measurements (issue 3), every step in its own fresh Python process pinned to one core
(``taskset -c 0`` and ``OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS=1``), peak RSS = the child's
``VmHWM`` (helpers in ``_harness.py``, shared with the other benchmarks):

1. **Tokenize only**, an in-memory CSR (``--tok-cells`` x ``--n-genes``, ~``--nnz`` nonzeros per
   cell): scfm ``tokenize_csr`` for binned, rank (gene medians given), continuous and counts,
   with numba warm (the JIT compile is measured apart, in a process with an empty numba cache);
   scGPT 0.2.4's released ``binning(row, n_bins)`` applied cell by cell to each cell's nonzero
   values, as its ``Preprocessor`` loop does; its whole ``Preprocessor(binning=51)`` on a dense
   subset; and a plain numpy per-cell argsort rank encoding (a reference written here, *not*
   Geneformer's code: Geneformer is not on PyPI). Also on the real files in
   ``../shared/data/rna``.
2. **End to end**, ``shard_dataset`` (h5ad on disk -> Arrow shards + manifest) for binned and
   rank on a synthetic h5ad (``--e2e-cells``) and on the real files; ``gene_stats`` (the corpus
   pass that rank needs for its medians) is timed as its own step.
3. **Peak RSS** of ``shard_dataset`` on two synthetic h5ads 4x apart in cells
   (``--rss-cells``, default 250k and 1M, ``--rss-nnz`` nonzeros per cell).

scGPT runs in its own virtualenv (``--peer-python``, default ``/tmp/peers/bin/python`` with
``pip install scgpt`` and ``torch==2.13.0``): ``import scgpt`` fails there (it needs IPython and
torchtext's binary does not match torch), so its ``preprocess.py`` is loaded unmodified from the
installed package with a stub ``scgpt`` module (holding its ``logger``) in ``sys.modules``.

Quick check (~2 min)::

    .venv/bin/python benchmarks/bench_tokenize_shard.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness  # noqa: E402
from _harness import file_size, gib  # noqa: E402

ROOT = HERE.parent
DEFAULT_OUT = HERE / "out"
REAL_DIR = ROOT.parent / "shared" / "data" / "rna"
N_SPECIAL = 38  # scfm's specials with the default 32 condition tokens
PACKAGES = ("numba", "pyarrow")
SPLIT = {"by": "cell", "val": 0.05, "test": 0.05, "seed": 0}
# issue 17's goals for shard_dataset end to end (200k cells x 2,000 genes, one core); the
# tokenize-only goal stays 50k cells/s (issue 3), which issue 17 also sets for rank
E2E_GOALS = {"binned": 40_000, "rank": 30_000}

# The tokenizers measured: the config defaults (config/config.yaml) plus binned over every
# nonzero gene (max_len above the cell's genes), the like-for-like match of scGPT's binning.
TOKENIZERS: dict[str, dict[str, Any]] = {
    "binned": {"kind": "binned", "n_bins": 51, "max_len": 1200},
    "binned_all": {"kind": "binned", "n_bins": 51, "max_len": 8192},
    "rank": {"kind": "rank", "max_len": 2048, "target_sum": 10000},
    "continuous": {"kind": "continuous", "max_len": 1200},
    "counts": {"kind": "counts", "max_len": 1200, "vocab_size": 64},
}


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def _gen_kernel():  # built lazily: only the parent generates, children need no numba here
    from numba import njit

    @njit(cache=False)
    def gen(seed, n, n_genes, log_q, inv_log_gene, indptr, indices, data):  # pragma: no cover
        np.random.seed(seed)
        k = 0
        cap = indices.shape[0]
        for r in range(n):
            indptr[r] = k
            j = -1
            while True:
                # Bernoulli(p) per gene via geometric gaps: genes come out sorted, distinct
                j += int(np.log(1.0 - np.random.random()) / log_q) + 1
                if j >= n_genes:
                    break
                if k == cap:
                    return -1
                indices[k] = j
                # count ~ geometric on {1, 2, ...} with the gene's mean (1 + NB(r=1))
                data[k] = np.floor(np.log(1.0 - np.random.random()) * inv_log_gene[j]) + 1.0
                k += 1
        indptr[n] = k
        return k

    return gen


def gene_means(n_genes: int, seed: int) -> np.ndarray:
    """Per-gene mean count among expressing cells: lognormal around 2.5, in [1.05, 300]."""
    rng = np.random.default_rng(seed + 7)
    return np.exp(rng.normal(np.log(2.5), 1.0, n_genes)).clip(1.05, 300.0)


class Synth:
    """Synthetic raw counts: each gene detected with probability ``nnz / n_genes`` per cell
    (so ~``nnz`` +- sqrt(nnz) genes per cell, uniform over genes), counts >= 1 geometric
    (negative binomial with r = 1 shifted by one) with a lognormal per-gene mean."""

    def __init__(self, n_genes: int, nnz: int, seed: int) -> None:
        self.n_genes, self.nnz, self.seed = n_genes, nnz, seed
        self.means = gene_means(n_genes, seed)
        self._kernel = _gen_kernel()
        self._log_q = float(np.log1p(-nnz / n_genes))
        self._inv_log_gene = 1.0 / np.log1p(-1.0 / self.means)

    def chunk(self, index: int, n: int) -> Any:
        """CSR rows of chunk ``index`` (deterministic in seed and index), float32 counts."""
        import scipy.sparse as sp

        cap = n * min(self.n_genes, int(self.nnz + 12 * np.sqrt(self.nnz) + 16))
        indptr = np.empty(n + 1, np.int64)
        indices = np.empty(cap, np.int32)
        data = np.empty(cap, np.float32)
        k = self._kernel(
            self.seed * 1_000_003 + index,
            n,
            self.n_genes,
            self._log_q,
            self._inv_log_gene,
            indptr,
            indices,
            data,
        )
        if k < 0:
            raise RuntimeError("synthetic chunk overflowed its buffer")
        return sp.csr_matrix((data[:k], indices[:k], indptr), shape=(n, self.n_genes))

    def var(self, n_cells: int) -> pd.DataFrame:
        """Ensembl-like IDs, ``gene_symbol`` and ``n_cells`` (expected detections)."""
        ids = pd.Index([f"ENSG{i:011d}" for i in range(self.n_genes)], name="gene_id")
        expected = round(n_cells * self.nnz / self.n_genes)
        return pd.DataFrame(
            {
                "gene_symbol": [f"GENE{i:05d}" for i in range(self.n_genes)],
                "n_cells": np.full(self.n_genes, expected, np.int64),
            },
            index=ids,
        )


def write_synthetic_h5ad(path: Path, n_cells: int, synth: Synth, chunk: int = 20000) -> float:
    """Write the h5ad chunk by chunk (float32 CSR, uncompressed); returns seconds."""
    from scfm.atomic import atomic_path
    from scfm.io.h5ad import CsrH5adWriter

    t0 = time.perf_counter()
    obs, var = _harness.synthetic_obs(n_cells), synth.var(n_cells)
    with (
        atomic_path(path, suffix=".tmp.h5ad") as tmp,
        CsrH5adWriter(tmp, obs=obs, var=var, dtype=np.float32, compression=None) as writer,
    ):
        for k, start in enumerate(range(0, n_cells, chunk)):
            writer.append(synth.chunk(k, min(chunk, n_cells - start)))
    return time.perf_counter() - t0


def write_synthetic_npz(path: Path, n_cells: int, synth: Synth, chunk: int = 20000) -> float:
    """The in-memory tokenize input: CSR arrays + per-gene medians of normalised counts."""
    import scipy.sparse as sp

    t0 = time.perf_counter()
    x = sp.vstack(
        [synth.chunk(k, min(chunk, n_cells - s)) for k, s in enumerate(range(0, n_cells, chunk))]
    ).tocsr()
    # medians for rank: the gene's mean count scaled to target_sum / a typical cell total
    typical_total = float(np.median(np.asarray(x.sum(axis=1)).ravel()))
    medians = synth.means * 1e4 / typical_total
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        data=x.data,
        indices=x.indices,
        indptr=x.indptr.astype(np.int64),
        shape=np.array(x.shape),
        gene_median=medians,
    )
    tmp.rename(path)
    return time.perf_counter() - t0


def prepare_real(out: Path) -> dict[str, Path]:
    """Copies of ``../shared/data/rna/*.h5ad`` with ``var.gene_symbol``/``n_cells`` and
    ``obs.dataset`` (the matrix is untouched: raw counts, float32 CSR)."""
    import anndata as ad
    import scipy.sparse as sp

    real = out / "real"
    real.mkdir(parents=True, exist_ok=True)
    paths = {}
    for src in sorted(REAL_DIR.glob("*.h5ad")):
        dst = real / src.name
        paths[src.stem] = dst
        if dst.exists():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = ad.read_h5ad(src)
        x = sp.csr_matrix(a.X)
        a.var["gene_symbol"] = a.var.get("gene_symbol", pd.Series(a.var_names, a.var_names))
        a.var["n_cells"] = np.diff(x.tocsc().indptr).astype(np.int64)
        a.obs["dataset"] = src.stem
        a.write_h5ad(dst)
    return paths


def make_vocab(h5ads: dict[str, Path], path: Path) -> Path:
    """``build_vocab`` (union) over the files' ``var`` + ``write_vocab``."""
    from scfm.tokenize.vocab import build_vocab, write_vocab

    if not path.exists():
        write_vocab(build_vocab(h5ads, min_cells=0), path)
    return path


# --------------------------------------------------------------------------------------------
# Inputs inside the children
# --------------------------------------------------------------------------------------------


def load_input(item: dict[str, Any]) -> dict[str, Any]:
    """CSR + token mapping + inverse medians of one tokenize input (npz or real h5ad)."""
    import scipy.sparse as sp

    if item["type"] == "npz":
        z = np.load(item["path"])
        x = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        col_token = (np.arange(x.shape[1]) + N_SPECIAL).astype(np.int32)
        inv = np.ones(x.shape[1] + N_SPECIAL)
        inv[N_SPECIAL:] = 1.0 / z["gene_median"]
        return {"x": x, "col_token": col_token, "n_vocab": x.shape[1] + N_SPECIAL, "inv": inv}
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ad.read_h5ad(item["path"])
    x = sp.csr_matrix(a.X)
    out: dict[str, Any] = {"x": x}
    if item.get("vocab"):
        from scfm.shard.stats import inverse_medians
        from scfm.tokenize.vocab import Vocab

        vocab = Vocab.read(item["vocab"])
        out.update(
            col_token=vocab.map_genes(a.var_names),
            n_vocab=len(vocab),
            inv=inverse_medians(item["gene_stats"], len(vocab)),
        )
    return out


def _chunks(x: Any, size: int) -> list[Any]:
    return [x[s : s + size] for s in range(0, x.shape[0], size)]


def _repeats(seconds_once: float, budget: float, max_reps: int) -> int:
    return int(max(1, min(max_reps, budget // max(seconds_once, 1e-6))))


# --------------------------------------------------------------------------------------------
# Steps (each runs in a fresh child process)
# --------------------------------------------------------------------------------------------


def step_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Import what every scfm step imports; nothing else."""
    import anndata  # noqa: F401
    import pyarrow  # noqa: F401

    import scfm.shard.stats
    import scfm.shard.writer
    import scfm.tokenize.tokenizers  # noqa: F401

    return {}


def step_compile(spec: dict[str, Any]) -> dict[str, Any]:
    """First ``tokenize_csr`` call per kind on 64 tiny cells: JIT compile (empty
    ``NUMBA_CACHE_DIR``) or load from numba's on-disk cache (``spec['cache'] == 'warm'``)."""
    import scipy.sparse as sp

    from scfm.tokenize.tokenizers import TokenizerConfig, tokenize_csr

    rng = np.random.default_rng(0)
    x = sp.random(64, 500, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    x.data = np.ceil(x.data * 10).astype(np.float32)
    col_token = (np.arange(500) + N_SPECIAL).astype(np.int32)
    parts = {}
    for name in ("binned", "rank", "continuous", "counts"):
        cfg = TokenizerConfig(**TOKENIZERS[name])
        t0 = time.perf_counter()
        tokenize_csr(
            x,
            col_token,
            cfg,
            n_special=N_SPECIAL,
            n_vocab=500 + N_SPECIAL,
            inv_median=np.ones(500 + N_SPECIAL),
        )
        parts[f"first call {name}"] = time.perf_counter() - t0
    return {"parts": parts, "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR", "default")}


def step_tok_scfm(spec: dict[str, Any]) -> dict[str, Any]:
    """scfm ``tokenize_csr`` per input and tokenizer, warm, chunk by chunk, median of repeats."""
    from scfm.tokenize.tokenizers import TokenizerConfig, cell_seeds, tokenize_csr

    rows = []
    for item in spec["inputs"]:
        inp = load_input(item)
        x = inp["x"]
        chunks = _chunks(x, spec["chunk_cells"])
        starts = np.cumsum([0] + [c.shape[0] for c in chunks])
        for name in spec["tokenizers"]:
            cfg = TokenizerConfig(**TOKENIZERS[name])
            seeds = [
                cell_seeds(cfg.seed, item["name"], np.arange(a, a + c.shape[0]))
                for a, c in zip(starts, chunks, strict=False)
            ]
            kw = {"n_special": N_SPECIAL, "n_vocab": inp["n_vocab"], "inv_median": inp["inv"]}

            tokenize_csr(x[:64], inp["col_token"], cfg, **kw)  # warm-up (cache load)
            run = partial(_run_scfm, tokenize_csr, chunks, seeds, inp["col_token"], cfg, kw)
            times, n_tok = _measure(run, spec)
            rows.append(_tok_row(item["name"], f"scfm {name}", x, times, n_tok))
    return {"rows": rows}


def _run_scfm(tokenize_csr, chunks, seeds, col_token, cfg, kw) -> int:
    n_tok = 0
    for c, s in zip(chunks, seeds, strict=True):
        n_tok += int(tokenize_csr(c, col_token, cfg, seeds=s, **kw).offsets[-1])
    return n_tok


def _measure(run: Any, spec: dict[str, Any]) -> tuple[list[float], int]:
    """Run once; repeat (up to ``max_reps`` runs) while within ``budget`` seconds."""
    times = []
    t0 = time.perf_counter()
    n_tok = run()
    times.append(time.perf_counter() - t0)
    for _ in range(_repeats(times[0], spec["budget"], spec["max_reps"]) - 1):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times, n_tok


def _tok_row(inp: str, method: str, x: Any, times: list[float], n_tok: int) -> dict[str, Any]:
    sec = statistics.median(times)
    return {
        "input": inp,
        "method": method,
        "cells": int(x.shape[0]),
        "seconds": sec,
        "repeats": len(times),
        "cells_per_s": x.shape[0] / sec,
        "tokens_per_cell": n_tok / x.shape[0],
        "nnz_per_cell": x.nnz / x.shape[0],
    }


def step_tok_numpy_rank(spec: dict[str, Any]) -> dict[str, Any]:
    """Reference rank encoding in plain numpy, one cell at a time (normalise by total and gene
    median, ``argsort`` descending, first ``max_len``): what a per-cell Python loop costs.
    Written for this benchmark; not Geneformer's code."""
    max_len = TOKENIZERS["rank"]["max_len"]
    rows = []
    for item in spec["inputs"]:
        inp = load_input(item)
        x, col_token, inv = inp["x"], inp["col_token"], inp["inv"]
        times, n_tok = _measure(partial(_run_numpy_rank, x, col_token, inv, max_len), spec)
        rows.append(
            _tok_row(item["name"], "numpy per-cell argsort rank (reference)", x, times, n_tok)
        )
    return {"rows": rows}


def _run_numpy_rank(x: Any, col_token: np.ndarray, inv: np.ndarray, max_len: int) -> int:
    totals = np.asarray(x.sum(axis=1)).ravel()
    indptr, indices, data = x.indptr, x.indices, x.data
    n_tok = 0
    for i in range(x.shape[0]):
        a, b = indptr[i], indptr[i + 1]
        tok = col_token[indices[a:b]]
        ok = tok >= 0
        tok, vals = tok[ok], data[a:b][ok]
        score = vals * (1e4 / totals[i]) * inv[tok]
        n_tok += tok[np.argsort(-score, kind="stable")][:max_len].size
    return n_tok


def _run_scgpt(binning: Any, x: Any, n_bins: int) -> int:
    indptr, data = x.indptr, x.data
    n_tok = 0
    for i in range(x.shape[0]):
        n_tok += binning(data[indptr[i] : indptr[i + 1]], n_bins).size
    return n_tok


def load_scgpt_preprocess() -> Any:
    """scGPT's released ``preprocess.py``, loaded unmodified with a stub ``scgpt`` module."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("scgpt")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scgpt is not installed in this interpreter (see --peer-python)")
    path = Path(next(iter(spec.submodule_search_locations))) / "preprocess.py"
    stub = types.ModuleType("scgpt")
    stub.logger = logging.getLogger("scGPT")
    sys.modules["scgpt"] = stub
    mspec = importlib.util.spec_from_file_location("scgpt_preprocess", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    module.__scgpt_version__ = version("scgpt")
    return module


def step_tok_scgpt(spec: dict[str, Any]) -> dict[str, Any]:
    """scGPT ``binning(row, 51)`` on each cell's nonzero values, cell by cell (its Preprocessor
    bins the nonzeros of each row this way); then its whole ``Preprocessor(binning=51)`` on a
    dense subset (the released path: densify the matrix, then the same loop over rows)."""
    pre = load_scgpt_preprocess()
    n_bins = TOKENIZERS["binned"]["n_bins"]
    rows = []
    np.random.seed(0)  # its _digitize breaks ties with np.random.rand
    for item in spec["inputs"]:
        x = load_input({**item, "vocab": None})["x"]
        times, n_tok = _measure(partial(_run_scgpt, pre.binning, x, n_bins), spec)
        rows.append(
            _tok_row(
                item["name"], f"scGPT {pre.__scgpt_version__} binning() per cell", x, times, n_tok
            )
        )
        if item["type"] == "npz" and spec.get("preprocessor_cells"):
            import anndata as ad

            sub = x[: spec["preprocessor_cells"]]
            adata = ad.AnnData(X=sub.toarray())
            proc = pre.Preprocessor(
                use_key="X",
                filter_gene_by_counts=False,
                filter_cell_by_counts=False,
                normalize_total=False,
                log1p=False,
                subset_hvg=False,
                binning=n_bins,
            )
            t0 = time.perf_counter()
            proc(adata)
            sec = time.perf_counter() - t0
            rows.append(
                _tok_row(
                    item["name"],
                    "scGPT Preprocessor(binning=51), dense rows",
                    sub,
                    [sec],
                    int(sub.nnz),
                )
            )
        del x
    return {"rows": rows, "scgpt_version": pre.__scgpt_version__, "numpy": np.__version__}


def step_gene_stats(spec: dict[str, Any]) -> dict[str, Any]:
    """scfm ``gene_stats`` (nonzero medians for rank) over the given files."""
    from scfm.shard.stats import gene_stats
    from scfm.tokenize.vocab import Vocab

    gene_stats(
        spec["datasets"], Vocab.read(spec["vocab"]), spec["output"], chunk_cells=spec["chunk_cells"]
    )
    return {}


def step_shard(spec: dict[str, Any]) -> dict[str, Any]:
    """scfm ``shard_dataset``: h5ad -> Arrow shards + manifest (shards deleted afterwards
    unless ``keep``, to save disk)."""
    from scfm.shard.writer import shard_dataset

    out = Path(spec["output"])
    manifest = shard_dataset(
        spec["input"],
        out,
        dataset=spec["dataset"],
        vocab_path=spec["vocab"],
        tokenizer=TOKENIZERS[spec["tokenizer"]],
        split=SPLIT,
        gene_stats=spec.get("gene_stats"),
        chunk_cells=spec["chunk_cells"],
    )
    size = sum(p.stat().st_size for p in out.rglob("*.arrow"))
    n_tok = sum(s["n_tokens"] for s in manifest["shards"])
    if not spec.get("keep"):
        shutil.rmtree(out)
    return {
        "out_bytes": size,
        "n_shards": len(manifest["shards"]),
        "n_cells": manifest["n_cells"],
        "tokens_per_cell": n_tok / max(manifest["n_cells"], 1),
    }


STEPS = {
    "baseline": step_baseline,
    "compile": step_compile,
    "tok_scfm": step_tok_scfm,
    "tok_numpy_rank": step_tok_numpy_rank,
    "tok_scgpt": step_tok_scgpt,
    "gene_stats": step_gene_stats,
    "shard": step_shard,
}
SCFM_FREE = {"tok_scgpt"}  # steps that run in the peer's interpreter, without scfm


def run_child(step: str, spec: dict[str, Any]) -> None:
    """Inside the child: run one step, write its result as JSON."""
    # imports are not timed: step_baseline runs first, except for the peer and the JIT compile
    _harness.run_child(
        step, spec, STEPS, step_baseline, no_baseline=SCFM_FREE | {"compile"}, top=20
    )


def run_step(
    step: str,
    label: str,
    spec: dict[str, Any],
    ctx: dict[str, Any],
    python: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``step`` in a fresh interpreter pinned to one core; return its result."""
    result, spec, wall = _harness.run_step(
        __file__, step, label, spec, python=python, env=env, one_thread=True, **ctx
    )
    result.update(
        label=label,
        step=step,
        wall_process=wall,
        loadavg_1min=os.getloadavg()[0],
        spec={k: v for k, v in spec.items() if k not in ("result", "work", "label")},
    )
    print(
        f" {result['seconds_step']:.1f} s, peak RSS {gib(result['peak_rss']):.2f} GiB", flush=True
    )
    return result


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def ensure(path: Path, make: Any, what: str, inputs: dict[str, Any]) -> None:
    """Generate a cached input once; record how long it took."""
    if path.exists():
        print(f"reusing {path.name}")
        inputs[path.name] = {"path": str(path), "cached": True}
        return
    print(f"generating {what} {path.name} ...", end="", flush=True)
    sec = make()
    print(f" {sec:.1f} s")
    inputs[path.name] = {"path": str(path), "cached": False, "seconds": sec}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the inputs and run every step."""
    out = args.out.resolve()
    work = out / f"run_tokenize_shard{args.tag}"
    work.mkdir(parents=True, exist_ok=True)
    ctx = {"work": work, "cpu": None if args.cpu < 0 else args.cpu}
    synth = Synth(args.n_genes, args.nnz, args.seed)
    g = args.n_genes
    inputs: dict[str, Any] = {}

    # inputs
    tok_npz = out / f"tokinput_{args.tok_cells}c_{g}g_{args.nnz}nnz_s{args.seed}.npz"
    ensure(tok_npz, lambda: write_synthetic_npz(tok_npz, args.tok_cells, synth), "CSR", inputs)
    e2e = out / f"synthetic_tok_{args.e2e_cells}c_{g}g_{args.nnz}nnz_s{args.seed}.h5ad"
    ensure(e2e, lambda: write_synthetic_h5ad(e2e, args.e2e_cells, synth), "h5ad", inputs)
    rss_synth = Synth(args.n_genes, args.rss_nnz, args.seed)
    rss_files = []
    for n in args.rss_cells:
        p = out / f"synthetic_tok_{n}c_{g}g_{args.rss_nnz}nnz_s{args.seed}.h5ad"
        ensure(p, lambda p=p, n=n: write_synthetic_h5ad(p, n, rss_synth), "h5ad", inputs)
        rss_files.append((n, p))
    for meta in inputs.values():
        meta.update(size=file_size(meta["path"]))
        if meta["path"].endswith(".h5ad"):
            meta.update(nnz=_harness.h5ad_nnz(meta["path"]))
    vocab = make_vocab({"synthetic": e2e}, out / f"vocab_synthetic_{g}g.tsv")
    real = prepare_real(out) if not args.skip_real else {}
    real_vocab = make_vocab(real, out / "real" / "vocab.tsv") if real else None
    base = {"chunk_cells": args.chunk_cells}
    results: list[dict[str, Any]] = []

    # 1. compile, tokenize only
    results.append(run_step("baseline", "baseline", base, ctx))
    with tempfile.TemporaryDirectory(prefix="numba_cold_") as cold:
        results.append(
            run_step("compile", "jit_compile_cold", base, ctx, env={"NUMBA_CACHE_DIR": cold})
        )
    results.append(run_step("compile", "jit_cache_load", base, ctx))
    real_stats = out / "real" / "gene_stats.tsv"
    if real:
        results.append(
            run_step(
                "gene_stats",
                "gene_stats_real",
                {
                    **base,
                    "datasets": {k: str(v) for k, v in real.items()},
                    "vocab": str(real_vocab),
                    "output": str(real_stats),
                },
                ctx,
            )
        )
    tok_inputs = [{"name": "synthetic", "type": "npz", "path": str(tok_npz)}]
    tok_inputs += [
        {
            "name": k,
            "type": "h5ad",
            "path": str(v),
            "vocab": str(real_vocab),
            "gene_stats": str(real_stats),
        }
        for k, v in real.items()
    ]
    tok = {**base, "inputs": tok_inputs, "budget": args.budget, "max_reps": 3}
    results.append(
        run_step("tok_scfm", "tokenize_scfm", {**tok, "tokenizers": list(TOKENIZERS)}, ctx)
    )
    results.append(run_step("tok_numpy_rank", "tokenize_numpy_rank", tok, ctx))
    peer = args.peer_python
    if peer and Path(peer).exists():
        results.append(
            run_step(
                "tok_scgpt",
                "tokenize_scgpt",
                {**tok, "preprocessor_cells": args.preprocessor_cells},
                ctx,
                python=peer,
            )
        )
    else:
        print(f"  (no peer interpreter at {peer}: scGPT rows skipped)")

    # 2. end to end
    stats = work / "gene_stats_synthetic.tsv"
    results.append(
        run_step(
            "gene_stats",
            "gene_stats_synthetic",
            {
                **base,
                "datasets": {"synthetic": str(e2e)},
                "vocab": str(vocab),
                "output": str(stats),
                "profile": args.profile,
            },
            ctx,
        )
    )
    shard = {
        **base,
        "vocab": str(vocab),
        "gene_stats": str(stats),
        "profile": args.profile,
        "keep": args.keep_shards,
    }
    for tk in ("binned", "rank"):
        results.append(
            run_step(
                "shard",
                f"shard_{tk}_synthetic_{args.e2e_cells}",
                {
                    **shard,
                    "input": str(e2e),
                    "dataset": "synthetic",
                    "tokenizer": tk,
                    "output": str(work / f"shards_{tk}_e2e"),
                    "cells": args.e2e_cells,
                },
                ctx,
            )
        )
        for name, path in real.items():
            results.append(
                run_step(
                    "shard",
                    f"shard_{tk}_{name}",
                    {
                        **base,
                        "vocab": str(real_vocab),
                        "gene_stats": str(real_stats),
                        "input": str(path),
                        "dataset": name,
                        "tokenizer": tk,
                        "output": str(work / f"shards_{tk}_{name}"),
                        "keep": args.keep_shards,
                    },
                    ctx,
                )
            )

    # 3. peak RSS, two sizes 4x apart
    for tk in args.rss_tokenizers:
        for n, p in rss_files:
            results.append(
                run_step(
                    "shard",
                    f"rss_shard_{tk}_{n}",
                    {
                        **shard,
                        "profile": False,
                        "input": str(p),
                        "dataset": "synthetic",
                        "tokenizer": tk,
                        "output": str(work / f"shards_{tk}_rss_{n}"),
                        "cells": n,
                    },
                    ctx,
                )
            )
    m = _harness.machine_info()
    m["versions"].update(_harness.package_versions(PACKAGES))
    peer_info = next((r for r in results if r["step"] == "tok_scgpt"), None)
    if peer_info:
        m["versions"]["scgpt (peer venv)"] = peer_info["scgpt_version"]
        m["versions"]["numpy (peer venv)"] = peer_info["numpy"]
    return {
        "args": _harness.report_args(args),
        "machine": m,
        "inputs": inputs,
        "results": results,
        "real": {k: str(v) for k, v in real.items()},
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def tokenize_table(report: dict[str, Any]) -> str:
    """Tokenize-only rows per input with the ratio to scGPT's per-cell binning."""
    rows = [r for res in report["results"] if "rows" in res for r in res["rows"]]
    lines = _harness.md_header(
        [
            *("input", "method", "cells", "nnz/cell", "tokens/cell", "repeats", "cells/s"),
            "/ scGPT binning()",
        ],
        "llrrrrrr",
    )
    for inp in dict.fromkeys(r["input"] for r in rows):
        sub = [r for r in rows if r["input"] == inp]
        peer = next((r for r in sub if "binning() per cell" in r["method"]), None)
        for r in sub:
            ratio = f"{r['cells_per_s'] / peer['cells_per_s']:.1f}x" if peer else "-"
            lines.append(
                f"| {inp} | {r['method']} | {r['cells']:,} | {r['nnz_per_cell']:,.0f} | "
                f"{r['tokens_per_cell']:,.0f} | {r['repeats']} | {_fmt_rate(r['cells_per_s'])} | "
                f"{ratio} |"
            )
    return "\n".join(lines) + "\n"


def steps_table(report: dict[str, Any]) -> str:
    """Every child process: time, cells/s, peak RSS, output size."""
    lines = _harness.md_header(
        ["step", "cells", "time (s)", "cells/s", "peak RSS (GiB)", "output (GiB)", "detail"],
        "lrrrrrl",
    )
    for r in report["results"]:
        if "rows" in r:
            continue
        n = r.get("n_cells") or r["spec"].get("cells") or 0
        rate = _fmt_rate(n / r["seconds_step"]) if n else "-"
        detail = ", ".join(f"{k} {v:.2f} s" for k, v in r.get("parts", {}).items())
        if "n_shards" in r:
            detail = f"{r['n_shards']} shards, {r['tokens_per_cell']:,.0f} tokens/cell"
        out = f"{gib(r['out_bytes']):.2f}" if r.get("out_bytes") else "-"
        lines.append(
            f"| {r['label']} | {n:,} | {r['seconds_step']:.2f} | {rate} | "
            f"{gib(r['peak_rss']):.2f} | {out} | {detail} |"
        )
    return "\n".join(lines) + "\n"


def goals(report: dict[str, Any]) -> list[str]:
    """The issue's goals, each with the measured number."""
    res = {r["label"]: r for r in report["results"]}
    rows = [r for x in report["results"] if "rows" in x for r in x["rows"]]
    lines = []
    tok = {(r["input"], r["method"]): r for r in rows}
    for inp in dict.fromkeys(r["input"] for r in rows):
        peer = next(
            (r for r in rows if r["input"] == inp and "binning() per cell" in r["method"]), None
        )
        for name in ("binned", "binned_all", "rank"):
            r = tok.get((inp, f"scfm {name}"))
            if not r:
                continue
            s = f"tokenize {name:<10} {inp}: {r['cells_per_s']:>10,.0f} cells/s/core"
            s += " (goal >= 50k: " + ("met" if r["cells_per_s"] >= 5e4 else "NOT met") + ")"
            if peer:
                ratio = r["cells_per_s"] / peer["cells_per_s"]
                s += f"; {ratio:.1f}x scGPT binning() (goal >= 10x: "
                s += ("met" if ratio >= 10 else "NOT met") + ")"
            lines.append(s)
    for label, r in res.items():
        if label.startswith("shard_"):
            n = r["n_cells"]
            rate = n / r["seconds_step"]
            goal = E2E_GOALS["rank" if label.startswith("shard_rank") else "binned"]
            lines.append(
                f"end-to-end {label}: {rate:,.0f} cells/s/core "
                f"(goal >= {goal / 1e3:.0f}k: {'met' if rate >= goal else 'NOT met'}), "
                f"peak RSS {gib(r['peak_rss']):.2f} GiB"
            )
    for tk in report["args"]["rss_tokenizers"]:
        rss = [
            (r["spec"]["cells"], r["peak_rss"])
            for label, r in res.items()
            if label.startswith(f"rss_shard_{tk}_")
        ]
        if len(rss) >= 2:
            (n0, r0), (n1, r1) = rss[0], rss[-1]
            lines.append(
                f"peak RSS shard {tk}: {gib(r0):.2f} GiB at {n0:,} cells, {gib(r1):.2f} GiB at "
                f"{n1:,} ({n1 / n0:.0f}x cells: RSS x{r1 / r0:.2f}, +{gib(r1 - r0):.2f} GiB); "
                + (
                    f"goal <= 2 GB at 1M cells: {'met' if r1 <= 2e9 else 'NOT met'}"
                    if n1 >= 1_000_000
                    else "(goal is stated at 1M cells)"
                )
            )
    return lines


def print_report(report: dict[str, Any]) -> None:
    """Inputs, machine, the two tables, the goals, profiles."""
    m = report["machine"]
    print()
    for name, meta in report["inputs"].items():
        extra = f", {meta['nnz']:,} nonzeros" if "nnz" in meta else ""
        gen = "" if meta["cached"] else f", generated in {meta['seconds']:.1f} s"
        print(f"input {name}: {gib(meta['size']):.2f} GiB{extra}{gen}")
    _harness.print_machine(m)
    print("\n" + tokenize_table(report))
    print(steps_table(report))
    for line in goals(report):
        print(line)
    _harness.print_profiles(report["results"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = _harness.arg_parser(__doc__, STEPS)
    ap.add_argument("--n-genes", type=int, default=30_000)
    ap.add_argument("--nnz", type=int, default=2000, help="mean nonzero genes per cell")
    ap.add_argument("--tok-cells", type=int, default=50_000, help="cells of the tokenize input")
    ap.add_argument("--e2e-cells", type=int, default=200_000, help="cells of the shard input")
    ap.add_argument("--rss-cells", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--rss-nnz", type=int, default=500, help="nonzeros per cell, RSS inputs")
    ap.add_argument(
        "--rss-tokenizers", nargs="+", default=["binned", "rank"], choices=["binned", "rank"]
    )
    ap.add_argument("--chunk-cells", type=int, default=20_000, help="scfm's chunk (default)")
    ap.add_argument(
        "--preprocessor-cells",
        type=int,
        default=5000,
        help="cells given to scGPT's dense Preprocessor (0: skip)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=3.0,
        help="seconds per tokenize measurement before repeating (max 3 runs)",
    )
    ap.add_argument(
        "--peer-python",
        default="/tmp/peers/bin/python",
        help="interpreter with scgpt installed ('' to skip)",
    )
    ap.add_argument("--cpu", type=int, default=0, help="core to pin children to (-1: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache and work directory")
    ap.add_argument("--tag", default="", help="suffix of the work directory and results")
    ap.add_argument("--skip-real", action="store_true", help="skip ../shared/data/rna")
    ap.add_argument("--keep-shards", action="store_true", help="keep the written shards")
    ap.add_argument("--profile", action="store_true", help="cProfile gene_stats and shard steps")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: 5k tokenize, 20k shard, RSS 10k/40k cells",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.tok_cells, args.e2e_cells, args.rss_cells = 5000, 20_000, [10_000, 40_000]
        args.preprocessor_cells = min(args.preprocessor_cells, 1000)
        args.tag = args.tag or "_quick"
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, internally, one step of it)."""
    args = parse_args(argv)
    if _harness.child_dispatch(args, run_child):
        return
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    report = run_all(args)
    report["loadavg_1min"] = {
        "start": load0,
        "end": os.getloadavg()[0],
        "max_after_step": max(r["loadavg_1min"] for r in report["results"]),
    }
    report["total_seconds"] = time.perf_counter() - t0
    print_report(report)
    print(
        f"\ntotal {report['total_seconds'] / 60:.1f} min; 1-min load average "
        f"{report['loadavg_1min']} (other processes on the machine disturb the figures)"
    )
    _harness.save_report(
        report,
        args.out.resolve() / f"results_tokenize_shard{args.tag}",
        tokenize_table(report) + "\n" + steps_table(report) + "\n" + "\n".join(goals(report)),
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
