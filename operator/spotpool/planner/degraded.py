"""Why the environment is Degraded: every refusal and blocker, worst first.

Degraded means "the cloud refuses, and here is why" (docs/contract.md). Its reason is the worst problem
found; its message names every problem, each with the Tencent error code when there is one, so a
user reading `kubectl describe` sees every pool and what is wrong with it.

Pool refusals and market blockers only make the environment Degraded while instances are missing
(a deficit not covered by in-flight launches): once the expected count is met or on its way, a
sold-out cheapest pool is routine, not degradation. Environment-wide errors (credentials, invalid
configuration, an observation that failed) always do.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from spotpool.cloud.errors import ErrorCategory
from spotpool.planner.formatting import format_price, format_time
from spotpool.planner.model import NOT_VISIBLE_HOLD, ErrorRecord, PoolBackoff
from spotpool.planner.pools import PoolAssessment, Verdict


class DegradedReason(StrEnum):
    """Degraded reasons, worst first: the order decides which one names the condition."""

    AUTH_FAILURE = "AuthFailure"
    ACCOUNT_CHANGED = "AccountChanged"  # the credentials now name another account than the one bought in
    INVALID_CONFIG = "InvalidConfig"
    SPEND_GUARD = "SpendGuard"  # over a limit the operator's administrator set: buying nothing
    MAX_HOURLY_COST_REACHED = "MaxHourlyCostReached"  # spec.maxHourlyCost leaves no room for the deficit
    INSTANCES_UNLISTED = "InstancesUnlisted"  # bought instances the tag listing keeps missing
    INSTANCES_NOT_VISIBLE = "InstancesNotVisible"  # bought instances the pool's key cannot find by id
    QUOTA_EXCEEDED = "QuotaExceeded"
    PRICE_ABOVE_MAX = "PriceAboveMax"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    THROTTLED = "Throttled"
    CLOUD_UNAVAILABLE = "CloudUnavailable"


_SEVERITY: dict[str, int] = {reason.value: rank for rank, reason in enumerate(DegradedReason)}

REASON_BY_CATEGORY = {
    ErrorCategory.CAPACITY: DegradedReason.INSUFFICIENT_CAPACITY,
    ErrorCategory.PRICE: DegradedReason.PRICE_ABOVE_MAX,
    ErrorCategory.QUOTA: DegradedReason.QUOTA_EXCEEDED,
    ErrorCategory.THROTTLED: DegradedReason.THROTTLED,
    ErrorCategory.AUTH: DegradedReason.AUTH_FAILURE,
    ErrorCategory.INVALID_REQUEST: DegradedReason.INVALID_CONFIG,
    # On RunInstances a missing resource is an image, subnet or zone the spec names.
    ErrorCategory.NOT_FOUND: DegradedReason.INVALID_CONFIG,
    ErrorCategory.TRANSIENT: DegradedReason.CLOUD_UNAVAILABLE,
    ErrorCategory.UNKNOWN: DegradedReason.CLOUD_UNAVAILABLE,
}

_MARKET_REASONS = {
    Verdict.NOT_OFFERED: DegradedReason.INSUFFICIENT_CAPACITY,
    Verdict.SOLD_OUT: DegradedReason.INSUFFICIENT_CAPACITY,
    Verdict.NO_QUOTA: DegradedReason.QUOTA_EXCEEDED,
    Verdict.NO_PRICE: DegradedReason.INSUFFICIENT_CAPACITY,
    Verdict.PRICE_ABOVE_MAX: DegradedReason.PRICE_ABOVE_MAX,
}


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def find_problems(
    *,
    pools: list[PoolAssessment],
    max_price: Decimal,
    deficit: int,
    last_error: ErrorRecord | None,
    config_error: tuple[str, str] | None,
    unlisted_overdue: int = 0,
    hidden: int = 0,
) -> list[Problem]:
    """Every current problem, worst first (ties keep config, then errors, then pool order).

    A `config_error` reason outside `DegradedReason` ranks worst: the caller chose it for a reason.
    """
    problems = []
    if config_error is not None:
        problems.append(Problem(*config_error))
    if last_error is not None:
        problems.append(
            Problem(REASON_BY_CATEGORY[last_error.category], f"{last_error.code}: {last_error.message}")
        )
    if unlisted_overdue:
        problems.append(Problem(
            DegradedReason.INSTANCES_UNLISTED,
            f"{unlisted_overdue} bought instances are still missing from the tag-filtered listing "
            f"(found by id): counted and released by id; check the cloud's tag service",
        ))
    if hidden:
        hold = int(NOT_VISIBLE_HOLD.total_seconds() // 3600)
        problems.append(Problem(
            DegradedReason.INSTANCES_NOT_VISIBLE,
            f"{hidden} instances RunInstances returned cannot be found by id with this pool's key, and nothing "
            f"has ever shown them: counted as bought for {hold} h, so nothing more is bought for them. Does a CAM "
            f"policy let the key see only instances with tags this pool does not set? Add them to spec.tags, or "
            f"widen the policy",
        ))
    if deficit > 0:
        for pool in pools:
            if pool.backoff is not None and pool.backoff.last_code is not None:
                problems.append(_refusal(pool, pool.backoff, max_price))
        if not any(pool.buyable for pool in pools):
            problems.extend(
                Problem(_MARKET_REASONS[pool.verdict], pool.why_not(max_price))
                for pool in pools
                if pool.verdict in _MARKET_REASONS
            )
    return sorted(problems, key=lambda problem: _SEVERITY.get(problem.reason, -1))


def _refusal(pool: PoolAssessment, entry: PoolBackoff, max_price: Decimal) -> Problem:
    """`ap-guangzhou-3/S5.MEDIUM4 refused with <code>: <message>` plus prices and retry time."""
    category = entry.category if entry.category is not None else ErrorCategory.UNKNOWN
    text = f"{pool.zone}/{pool.instance_type} refused with {entry.last_code}: {entry.last_message}"
    if category is ErrorCategory.PRICE:
        market = entry.market_price if entry.market_price is not None else pool.market_price
        bid = entry.max_price if entry.max_price is not None else max_price
        shown = f"market price {format_price(market)} USD/h, " if market is not None else ""
        text += f" ({shown}maxPrice {bid})"
    if pool.backing_off and entry.retry_after is not None:
        text += f" (retrying after {format_time(entry.retry_after)})"
    return Problem(REASON_BY_CATEGORY[category], text)
