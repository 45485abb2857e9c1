"""Errors that tell the user which file, which field and what was expected."""

from __future__ import annotations

from os import PathLike


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
