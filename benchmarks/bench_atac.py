"""Benchmark: scfm scATAC import + 500 bp tile matrix beside SnapATAC2, same file, same cores.

Issue 6. Each step runs in its own fresh Python process (helpers in ``_harness.py``); its peak
RSS is the child's ``VmHWM``, its time excludes interpreter start and imports (the child
imports scfm or snapatac2 before the timer starts; the ``baseline`` rows are those imports
alone). Both tools get both cores of the machine (no pinning).

* **scfm import** (``scfm_import``): ``load_genome("hg38", GENCODE v22)`` +
  ``scfm.atac.fragments.prepare_fragments`` (validation, BGZF, tabix) +
  ``scfm.atac.qc.barcode_qc`` (n_fragment, duplicates, chrM, TSS enrichment, nucleosome
  signal) + selection of barcodes with ``n_fragment >= --min-fragments-*``.
* **scfm tiles** (``scfm_tiles``): ``scfm.atac.tiles.tile_matrix(bin_size=500,
  counting="insertion")`` on the selected barcodes.
* **SnapATAC2 import** (``snap_import``): ``snapatac2.pp.import_fragments(file,
  chrom_sizes=<the same hg38 sizes as a dict>, file=<h5ad>, sorted_by_barcode=False,
  min_num_fragments=<the same threshold>, n_jobs=--peer-jobs)`` (its QC: n_fragment,
  frac_dup, frac_mito; no TSSe).
* **SnapATAC2 tiles** (``snap_tiles``): ``snapatac2.pp.add_tile_matrix(bin_size=500,
  counting_strategy="insertion", exclude_chroms=None, inplace=False, file=<h5ad>)``.
* **SnapATAC2 TSSe** (``snap_tsse``): ``snapatac2.metrics.tsse(adata, <GTF>)`` with the TSS
  set of our genome written by ``scfm.atac.genome.write_tss_gtf``: our import computes TSSe,
  theirs does not, so the report also gives their import + TSSe.
* **compare**: the two cell x bin matrices (same barcodes, same bins, aligned by name) must be
  equal entry for entry (nnz, max abs difference); our barcode_qc ``n_fragment``/``tsse``
  against SnapATAC2's ``n_fragment`` and ``metrics.tsse`` per barcode (Pearson, Spearman,
  max abs difference).

Inputs: ``../shared/data/atac/pbmc_multiome_fragments.tsv.gz`` (the real 10x PBMC excerpt,
``--rounds`` rounds, default 3, median reported) and a synthetic coordinate-sorted BGZF file of
``--n-fragments`` (default 50M, ``--synthetic-rounds`` rounds, default 1) over the hg38
chromosomes, generated once and cached in ``benchmarks/out/``: ~90% of fragments from cells
with 2k-20k fragments (lognormal, median 6k), ~10% from background barcodes with 1-500,
2% on chrM, half of the nuclear fragments around 200k "peaks", a nucleosome ladder of
fragment lengths, identical fragments of a barcode merged. Rounds alternate the order of the
two tools; a warm-up round of both on the real file comes first (numba cache, page cache).

SnapATAC2 runs in its own virtualenv (``--peer-python``, default
``/tmp/snapatac2_venv/bin/python``: ``python3 -m venv /tmp/snapatac2_venv &&
/tmp/snapatac2_venv/bin/pip install snapatac2==2.9.0``); without it the peer steps are skipped.

Quick check (~2 min)::

    .venv/bin/python benchmarks/bench_atac.py --quick

Interval code beside bedtools (issue 17; pybedtools + the ``bedtools`` program)::

    .venv/bin/python benchmarks/bench_atac.py --intervals
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness  # noqa: E402
from _harness import file_size, gib  # noqa: E402

ROOT = HERE.parent
DEFAULT_OUT = HERE / "out"
SHARED = ROOT.parent / "shared" / "data"
REAL_FRAGMENTS = SHARED / "atac" / "pbmc_multiome_fragments.tsv.gz"
ANNOTATION = SHARED / "reference" / "human_gencode_v22_genes_hg38.tsv.gz"
PEER_PYTHON = "/tmp/snapatac2_venv/bin/python"
PACKAGES = ("numba", "pysam")
PEER_PACKAGES = ("snapatac2", "numpy", "anndata", "polars", "pandas")
PEER_STEPS = ("snap_import", "snap_tiles", "snap_tsse", "snap_export")

# synthetic file
CELL_SHARE = 0.90  # fragments from real cells; the rest from background barcodes
MITO_SHARE = 0.02  # fragments on chrM
PEAK_SHARE = 0.5  # nuclear fragments drawn around peak centres (the rest uniform)
N_PEAKS = 200_000
LENGTH_CLASSES = ((0.55, 65.0, None), (0.33, 200.0, 25.0), (0.10, 400.0, 35.0), (0.02, 600, 45))


# --------------------------------------------------------------------------------------------
# Synthetic fragment file (driver side, scfm's venv)
# --------------------------------------------------------------------------------------------


def _depths(rng: Any, total: int, median: float, sigma: float, lo: int, hi: int) -> Any:
    """Per-barcode fragment counts, lognormal clipped to [lo, hi], summing to >= ``total``."""
    import numpy as np

    out = []
    have = 0
    while have < total:
        d = np.clip(np.exp(rng.normal(np.log(median), sigma, 100_000)), lo, hi).astype(np.int64)
        out.append(d)
        have += int(d.sum())
    d = np.concatenate(out)
    k = int(np.searchsorted(np.cumsum(d), total)) + 1
    return d[:k]


def _barcode_names(rng: Any, n: int) -> list[str]:
    """``n`` distinct random 16-base barcodes with the 10x ``-1`` suffix."""
    import numpy as np

    vals = np.unique(rng.integers(0, 4**16, int(n * 1.1) + 100, dtype=np.int64))
    vals = rng.permutation(vals)[:n]
    if len(vals) < n:
        raise RuntimeError("not enough distinct barcodes drawn")
    digits = (vals[:, None] >> (2 * np.arange(16))) & 3
    letters = np.array(list("ACGT"))[digits]
    return [s + "-1" for s in np.ascontiguousarray(letters).view("<U16").ravel().tolist()]


def _lengths(rng: Any, n: int) -> Any:
    """Fragment lengths with a nucleosome ladder (nucleosome-free, mono-, di-, tri-)."""
    import numpy as np

    kind = rng.choice(len(LENGTH_CLASSES), n, p=[c[0] for c in LENGTH_CLASSES])
    length = np.exp(rng.normal(np.log(LENGTH_CLASSES[0][1]), 0.35, n))
    for k, (_, mean, sd) in enumerate(LENGTH_CLASSES[1:], start=1):
        m = kind == k
        length[m] = rng.normal(mean, sd, int(m.sum()))
    return np.clip(length, 20, 1000).astype(np.int64)


def write_synthetic(path: Path, n_fragments: int, seed: int) -> dict[str, Any]:
    """Write a coordinate-sorted BGZF fragment file (+ .tbi) over hg38; return its metadata."""
    import numpy as np

    from scfm.atac.fragments import FragmentBlock, write_fragments
    from scfm.atac.genome import builtin_chrom_sizes

    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 6])
    sizes = builtin_chrom_sizes("hg38")
    names = list(sizes)
    length = np.array([sizes[c] for c in names], np.int64)
    nuclear = np.array([c != "chrM" for c in names])
    target = int(n_fragments * 1.002) + 1000  # merged duplicates are rare; stay above n
    cells = _depths(rng, int(target * CELL_SHARE), 6000, 0.55, 2000, 20000)
    background = _depths(rng, target - int(cells.sum()), 15, 1.0, 1, 500)
    counts = np.r_[cells, background]
    n_bc = len(counts)
    if n_bc >= 2**25:
        raise ValueError("too many barcodes for the sort key")
    bc = np.repeat(np.arange(n_bc, dtype=np.int32), counts)
    rng.shuffle(bc)
    p = np.where(nuclear, length / length[nuclear].sum() * (1 - MITO_SHARE), MITO_SHARE)
    per_chrom = rng.multinomial(len(bc), p / p.sum())
    bounds = np.r_[0, np.cumsum(per_chrom)]
    barcodes = _barcode_names(rng, n_bc)
    n_written = [0]

    def blocks():
        for c, name in enumerate(names):
            n, size = int(per_chrom[c]), int(length[c])
            if n == 0:
                continue
            b = bc[bounds[c] : bounds[c + 1]].astype(np.int64)
            frag = _lengths(rng, n)
            start = rng.integers(0, size - frag)
            if nuclear[c]:
                n_pk = max(1, round(N_PEAKS * size / length[nuclear].sum()))
                centres = rng.integers(1000, size - 1000, n_pk)
                pk = np.flatnonzero(rng.random(n) < PEAK_SHARE)
                jitter = np.round(rng.normal(0, 80, len(pk))).astype(np.int64)
                start[pk] = centres[rng.integers(0, n_pk, len(pk))] + jitter - frag[pk] // 2
                start = np.clip(start, 0, size - frag)
            # one sort key: start (28 bits), length (10 bits), barcode (25 bits); unique merges
            # identical fragments of a barcode (their counts are redrawn below)
            key = np.unique((start << 35) | (frag << 25) | b)
            start, frag, b = key >> 35, (key >> 25) & 1023, key & (2**25 - 1)
            n_written[0] += len(key)
            yield FragmentBlock(name, start, start + frag, b, 1 + rng.poisson(0.5, len(key)))

    write_fragments(path, blocks(), barcodes)
    meta = {
        "path": str(path),
        "n_fragments": n_written[0],
        "n_barcodes": n_bc,
        "n_cell_barcodes": len(cells),
        "fragments_per_cell_median": float(np.median(cells)),
        "seconds_generate": round(time.perf_counter() - t0, 1),
        "size": file_size(path),
        "seed": seed,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta


# --------------------------------------------------------------------------------------------
# Steps (each runs in a fresh child process)
# --------------------------------------------------------------------------------------------


def baseline(spec: dict[str, Any]) -> None:
    """What every step of one side imports, before its timer starts."""
    if spec.get("peer"):
        import snapatac2  # noqa: F401
    else:
        import anndata  # noqa: F401
        import pysam  # noqa: F401

        import scfm.atac.fragments
        import scfm.atac.genome
        import scfm.atac.qc
        import scfm.atac.tiles  # noqa: F401


def step_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Imports only (done by :func:`baseline`): the RSS floor of one side's steps."""
    return _peer_versions() if spec.get("peer") else {}


