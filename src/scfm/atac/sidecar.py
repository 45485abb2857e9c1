"""The binary sidecar of a prepared fragment file: the same fragments as numpy records.

:func:`scfm.atac.fragments.prepare_fragments` writes, beside its BGZF output ``F``, a file
``F.scfm`` holding every fragment of ``F`` as fixed-size binary records (``start``, ``end``,
``barcode`` code; 12 bytes with int32 coordinates, 20 with int64 when a chromosome reaches
2^31 bp), chromosome by chromosome in the file's order, plus the barcode names and named
arrays (the per-barcode QC accumulators computed in the same pass). Later stages (QC, tiles,
peaks, gene activity, pseudobulk) read it instead of parsing the text again: one parse per
dataset instead of one per stage.

Layout: the data sections, then a JSON footer, then a 16-byte trailer (footer length as a
little-endian uint64 and the magic ``SCFMFRG1``). The footer records every section's offset,
size and CRC-32, and the size and SHA-256 of the BGZF file the sidecar describes.

A sidecar is used only when it belongs to the file at hand: :meth:`Sidecar.open` returns
``None`` (and the caller parses the text, as for any fragment file) when there is no sidecar,
its trailer or footer is unreadable, or the BGZF file's size or SHA-256 differ from the
recorded ones (the file was replaced or edited). A section whose CRC-32 does not match while
it is read raises :class:`scfm.errors.ScfmInputError` naming the sidecar: a corrupt cache is
not silently read. The sidecar is written atomically before the BGZF file is renamed into
place (the commit point), and replaced or removed with it.

Why a hand-written container and not npz/HDF5/Arrow: the records are streamed chromosome by
chromosome while they are written (no second copy in memory) and read back in chunks with a
checksum per section; the format is a few dozen lines and has no dependency.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from scfm.errors import ScfmInputError

log = logging.getLogger(__name__)

MAGIC = b"SCFMFRG1"
FORMAT = "scfm-fragments-sidecar"
VERSION = 1
SUFFIX = ".scfm"
_READ_BLOCK = 1 << 22  # bytes hashed per read when checking the BGZF file


def sidecar_path(fragments: str | Path) -> Path:
    """Where the sidecar of ``fragments`` lives: ``<fragments>.scfm``."""
    return Path(f"{fragments}{SUFFIX}")


def record_dtype(wide: bool) -> np.dtype:
    """Record layout: int32 coordinates, or int64 when a chromosome reaches 2^31 bp."""
    pos = "<i8" if wide else "<i4"
    return np.dtype([("start", pos), ("end", pos), ("barcode", "<i4")])


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


class SidecarWriter:
    """Writes a sidecar to ``path`` (the caller makes it atomic): chromosomes, arrays, footer."""

    def __init__(self, path: str | Path, *, wide: bool = False) -> None:
        self.path = Path(path)
        self.dtype = record_dtype(wide)
        self._fh: BinaryIO = self.path.open("wb")
        self._offset = 0
        self.chroms: list[dict[str, Any]] = []
        self.arrays: dict[str, dict[str, Any]] = {}

    def _write(self, data: bytes | memoryview) -> tuple[int, int, int]:
        offset = self._offset
        self._fh.write(data)
        self._offset += len(data)
        return offset, len(data), zlib.crc32(data)

    def add_chrom(self, name: str, start: np.ndarray, end: np.ndarray, barcode: np.ndarray) -> None:
        """Append one chromosome's fragments (in file order)."""
        rec = np.empty(len(start), self.dtype)
        rec["start"], rec["end"], rec["barcode"] = start, end, barcode
        offset, size, crc = self._write(memoryview(rec).cast("B"))
        self.chroms.append(
            {"name": name, "n": len(rec), "offset": offset, "bytes": size, "crc32": crc}
        )

    def add_array(self, name: str, array: np.ndarray) -> None:
        """Store a named 1-d numeric array (little-endian)."""
        a = np.ascontiguousarray(array, dtype=np.asarray(array).dtype.newbyteorder("<"))
        offset, size, crc = self._write(memoryview(a).cast("B"))
        self.arrays[name] = {
            "dtype": a.dtype.str,
            "n": len(a),
            "offset": offset,
            "bytes": size,
            "crc32": crc,
        }

    def finish(
        self,
        barcodes: Sequence[str],
        *,
        bgzf_size: int,
        bgzf_sha256: str,
        meta: dict[str, Any] | None = None,
    ) -> Path:
        """Write the barcode names, the footer and the trailer; close the file."""
        names = "\n".join(barcodes).encode()
        if any("\n" in b for b in barcodes):  # cannot happen for fragment-file barcodes
            raise ValueError("a barcode contains a newline")
        b_offset, b_size, b_crc = self._write(names)
        footer = {
            "format": FORMAT,
            "version": VERSION,
            "record": self.dtype.descr,
            "chroms": self.chroms,
            "barcodes": {"n": len(barcodes), "offset": b_offset, "bytes": b_size, "crc32": b_crc},
            "arrays": self.arrays,
            "bgzf": {"size": int(bgzf_size), "sha256": bgzf_sha256},
            "meta": meta or {},
        }
        data = json.dumps(footer, sort_keys=True, separators=(",", ":")).encode()
        self._fh.write(data)
        self._fh.write(len(data).to_bytes(8, "little") + MAGIC)
        self._fh.close()
        return self.path

    def abort(self) -> None:
        """Close the file (after an error, or again after :meth:`finish`)."""
        self._fh.close()


