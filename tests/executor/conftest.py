"""In-process executor tests: no failpoint outlives its test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spotpool.controller import failpoints


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    failpoints.disarm()
