"""The ``created`` timestamp follows SOURCE_DATE_EPOCH when it is set."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scfm.errors import ScfmInputError
from scfm.provenance import created


def test_created_is_now_in_utc_without_source_date_epoch(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    before = datetime.now(UTC).replace(microsecond=0)
    when = datetime.fromisoformat(created())
    assert when.tzinfo is not None and before <= when <= datetime.now(UTC)


def test_created_is_source_date_epoch_when_set(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert created() == "2023-11-14T22:13:20+00:00"


def test_a_malformed_source_date_epoch_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ScfmInputError, match=r"SOURCE_DATE_EPOCH: is 'yesterday'; expected an int"):
        created()