def _peer_versions() -> dict[str, Any]:
    from importlib.metadata import version

    return {"versions": {p: version(p) for p in PEER_PACKAGES}}


def step_scfm_import(spec: dict[str, Any]) -> dict[str, Any]:
    """Genome + prepare_fragments (validate, BGZF, tabix) + barcode_qc + barcode selection."""
    from scfm.atac.fragments import prepare_fragments
    from scfm.atac.genome import load_genome
    from scfm.atac.qc import barcode_qc, filter_barcodes

    parts = {}
    t = time.perf_counter()
    genome = load_genome("hg38", spec["annotation"])
    parts["load_genome"] = time.perf_counter() - t
    t = time.perf_counter()
    stats = prepare_fragments(
        spec["input"], spec["fragments"], genome=genome, tmp_dir=spec["workdir"]
    )
    parts["prepare_fragments"] = time.perf_counter() - t
    t = time.perf_counter()
    qc, _ = barcode_qc(spec["fragments"], genome)
    parts["barcode_qc"] = time.perf_counter() - t
    t = time.perf_counter()
    keep = filter_barcodes(qc, min_fragments=spec["min_fragments"])
    qc.to_csv(spec["qc"], sep="\t")
    Path(spec["barcodes"]).write_text("\n".join(qc.index[keep.to_numpy()]) + "\n")
    parts["select_write"] = time.perf_counter() - t
    return {
        "parts": parts,
        "n_fragments": stats["n_fragments_in"],
        "n_fragments_out": stats["n_fragments_out"],
        "n_barcodes": len(qc),
        "n_cells": int(keep.sum()),
        "out_bytes": file_size(spec["fragments"]),
    }


