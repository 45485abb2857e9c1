"""Checks on the paths an entry point is given, made before anything is opened or written.

Two classes of mistakes lose data or hang without a word, and every stage that takes paths
from a user (the ``scfm`` command, the rules' library calls) checks them here:

* an output that is one of the inputs (the same path, a symlink to it, a hard link of it, a
  relative path that resolves to it): writing it would replace the input, so
  :func:`check_outputs_not_inputs` refuses before the first byte is written;
* an input that is not a regular file (or, where a 10x directory is allowed, a directory): a
  FIFO blocks the reader forever, a device reads endlessly, a symlink loop looks "missing".
  :func:`input_problem` names what the path is instead.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from scfm.errors import ScfmInputError, ScfmNotWritableError

PathLike = str | os.PathLike[str]

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def input_problem(path: PathLike, *, directory: bool = False) -> str | None:
    """What is wrong with ``path`` as an input, or None if it is a regular file.

    With ``directory`` a directory is accepted too (10x Matrix Market directories). The
    answer names the path's type: ``"does not exist"``, ``"is a symlink loop ..."``,
    ``"is a broken symlink to ..."``, ``"is a FIFO (named pipe), not a regular file"``, ...
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (too many levels of symbolic links)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if path.is_symlink():
                return f"is a broken symlink (to {str(path.readlink())!r}, which does not exist)"
            return "does not exist"
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return None if directory else "is a directory, not a regular file"
    kind = next((name for test, name in _KINDS if test(mode)), f"of file type {oct(mode)}")
    return f"is {kind}, not a regular file"


def check_input(path: PathLike, field: str, expected: str, *, directory: bool = False) -> None:
    """Raise :class:`ScfmInputError` naming ``path`` if :func:`input_problem` finds one."""
    problem = input_problem(path, directory=directory)
    if problem is not None:
        raise ScfmInputError(path, field, problem, expected)


def same_file(a: PathLike, b: PathLike) -> str | None:
    """How path ``a`` is the file ``b`` (``"the same path"``, ``"a hard link: ..."``, ...).

    None if they are different files (or either does not exist and they resolve apart).
    """
    # os.path, not Path.resolve(): that raises on a symlink loop (Python 3.11)
    if os.path.abspath(a) == os.path.abspath(b):  # noqa: PTH100
        return "the same path"
    real_a, real_b = os.path.realpath(a), os.path.realpath(b)
    if real_a == real_b:
        return f"through a symlink: both resolve to {real_a}"
    try:
        if Path(a).samefile(b):
            return "a hard link: same device and inode"
    except OSError:  # one of them does not exist (yet): not the same file
        pass
    return None


def check_outputs_not_inputs(
    outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None]
) -> None:
    """Refuse an output that is, or resolves to, one of the inputs; call before writing.

    ``outputs`` and ``inputs`` map a name (the parameter or option, e.g. ``"output"``,
    ``"input"``) to a path; None entries are skipped. The error names the output, the input
    it would replace and how they are the same file.
    """
    named = ", ".join(name for name, path in inputs.items() if path is not None)
    for out_name, out in outputs.items():
        if out is None:
            continue
        for in_name, src in inputs.items():
            if src is None:
                continue
            how = same_file(out, src)
            if how is not None:
                raise ScfmInputError(
                    out,
                    out_name,
                    f"is the {in_name} file {Path(src)} ({how}); writing it would replace "
                    "that input",
                    f"an output path that is none of the inputs ({named})",
                )


def check_writable_dirs(roots: list[PathLike], *, depth: int = 2) -> None:
    """Stop before any job if an output directory (or one below it) cannot be written.

    ``roots`` are the pipeline's output trees (``results``, ``resources``, ``logs``); each
    existing directory down to ``depth`` levels below them is checked, and a root that does
    not exist yet needs a writable parent. Snakemake would otherwise fail inside its own code
    (creating a log file: an internal traceback) or the job would fail on a temporary name.
    """
    for root in map(Path, roots):
        if not root.exists():
            parent = root.resolve().parent
            if not os.access(parent, os.W_OK):
                raise ScfmNotWritableError(parent, output=root, code=_access_errno(parent))
            continue
        level = [root]
        for _ in range(depth + 1):
            below: list[Path] = []
            for directory in level:
                if not os.access(directory, os.W_OK):
                    raise ScfmNotWritableError(directory.absolute(), code=_access_errno(directory))
                with os.scandir(directory) as entries:
                    below += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
            level = below


def _access_errno(directory: Path) -> int:
    """EROFS on a read-only file system, else EACCES."""
    try:
        return errno.EROFS if os.statvfs(directory).f_flag & os.ST_RDONLY else errno.EACCES
    except OSError:
        return errno.EACCES
