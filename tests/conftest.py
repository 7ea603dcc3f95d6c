"""Checks that hold after every test of every suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.core.engine import NOTHING


@pytest.fixture(autouse=True)
def _nothing_stays_empty() -> Iterator[None]:
    """`Engine` returns one shared empty `Outcome` for every step that produced nothing: a
    caller that appended to it would hand its CDRs to every later caller."""
    yield
    assert NOTHING.cdrs == [] and NOTHING.dead == [], "a caller filled the shared empty Outcome"