@dataclass
class Sidecar:
    """An open, verified sidecar (see :meth:`open`)."""

    path: Path
    footer: dict[str, Any]

    @classmethod
    def open(cls, fragments: str | Path) -> Sidecar | None:
        """The sidecar of ``fragments`` if it describes exactly this file, else ``None``.

        Checks the trailer, the footer and the BGZF file's size and SHA-256 (one read of the
        compressed file: ~0.5 s per GB). Why it is not used is logged at debug level.
        """
        path = sidecar_path(fragments)
        try:
            size = path.stat().st_size
            with path.open("rb") as fh:
                fh.seek(size - 16)
                tail = fh.read(16)
                if len(tail) != 16 or tail[8:] != MAGIC:
                    raise ValueError("no sidecar trailer")
                n = int.from_bytes(tail[:8], "little")
                fh.seek(size - 16 - n)
                footer = json.loads(fh.read(n))
            if footer.get("format") != FORMAT or footer.get("version") != VERSION:
                raise ValueError(f"format {footer.get('format')} {footer.get('version')}")
            bgzf = footer["bgzf"]
            if Path(fragments).stat().st_size != bgzf["size"]:
                raise ValueError("the fragment file's size differs from the recorded one")
            if file_sha256(fragments) != bgzf["sha256"]:
                raise ValueError("the fragment file's SHA-256 differs from the recorded one")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("sidecar %s not used: %s", path, exc)
            return None
        return cls(path, footer)

    @property
    def barcodes(self) -> list[str]:
        """Barcode names; record codes index this list."""
        b = self.footer["barcodes"]
        if b["n"] == 0:
            return []
        return self._section(b, "barcodes").decode().split("\n")

    @property
    def chrom_names(self) -> list[str]:
        """Chromosomes, in file order."""
        return [c["name"] for c in self.footer["chroms"]]

    @property
    def n_fragments(self) -> int:
        """Records in the sidecar (= lines of the BGZF file)."""
        return int(sum(c["n"] for c in self.footer["chroms"]))

    @property
    def meta(self) -> dict[str, Any]:
        """What the writer recorded (``qc_key``, genome name)."""
        return self.footer.get("meta", {})

    def _corrupt(self, what: str) -> ScfmInputError:
        return ScfmInputError(
            self.path,
            what,
            "CRC-32 mismatch (the sidecar is corrupt)",
            "the sidecar prepare_fragments wrote (delete it to parse the BGZF text instead)",
        )

    def _section(self, spec: dict[str, Any], what: str) -> bytes:
        with self.path.open("rb") as fh:
            fh.seek(spec["offset"])
            data = fh.read(spec["bytes"])
        if len(data) != spec["bytes"] or zlib.crc32(data) != spec["crc32"]:
            raise self._corrupt(what)
        return data

    def array(self, name: str) -> np.ndarray | None:
        """A named array, or ``None`` if the sidecar has none of that name."""
        spec = self.footer["arrays"].get(name)
        if spec is None:
            return None
        return np.frombuffer(self._section(spec, f"array {name}"), np.dtype(spec["dtype"]))

    def records(self, chunk_size: int) -> Iterator[tuple[str, np.ndarray]]:
        """``(chromosome, records)`` blocks of at most ``chunk_size`` fragments, in file order.

        Each chromosome's CRC-32 is checked once its last block has been read (before it is
        yielded), so a corrupt section raises before its last records are used.
        """
        dtype = np.dtype([tuple(d) for d in self.footer["record"]])
        step = max(1, int(chunk_size)) * dtype.itemsize
        with self.path.open("rb") as fh:
            for c in self.footer["chroms"]:
                fh.seek(c["offset"])
                left, crc = c["bytes"], 0
                while left > 0:
                    buf = fh.read(min(step, left))
                    if not buf:
                        raise self._corrupt(f"chromosome {c['name']}")
                    left -= len(buf)
                    crc = zlib.crc32(buf, crc)
                    if left == 0 and crc != c["crc32"]:
                        raise self._corrupt(f"chromosome {c['name']}")
                    yield c["name"], np.frombuffer(buf, dtype)


def remove(fragments: str | Path) -> None:
    """Remove the sidecar of ``fragments`` (if any)."""
    sidecar_path(fragments).unlink(missing_ok=True)