def step_scfm_tiles(spec: dict[str, Any]) -> dict[str, Any]:
    """tile_matrix(bin_size, counting='insertion') of the selected barcodes."""
    from scfm.atac.genome import load_genome
    from scfm.atac.tiles import tile_matrix

    genome = load_genome("hg38")
    cells = Path(spec["barcodes"]).read_text().split()
    summary = tile_matrix(spec["fragments"], genome, cells, spec["h5ad"], bin_size=spec["bin_size"])
    rec = summary.record
    return {
        "parts": {
            "read + count": rec["seconds_counting"],
            "var, CSR, write": rec["seconds"] - rec["seconds_counting"],
        },
        "n_cells": rec["n_cells"],
        "n_bins": rec["n_features"],
        "nnz": rec["nnz"],
        "out_bytes": file_size(spec["h5ad"]),
    }


def step_snap_import(spec: dict[str, Any]) -> dict[str, Any]:
    """snapatac2.pp.import_fragments to an h5ad (sorting by barcode, its QC)."""
    import numpy as np
    import snapatac2 as snap

    sizes = json.loads(Path(spec["chrom_sizes"]).read_text())
    adata = snap.pp.import_fragments(
        spec["input"],
        chrom_sizes=sizes,
        file=spec["h5ad"],
        sorted_by_barcode=False,
        min_num_fragments=spec["min_fragments"],
        n_jobs=spec["n_jobs"],
        tempdir=spec["workdir"],
    )
    n_cells = adata.n_obs
    n_frag = int(np.asarray(adata.obs["n_fragment"]).sum())
    adata.close()
    return {
        "n_cells": n_cells,
        "n_fragment_cells": n_frag,
        "out_bytes": file_size(spec["h5ad"]),
        **_peer_versions(),
    }


def step_snap_tiles(spec: dict[str, Any]) -> dict[str, Any]:
    """snapatac2.pp.add_tile_matrix(insertion, no excluded chromosomes) into a new h5ad."""
    import snapatac2 as snap

    adata = snap.read(spec["import_h5ad"], backed="r")
    tiles = snap.pp.add_tile_matrix(
        adata,
        bin_size=spec["bin_size"],
        counting_strategy="insertion",
        exclude_chroms=None,
        inplace=False,
        file=spec["h5ad"],
        n_jobs=spec["n_jobs"],
    )
    shape = list(tiles.shape)
    tiles.close()
    adata.close()
    return {"n_cells": shape[0], "n_bins": shape[1], "out_bytes": file_size(spec["h5ad"])}


def step_snap_tsse(spec: dict[str, Any]) -> dict[str, Any]:
    """snapatac2.metrics.tsse with our TSS set (GTF), per barcode, written as a TSV."""
    import snapatac2 as snap

    adata = snap.read(spec["import_h5ad"], backed="r")
    res = snap.metrics.tsse(adata, spec["gtf"], inplace=False, n_jobs=spec["n_jobs"])
    names = list(adata.obs_names)
    adata.close()
    lines = [f"{b}\t{v!r}" for b, v in zip(names, res["tsse"].tolist(), strict=True)]
    Path(spec["tsv"]).write_text("barcode\ttsse\n" + "\n".join(lines) + "\n")
    return {"n_cells": len(names), "library_tsse": float(res["library_tsse"])}


def step_snap_export(spec: dict[str, Any]) -> dict[str, Any]:
    """Not timed against anything: SnapATAC2's tile matrix and import QC as npz/TSV.

    Its h5ad compresses numeric arrays with Blosc (HDF5 filter 32001), which scfm's h5py
    cannot read without a plugin; the string indexes (gzip) are read in ``compare``.
    """
    import numpy as np
    import snapatac2 as snap

    imp = snap.read(spec["import_h5ad"], backed="r")
    cols = {k: np.asarray(imp.obs[k]).tolist() for k in ("n_fragment", "frac_dup", "frac_mito")}
    names = list(imp.obs_names)
    imp.close()
    lines = ["\t".join(["barcode", *cols])]
    lines += ["\t".join([b, *(repr(cols[k][i]) for k in cols)]) for i, b in enumerate(names)]
    Path(spec["qc_tsv"]).write_text("\n".join(lines) + "\n")
    tiles = snap.read(spec["tiles_h5ad"], backed="r")
    x = tiles.X[:]
    tiles.close()
    np.savez(spec["npz"], data=x.data, indices=x.indices, indptr=x.indptr, shape=x.shape)
    return {"nnz": int(x.nnz)}


def _h5_index(f: Any, group: str) -> Any:
    g = f[group]
    return g[g.attrs.get("_index", "_index")].asstr()[:]


def _h5_csr(path: str, npz: str | None = None) -> tuple[Any, Any, Any]:
    """(CSR matrix, obs names, var names) of an h5ad read with h5py; X from ``npz`` if given."""
    import h5py
    import numpy as np
    import scipy.sparse as sp

    with h5py.File(path, "r") as f:
        if npz:
            z = np.load(npz)
            x = {k: z[k] for k in ("data", "indices", "indptr")}
            shape = tuple(int(v) for v in z["shape"])
        else:
            x = f["X"]
            shape = tuple(int(v) for v in x.attrs["shape"])
        m = sp.csr_matrix((x["data"][:], x["indices"][:], x["indptr"][:]), shape=shape)
        return m, _h5_index(f, "obs"), _h5_index(f, "var")


def _corr(a: Any, b: Any) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return {"n": len(a)}
    return {
        "n": len(a),
        "pearson": float(np.corrcoef(a, b)[0, 1]),
        "spearman": float(pd.Series(a).corr(pd.Series(b), method="spearman")),
        "max_abs_diff": float(np.abs(a - b).max()),
        "n_equal": int((a == b).sum()),
    }


