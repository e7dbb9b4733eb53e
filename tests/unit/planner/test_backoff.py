"""Per-pool backoff: exponential with jitter, capped, PRICE lifted when prices move."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest

from spotpool.cloud.errors import ErrorCategory
from spotpool.planner.backoff import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    BACKOFF_JITTER,
    backoff_delay,
    is_backing_off,
    record_refusal,
    record_success,
)
from spotpool.planner.model import PoolBackoff, PoolKey
from tests.unit.planner.plannerkit import NOW, S5, Z3

POOL = (Z3, S5)
OTHER = ("ap-guangzhou-4", S5)
MAX = Decimal("0.0500")


class FixedRandom(random.Random):
    """An rng whose draws are all `value`, to pin the jitter."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def refuse(
    backoff: dict[PoolKey, PoolBackoff],
    category: ErrorCategory = ErrorCategory.CAPACITY,
    jitter: float = 0.0,
    **prices: Decimal,
) -> dict[PoolKey, PoolBackoff]:
    return record_refusal(
        backoff,
        POOL,
        code="ResourceInsufficient.SpecifiedInstanceType",
        message="stock of that instance type insufficient",
        category=category,
        now=NOW,
        rng=FixedRandom(jitter),
        **prices,
    )


def delay_of(entry: PoolBackoff) -> timedelta:
    assert entry.retry_after is not None
    return entry.retry_after - NOW


def test_first_refusal_waits_the_base_delay() -> None:
    entry = refuse({})[POOL]
    assert entry.failures == 1
    assert entry.retry_after == NOW + BACKOFF_BASE
    assert entry.last_code == "ResourceInsufficient.SpecifiedInstanceType"
    assert entry.last_message == "stock of that instance type insufficient"
    assert entry.last_time == NOW
    assert entry.category is ErrorCategory.CAPACITY


def test_consecutive_refusals_double_the_delay_up_to_the_cap() -> None:
    backoff: dict[PoolKey, PoolBackoff] = {}
    delays = []
    for _ in range(8):
        backoff = refuse(backoff)
        delays.append(delay_of(backoff[POOL]))
    assert delays[:5] == [timedelta(seconds=s) for s in (10, 20, 40, 80, 160)]
    assert delays[5:] == [BACKOFF_CAP] * 3
    assert backoff[POOL].failures == 8


def test_jitter_only_shortens_the_delay_by_at_most_its_fraction() -> None:
    delay = delay_of(refuse({}, jitter=0.999999)[POOL])
    assert BACKOFF_BASE * (1 - BACKOFF_JITTER) <= delay < BACKOFF_BASE


def test_huge_failure_counts_stay_capped() -> None:
    assert backoff_delay(10_000, ErrorCategory.THROTTLED, 0.0) == BACKOFF_CAP


@pytest.mark.parametrize(
    "category",
    [ErrorCategory.PRICE, ErrorCategory.AUTH, ErrorCategory.INVALID_REQUEST, ErrorCategory.UNKNOWN],
)
def test_refusals_that_retrying_cannot_fix_wait_the_cap_at_once(category: ErrorCategory) -> None:
    assert refuse({}, category=category)[POOL].retry_after == NOW + BACKOFF_CAP


@pytest.mark.parametrize(
    "category",
    [ErrorCategory.CAPACITY, ErrorCategory.QUOTA, ErrorCategory.THROTTLED, ErrorCategory.TRANSIENT],
)
def test_refusals_that_may_clear_start_at_the_base(category: ErrorCategory) -> None:
    assert refuse({}, category=category)[POOL].retry_after == NOW + BACKOFF_BASE


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, ErrorCategory.CAPACITY, 0.0)
    with pytest.raises(ValueError):
        backoff_delay(1, ErrorCategory.CAPACITY, 1.0)


def test_record_refusal_does_not_modify_its_input() -> None:
    original = refuse({})
    snapshot = dict(original)
    refuse(original)
    assert original == snapshot


def test_success_clears_only_that_pool() -> None:
    backoff = refuse({})
    backoff = {**backoff, OTHER: backoff[POOL]}
    cleared = record_success(backoff, POOL, NOW)
    assert POOL not in cleared and OTHER in cleared
    assert POOL in backoff  # input untouched


def test_backing_off_until_retry_after() -> None:
    entry = refuse({})[POOL]
    assert is_backing_off(entry, NOW, market_price=Decimal("0.02"), max_price=MAX)
    assert is_backing_off(entry, NOW + BACKOFF_BASE - timedelta(seconds=1), market_price=None, max_price=MAX)
    assert not is_backing_off(entry, NOW + BACKOFF_BASE, market_price=None, max_price=MAX)
    assert not is_backing_off(None, NOW, market_price=None, max_price=MAX)


def test_price_refusal_lifts_when_the_market_moves() -> None:
    entry = refuse({}, category=ErrorCategory.PRICE, market_price=Decimal("0.06"), max_price=MAX)[POOL]
    assert is_backing_off(entry, NOW, market_price=Decimal("0.06"), max_price=MAX)
    assert not is_backing_off(entry, NOW, market_price=Decimal("0.04"), max_price=MAX)


def test_price_refusal_lifts_when_max_price_changes() -> None:
    entry = refuse({}, category=ErrorCategory.PRICE, market_price=Decimal("0.06"), max_price=MAX)[POOL]
    assert not is_backing_off(entry, NOW, market_price=Decimal("0.06"), max_price=Decimal("0.07"))


def test_price_refusal_without_recorded_prices_waits_the_cap() -> None:
    entry = refuse({}, category=ErrorCategory.PRICE)[POOL]
    assert is_backing_off(entry, NOW, market_price=Decimal("0.01"), max_price=Decimal("9"))


def test_other_categories_ignore_price_moves() -> None:
    entry = refuse({}, market_price=Decimal("0.06"), max_price=MAX)[POOL]
    assert is_backing_off(entry, NOW, market_price=Decimal("0.01"), max_price=Decimal("9"))
