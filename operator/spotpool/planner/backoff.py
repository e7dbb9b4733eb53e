"""Per-pool backoff after the cloud refuses a purchase.

A refusal (sold out, quota, throttled...) is about one zone x instance type at one moment; the
planner keeps away from that pool for a while and buys elsewhere meanwhile. The delay doubles with
each consecutive refusal (base 10 s, cap 5 min) so a pool that stays sold out costs one call every
five minutes, not one per reconcile.

Refusals that retrying unchanged cannot fix (price below market, auth, invalid request, codes we do
not know) wait the full cap at once. A PRICE refusal is additionally lifted as soon as the market
price or the spec's maxPrice changes, because then the refusal no longer applies.

Jitter shaves up to 20 % off each delay, so that many environments refused at the same moment do
not retry in lockstep. It only ever shortens the nominal delay and the nominal delay at least
doubles until the cap: for a given jitter draw the delay never shrinks as failures grow, and it
never exceeds the cap.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

from spotpool.cloud.errors import ErrorCategory
from spotpool.planner.formatting import as_utc
from spotpool.planner.model import PoolBackoff, PoolKey

BACKOFF_BASE = timedelta(seconds=10)
BACKOFF_CAP = timedelta(minutes=5)
BACKOFF_JITTER = 0.2
"""The largest fraction of the nominal delay that jitter removes."""

ESCALATING = frozenset(
    {ErrorCategory.CAPACITY, ErrorCategory.QUOTA, ErrorCategory.THROTTLED, ErrorCategory.TRANSIENT}
)
"""Categories that may clear by themselves soon: retried with exponential backoff. Every other
category waits the cap straight away."""

_MAX_DOUBLINGS = 32  # far past the cap; bounds the integer before it meets timedelta


def backoff_delay(failures: int, category: ErrorCategory, jitter: float) -> timedelta:
    """The wait after the `failures`-th consecutive refusal; `jitter` in [0, 1) picks the shave."""
    if failures < 1:
        raise ValueError(f"failures must be at least 1, got {failures}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if category in ESCALATING:
        nominal = min(BACKOFF_CAP, BACKOFF_BASE * (1 << min(failures - 1, _MAX_DOUBLINGS)))
    else:
        nominal = BACKOFF_CAP
    return nominal * (1.0 - BACKOFF_JITTER * jitter)


def record_refusal(
    backoff: dict[PoolKey, PoolBackoff],
    pool: PoolKey,
    *,
    code: str,
    message: str,
    category: ErrorCategory,
    now: datetime,
    rng: random.Random,
    market_price: Decimal | None = None,
    max_price: Decimal | None = None,
) -> dict[PoolKey, PoolBackoff]:
    """Return a new backoff map with one more refusal for `pool` (the input is not modified).

    Pass `market_price` and `max_price` for PRICE refusals so the backoff can be lifted as soon as
    either changes.
    """
    now = as_utc(now)
    previous = backoff.get(pool)
    failures = (previous.failures if previous is not None else 0) + 1
    entry = PoolBackoff(
        failures=failures,
        retry_after=now + backoff_delay(failures, category, rng.random()),
        last_code=code,
        last_message=message,
        last_time=now,
        category=category,
        market_price=market_price,
        max_price=max_price,
    )
    return {**backoff, pool: entry}


def record_success(
    backoff: dict[PoolKey, PoolBackoff], pool: PoolKey, now: datetime
) -> dict[PoolKey, PoolBackoff]:
    """Return a new backoff map without `pool`: a purchase went through, its history is moot.

    `now` is part of the executor-facing signature (it mirrors `record_refusal`); clearing does
    not depend on it.
    """
    del now
    return {key: entry for key, entry in backoff.items() if key != pool}


def is_backing_off(
    entry: PoolBackoff | None,
    now: datetime,
    *,
    market_price: Decimal | None,
    max_price: Decimal,
) -> bool:
    """Whether the planner must keep away from the pool now."""
    if entry is None or entry.retry_after is None or as_utc(entry.retry_after) <= as_utc(now):
        return False
    # A PRICE refusal made under other prices no longer says anything about the pool.
    return not (entry.category == ErrorCategory.PRICE and _prices_moved(entry, market_price, max_price))


def _prices_moved(entry: PoolBackoff, market_price: Decimal | None, max_price: Decimal) -> bool:
    """A PRICE refusal recorded with its prices is stale once the market or the bid differs."""
    if entry.market_price is not None and entry.market_price != market_price:
        return True
    return entry.max_price is not None and entry.max_price != max_price
