"""Fragment files: streaming reads in bounded memory, validation, and a clean sorted copy.

A fragment file (10x Genomics / ArchR / SnapATAC2 convention) is a tab-separated table with one
line per unique fragment: ``chrom``, ``start``, ``end`` (0-based, half-open), ``barcode`` and,
optionally, ``count`` (how many read pairs supported it; 1 when the column is missing). Files are
usually BGZF-compressed, coordinate-sorted and tabix-indexed (``.tbi``).

:func:`iter_fragments` yields :class:`FragmentChunk` arrays of at most ``chunk_size`` fragments:
chromosomes and barcodes as integer codes into a :class:`Index` each, so downstream kernels
(QC, tiling, peaks) work on numpy arrays without Python objects per fragment. Every chunk is
validated as it is read (columns, integer coordinates, ``0 <= start < end``, non-empty barcode,
positive integer count); a bad line raises :class:`scfm.errors.ScfmInputError` naming its line.

:func:`prepare_fragments` turns any fragment file (plain, gzip or BGZF; 4 or 5+ columns; sorted
or not; UCSC or Ensembl chromosome names; alt contigs) into the one layout every later stage
reads: BGZF, 5 columns, chromosome names of the genome, coordinate-sorted in genome chromosome
order, with a tabix index -- or refuses it with a clear message and writes nothing.

Unsorted input is **sorted, not rejected** (documented decision). Sorting is external and
bounded: the single validating pass appends each chromosome's fragments to its own binary spill
file (24 bytes per fragment, in a temporary directory beside the output); the second pass loads
one chromosome at a time, sorts it by ``(start, end)`` unless it already was, and writes it.
Peak memory is one chunk plus the largest chromosome's fragments (about 24 bytes each: ~0.2 GB
for chr1 of a 100M-fragment file), independent of the file's total size.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import gzip
import hashlib
import io
import logging
import os
import shutil
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd

from scfm.atac.tabix import TbiBuilder
from scfm.atomic import atomic_path, temp_dir_beside
from scfm.errors import ScfmInputError

log = logging.getLogger(__name__)

FIELDS = ["chrom", "start", "end", "barcode", "count"]
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
TBI_MAX_POSITION = 2**29  # tabix (.tbi) cannot index positions beyond 512 Mbp; CSI can


class Index:
    """A growing string -> int code table (chromosomes or barcodes), codes in insertion order."""

    def __init__(self, names: Iterable[str] = (), *, frozen: bool = False) -> None:
        self._codes: dict[str, int] = {}
        self.names: list[str] = []
        self.frozen = False
        for name in names:
            self.add(name)
        self.frozen = frozen

    def add(self, name: str) -> int:
        """The code of ``name``, new codes appended (unless frozen: then -1 for unknown names)."""
        code = self._codes.get(name)
        if code is None:
            if self.frozen:
                return -1
            code = self._codes[name] = len(self.names)
            self.names.append(name)
        return code

    def encode(self, values: pd.Series | pd.Categorical | np.ndarray) -> np.ndarray:
        """Codes of many names at once (-1 for missing names and names unknown to a frozen index).

        A categorical input (as :func:`iter_fragments` reads columns) is encoded through its
        categories only, so the cost per value is one array lookup.
        """
        if isinstance(values, pd.Series):
            values = values.array
        cats = values if isinstance(values, pd.Categorical) else pd.Categorical(values)
        lookup = np.fromiter((self.add(str(c)) for c in cats.categories), dtype=np.int64)
        codes = np.asarray(cats.codes, dtype=np.int64)
        if not len(lookup):
            return np.full(len(codes), -1, np.int32)
        out = np.where(codes >= 0, lookup[np.maximum(codes, 0)], -1)
        return out.astype(np.int32)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._codes


@dataclass
class FragmentChunk:
    """Up to ``chunk_size`` fragments as arrays (codes refer to the reader's indexes)."""

    chrom: np.ndarray  # int32 code into the chromosome Index
    start: np.ndarray  # int64, 0-based
    end: np.ndarray  # int64, exclusive
    barcode: np.ndarray  # int32 code into the barcode Index (-1: not in a frozen whitelist)
    count: np.ndarray  # int32 read-pair support (1 when the file has no count column)

    def __len__(self) -> int:
        return len(self.start)


def _is_gzip(path: str | Path) -> bool:
    with Path(path).open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a plain, gzip or BGZF (gzip-compatible) text file."""
    path = Path(path)
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def count_columns(path: str | Path) -> int:
    """Number of tab-separated columns of the first data line (0 for an empty file).

    Lines starting with ``#`` are skipped here; the readers skip them only as a leading header
    (a ``#`` line amid the data is an error, and a ``#`` inside a field is data).
    """
    with open_text(path) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                return len(line.rstrip("\r\n").split("\t"))
    return 0


# ----------------------------------------------------------------------------- checks
def check_compressed_stream(path: str | Path) -> None:
    """Raise :class:`ScfmInputError` when a BGZF file lacks its end-of-file marker (truncated).

    Plain gzip has no such marker; its truncation surfaces while reading (``EOFError``), which
    the readers here turn into the same error.
    """
    path = Path(path)
    if not path.is_file():
        raise ScfmInputError(path, "file", "does not exist", "a fragment file")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(18)
        is_bgzf = len(head) >= 16 and head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"
        if not is_bgzf:
            return
        fh.seek(max(0, size - len(BGZF_EOF)))
        tail = fh.read()
    if tail != BGZF_EOF:
        raise ScfmInputError(
            path,
            "BGZF",
            "truncated: the end-of-file marker block is missing",
            "a complete BGZF file (re-download or re-run bgzip)",
        )


def _truncated(path: str | Path, exc: BaseException) -> ScfmInputError:
    return ScfmInputError(
        path,
        "compressed stream",
        f"truncated or corrupt ({type(exc).__name__}: {exc})",
        "a complete gzip/BGZF file (re-download it)",
    )


def _header_lines(path: str | Path) -> int:
    """Number of leading ``#`` header lines (10x writes its metadata there)."""
    n = 0
    with open_text(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            n += 1
    return n


def _data_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the data lines: after the header, blank lines skipped."""
    with open_text(path) as fh:
        in_header = True
        for lineno, line in enumerate(fh, 1):
            in_header = in_header and line.startswith("#")
            if not in_header and line.strip():
                yield lineno, line.rstrip("\r\n")


def _data_line(path: str | Path, row: int) -> tuple[int, str]:
    """(1-based line number, text) of data row ``row`` (0-based), as the reader counts rows."""
    for i, (lineno, text) in enumerate(_data_lines(path)):
        if i == row:
            return lineno, text
    return -1, ""


def _odd_line(path: str | Path, n_columns: int, rows: Iterable[int] | None = None):
    """(line number, text) of the first data line whose field count is not ``n_columns``.

    ``rows`` (0-based data rows, ascending) restricts the search to those rows; (-1, "") when
    every line (or every listed row) has ``n_columns`` fields.
    """
    wanted = None if rows is None else iter(sorted(rows))
    target = next(wanted, None) if wanted is not None else None
    for i, (lineno, text) in enumerate(_data_lines(path)):
        if wanted is not None:
            if target is None:
                break
            if i != target:
                continue
            target = next(wanted, None)
        if text.count("\t") + 1 != n_columns:
            return lineno, text
    return -1, ""


def _field_count_error(path: str | Path, lineno: int, text: str, n_columns: int):
    """The error of a line whose field count differs from the first data line's."""
    first, _ = _data_line(path, 0)
    n = text.count("\t") + 1
    return ScfmInputError(
        path,
        f"line {lineno}",
        f"{n} tab-separated field(s) in {text!r}, but {n_columns} on line {first} "
        "(the first data line)",
        f"{n_columns} fields on every line, as on line {first} (chrom, start, end, "
        "barcode[, count]; a barcode cannot contain a tab)",
    )


def _frames(
    path: str | Path, n_columns: int, chunk_size: int
) -> Iterator[tuple[pd.DataFrame, int]]:
    """Raw pandas chunks of every field, with the index of their first row.

    Every line must have ``n_columns`` fields (the first data line's count). Reading only the
    first columns (``usecols``) would silently drop a later line's extra field, e.g. a count
    column that starts halfway, so one more column than the first line has is read
    (``_more``): a longer line fills it, a shorter one reads NaN in its last fields, and
    :func:`_validate` reports either naming the line. (pandas' own "Expected n fields" check
    misses a longer line that opens a chunk; lines longer by two or more raise it.)
    """
    names = FIELDS[: min(n_columns, 5)] + [f"extra{i}" for i in range(6, n_columns + 1)]
    names.append("_more")
    row0 = 0
    try:
        reader = pd.read_csv(
            path,
            sep="\t",
            header=None,
            skiprows=_header_lines(path),
            names=names,
            dtype={"chrom": "category", "barcode": "category"},
            chunksize=chunk_size,
            engine="c",
            compression="gzip" if _is_gzip(path) else None,
            keep_default_na=False,
            na_values=[""],
            quoting=csv.QUOTE_NONE,
        )
        for frame in reader:
            yield frame, row0
            row0 += len(frame)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _truncated(path, exc) from exc
    except UnicodeDecodeError as exc:
        raise ScfmInputError(path, "encoding", f"not UTF-8 text ({exc})", "a text file") from exc
    except pd.errors.ParserError as exc:
        lineno, text = _odd_line(path, n_columns)
        if lineno > 0:
            raise _field_count_error(path, lineno, text, n_columns) from exc
        raise ScfmInputError(path, "format", f"cannot parse: {exc}", "tab-separated lines") from exc


_PROBLEMS = {
    "chrom": ("column 1 (chrom)", "empty chromosome name", "a chromosome name"),
    "start": ("column 2 (start)", "missing or not an integer", "an integer >= 0"),
    "end": ("column 3 (end)", "missing or not an integer", "an integer > start"),
    "negative": ("column 2 (start)", "negative coordinate", "start >= 0 (0-based)"),
    "order": ("column 3 (end)", "end <= start", "end > start (half-open, non-empty)"),
    "barcode": ("column 4 (barcode)", "empty barcode", "a non-empty cell barcode"),
    "count": ("column 5 (count)", "missing or not a positive integer", "an integer >= 1"),
}


def _as_int(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, bad mask) of a column that should hold integers."""
    if pd.api.types.is_integer_dtype(col.dtype):
        return col.to_numpy(np.int64), np.zeros(len(col), bool)
    num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(num) | (np.floor(num) != num)
    return np.where(bad, 0, num).astype(np.int64), bad


def _validate(
    path: str | Path, frame: pd.DataFrame, row0: int, n_columns: int
) -> tuple[np.ndarray, ...]:
    """Check one raw chunk; return ``start, end, count`` as integer arrays or raise.

    A line with fewer fields than the first data line reads as NaN in its last fields: the
    first problem row is looked up in the text, and a field-count difference is reported as
    such (not as the empty field it looks like).
    """
    start, bad_start = _as_int(frame["start"])
    end, bad_end = _as_int(frame["end"])
    checks = {
        "chrom": frame["chrom"].isna().to_numpy(),
        "start": bad_start,
        "end": bad_end,
        "negative": ~bad_start & (start < 0),
        "order": ~bad_start & ~bad_end & (end <= start),
        "barcode": frame["barcode"].isna().to_numpy(),
    }
    if "count" in frame:
        count, bad_count = _as_int(frame["count"])
        checks["count"] = bad_count | (count < 1)
    else:
        count = np.ones(len(frame), np.int64)
    longer = frame["_more"].notna().to_numpy()
    if longer.any():
        lineno, text = _data_line(path, row0 + int(np.argmax(longer)))
        raise _field_count_error(path, lineno, text, n_columns)
    if n_columns > 5:  # extra fields: only their presence is checked (empty ones are fine)
        short = np.flatnonzero(frame[frame.columns[-2]].isna().to_numpy())
        if len(short):
            lineno, text = _odd_line(path, n_columns, row0 + short)
            if lineno > 0:
                raise _field_count_error(path, lineno, text, n_columns)
    first = {k: int(np.argmax(v)) for k, v in checks.items() if v.any()}
    if first:
        kind = min(first, key=first.__getitem__)
        lineno, text = _data_line(path, row0 + first[kind])
        if text.count("\t") + 1 != n_columns:
            raise _field_count_error(path, lineno, text, n_columns)
        where, problem, expected = _PROBLEMS[kind]
        n_bad = int(sum(v.sum() for v in checks.values()))
        raise ScfmInputError(
            path,
            f"line {lineno}, {where}",
            f"{problem} in {text!r} ({n_bad} problem(s) in this chunk of {len(frame)} lines)",
            expected,
        )
    return start, end, count


def iter_fragments(
    path: str | Path,
    *,
    chroms: Index | None = None,
    barcodes: Index | None = None,
    chunk_size: int = 2_000_000,
) -> Iterator[FragmentChunk]:
    """Stream a fragment file as :class:`FragmentChunk` arrays of at most ``chunk_size`` rows.

    ``chroms`` / ``barcodes`` are filled as names appear (pass frozen indexes to restrict them:
    unknown names get code -1). Comment lines (``#``) are skipped. Memory is bounded by
    ``chunk_size``; the file is read once, sequentially. Every chunk is validated: fewer than 4
    columns, non-integer or negative coordinates, ``end <= start``, empty barcodes, a count
    that is not a positive integer, and truncated gzip/BGZF raise :class:`ScfmInputError`.
    """
    chroms = chroms if chroms is not None else Index()
    barcodes = barcodes if barcodes is not None else Index()
    check_compressed_stream(path)
    try:
        n_columns = count_columns(path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _truncated(path, exc) from exc
    if n_columns < 4:
        lineno, text = _data_line(path, 0)
        raise ScfmInputError(
            path,
            f"line {lineno}" if n_columns else "contents",
            f"{n_columns} tab-separated column(s) in {text!r}" if n_columns else "no data lines",
            "chrom, start, end, barcode[, count] separated by tabs",
        )
    for frame, row0 in _frames(path, n_columns, chunk_size):
        start, end, count = _validate(path, frame, row0, n_columns)
        yield FragmentChunk(
            chrom=chroms.encode(frame["chrom"]),
            start=start,
            end=end,
            barcode=barcodes.encode(frame["barcode"]),
            count=count.astype(np.int32),
        )


def read_chunks(
    path: str | Path,
    *,
    chroms: Index | None = None,
    barcodes: Index | None = None,
    chunk_size: int = 2_000_000,
) -> Iterator[FragmentChunk]:
    """:func:`iter_fragments`, read from the binary sidecar when one describes ``path``.

    A file written by :func:`prepare_fragments` has a sidecar (:mod:`scfm.atac.sidecar`): the
    same fragments as binary records, read without parsing text. Chunks then never span two
    chromosomes, and ``count`` is not kept there: every chunk's ``count`` is 1. Use this for
    counting (tiles, peaks, gene activity, pseudobulk), which ignores ``count``; use
    :func:`iter_fragments` where the count matters. Any other file is parsed as text.
    """
    from scfm.atac.sidecar import Sidecar

    side = Sidecar.open(path)
    if side is None:
        yield from iter_fragments(path, chroms=chroms, barcodes=barcodes, chunk_size=chunk_size)
        return
    chroms = chroms if chroms is not None else Index()
    barcodes = barcodes if barcodes is not None else Index()
    lut = np.fromiter((barcodes.add(b) for b in side.barcodes), np.int32)
    codes = {name: chroms.add(name) for name in side.chrom_names}
    log.debug("%s: reading %d fragments from its sidecar", path, side.n_fragments)
    for name, rec in side.records(chunk_size):
        n = len(rec)
        yield FragmentChunk(
            chrom=np.full(n, codes[name], np.int32),
            start=rec["start"].astype(np.int64),
            end=rec["end"].astype(np.int64),
            barcode=lut[rec["barcode"]] if len(lut) else np.full(n, -1, np.int32),
            count=np.ones(n, np.int32),
        )


# ----------------------------------------------------------------------------- writing
@numba.njit(cache=True)
def _put_int(buf: np.ndarray, p: int, v: int) -> int:
    if v == 0:
        buf[p] = 48
        return p + 1
    n = 0
    t = v
    while t > 0:
        t //= 10
        n += 1
    q = p + n
    while v > 0:
        q -= 1
        buf[q] = 48 + v % 10
        v //= 10
    return p + n


@numba.njit(cache=True)
def _format_lines(chrom, start, end, bc, count, bc_bytes, bc_off, buf, line_end) -> int:
    """Write tab-separated ``chrom start end barcode count`` lines into ``buf``; bytes used.

    ``line_end[i]`` gets the position in ``buf`` just past line ``i`` (for the tabix index).
    """
    p = 0
    for i in range(start.size):
        for b in chrom:
            buf[p] = b
            p += 1
        buf[p] = 9
        p = _put_int(buf, p + 1, start[i])
        buf[p] = 9
        p = _put_int(buf, p + 1, end[i])
        buf[p] = 9
        p += 1
        for j in range(bc_off[bc[i]], bc_off[bc[i] + 1]):
            buf[p] = bc_bytes[j]
            p += 1
        buf[p] = 9
        p = _put_int(buf, p + 1, count[i])
        buf[p] = 10
        p += 1
        line_end[i] = p
    return p


class BgzfWriter:
    """A BGZF writer that deflates 64 KiB blocks on a thread pool (zlib releases the GIL).

    BGZF (SAM/BAM specification, section 4.1) is a series of gzip members of at most 64 KiB,
    each carrying its compressed size in a ``BC`` extra field, and an empty end-of-file
    member. htslib's single-threaded writer is the bottleneck of writing fragment files, so
    blocks are compressed in parallel here and written in order. ``level`` 3 is ~3x faster
    than zlib's default 6 for a ~15% larger file.
    """

    block = 0xFF00  # uncompressed bytes per block, as bgzip (leaves room for incompressible data)

    def __init__(self, path: str | Path, *, level: int = 3, threads: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._fh = Path(path).open("wb")  # noqa: SIM115 (closed by close()/__exit__)
        self.sha256 = hashlib.sha256()  # of the compressed bytes written (the sidecar's check)
        self.size = 0
        self.block_sizes: list[int] = []  # compressed size of each data block (tabix offsets)
        self.uncompressed = 0  # bytes given to write()
        self._level = level
        self._buf = bytearray()
        self._pending: collections.deque = collections.deque()
        self._threads = threads or min(2, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self._threads)

    def _deflate(self, data: bytes) -> bytes:
        comp = zlib.compressobj(self._level, zlib.DEFLATED, -15)
        cdata = comp.compress(data) + comp.flush()
        header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"
        size = len(header) + 2 + len(cdata) + 8
        return b"".join(
            (
                header,
                (size - 1).to_bytes(2, "little"),
                cdata,
                zlib.crc32(data).to_bytes(4, "little"),
                len(data).to_bytes(4, "little"),
            )
        )

    def write(self, data: bytes | memoryview) -> None:
        """Queue ``data``; full blocks are compressed in the background, written in order."""
        view = memoryview(data).cast("B")
        self.uncompressed += len(view)
        if self._buf:  # complete the partial block left by the previous call
            take = min(self.block - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self.block:
                self._submit(bytes(self._buf))
                self._buf.clear()
        n_full = len(view) // self.block
        for i in range(n_full):
            self._submit(view[i * self.block : (i + 1) * self.block].tobytes())
        self._buf += view[n_full * self.block :]

    def _submit(self, chunk: bytes) -> None:
        self._pending.append(self._pool.submit(self._deflate, chunk))
        while len(self._pending) > 4 * self._threads:
            self._out(self._pending.popleft().result())

    def close(self) -> None:
        """Compress what is left, write the end-of-file block and close the file."""
        if self._buf:
            self._pending.append(self._pool.submit(self._deflate, bytes(self._buf)))
            self._buf.clear()
        for fut in self._pending:
            self._out(fut.result())
        self._pending.clear()
        self._pool.shutdown()
        self._out(BGZF_EOF, block=False)
        self._fh.close()

    def _out(self, data: bytes, *, block: bool = True) -> None:
        self._fh.write(data)
        self.sha256.update(data)
        self.size += len(data)
        if block:
            self.block_sizes.append(len(data))

    def __enter__(self) -> BgzfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # an error: do not wait for a complete file
            self._pool.shutdown(cancel_futures=True)
            self._fh.close()


@dataclass
class FragmentBlock:
    """The sorted fragments of one chromosome, ready to be written."""

    chrom: str
    start: np.ndarray
    end: np.ndarray
    barcode: np.ndarray  # codes into the writer's barcode names
    count: np.ndarray


def write_fragments(
    out: str | Path,
    blocks: Iterable[FragmentBlock],
    barcodes: Sequence[str],
    *,
    csi: bool = False,
    batch_size: int = 500_000,
    level: int = 3,
    threads: int | None = None,
    sidecar: dict[str, Any] | None = None,
    chrom_sizes: dict[str, int] | None = None,
) -> Path:
    """Write sorted blocks as a BGZF fragment file plus its tabix index, both atomically.

    ``blocks`` must come in output order, each sorted by start. Lines are formatted by a numba
    kernel and compressed by :class:`BgzfWriter` (``level``, ``threads``); the ``.tbi`` is
    built as the lines are written (:mod:`scfm.atac.tabix`; ``chrom_sizes`` sizes its linear
    index up front), a ``.csi`` by pysam (htslib). The data and index go to temporary files beside
    ``out``; on success the old ``out`` is removed, the index renamed into place, then the data
    (the commit point): a killed job never leaves a data file without its matching index.
    ``csi=True`` writes a ``.csi`` index (needed for chromosomes longer than 512 Mbp).

    ``sidecar`` (a dict: ``arrays`` name -> array, ``meta`` dict, ``wide`` bool, ``barcodes``: the
    names to store when they extend ``barcodes``) also writes the
    binary sidecar :mod:`scfm.atac.sidecar` (the same fragments as records, plus those arrays)
    beside ``out``, renamed into place just before the data; without it a stale sidecar of an
    older ``out`` is removed.
    """
    import pysam

    from scfm.atac import sidecar as sc

    out = Path(out)
    encoded = [b.encode() for b in barcodes]
    bc_off = np.zeros(len(encoded) + 1, np.int64)
    bc_off[1:] = np.cumsum([len(b) for b in encoded])
    bc_bytes = np.frombuffer(b"".join(encoded), np.uint8) if encoded else np.zeros(0, np.uint8)
    max_bc = int(np.diff(bc_off).max()) if len(encoded) else 0
    index_path = Path(f"{out}.csi" if csi else f"{out}.tbi")
    tbi = None if csi else TbiBuilder(BgzfWriter.block)
    sizes = dict(chrom_sizes or {})
    with atomic_path(out, suffix=".tmp.gz") as tmp, contextlib.ExitStack() as stack:
        side = None
        if sidecar is not None:
            side_tmp = stack.enter_context(atomic_path(sc.sidecar_path(out), suffix=".tmp.scfm"))
            side = sc.SidecarWriter(side_tmp, wide=bool(sidecar.get("wide")))
            stack.callback(side.abort)
        with BgzfWriter(tmp, level=level, threads=threads) as fh:
            for block in blocks:
                if side is not None:
                    side.add_chrom(block.chrom, block.start, block.end, block.barcode)
                chrom = np.frombuffer(block.chrom.encode(), np.uint8)
                for i in range(0, len(block.start), batch_size):
                    sl = slice(i, i + batch_size)
                    n = len(block.start[sl])
                    buf = np.empty(n * (len(chrom) + max_bc + 5 + 3 * 20), np.uint8)
                    line_end = np.empty(n, np.int64)
                    start, end = block.start[sl].astype(np.int64), block.end[sl].astype(np.int64)
                    used = _format_lines(
                        chrom,
                        start,
                        end,
                        block.barcode[sl].astype(np.int64),
                        block.count[sl].astype(np.int64),
                        bc_bytes,
                        bc_off,
                        buf,
                        line_end,
                    )
                    if tbi is not None:
                        line_end += fh.uncompressed
                        line_start = np.r_[fh.uncompressed, line_end[:-1]]
                        size = sizes.get(block.chrom, int(end.max()) if n else 0)
                        tbi.add(block.chrom, size, start, end, line_start, line_end)
                    fh.write(buf[:used])
        if side is not None:
            for name, array in (sidecar.get("arrays") or {}).items():
                side.add_array(name, array)
            side.finish(
                sidecar.get("barcodes", barcodes),
                bgzf_size=fh.size,
                bgzf_sha256=fh.sha256.hexdigest(),
                meta=sidecar.get("meta"),
            )
        else:
            sc.remove(out)
        with atomic_path(index_path, suffix=".tmp.idx") as tmp_index:
            if tbi is not None:  # built while writing: no second read of the file
                tbi.write(tmp_index, fh.block_sizes, fh.uncompressed)
            else:
                pysam.tabix_index(
                    str(tmp), preset="bed", force=True, index=str(tmp_index), csi=True
                )
            out.unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------- prepare
class _Spill:
    """Per-chromosome binary spill files of (start, end, barcode, count) records."""

    dtype = np.dtype([("start", "<i8"), ("end", "<i8"), ("barcode", "<i4"), ("count", "<i4")])

    def __init__(self, directory: str, n_chroms: int) -> None:
        self.dir = Path(directory)
        self.n = np.zeros(n_chroms, np.int64)
        self.sorted = np.ones(n_chroms, bool)
        self.last = np.full(n_chroms, -1, np.int64)

    def append(self, gchrom: np.ndarray, start, end, barcode, count) -> None:
        order = np.argsort(gchrom, kind="stable")
        gchrom = gchrom[order]
        bounds = np.flatnonzero(np.diff(gchrom)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(gchrom)], strict=True):
            if hi <= lo:
                continue
            c = int(gchrom[lo])
            idx = order[lo:hi]
            rec = np.empty(hi - lo, self.dtype)
            rec["start"], rec["end"] = start[idx], end[idx]
            rec["barcode"], rec["count"] = barcode[idx], count[idx]
            s = rec["start"]
            if self.sorted[c] and (s[0] < self.last[c] or (len(s) > 1 and (np.diff(s) < 0).any())):
                self.sorted[c] = False
            self.last[c] = s[-1]
            with (self.dir / f"{c}.bin").open("ab") as fh:
                rec.tofile(fh)
            self.n[c] += hi - lo

    def load(self, c: int) -> np.ndarray:
        rec = np.fromfile(self.dir / f"{c}.bin", self.dtype)
        if not self.sorted[c]:
            rec = rec[np.lexsort((rec["end"], rec["start"]))]
        return rec


class _SortCheck:
    """Tracks whether the input is coordinate-sorted (contiguous chromosomes, rising starts)."""

    def __init__(self) -> None:
        self.sorted = True
        self.first_bad_row: int | None = None
        self.seen: set[int] = set()
        self.last_chrom = -1
        self.last_start = -1

    def update(self, chrom: np.ndarray, start: np.ndarray, row0: int) -> None:
        if not self.sorted or not len(chrom):
            return
        c = np.r_[self.last_chrom, chrom]
        s = np.r_[self.last_start, start]
        same = c[1:] == c[:-1]
        back = np.flatnonzero(same & (s[1:] < s[:-1]))
        bad = int(back[0]) if len(back) else None
        for i in np.flatnonzero(~same):  # a new chromosome block: must not repeat an old one
            if bad is not None and i > bad:
                break
            if int(c[i + 1]) in self.seen:
                bad = int(i)
                break
            self.seen.add(int(c[i + 1]))
        if bad is not None:
            self.sorted, self.first_bad_row = False, row0 + bad
        self.last_chrom, self.last_start = int(chrom[-1]), int(start[-1])


def read_whitelist(whitelist: str | Path | Iterable[str]) -> list[str]:
    """Barcodes from a file (one per line, first tab-separated field, plain or gzip) or a list."""
    if isinstance(whitelist, (str, Path)):
        with open_text(whitelist) as fh:
            names = [ln.split("\t")[0].strip() for ln in fh]
        names = [n for n in names if n and not n.startswith("#")]
    else:
        names = [str(b) for b in whitelist]
    if not names:
        raise ScfmInputError(str(whitelist)[:200], "whitelist", "empty", "at least one barcode")
    return list(dict.fromkeys(names))


def prepare_fragments(
    raw: str | Path,
    out: str | Path,
    *,
    genome: Any,
    chrom_map: dict[str, str | None] | None = None,
    min_fragments: int = 1,
    whitelist: str | Path | Iterable[str] | None = None,
    chunk_size: int = 2_000_000,
    max_beyond_end: float = 0.001,
    tmp_dir: str | Path | None = None,
    blacklist: str | Path | None = None,
) -> dict[str, Any]:
    """Validate ``raw`` and write a clean fragment file ``out`` (+ ``out.tbi``), atomically.

    ``blacklist`` (a BED file, checked by :func:`scfm.atac.blacklist.read_blacklist`) removes
    every fragment overlapping one of its regions; the sidecar's QC sums then count them per
    barcode (``n_blacklist``) and the returned ``n_blacklisted`` in total.

    ``out`` is BGZF with 5 columns (``count`` is 1 where ``raw`` had none), chromosome names of
    ``genome``, coordinate-sorted in genome chromosome order, indexed with tabix (``.csi`` for
    chromosomes over 512 Mbp). Unsorted input is sorted in bounded memory (module docstring).

    Chromosome names are mapped with :func:`scfm.atac.genome.harmonize_chrom` (``chr1``/``1``,
    ``chrM``/``MT``, ``chrom_map``); fragments on alt/unplaced/random contigs are dropped and
    counted. Fragments reaching past a chromosome's end are dropped and counted too; more than
    ``max_beyond_end`` of them (a fraction) means a wrong assembly and is an error.

    Errors (:class:`ScfmInputError`; nothing is written): a missing or truncated gzip/BGZF
    file; fewer than 4 columns; non-integer or negative coordinates; ``end <= start``; empty
    barcodes; counts that are not positive integers (each naming its line); chromosome names
    that neither the genome nor ``chrom_map`` know; a ``whitelist`` (file or list of barcodes)
    that matches no barcode; fewer than ``min_fragments`` fragments left.

    Returns a dict of statistics: ``n_fragments_in``, ``n_fragments_out``, ``dropped_chroms``
    (name -> fragments), ``n_not_whitelisted``, ``n_beyond_chrom_end``, ``n_barcodes``,
    ``sorted_input``, ``renamed_chroms``, ``n_columns``, ``seconds``, ``fragments_per_second``.
    """
    from scfm.atac.genome import harmonize_chrom
    from scfm.atac.qc import QcAccumulator

    raw, out = Path(raw), Path(out)
    qc = QcAccumulator(genome)  # barcode_qc's sums, in this pass (stored in the sidecar)
    black = None
    if blacklist is not None:
        from scfm.atac.blacklist import read_blacklist

        black = read_blacklist(blacklist, genome)  # checked before any fragment is read
    n_black = 0
    t0 = time.perf_counter()
    wl = read_whitelist(whitelist) if whitelist is not None else None
    barcodes = Index(wl, frozen=True) if wl else Index()
    chroms = Index()
    gnames = list(genome.chrom_sizes)
    gsize = np.array([genome.chrom_sizes[c] for c in gnames], np.int64)
    lut = np.zeros(0, np.int64)  # raw chrom code -> genome index, -1 dropped
    n_in = n_wl = n_beyond = 0
    dropped = np.zeros(0, np.int64)
    used = np.zeros(len(barcodes), bool)
    sortcheck = _SortCheck()
    spill_root = Path(tmp_dir) if tmp_dir else out.parent
    spill_dir = temp_dir_beside(spill_root / out.name, spill=True)
    try:
        spill = _Spill(spill_dir, len(gnames))
        for chunk in iter_fragments(raw, chroms=chroms, barcodes=barcodes, chunk_size=chunk_size):
            sortcheck.update(chunk.chrom, chunk.start, n_in)
            n_in += len(chunk)
            if len(lut) < len(chroms):
                cm = harmonize_chrom(chroms.names, genome, chrom_map)
                if cm.unknown:
                    _unknown_chroms(raw, cm.unknown, gnames)
                lut = np.array(
                    [gnames.index(cm.mapping[n]) if n in cm.mapping else -1 for n in chroms.names],
                    np.int64,
                )
                dropped = np.r_[dropped, np.zeros(len(lut) - len(dropped), np.int64)]
            gchrom = lut[chunk.chrom]
            keep = gchrom >= 0
            dropped += np.bincount(chunk.chrom[~keep], minlength=len(lut))
            if wl is not None:
                in_wl = chunk.barcode >= 0
                n_wl += int((keep & ~in_wl).sum())
                keep &= in_wl
            beyond = keep & (chunk.end > gsize[np.maximum(gchrom, 0)])
            n_beyond += int(beyond.sum())
            keep &= ~beyond
            if black is not None:
                hit = keep & black.overlaps(np.maximum(gchrom, 0), chunk.start, chunk.end)
                n_black += int(hit.sum())
                qc.add_blacklisted(chunk.barcode[hit])
                keep &= ~hit
            if not keep.all():
                gchrom = gchrom[keep]
                start, end = chunk.start[keep], chunk.end[keep]
                bc, count = chunk.barcode[keep], chunk.count[keep]
            else:
                start, end, bc, count = chunk.start, chunk.end, chunk.barcode, chunk.count
            if len(used) < len(barcodes):
                used = np.r_[used, np.zeros(len(barcodes) - len(used), bool)]
            used[bc] = True
            qc.add(gchrom, bc, start, end, count)
            spill.append(gchrom, start, end, bc, count)
        n_out = int(spill.n.sum())
        if wl is not None and n_out == 0 and n_wl:
            file_barcodes = _first_barcodes(raw, 3)
            raise ScfmInputError(
                raw,
                "barcode",
                f"the whitelist ({len(wl)} barcodes, e.g. {wl[:3]}) matches none of the "
                f"fragments' barcodes (e.g. {file_barcodes[:3]})",
                "whitelist barcodes spelled as in the fragment file (suffixes such as -1)",
            )
        if n_beyond > max_beyond_end * max(n_in, 1):
            raise ScfmInputError(
                raw,
                "end",
                f"{n_beyond} of {n_in} fragments reach past their chromosome's end",
                f"coordinates on genome {genome.name!r} (is the file from another assembly?)",
            )
        if n_out < min_fragments:
            raise ScfmInputError(
                raw,
                "fragments",
                f"{n_out} fragments left of {n_in} read "
                f"(dropped: {_dropped_dict(chroms, dropped)}, not whitelisted: {n_wl}, "
                f"blacklisted: {n_black})",
                f"at least min_fragments={min_fragments}",
            )
        if not sortcheck.sorted:
            lineno, text = _data_line(raw, sortcheck.first_bad_row or 0)
            log.warning(
                "%s is not coordinate-sorted (first out-of-order fragment on line %d: %r); "
                "sorting it by per-chromosome spill files",
                raw,
                lineno,
                text,
            )
        # barcode codes of the output: only barcodes with fragments, in first-seen order
        used_codes = np.flatnonzero(used)
        remap = np.full(len(barcodes), -1, np.int64)
        remap[used_codes] = np.arange(len(used_codes))
        names = [barcodes.names[i] for i in used_codes]

        def blocks() -> Iterator[FragmentBlock]:
            for c in np.flatnonzero(spill.n):
                rec = spill.load(int(c))
                yield FragmentBlock(
                    gnames[c], rec["start"], rec["end"], remap[rec["barcode"]], rec["count"]
                )

        # barcodes whose every fragment was blacklisted stay in the QC sums (after the others;
        # the sidecar lists them, no record refers to them)
        qc_codes = used_codes
        if qc.n_blacklist is not None:
            hit = np.flatnonzero(qc.n_blacklist[: len(barcodes)] > 0)
            qc_codes = np.r_[used_codes, hit[~used[hit]]]
        sums = qc.arrays(qc_codes)
        write_fragments(
            out,
            blocks(),
            names,
            csi=bool(gsize.max() >= TBI_MAX_POSITION),
            chrom_sizes=dict(genome.chrom_sizes),
            sidecar={
                "barcodes": [barcodes.names[i] for i in qc_codes],
                "wide": bool(gsize.max() >= 2**31),
                "arrays": {f"qc.{k}": v for k, v in sums.items()},
                "meta": {"qc_key": qc.key, "genome": getattr(genome, "name", None)},
            },
        )
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    seconds = time.perf_counter() - t0
    n_columns = count_columns(raw)
    cm = harmonize_chrom(chroms.names, genome, chrom_map)
    stats = {
        "input": str(raw),
        "output": str(out),
        "n_columns": n_columns,
        "n_fragments_in": n_in,
        "n_fragments_out": n_out,
        "dropped_chroms": _dropped_dict(chroms, dropped),
        "renamed_chroms": {k: v for k, v in cm.mapping.items() if k != v},
        "n_not_whitelisted": n_wl,
        "n_beyond_chrom_end": n_beyond,
        "blacklist": str(blacklist) if blacklist is not None else None,
        "n_blacklisted": n_black,
        "n_barcodes": len(names),
        "sorted_input": sortcheck.sorted,
        "seconds": round(seconds, 3),
        "fragments_per_second": round(n_in / max(seconds, 1e-9)),
    }
    log.info(
        "%s -> %s: %d of %d fragments, %d barcodes, %s input, dropped contigs %s, "
        "blacklisted %d (%.1fs)",
        raw,
        out,
        n_out,
        n_in,
        len(names),
        "sorted" if sortcheck.sorted else "UNSORTED (sorted)",
        stats["dropped_chroms"],
        n_black,
        seconds,
    )
    return stats


def _first_barcodes(path: Path, n: int) -> list[str]:
    out: list[str] = []
    with open_text(path) as fh:
        for line in fh:
            fields = line.rstrip("\r\n").split("\t")
            if not line.startswith("#") and len(fields) > 3:
                out.append(fields[3])
            if len(out) >= n:
                break
    return out


def _dropped_dict(chroms: Index, dropped: np.ndarray) -> dict[str, int]:
    return {chroms.names[i]: int(n) for i, n in enumerate(dropped) if n}


def _unknown_chroms(path: Path, unknown: list[str], genome_names: list[str]) -> None:
    raise ScfmInputError(
        path,
        "column 1 (chrom)",
        f"{len(unknown)} chromosome name(s) not in the genome and not mapped, e.g. {unknown[:5]}",
        f"names of the genome (e.g. {genome_names[:5]}), or a chrom_map entry such as "
        f"{{{unknown[0]!r}: {genome_names[0]!r}}} (map to null to drop a contig)",
    )


# ----------------------------------------------------------------------------- lookups
def count_in_region(
    path: str | Path,
    chrom: str,
    start: int,
    end: int,
    *,
    barcode: str | None = None,
    sum_counts: bool = False,
) -> int:
    """Fragments overlapping ``[start, end)`` of ``chrom``, read through pysam's tabix index.

    An independent check of our own readers: htslib does the region query. ``barcode``
    restricts to one cell; ``sum_counts`` adds the count column instead of counting lines.
    """
    import pysam

    total = 0
    with pysam.TabixFile(str(path)) as tbx:
        if chrom not in tbx.contigs:
            return 0
        for line in tbx.fetch(chrom, start, end):
            fields = line.split("\t")
            if barcode is not None and fields[3] != barcode:
                continue
            total += int(fields[4]) if sum_counts and len(fields) > 4 else 1
    return total