def step_compare(spec: dict[str, Any]) -> dict[str, Any]:
    """Tile matrices entry for entry; n_fragment and TSSe per barcode."""
    import numpy as np
    import pandas as pd

    out: dict[str, Any] = {}
    # per-barcode QC
    ours = pd.read_csv(spec["qc"], sep="\t", index_col=0)
    theirs = pd.read_csv(spec["snap_qc"], sep="\t", index_col=0)
    selected = Path(spec["barcodes"]).read_text().split()
    out["barcodes"] = {
        "ours_selected": len(selected),
        "theirs_imported": len(theirs),
        "same_set": set(selected) == set(theirs.index),
    }
    common = theirs.index.intersection(ours.index)
    o, t = ours.loc[common], theirs.loc[common]
    out["n_fragment"] = _corr(o["n_fragment"].to_numpy(float), t["n_fragment"].to_numpy(float))
    for k in ("frac_dup", "frac_mito"):
        out[k] = _corr(o[k].to_numpy(float), t[k].to_numpy(float))
    if Path(spec["snap_tsse"]).exists():
        tsse = pd.read_csv(spec["snap_tsse"], sep="\t", index_col=0)["tsse"]
        common = tsse.index.intersection(ours.index)
        a, b = ours.loc[common, "tsse"].to_numpy(float), tsse.loc[common].to_numpy(float)
        out["tsse"] = _corr(a, b)
        deep = ours.loc[common, "n_fragment"].to_numpy() >= spec["tsse_min_fragments"]
        out["tsse_deep"] = {**_corr(a[deep], b[deep]), "min_fragments": spec["tsse_min_fragments"]}
    # matrices
    a, a_obs, a_var = _h5_csr(spec["scfm_tiles"])
    b, b_obs, b_var = _h5_csr(spec["snap_tiles"], spec["snap_npz"])
    m: dict[str, Any] = {
        "shape_ours": list(a.shape),
        "shape_theirs": list(b.shape),
        "same_obs_order": bool(np.array_equal(a_obs, b_obs)),
        "same_var_order": bool(np.array_equal(a_var, b_var)),
        "nnz_ours": int(a.nnz),
        "nnz_theirs": int(b.nnz),
        "sum_ours": int(a.data.sum(dtype=np.int64)),
        "sum_theirs": int(b.data.sum(dtype=np.int64)),
        "dtype_ours": str(a.data.dtype),
        "dtype_theirs": str(b.data.dtype),
    }
    if not m["same_var_order"] and len(a_var) == len(b_var):
        i = int(np.argmax(a_var != b_var))
        m["first_var_difference"] = {"index": i, "ours": a_var[i], "theirs": b_var[i]}
    if not (m["same_obs_order"] and m["same_var_order"]):
        rows = pd.Index(b_obs).get_indexer(a_obs)
        cols = pd.Index(a_var).get_indexer(b_var)
        m["obs_missing_in_theirs"] = int((rows < 0).sum())
        m["var_missing_in_ours"] = int((cols < 0).sum())
        if (rows < 0).any() or (cols < 0).any() or a.shape != b.shape:
            m["identical"] = False
            out["matrix"] = m
            return out
        if not m["same_obs_order"]:
            b = b[rows]  # rows in our order
        if not m["same_var_order"]:
            b.indices = cols[b.indices].astype(np.int32)  # columns renamed to our bin numbers
            b.has_sorted_indices = False
    a.sort_indices()
    b.sort_indices()
    same_structure = np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    if same_structure:
        diff = np.abs(a.data.astype(np.int64) - b.data.astype(np.int64))
    else:
        d = a.astype(np.int64) - b.astype(np.int64)
        d.eliminate_zeros()
        diff = np.abs(d.data)
    m["same_structure"] = bool(same_structure)
    m["n_entries_differing"] = int((diff != 0).sum())
    m["max_abs_diff"] = int(diff.max()) if len(diff) else 0
    m["identical"] = bool(same_structure and m["max_abs_diff"] == 0)
    out["matrix"] = m
    return out


STEPS = {
    "baseline": step_baseline,
    "scfm_import": step_scfm_import,
    "scfm_tiles": step_scfm_tiles,
    "snap_import": step_snap_import,
    "snap_tiles": step_snap_tiles,
    "snap_tsse": step_snap_tsse,
    "snap_export": step_snap_export,
    "compare": step_compare,
}


def run_child(step: str, spec: dict[str, Any]) -> None:
    """Inside the child: imports first (untimed), then the step."""
    _harness.run_child(step, spec, STEPS, baseline, ignore_warnings=Warning, loadavg=True)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def peer_status(python: str) -> str | None:
    """None if ``python`` imports snapatac2, else why not."""
    if not python:
        return "no --peer-python given"
    if not Path(python).exists():
        return f"{python} does not exist"
    proc = subprocess.run(
        [python, "-c", "import snapatac2"], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        return f"{python} cannot import snapatac2: {proc.stderr.strip().splitlines()[-1:]}"
    return None


class Runner:
    """Runs steps, prints one line per step, collects the results."""

    def __init__(self, work: Path, peer: str | None) -> None:
        self.work = work
        self.peer = peer
        self.results: list[dict[str, Any]] = []

    def __call__(self, step: str, label: str, spec: dict[str, Any], **meta: Any) -> dict:
        python = self.peer if step in PEER_STEPS or spec.get("peer") else None
        spec = {**spec, "peer": bool(python)}
        result, _, wall = _harness.run_step(
            __file__, step, label, spec, work=self.work, python=python
        )
        result.update(label=label, step=step, wall_process=wall, spec=spec, **meta)
        parts = ", ".join(f"{k} {v:.2f}" for k, v in result.get("parts", {}).items())
        print(
            f" {result['seconds_step']:.2f} s, peak RSS {gib(result['peak_rss']):.2f} GiB"
            + (f" ({parts})" if parts else ""),
            flush=True,
        )
        self.results.append(result)
        return result


def _unlink(*paths: Any) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)
        Path(f"{p}.tbi").unlink(missing_ok=True)


