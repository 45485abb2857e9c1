"""Peaks: MACS3 on pseudobulk insertion sites, fixed-width summit merging, cell x peak counts.

Peak calling (:func:`call_peaks`)
    The Tn5 insertion sites (``start`` and ``end - 1`` of every fragment, see
    :mod:`scfm.atac.tiles`) of the selected cells, pooled per group, are written as 1-bp BED
    records (left ends on ``+``, right ends on ``-``) and given to ``macs3 callpeak -f BED
    --nomodel --shift -100 --extsize 200 --keep-dup all -q 0.01 --call-summits``: every cut
    site becomes a 200 bp window centred on it, the usual scATAC practice (SnapATAC2's
    ``call_peaks`` uses shift -100 / extsize 200 and q 0.05; ArchR shift -75 / extsize 150,
    q 0.1, ``--call-summits``). ``--keep-dup all`` because fragment files are already
    deduplicated; ``-g`` is the genome's total length (sum of chromosome sizes) unless given.

Merging (:func:`merge_summits`)
    Each summit becomes a fixed-width peak ``[summit - width // 2, summit - width // 2 +
    width)`` clipped to its chromosome. Summit scores (MACS3's -log10 q) are normalised per
    input file to "score per million" (divided by the file's total and multiplied by 1e6, Corces
    et al. 2018, Science 362:eaav1898) so files of different depth compare; then the iterative
    overlap removal of Corces et al. / ArchR keeps the most significant peak, drops every peak
    overlapping it, and repeats. The result is non-overlapping, sorted in genome order and
    shared by every dataset merged together: one feature space. We use sorted numpy intervals
    and a small numba kernel rather than pybedtools: fixed-width peaks overlap exactly when
    their summits are less than ``width`` apart, so a greedy sweep over summits sorted by
    position is all it takes (bedtools has no significance-ordered removal), and the pipeline
    then needs no external ``bedtools`` program. pybedtools is the tests' oracle instead:
    tests/atac/test_blacklist.py checks the merged peaks (no two share a base, every summit's
    window touches a kept peak at least as significant), the blacklist and the region-overlap
    counts against bedtools on real regions.

Counting (:func:`peak_matrix`)
    Cells x peaks int32 CSR through :func:`scfm.atac.tiles.count_features`; ``obs`` gets
    ``n_in_peaks`` and ``frip`` (insertions, or fragments with ``counting="fragment"``, in peaks
    divided by all of the barcode's insertions/fragments in the file).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

from scfm.atac.fragments import Index, read_chunks
from scfm.atac.tiles import (
    IntervalMap,
    MatrixSummary,
    check_barcodes,
    count_features,
    frozen_index,
    interval_var,
)
from scfm.atomic import atomic_path, write_text_atomic
from scfm.errors import ScfmInputError
from scfm.provenance import created, versions
from scfm.spec import default

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------------------------
# BED files


def read_bed(path: str | Path, *, score: bool = False) -> pd.DataFrame:
    """Read a BED file as ``chrom, start, end`` (+ ``name, score`` when ``score=True``).

    ``track``/``browser``/``#`` lines are skipped. Raises :class:`ScfmInputError` naming the
    line for too few columns, non-integer coordinates, ``start < 0`` or ``end <= start``.
    """
    path = Path(path)
    if not path.exists():
        raise ScfmInputError(path, "file", "does not exist", "a BED file")
    need = 5 if score else 3
    try:
        df = pd.read_csv(
            path,
            sep="\t",
            header=None,
            comment="#",
            dtype=str,
            skip_blank_lines=True,
            on_bad_lines="error",
            engine="c",
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame(
            {
                "chrom": pd.Series(dtype=str),
                "start": np.zeros(0, np.int64),
                "end": np.zeros(0, np.int64),
            }
            | ({"name": pd.Series(dtype=str), "score": np.zeros(0)} if score else {})
        )
    except pd.errors.ParserError as exc:
        raise ScfmInputError(
            path, "columns", f"inconsistent columns ({exc})", "a BED file"
        ) from exc
    df = df[~df[0].str.startswith(("track", "browser"))]
    if df.shape[1] < need:
        raise ScfmInputError(
            path,
            "columns",
            f"{df.shape[1]} column(s)",
            f"at least {need} tab-separated columns (chrom, start, end"
            + (", name, score)" if score else ")"),
        )
    out = pd.DataFrame({"chrom": df[0].to_numpy()})
    for k, col in ((1, "start"), (2, "end")):
        values = pd.to_numeric(df[k], errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ScfmInputError(
                path, f"line {i + 1} column {k + 1} ({col})", f"{df[k].iloc[i]!r}", "an integer"
            )
        out[col] = values.to_numpy(np.int64)
    bad = (out["start"] < 0) | (out["end"] <= out["start"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ScfmInputError(
            path,
            f"line {i + 1}",
            f"interval {out['chrom'].iloc[i]}:{out['start'].iloc[i]}-{out['end'].iloc[i]}",
            "0 <= start < end",
        )
    if score:
        out["name"] = df[3].to_numpy()
        s = pd.to_numeric(df[4], errors="coerce")
        if s.isna().any():
            i = int(np.flatnonzero(s.isna().to_numpy())[0])
            raise ScfmInputError(
                path, f"line {i + 1} column 5 (score)", f"{df[4].iloc[i]!r}", "a number"
            )
        out["score"] = s.to_numpy(np.float64)
    return out.reset_index(drop=True)


def _write_bed(df: pd.DataFrame, path: str | Path, columns: Sequence[str]) -> Path:
    with atomic_path(path, suffix=".tmp.bed") as tmp:
        df[list(columns)].to_csv(tmp, sep="\t", header=False, index=False, float_format="%.8g")
    return Path(path)


def _genome_order(df: pd.DataFrame, chroms: Sequence[str], pos: str = "start") -> pd.DataFrame:
    rank = df["chrom"].map({c: i for i, c in enumerate(chroms)}).to_numpy()
    idx = np.lexsort((df[pos].to_numpy(), rank))
    return df.iloc[idx].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# MACS3


def macs3_executable() -> str:
    """The ``macs3`` program of this Python environment (or on PATH)."""
    beside = Path(sys.executable).parent / "macs3"
    found = str(beside) if beside.exists() else shutil.which("macs3")
    if not found:
        raise RuntimeError("macs3 not found: install the PyPI package 'macs3' (pip install macs3)")
    return found


def _write_pseudobulk(
    fragments_list: Sequence[Path],
    chroms: Index,
    cell_group: dict[str, int] | None,
    group_files: list[Path],
    chunk_size: int,
) -> tuple[np.ndarray, int]:
    """Insertion-site BED per group (``cell_group`` None: every barcode, one group).

    Returns the fragments written per group and the number of cells seen.
    """
    if cell_group is None:
        barcodes, code_group = Index(), None
    else:
        barcodes = frozen_index(cell_group)
        code_group = np.fromiter(cell_group.values(), np.int64, len(cell_group))
    written = np.zeros(len(group_files), np.int64)
    names = np.asarray(chroms.names, dtype=object)
    handles = [p.open("w") for p in group_files]
    try:
        for path in fragments_list:
            chunks = read_chunks(path, chroms=chroms, barcodes=barcodes, chunk_size=chunk_size)
            for chunk in chunks:
                keep = (chunk.barcode >= 0) & (chunk.chrom >= 0) & (chunk.end > chunk.start)
                if code_group is None:
                    group = np.zeros(int(keep.sum()), np.int64)
                else:
                    group = code_group[chunk.barcode[keep]]
                chrom, start, end = names[chunk.chrom[keep]], chunk.start[keep], chunk.end[keep]
                for g in np.unique(group):
                    m = group == g
                    n = int(m.sum())
                    pd.DataFrame(
                        {
                            "chrom": np.concatenate([chrom[m], chrom[m]]),
                            "start": np.concatenate([start[m], end[m] - 1]),
                            "end": np.concatenate([start[m] + 1, end[m]]),
                            "name": ".",
                            "score": 0,
                            "strand": np.repeat(np.array(["+", "-"]), n),
                        }
                    ).to_csv(handles[g], sep="\t", header=False, index=False)
                    written[g] += n
    finally:
        for h in handles:
            h.close()
    return written, len(barcodes)


def _run_macs3(args: list[str], log_path: Path, source: str | Path) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    log_path.write_text(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ScfmInputError(
            source,
            "macs3 callpeak",
            f"exit status {proc.returncode}; command {' '.join(args)}; stderr tail:\n{tail}",
            "MACS3 to finish (see the message above)",
        )


def call_peaks(
    fragments_list: Sequence[str | Path] | str | Path,
    genome: Any,
    out_dir: str | Path,
    *,
    barcodes: Sequence[str] | None = None,
    groups: Mapping[str, str] | pd.Series | None = None,
    qvalue: float = 0.01,
    shift: int = -100,
    extsize: int = 200,
    call_summits: bool = True,
    nolambda: bool = False,
    gsize: int | None = None,
    min_fragments: int = 1,
    chunk_size: int = 2_000_000,
) -> Path:
    """Call peaks with MACS3 on pseudobulk insertion sites (per group if ``groups`` is given).

    Parameters
    ----------
    fragments_list
        Fragment file(s) pooled together (barcodes are matched as written in each file).
    genome
        :class:`scfm.atac.genome.Genome`: only its chromosomes are used; ``-g`` defaults to the
        sum of its chromosome sizes.
    out_dir
        Directory for the outputs: ``summits.bed`` (returned), ``macs3/<group>_*`` (MACS3's
        narrowPeak, summits and log per group) and ``call_peaks.json`` (provenance).
    barcodes
        Cells to pool (default: every barcode in the files, or the keys of ``groups``).
    groups
        Barcode -> group (cell type, cluster): MACS3 runs once per group, and the summits of
        all groups are written together, each group's scores normalised to score per million
        (see :func:`merge_summits`). Without groups there is one group, ``all``.
    qvalue, shift, extsize, call_summits, nolambda
        MACS3 ``-q``, ``--shift``, ``--extsize``, ``--call-summits`` and ``--nolambda``.
    gsize
        MACS3 ``-g`` (effective genome size); default: total length of ``genome``.
    min_fragments
        Groups with fewer fragments are skipped (logged).
    chunk_size
        Fragments per parsed chunk.

    Returns
    -------
    Path
        ``out_dir/summits.bed``: ``chrom, start, end (start + 1), name (group:peak), score``
        sorted in genome order. Merge it (with other datasets') by :func:`merge_summits`.

    Notes
    -----
    The pseudobulk insertion BEDs (~80 bytes per fragment) live in a temporary directory
    inside ``out_dir`` while MACS3 runs. MACS3's own time is dominated by its p-/q-value table
    (~7 s for the 367k-fragment PBMC file, ~12 s for 600k fragments here), per group.
    """
    if isinstance(fragments_list, str | Path):
        fragments_list = [fragments_list]
    fragments_list = [Path(p) for p in fragments_list]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = fragments_list[0]
    if groups is not None:
        groups = {str(k): str(v) for k, v in dict(groups).items()}
        if barcodes is not None:
            wanted = set(check_barcodes(source, barcodes))
            groups = {b: g for b, g in groups.items() if b in wanted}
        if not groups:
            raise ScfmInputError(source, "groups", "no cell selected", "barcode -> group entries")
        group_names = list(dict.fromkeys(groups.values()))
        code = {g: i for i, g in enumerate(group_names)}
        cell_group: dict[str, int] | None = {b: code[g] for b, g in groups.items()}
    elif barcodes is not None:
        group_names = ["all"]
        cell_group = dict.fromkeys(check_barcodes(source, barcodes), 0)
    else:  # every barcode of the files
        group_names = ["all"]
        cell_group = None
    safe = [_SAFE.sub("_", g) for g in group_names]
    if len(set(safe)) != len(safe):
        safe = [f"{i:03d}_{s}" for i, s in enumerate(safe)]
    chroms = frozen_index(genome.chrom_sizes)
    gsize = int(gsize or sum(genome.chrom_sizes.values()))
    macs_dir = out_dir / "macs3"
    macs_dir.mkdir(exist_ok=True)
    exe = macs3_executable()
    summits = []
    with tempfile.TemporaryDirectory(prefix=".pseudobulk-", dir=out_dir) as tmp:
        beds = [Path(tmp) / f"{s}.insertions.bed" for s in safe]
        written, n_cells = _write_pseudobulk(fragments_list, chroms, cell_group, beds, chunk_size)
        for g, name in enumerate(safe):
            if written[g] < min_fragments:
                log.warning(
                    "call_peaks: group %r has %d fragments; skipped", group_names[g], written[g]
                )
                continue
            args = [exe, "callpeak", "-t", str(beds[g]), "-f", "BED", "-n", name, "--outdir", tmp]
            args += ["-g", str(gsize), "-q", str(qvalue), "--keep-dup", "all", "--nomodel"]
            args += ["--shift", str(shift), "--extsize", str(extsize)]
            args += ["--call-summits"] if call_summits else []
            args += ["--nolambda"] if nolambda else []
            _run_macs3(args, macs_dir / f"{name}.log", source)
            for suffix in ("_peaks.narrowPeak", "_summits.bed"):
                shutil.move(Path(tmp) / f"{name}{suffix}", macs_dir / f"{name}{suffix}")
            s = read_bed(macs_dir / f"{name}_summits.bed", score=True)
            s["score"] = _per_million(s["score"].to_numpy())
            s["name"] = group_names[g] + ":" + s["name"].astype(str)
            summits.append(s)
    if not summits:
        raise ScfmInputError(
            source,
            "barcodes",
            "no group has fragments on the genome's chromosomes",
            f"fragments of the selected cells on {list(genome.chrom_sizes)[:3]}...",
        )
    table = _genome_order(pd.concat(summits, ignore_index=True), list(genome.chrom_sizes))
    out = _write_bed(table, out_dir / "summits.bed", ["chrom", "start", "end", "name", "score"])
    record = {
        "stage": "call_peaks",
        "created": created(),
        "fragments": [str(p) for p in fragments_list],
        "genome": getattr(genome, "name", None),
        "macs3": {
            "qvalue": qvalue,
            "shift": shift,
            "extsize": extsize,
            "call_summits": call_summits,
            "nolambda": nolambda,
            "gsize": gsize,
            "format": "BED insertion sites",
            "keep_dup": "all",
            "version": _macs3_version(exe),
        },
        "cells": n_cells,
        "groups": {
            g: {"file": s, "fragments": int(written[i])}
            for i, (g, s) in enumerate(zip(group_names, safe, strict=True))
        },
        "summits": len(table),
        "versions": versions(),
    }
    write_text_atomic(out_dir / "call_peaks.json", json.dumps(record, indent=1))
    log.info("call_peaks: %d summits from %d group(s) -> %s", len(table), len(summits), out)
    return out


def _macs3_version(exe: str) -> str:
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip()


def _per_million(score: np.ndarray) -> np.ndarray:
    total = float(np.sum(score))
    return score / total * 1e6 if total > 0 else score.astype(np.float64)


# --------------------------------------------------------------------------------------------
# fixed-width merging


@njit(cache=True)
def _keep_greedy(pos: np.ndarray, order: np.ndarray, width: int) -> np.ndarray:
    """Iterative overlap removal: ``pos`` sorted; ``order`` visits summits by significance."""
    n = len(pos)
    state = np.zeros(n, np.int8)  # 0 undecided, 1 kept, 2 removed
    for i in order:
        if state[i] != 0:
            continue
        state[i] = 1
        j = i - 1
        while j >= 0 and pos[i] - pos[j] < width:
            if state[j] == 0:
                state[j] = 2
            j -= 1
        j = i + 1
        while j < n and pos[j] - pos[i] < width:
            if state[j] == 0:
                state[j] = 2
            j += 1
    return state == 1


def merge_summits(
    summit_beds: Sequence[str | Path] | str | Path,
    out_bed: str | Path,
    *,
    width: int = 500,
    genome: Any,
) -> Path:
    """Merge summit BEDs into one set of non-overlapping fixed-width peaks (see module doc).

    Parameters
    ----------
    summit_beds
        BED files with at least 5 columns (``chrom, start, end, name, score``), one summit per
        line at ``start`` (MACS3 ``*_summits.bed`` or :func:`call_peaks` output).
    out_bed
        Output BED (written atomically): ``chrom, start, end, name (chrom:start-end), score``
        (score per million), sorted in genome order.
    width
        Peak width in bp (summit - width // 2 .. + width).
    genome
        :class:`scfm.atac.genome.Genome`: summits on other chromosomes are dropped (logged),
        peaks are clipped to chromosome ends.

    Returns
    -------
    Path
        ``out_bed``.
    """
    if isinstance(summit_beds, str | Path):
        summit_beds = [summit_beds]
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    parts = []
    for path in summit_beds:
        s = read_bed(path, score=True)
        s["score"] = _per_million(s["score"].to_numpy())
        parts.append(s)
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    chroms = list(genome.chrom_sizes)
    known = table["chrom"].isin(chroms) if len(table) else pd.Series(dtype=bool)
    if len(table) and not known.all():
        log.warning(
            "merge_summits: %d summits on chromosomes not in genome %s dropped (%s)",
            int((~known).sum()),
            getattr(genome, "name", ""),
            sorted(set(table.loc[~known, "chrom"]))[:5],
        )
        table = table[known.to_numpy()]
    if len(table) == 0:
        raise ScfmInputError(
            summit_beds[0] if summit_beds else out_bed,
            "summits",
            "no summits on the genome",
            "at least one summit line (chrom, start, end, name, score)",
        )
    table = _genome_order(table, chroms)
    code = table["chrom"].map({c: i for i, c in enumerate(chroms)}).to_numpy(np.int64)
    summit = table["start"].to_numpy(np.int64)
    pos = (code << 32) + summit
    score = table["score"].to_numpy(np.float64)
    order = np.lexsort((pos, -score))  # most significant first; ties by position
    keep = _keep_greedy(pos, order, int(width))
    kept = table[keep].copy()
    sizes = kept["chrom"].map(genome.chrom_sizes).to_numpy(np.int64)
    start = kept["start"].to_numpy(np.int64) - width // 2
    kept["start"] = np.clip(start, 0, sizes)
    kept["end"] = np.clip(start + width, 0, sizes)
    kept = kept[kept["end"] > kept["start"]]
    kept["name"] = kept["chrom"] + ":" + kept["start"].astype(str) + "-" + kept["end"].astype(str)
    out = _write_bed(kept, out_bed, ["chrom", "start", "end", "name", "score"])
    log.info(
        "merge_summits: %d summits from %d file(s) -> %d peaks of %d bp -> %s",
        len(table),
        len(parts),
        len(kept),
        width,
        out,
    )
    return out


# --------------------------------------------------------------------------------------------
# cell x peak counts


def peak_matrix(
    fragments: str | Path,
    peaks_bed: str | Path,
    barcodes: Sequence[str],
    out_h5ad: str | Path,
    *,
    counting: str = default("qc.atac.counting"),
    genome: Any | None = None,
    binarize: bool = default("qc.atac.binarize"),
    chunk_size: int = 2_000_000,
    compression: str | None = default("io.compression"),
    buffer_pairs: int = 100_000_000,
) -> MatrixSummary:
    """Cells x peaks int32 CSR counts (``var``: chrom/start/end, names ``chr:start-end``).

    Peaks may overlap (an insertion in two peaks counts in both); the peaks of
    :func:`merge_summits` do not. ``obs`` (and the returned ``cells``) hold ``n_fragment``,
    ``n_counted``, ``n_in_peaks`` and ``frip`` = ``n_in_peaks / n_counted``: the fraction of
    the barcode's insertion sites (fragments with ``counting="fragment"``) that fall in at
    least one peak, over all of its fragments in the file.

    Parameters
    ----------
    fragments
        Fragment file.
    peaks_bed
        BED with at least 3 columns; its order is the column order.
    barcodes
        Cells, in output row order.
    out_h5ad
        Output h5ad, written atomically.
    counting
        ``"insertion"`` (default), ``"paired-insertion"`` or ``"fragment"``
        (:mod:`scfm.atac.tiles`).
    genome
        Optional :class:`scfm.atac.genome.Genome`: peaks must then lie on its chromosomes
        and within their lengths.
    binarize, chunk_size, compression, buffer_pairs
        As for :func:`scfm.atac.tiles.tile_matrix`.

    Returns
    -------
    MatrixSummary
        Record also in ``uns["scfm"]["peaks"]``.
    """
    peaks = read_bed(peaks_bed)
    if len(peaks) == 0:
        raise ScfmInputError(peaks_bed, "contents", "no peaks", "at least one BED interval")
    if genome is not None:
        sizes = peaks["chrom"].map(genome.chrom_sizes)
        bad = sizes.isna() | (peaks["end"] > sizes.fillna(0))
        if bad.any():
            row = peaks[bad.to_numpy()].iloc[0]
            raise ScfmInputError(
                peaks_bed,
                f"line {int(np.flatnonzero(bad.to_numpy())[0]) + 1}",
                f"peak {row['chrom']}:{row['start']}-{row['end']} outside genome "
                f"{getattr(genome, 'name', '')}",
                "chromosomes and coordinates of the genome",
            )
        chroms = frozen_index(genome.chrom_sizes)
    else:
        chroms = Index()
    var = interval_var(peaks["chrom"].to_numpy(), peaks["start"], peaks["end"])
    if var.index.has_duplicates:
        dup = var.index[var.index.duplicated()][0]
        raise ScfmInputError(peaks_bed, "intervals", f"peak {dup} repeated", "unique peaks")
    intervals = IntervalMap(peaks["chrom"].to_numpy(), peaks["start"], peaks["end"], chroms)
    summary = count_features(
        fragments,
        intervals,
        barcodes,
        out_h5ad,
        var=var,
        stage="peaks",
        params={"peaks": str(peaks_bed), "n_peaks": len(peaks)},
        counting=counting,
        binarize=binarize,
        chunk_size=chunk_size,
        compression=compression,
        buffer_pairs=buffer_pairs,
        obs_names={"n_in_features": "n_in_peaks", "fraction_in_features": "frip"},
    )
    return summary
