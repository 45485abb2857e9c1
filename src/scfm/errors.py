"""Errors that tell the user which file, which field and what was expected."""

from __future__ import annotations

import errno
import os
import re
import shutil
from os import PathLike
from pathlib import Path


class ScfmInputError(ValueError):
    """Bad input data: names the file, the field (or key) and what was expected.

    Parameters
    ----------
    path
        The offending file (or URL).
    field
        Where in the file: an HDF5 path such as ``raw/X``, a column, a header field.
    problem
        What was found.
    expected
        What was expected instead.
    """

    def __init__(
        self, path: str | PathLike[str], field: str, problem: str, expected: str | None = None
    ) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        self.expected = expected
        msg = f"{self.path}: {field}: {problem}"
        if expected:
            msg += f"; expected {expected}"
        super().__init__(msg)


class ScfmConfigError(ValueError):
    """The configuration is invalid; the message names every offending key path."""

    def __init__(self, problems: list[str], *, source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid {source} ({len(problems)} problem(s)):\n{lines}")


class ScfmDownloadError(RuntimeError):
    """A download failed (HTTP error, truncated transfer, checksum mismatch)."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# h5py/HDF5 put the file into the message: "..., filename = '/x/.a.h5ad.k2j4l1ab.tmp.h5ad', ..."
_H5_FILENAME = re.compile(r"filename = '([^']+)'")
# atomic_path/temp_dir_beside temporaries: .<name>.XXXXXXXX[.tmp<suffix>] beside <name>
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?:spill\.)?[a-z0-9_]{8}(?:\.tmp.*)?")


class ScfmDiskFullError(OSError):
    """The file system of an output is full (or over quota); names the output and its free space.

    ``errno`` is ``ENOSPC`` (or ``EDQUOT``), ``filename`` the output being written (the final
    name, not the temporary file it was written under), ``free`` the bytes still free there.
    """

    def __init__(
        self, path: str | PathLike[str] | None, *, code: int = errno.ENOSPC, detail: str = ""
    ) -> None:
        self.path = None if path is None else str(path)
        self.free = None if path is None else _free_bytes(Path(path))
        reason = "Disk quota exceeded" if code == errno.EDQUOT else "No space left on device"
        if self.path is None:
            msg = f"{reason} while writing an output the error does not name (see the traceback)"
        else:
            free = f"{self.free} bytes free" if self.free is not None else "free space unknown"
            msg = f"{reason} while writing {self.path} ({free} there; free some and rerun)"
        if detail:
            msg += f": {detail}"
        super().__init__(code, msg, self.path)

    def __str__(self) -> str:
        return self.strerror


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class ScfmNotWritableError(OSError):
    """An output directory cannot be written (read-only file system, no permission).

    ``filename`` is the directory; the message names it, the output that was to be written
    there and the reason.
    """

    def __init__(
        self,
        directory: str | PathLike[str],
        *,
        output: str | PathLike[str] | None = None,
        code: int = errno.EACCES,
    ) -> None:
        self.directory = str(directory)
        reason = os.strerror(code)
        what = f"cannot write {output}: its" if output is not None else "the"
        msg = (
            f"{what} output directory {self.directory} is not writable ({reason}); expected a "
            "writable directory (check its permissions or mount, or run from a writable "
            "working directory)"
        )
        super().__init__(code, msg, self.directory)

    def __str__(self) -> str:
        return self.strerror


def not_writable_error(
    exc: BaseException, directory: str | PathLike[str], output: str | PathLike[str] | None = None
) -> ScfmNotWritableError | None:
    """A :class:`ScfmNotWritableError` for ``exc`` if it is EACCES/EPERM/EROFS, else None."""
    if isinstance(exc, ScfmNotWritableError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE:
        return ScfmNotWritableError(directory, output=output, code=exc.errno)
    return None


def disk_full_error(
    exc: BaseException, path: str | PathLike[str] | None = None
) -> ScfmDiskFullError | None:
    """A :class:`ScfmDiskFullError` for ``exc`` if it (or its cause) is ENOSPC/EDQUOT, else None.

    ``path`` is the output being written; without it the file named by the error is used (for
    h5py also the one in its message), mapped from a temporary ``.<name>.XXXXXXXX`` to ``<name>``.
    """
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ScfmDiskFullError):
            return err
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            break
        err = err.__cause__ or err.__context__
    else:
        return None
    assert isinstance(err, OSError)
    if path is None:
        found = err.filename or (m.group(1) if (m := _H5_FILENAME.search(str(err))) else None)
        path = _final_name(Path(found)) if found else None
    return ScfmDiskFullError(path, code=err.errno)


def _final_name(path: Path) -> Path:
    m = _TEMP_NAME.fullmatch(path.name)
    return path.with_name(m.group("name")) if m else path


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None