def bench_input(
    run: Runner, name: str, path: Path, rounds: int, min_fragments: int, shared: dict, args
) -> dict[str, Any]:
    """Rounds of both tools on one fragment file (order alternating), then the comparison."""
    d = run.work / name
    d.mkdir(parents=True, exist_ok=True)
    p = {
        "fragments": d / "scfm_fragments.tsv.gz",
        "qc": d / "scfm_qc.tsv",
        "barcodes": d / "scfm_barcodes.txt",
        "scfm_tiles": d / "scfm_tiles.h5ad",
        "snap_import": d / "snap_import.h5ad",
        "snap_tiles": d / "snap_tiles.h5ad",
        "snap_tsse": d / "snap_tsse.tsv",
        "snap_qc": d / "snap_qc.tsv",
        "snap_npz": d / "snap_tiles.npz",
    }
    p = {k: str(v) for k, v in p.items()}
    base = {"input": str(path), "workdir": str(d), "bin_size": args.bin_size}
    ours = [
        (
            "scfm_import",
            {
                **base,
                "annotation": str(args.annotation),
                "fragments": p["fragments"],
                "qc": p["qc"],
                "barcodes": p["barcodes"],
                "min_fragments": min_fragments,
                "profile": args.profile,
            },
        ),
        (
            "scfm_tiles",
            {
                **base,
                "fragments": p["fragments"],
                "barcodes": p["barcodes"],
                "h5ad": p["scfm_tiles"],
                "profile": args.profile,
            },
        ),
    ]
    peer = {**base, "n_jobs": args.peer_jobs, "import_h5ad": p["snap_import"]}
    theirs = [
        (
            "snap_import",
            {
                **peer,
                "h5ad": p["snap_import"],
                "chrom_sizes": shared["chrom_sizes"],
                "min_fragments": min_fragments,
            },
        ),
        ("snap_tiles", {**peer, "h5ad": p["snap_tiles"]}),
        ("snap_tsse", {**peer, "gtf": shared["gtf"], "tsv": p["snap_tsse"]}),
    ]
    sides = [ours, theirs] if run.peer else [ours]
    plan = [("warmup", s) for s in sides] if name == "real" and args.warmup else []
    for r in range(rounds):
        plan += [(f"r{r}", s) for s in (sides if r % 2 == 0 else sides[::-1])]
    for rnd, side in plan:
        for step, spec in side:
            if step == "snap_import":
                _unlink(p["snap_import"])
            if step.endswith("tiles"):
                _unlink(spec["h5ad"])
            run(step, f"{name}_{step}_{rnd}", spec, input=name, round=rnd)
    comparison = None
    if run.peer and (name == "real" or args.compare_synthetic):
        export = {
            "import_h5ad": p["snap_import"],
            "tiles_h5ad": p["snap_tiles"],
            "qc_tsv": p["snap_qc"],
            "npz": p["snap_npz"],
        }
        run("snap_export", f"{name}_snap_export", export, input=name, round="compare")
        comparison = run(
            "compare",
            f"{name}_compare",
            {
                **{k: p[k] for k in ("qc", "barcodes", "scfm_tiles", "snap_tiles", "snap_qc")},
                **{k: p[k] for k in ("snap_npz", "snap_tsse")},
                "tsse_min_fragments": args.tsse_min_fragments,
            },
            input=name,
            round="compare",
        )
    if not args.keep:
        for k in ("fragments", "scfm_tiles", "snap_import", "snap_tiles", "snap_npz"):
            _unlink(p[k])
    return {"workdir": str(d), "comparison": comparison}


