"""The simulator's unit tests share one fake clock and one small market (a file that needs another
market overrides `market`)."""

from __future__ import annotations

import pytest

from spotpool.simulator.market import Market
from tests.unit.simulator.test_market import FakeClock, small_config


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def market(clock: FakeClock) -> Market:
    return Market(small_config(), clock)
