"""Atomic writes: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scfm.errors import disk_full_error, not_writable_error


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
log = logging.getLogger(__name__)


# the names tempfile gives: 8 characters of this alphabet
_RANDOM = "[a-z0-9_]{8}"
_STALE = {
    "file": (r"{name}\.{rand}\.tmp.*", False),  # atomic_path
    "dir": (r"{name}\.{rand}", True),  # temp_dir_beside: an output directory being built
    "spill": (r"{name}\.spill\.{rand}", True),  # temp_dir_beside(spill=True): scratch space
}


def clean_stale(final: str | os.PathLike[str], kind: str = "file") -> list[Path]:
    """Remove what killed writers of ``final`` left beside it; return the removed paths.

    A job killed with SIGKILL (preemption, time limit, OOM) cannot clean up: its temporary
    file (``kind="file"``: ``.<name>.XXXXXXXX.tmp<suffix>`` from :func:`atomic_path`) or
    directory (``"dir"``: ``.<name>.XXXXXXXX``, ``"spill"``: ``.<name>.spill.XXXXXXXX``, from
    :func:`temp_dir_beside`) stays behind. It never looks complete, but on a cluster file
    system they pile up. A new writer of ``final`` removes those of its own kind first; this
    relies on one writer per output at a time, which Snakemake guarantees for the pipeline's
    outputs.
    """
    final = Path(final)
    template, is_dir = _STALE[kind]
    pattern = re.compile(r"\." + template.format(name=re.escape(final.name), rand=_RANDOM))
    try:
        entries = [e for e in os.scandir(final.parent) if pattern.fullmatch(e.name)]
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) != is_dir:
            continue
        path = Path(entry.path)
        if is_dir:
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d leftover temporary path(s) of %s", len(removed), final)
    return removed


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success.

    The temporary file lives in the same directory so the rename is atomic on POSIX file
    systems. On any exception the temporary file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    # always ".tmp" first: clean_stale recognises the name; the extension stays last for tools
    # that go by it
    if not (suffix or "").startswith(".tmp"):
        suffix = f".tmp{suffix or final.suffix}"
    with _writable(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final, "file")
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates mode 0600; give the result the mode a plain open() would (shared
    # cluster file systems: the lab reads each other's results)
    tmp_path.chmod(0o666 & ~_UMASK)
    try:
        yield tmp_path
        tmp_path.replace(final)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        full = disk_full_error(exc, final)  # h5py and write() name no final output
        if full is not None and full is not exc:
            raise full from exc
        raise


def temp_dir_beside(final: str | os.PathLike[str], *, spill: bool = False) -> Path:
    """A new temporary directory beside ``final``, after :func:`clean_stale`.

    Named ``.<name>.XXXXXXXX`` (``.<name>.spill.XXXXXXXX`` with ``spill``). The caller
    renames it to ``final`` when complete (an output directory) or removes it (spill space);
    on an exception it must remove it.
    """
    final = Path(final)
    prefix = f".{final.name}.spill." if spill else f".{final.name}."
    with _writable(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final, "spill" if spill else "dir")
        return Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))


@contextlib.contextmanager
def _writable(final: Path) -> Iterator[None]:
    """A read-only or forbidden output directory as ScfmNotWritableError naming it.

    Otherwise the error names a temporary file the user never asked for.
    """
    try:
        yield
    except OSError as exc:
        # the directory that refused: the output's own, or the deepest one mkdir reached
        directory = next((p for p in final.parents if p.exists()), final.parent)
        err = not_writable_error(exc, directory, final)
        if err is not None and err is not exc:
            raise err from exc
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