def prepare_inputs(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    """The real file and the (cached) synthetic one."""
    inputs = {}
    if not args.skip_real:
        if not args.real.exists():
            sys.exit(f"real fragment file {args.real} not found (--skip-real to skip it)")
        inputs["real"] = {"path": str(args.real), "size": file_size(args.real), "cached": True}
    if args.n_fragments > 0:
        path = out / f"synthetic_atac_{args.n_fragments}f_s{args.seed}.tsv.gz"
        meta_path = path.with_suffix(".json")
        if path.exists() and Path(f"{path}.tbi").exists() and meta_path.exists():
            meta = {**json.loads(meta_path.read_text()), "cached": True}
        else:
            print(f"generating {path.name} ...", end="", flush=True)
            meta = {**write_synthetic(path, args.n_fragments, args.seed), "cached": False}
            print(f" {meta['seconds_generate']:.0f} s", flush=True)
        inputs["synthetic"] = meta
    return inputs


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Inputs, shared files, baselines, the rounds per input, comparisons."""
    from scfm.atac.genome import builtin_chrom_sizes, load_genome, write_tss_gtf

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / f"run_atac{args.tag}"
    work.mkdir(parents=True, exist_ok=True)
    why_no_peer = peer_status(args.peer_python)
    if why_no_peer:
        print(f"SnapATAC2 steps skipped: {why_no_peer}")
    inputs = prepare_inputs(args, out)
    shared = {"chrom_sizes": str(work / "hg38_chrom_sizes.json"), "gtf": str(work / "tss.gtf")}
    Path(shared["chrom_sizes"]).write_text(json.dumps(builtin_chrom_sizes("hg38")))
    write_tss_gtf(load_genome("hg38", args.annotation), shared["gtf"])
    run = Runner(work, None if why_no_peer else args.peer_python)
    run("baseline", "baseline_scfm", {}, input="-", round="-")
    if run.peer:
        run("baseline", "baseline_snapatac2", {"peer": True}, input="-", round="-")
    per_input = {}
    for name, meta in inputs.items():
        print(f"{name}: {meta['path']}")
        rounds = args.rounds if name == "real" else args.synthetic_rounds
        min_frag = args.min_fragments_real if name == "real" else args.min_fragments_synthetic
        per_input[name] = bench_input(run, name, Path(meta["path"]), rounds, min_frag, shared, args)
        per_input[name]["min_fragments"] = min_frag
        meta["n_fragments"] = next(
            r["n_fragments"]
            for r in run.results
            if r["step"] == "scfm_import" and r["input"] == name
        )
    m = _harness.machine_info()
    m["versions"].update(_harness.package_versions(PACKAGES))
    peer_base = next((r for r in run.results if r["label"] == "baseline_snapatac2"), None)
    if peer_base:
        m["versions"].update({f"{k} (peer venv)": v for k, v in peer_base["versions"].items()})
    return {
        "args": _harness.report_args(args),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_atac.py", *sys.argv[1:]]),
        "machine": m,
        "peer": args.peer_python if run.peer else None,
        "why_no_peer": why_no_peer,
        "inputs": inputs,
        "per_input": per_input,
        "results": run.results,
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

PHASES = {
    "scfm": {"import": ["scfm_import"], "tiles": ["scfm_tiles"]},
    "snapatac2": {"import": ["snap_import"], "tiles": ["snap_tiles"], "tsse": ["snap_tsse"]},
}


def summarise(report: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """Per (tool, step): median/min seconds over the measured rounds and max peak RSS."""
    rows = {}
    for r in report["results"]:
        if r["input"] != name or r["round"] in ("warmup", "compare"):
            continue
        rows.setdefault(r["step"], []).append(r)
    out = {}
    for step, rs in rows.items():
        secs = [r["seconds_step"] for r in rs]
        out[step] = {
            "runs": len(rs),
            "seconds": statistics.median(secs),
            "min": min(secs),
            "max": max(secs),
            "rss": max(r["peak_rss"] for r in rs),
            "out_bytes": rs[-1].get("out_bytes", 0),
            "parts": {
                k: statistics.median(r["parts"][k] for r in rs) for k in rs[0].get("parts", {})
            },
            "n_cells": rs[-1].get("n_cells"),
        }
    return out


def _ratio_word(x: float) -> str:
    return "met" if x >= 1.0 else "NOT met"


def input_table(report: dict[str, Any], name: str) -> str:
    """One row per step and per combined phase: time, fragments/s, peak RSS."""
    n = report["inputs"][name]["n_fragments"]
    s = summarise(report, name)
    lines = _harness.md_header(
        ["tool", "step", "runs", "median s (min-max)", "fragments/s", "peak RSS GiB", "detail"],
        "llrrrrl",
    )

    def row(tool, step, sec, rss, runs="", spread="", detail=""):
        lines.append(
            _harness.md_row(
                [
                    tool,
                    step,
                    runs,
                    f"{sec:.2f}{spread}",
                    f"{n / sec:,.0f}",
                    f"{gib(rss):.2f}",
                    detail,
                ]
            )
        )

    for tool, phases in PHASES.items():
        got = {ph: s[steps[0]] for ph, steps in phases.items() if steps[0] in s}
        for ph, x in got.items():
            detail = ", ".join(f"{k} {v:.2f}" for k, v in x["parts"].items())
            if x.get("n_cells") is not None:
                detail = f"{x['n_cells']:,} cells" + (f"; {detail}" if detail else "")
            row(
                tool,
                ph,
                x["seconds"],
                x["rss"],
                x["runs"],
                f" ({x['min']:.2f}-{x['max']:.2f})",
                detail,
            )
        if "import" in got and "tiles" in got:
            row(
                tool,
                "**import + tiles**",
                got["import"]["seconds"] + got["tiles"]["seconds"],
                max(got["import"]["rss"], got["tiles"]["rss"]),
            )
        if "tsse" in got:
            row(
                tool,
                "import + TSSe + tiles",
                got["import"]["seconds"] + got["tsse"]["seconds"] + got["tiles"]["seconds"],
                max(x["rss"] for x in got.values()),
            )
    return "\n".join(lines) + "\n"


def ratio_lines(report: dict[str, Any], name: str) -> list[str]:
    """Throughput ratio ours/theirs (their seconds / ours) and peak-RSS ratio per phase."""
    s = summarise(report, name)
    if "snap_import" not in s or "scfm_import" not in s:
        return []
    oi, ot = s["scfm_import"], s["scfm_tiles"]
    ti, tt, ts = s["snap_import"], s["snap_tiles"], s.get("snap_tsse")
    tot_o, tot_t = oi["seconds"] + ot["seconds"], ti["seconds"] + tt["seconds"]
    lines = [
        f"{name}: throughput ours/theirs: import {ti['seconds'] / oi['seconds']:.2f}x, tiles "
        f"{tt['seconds'] / ot['seconds']:.2f}x, import + tiles {tot_t / tot_o:.2f}x "
        f"(goal >= 1.0x: {_ratio_word(tot_t / tot_o)})",
    ]
    if ts:
        lines.append(
            f"{name}: with SnapATAC2's TSSe added to its import (ours computes TSSe in "
            f"barcode_qc): import {(ti['seconds'] + ts['seconds']) / oi['seconds']:.2f}x, "
            f"import + tiles {(tot_t + ts['seconds']) / tot_o:.2f}x"
        )
    paired = paired_ratios(report, name)
    if len(paired) > 1:
        lines.append(
            f"{name}: import + tiles ratio per round (both tools in the same round, so under "
            f"similar load): {', '.join(f'{x:.2f}x' for x in paired)}; median "
            f"{statistics.median(paired):.2f}x"
        )
    rss_o, rss_t = max(oi["rss"], ot["rss"]), max(ti["rss"], tt["rss"])
    lines.append(
        f"{name}: peak RSS ours/theirs: import {oi['rss'] / ti['rss']:.2f}, tiles "
        f"{ot['rss'] / tt['rss']:.2f}, max {rss_o / rss_t:.2f} "
        f"({gib(rss_o):.2f} vs {gib(rss_t):.2f} GiB)"
    )
    return lines


def paired_ratios(report: dict[str, Any], name: str) -> list[float]:
    """(SnapATAC2 import + tiles) / (scfm import + tiles) seconds, round by round."""
    t: dict[str, dict[str, float]] = {}
    for r in report["results"]:
        if r["input"] == name and str(r["round"]).startswith("r"):
            t.setdefault(r["round"], {})[r["step"]] = r["seconds_step"]
    steps = ("scfm_import", "scfm_tiles", "snap_import", "snap_tiles")
    return [
        (x["snap_import"] + x["snap_tiles"]) / (x["scfm_import"] + x["scfm_tiles"])
        for _, x in sorted(t.items())
        if all(k in x for k in steps)
    ]


def compare_lines(report: dict[str, Any], name: str) -> list[str]:
    """Identical counts, n_fragment and TSSe agreement."""
    comp = report["per_input"][name].get("comparison")
    if not comp:
        return []
    m, lines = comp["matrix"], []
    lines.append(
        f"{name}: tile matrices {'IDENTICAL' if m.get('identical') else 'DIFFER'}: "
        f"{m['shape_ours'][0]:,} x {m['shape_ours'][1]:,} (theirs {m['shape_theirs'][0]:,} x "
        f"{m['shape_theirs'][1]:,}), nnz {m['nnz_ours']:,} vs {m['nnz_theirs']:,}, sum "
        f"{m['sum_ours']:,} vs {m['sum_theirs']:,}, max abs diff {m.get('max_abs_diff', '-')}, "
        f"entries differing {m.get('n_entries_differing', '-')}, same barcode order "
        f"{m['same_obs_order']}, same bin order {m['same_var_order']}"
    )
    if "first_var_difference" in m:
        v = m["first_var_difference"]
        lines.append(
            f"{name}: bins compared by name: the column order differs from bin {v['index']:,} "
            f"(ours {v['ours']}, theirs {v['theirs']}): SnapATAC2 orders chromosomes by name, "
            "scfm in the genome's order"
        )
    bc = comp["barcodes"]
    lines.append(
        f"{name}: barcodes: ours selected {bc['ours_selected']:,}, SnapATAC2 imported "
        f"{bc['theirs_imported']:,}, same set {bc['same_set']}"
    )
    for key, label in (
        ("n_fragment", "n_fragment"),
        ("frac_dup", "frac_dup"),
        ("frac_mito", "frac_mito"),
        ("tsse", "TSSe"),
        ("tsse_deep", "TSSe"),
    ):
        c = comp.get(key)
        if not c or "pearson" not in c:
            if c:
                lines.append(f"{name}: {label}: n = {c['n']} (constant or too few to correlate)")
            continue
        extra = (
            f" (barcodes with n_fragment >= {c['min_fragments']})" if "min_fragments" in c else ""
        )
        lines.append(
            f"{name}: {label}{extra} vs SnapATAC2 over {c['n']:,} barcodes: Pearson "
            f"{c['pearson']:.6f}, Spearman {c['spearman']:.6f}, max abs diff "
            f"{c['max_abs_diff']:.3g}, equal {c['n_equal']:,}"
        )
    return lines


def load_summary(report: dict[str, Any]) -> dict[str, float]:
    la = [x for r in report["results"] for x in r.get("loadavg_1min", [])]
    return {
        "start": report["loadavg_start"][0],
        "end": report["loadavg_end"][0],
        "min_step": min(la),
        "max_step": max(la),
        "median_step": statistics.median(la),
    }


def markdown(report: dict[str, Any]) -> str:
    parts = []
    for name, meta in report["inputs"].items():
        parts.append(
            f"### {name}: {meta['n_fragments']:,} fragments, {gib(meta['size']):.2f} GiB "
            f"({Path(meta['path']).name})\n"
        )
        parts.append(input_table(report, name))
        parts += [f"- {x}" for x in ratio_lines(report, name) + compare_lines(report, name)]
        parts.append("")
    base = [r for r in report["results"] if r["step"] == "baseline"]
    parts.append(
        "baselines (imports only): "
        + ", ".join(f"{r['label']} {gib(r['peak_rss']):.2f} GiB" for r in base)
    )
    la = load_summary(report)
    parts.append(
        f"1-min load average: start {la['start']:.1f}, end {la['end']:.1f}, around steps "
        f"{la['min_step']:.1f}-{la['max_step']:.1f} (median {la['median_step']:.1f}) on "
        f"{report['machine']['nproc']} cores"
    )
    return "\n".join(parts) + "\n"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print()
    for name, meta in report["inputs"].items():
        gen = "" if meta.get("cached") else f", generated in {meta['seconds_generate']:.0f} s"
        print(f"input {name}: {meta['path']}, {gib(meta['size']):.2f} GiB{gen}")
    _harness.print_machine(m)
    if report["why_no_peer"]:
        print(f"SnapATAC2 skipped: {report['why_no_peer']}")
    print()
    print(markdown(report))
    _harness.print_profiles(report["results"])


def bench_intervals(args: argparse.Namespace) -> dict[str, Any]:
    """Our interval code beside bedtools (pybedtools) on the real file, one process, median of 3.

    * blacklist: ``read_blacklist`` + ``Blacklist.overlaps`` over every fragment (arrays already
      in memory) against ``bedtools intersect -v -a fragments.bed -b blacklist.bed`` (which parses
      its own text: it is how one would use it); the blacklist is every GENCODE v22 promoter
      (TSS -1 kb/+500 bp), as tests/atac/test_blacklist.py builds it.
    * region counts: fragments overlapping each gene window (``IntervalMap.pairs`` with fragment
      counting + ``bincount``) against ``bedtools intersect -c -a windows.bed -b fragments.bed``.
    Both sides' answers are compared (they must be equal).
    """
    import numpy as np
    import pandas as pd
    import pybedtools

    from scfm.atac.activity import gene_windows
    from scfm.atac.blacklist import read_blacklist
    from scfm.atac.fragments import iter_fragments
    from scfm.atac.genome import load_genome
    from scfm.atac.tiles import _FRAGMENT, IntervalMap, frozen_index

    work = args.out.resolve() / f"run_intervals{args.tag}"
    work.mkdir(parents=True, exist_ok=True)
    pybedtools.set_tempdir(str(work))
    genome = load_genome("hg38", args.annotation)
    names = list(genome.chrom_sizes)
    chroms, barcodes = frozen_index(names), frozen_index([])
    barcodes.frozen = False
    chunks = list(iter_fragments(args.real, chroms=chroms, barcodes=barcodes))
    g = np.concatenate([c.chrom for c in chunks]).astype(np.int64)
    start = np.concatenate([c.start for c in chunks])
    end = np.concatenate([c.end for c in chunks])
    frag_bed = work / "fragments.bed"
    pd.DataFrame({"c": np.array(names)[g], "s": start, "e": end}).to_csv(
        frag_bed, sep="\t", header=False, index=False
    )
    genes = genome.genes
    tss = np.where(genes["strand"] == "+", genes["start"], genes["end"] - 1)
    plus = genes["strand"] == "+"
    bl = pd.DataFrame(
        {
            "c": genes["chrom"].to_numpy(),
            "s": np.maximum(tss - np.where(plus, 1000, 500), 0),
            "e": np.minimum(
                tss + np.where(plus, 500, 1000), genes["chrom"].map(genome.chrom_sizes)
            ),
        }
    ).sort_values(["c", "s", "e"])
    bl_path = work / "blacklist.bed"
    bl.to_csv(bl_path, sep="\t", header=False, index=False)
    windows = gene_windows(genome)
    win = windows[windows["end"] > windows["start"]]
    win_bed = work / "windows.bed"
    win[["chrom", "start", "end"]].astype({"chrom": str}).to_csv(
        win_bed, sep="\t", header=False, index=False
    )

    def timed(fn: Any) -> tuple[float, Any]:
        times, out = [], None
        for _ in range(3):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times), out

    def ours_blacklist() -> int:
        return int((~read_blacklist(bl_path, genome).overlaps(g, start, end)).sum())

    def theirs_blacklist() -> int:
        return pybedtools.BedTool(str(frag_bed)).intersect(str(bl_path), v=True).count()

    imap = IntervalMap(win["chrom"].astype(str).to_numpy(), win["start"], win["end"], chroms)

    def ours_counts() -> Any:
        n = np.zeros(1, np.int64)
        cells = np.zeros(len(g), np.int32)
        _, feats = imap.pairs(
            type(chunks[0])(g.astype(np.int32), start, end, cells, cells), _FRAGMENT, n, n.copy()
        )
        return np.bincount(feats, minlength=imap.n_features)

    def theirs_counts() -> Any:
        bt = pybedtools.BedTool(str(win_bed)).intersect(str(frag_bed), c=True)
        return np.array([int(f.fields[-1]) for f in bt])

    out: dict[str, Any] = {"n_fragments": len(g), "n_blacklist_regions": len(bl)}
    for name, ours, theirs in (
        ("blacklist", ours_blacklist, theirs_blacklist),
        ("region_counts", ours_counts, theirs_counts),
    ):
        t_ours, a = timed(ours)
        t_theirs, b = timed(theirs)
        same = bool(np.array_equal(np.asarray(a), np.asarray(b)))
        out[name] = {
            "ours_s": t_ours,
            "bedtools_s": t_theirs,
            "ratio": t_theirs / t_ours,
            "equal": same,
        }
        print(
            f"{name}: ours {t_ours:.3f} s, bedtools {t_theirs:.3f} s: {t_theirs / t_ours:.1f}x "
            f"(results equal: {same})",
            flush=True,
        )
    pybedtools.cleanup()
    out["bedtools"] = subprocess.run(
        ["bedtools", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out["loadavg"] = os.getloadavg()
    (work / "intervals.json").write_text(json.dumps(out, indent=1, default=str))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = _harness.arg_parser(__doc__, STEPS)
    ap.add_argument("--real", type=Path, default=REAL_FRAGMENTS, help="real fragment file")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument(
        "--n-fragments", type=int, default=50_000_000, help="synthetic file size (0: none)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds on the real file")
    ap.add_argument("--synthetic-rounds", type=int, default=1)
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--min-fragments-real", type=int, default=1)
    ap.add_argument("--min-fragments-synthetic", type=int, default=1000)
    ap.add_argument("--tsse-min-fragments", type=int, default=100, help="'deep' TSSe subset")
    ap.add_argument("--bin-size", type=int, default=500)
    ap.add_argument("--annotation", type=Path, default=ANNOTATION, help="gene annotation (TSS)")
    ap.add_argument(
        "--peer-python", default=PEER_PYTHON, help="interpreter with snapatac2 ('' to skip)"
    )
    ap.add_argument("--peer-jobs", type=int, default=os.cpu_count() or 1, help="SnapATAC2's n_jobs")
    ap.add_argument(
        "--no-compare-synthetic",
        dest="compare_synthetic",
        action="store_false",
        help="skip the matrix comparison on the synthetic file (it reads both into memory)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the outputs (GBs for 50M)")
    ap.add_argument("--profile", action="store_true", help="cProfile the scfm steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--report", type=Path, help="print the report of a saved results JSON (and its .md)"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache and work directory")
    ap.add_argument("--tag", default="", help="suffix of the work directory and results")
    ap.add_argument(
        "--quick", action="store_true", help="2M synthetic fragments, one round on each file"
    )
    ap.add_argument(
        "--intervals",
        action="store_true",
        help="only: our blacklist / region-overlap code beside bedtools on the real file",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.n_fragments = min(args.n_fragments, 2_000_000)
        args.rounds = args.synthetic_rounds = 1
        args.tag = args.tag or "_quick"
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, internally, one step of it)."""
    args = parse_args(argv)
    if _harness.child_dispatch(args, run_child):
        return
    if args.intervals:
        bench_intervals(args)
        return
    if args.report:
        report = json.loads(args.report.read_text())
        print_report(report)
        args.report.with_suffix(".md").write_text(markdown(report))
        return
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    report = run_all(args)
    report["loadavg_start"], report["loadavg_end"] = load0, os.getloadavg()
    report["total_seconds"] = time.perf_counter() - t0
    print_report(report)
    print(f"total {report['total_seconds'] / 60:.1f} min")
    _harness.save_report(report, args.out.resolve() / f"results_atac{args.tag}", markdown(report))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
