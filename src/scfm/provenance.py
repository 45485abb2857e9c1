"""The creation time written into provenance records, reproducible on request.

Every data file records when it was made (``created``). That one field would make two runs of
the same config differ byte for byte, so it follows the reproducible-builds convention
(https://reproducible-builds.org/specs/source-date-epoch/): when the environment variable
``SOURCE_DATE_EPOCH`` holds an integer number of seconds since 1970-01-01 UTC, that time is
written instead of the clock. Durations are not written into data files at all (they go to the
job's log), so with ``SOURCE_DATE_EPOCH`` set the same inputs give the same bytes.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from scfm.errors import ScfmInputError


def created() -> str:
    """The ``created`` timestamp (ISO 8601, UTC, seconds): now, or ``SOURCE_DATE_EPOCH``."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None or epoch == "":
        when = datetime.now(UTC)
    else:
        try:
            when = datetime.fromtimestamp(int(epoch), UTC)
        except (ValueError, OverflowError, OSError):
            raise ScfmInputError(
                "environment",
                "SOURCE_DATE_EPOCH",
                f"is {epoch!r}",
                "an integer (seconds since 1970)",
            ) from None
    return when.isoformat(timespec="seconds")


def versions(*packages: str) -> dict[str, str]:
    """What made a file, in the one spelling every provenance record uses.

    ``{"scfm": <version>, <package>: <version>, ...}`` under the record's ``versions`` key (not
    ``scfm_version`` or a top-level ``scfm``): readers look in one place.
    """
    from importlib.metadata import version

    from scfm import __version__

    return {"scfm": __version__, **{p: version(p) for p in packages}}
