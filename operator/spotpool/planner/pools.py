"""Candidate pools: which zone x instance type pools may be bought from now, and in what order.

One assessment per candidate serves the plan (where to buy), the status (`pools[].available`) and
the Degraded condition (why nothing could be bought), so the three always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from spotpool.api.spec import AllocationStrategy, EnvironmentSpec, FallbackReason
from spotpool.cloud.errors import ErrorCategory
from spotpool.cloud.models import SPOTPAID, STOCK_CATEGORIES, WITHOUT_STOCK, AccountQuota, SpotOffer
from spotpool.planner.backoff import is_backing_off
from spotpool.planner.formatting import format_price, format_time
from spotpool.planner.model import PoolBackoff, PoolKey


class Verdict(StrEnum):
    """Whether a pool can be bought from now, and if not the first reason why."""

    BUYABLE = "Buyable"
    NOT_OFFERED = "NotOffered"  # the market lists no spot offer for it
    SOLD_OUT = "SoldOut"  # sold out, or StatusCategory WithoutStock
    NO_QUOTA = "NoQuota"  # the zone's spot vCPU quota (DescribeAccountQuota) cannot hold one more
    NO_PRICE = "NoPrice"  # offered, but with no price: we cannot check it against maxPrice
    PRICE_ABOVE_MAX = "PriceAboveMax"
    BACKING_OFF = "BackingOff"  # the cloud refused it recently


@dataclass(frozen=True)
class PoolAssessment:
    """One candidate pool as the planner sees it now."""

    key: PoolKey
    offer: SpotOffer | None
    backoff: PoolBackoff | None
    verdict: Verdict
    backing_off: bool  # independent of the verdict: status shows retryAfter whenever it holds

    @property
    def zone(self) -> str:
        return self.key[0]

    @property
    def instance_type(self) -> str:
        return self.key[1]

    @property
    def market_price(self) -> Decimal | None:
        return self.offer.spot_price if self.offer is not None else None

    @property
    def buyable(self) -> bool:
        return self.verdict is Verdict.BUYABLE

    def why_not(self, max_price: Decimal) -> str:
        """A sentence saying why the pool cannot be bought now (for a pool that cannot)."""
        where = f"{self.zone}/{self.instance_type}"
        if self.verdict is Verdict.NOT_OFFERED:
            return f"{where} is not offered as spot"
        if self.verdict is Verdict.SOLD_OUT:
            return f"{where} is sold out"
        if self.verdict is Verdict.NO_QUOTA:
            return f"the spot vCPU quota of {self.zone} has no room for {self.instance_type}"
        if self.verdict is Verdict.NO_PRICE:
            return f"no spot market price is known for {where}"
        if self.verdict is Verdict.PRICE_ABOVE_MAX:
            assert self.market_price is not None
            return (
                f"market price {format_price(self.market_price)} USD/h in {where} "
                f"is above maxPrice {max_price}"
            )
        assert self.verdict is Verdict.BACKING_OFF and self.backoff is not None, self.verdict
        retry = self.backoff.retry_after
        until = f" until {format_time(retry)}" if retry is not None else ""
        return f"{where} is backing off after {self.backoff.last_code}{until}"


def candidate_pools(spec: EnvironmentSpec) -> list[PoolKey]:
    """zones x instanceTypes, instance types first (their order is the user's preference)."""
    return [(zone, instance_type) for instance_type in spec.instance_types for zone in spec.zones]


def assess_pools(
    spec: EnvironmentSpec,
    offers: Mapping[PoolKey, SpotOffer],
    backoff: Mapping[PoolKey, PoolBackoff],
    now: datetime,
    quota: AccountQuota | None = None,
) -> list[PoolAssessment]:
    """Assess every candidate pool, in candidate order. With `quota`, a pool whose zone has less
    spot vCPU quota left than one of its instances needs is out (`NO_QUOTA`), so the plan goes
    where quota remains instead of learning it from refusals."""
    assessments = []
    for key in candidate_pools(spec):
        offer = offers.get(key)
        entry = backoff.get(key)
        price = offer.spot_price if offer is not None else None
        backing_off = is_backing_off(entry, now, market_price=price, max_price=spec.max_price)
        assessments.append(
            PoolAssessment(
                key=key,
                offer=offer,
                backoff=entry,
                verdict=_verdict(offer, backing_off, spec.max_price, _quota_left(quota, key[0], offer)),
                backing_off=backing_off,
            )
        )
    return assessments


def _quota_left(quota: AccountQuota | None, zone: str, offer: SpotOffer | None) -> bool:
    if quota is None or offer is None or offer.cpu <= 0:
        return True
    remaining = quota.remaining(zone, SPOTPAID)
    return remaining is None or remaining >= offer.cpu


def _verdict(offer: SpotOffer | None, backing_off: bool, max_price: Decimal, quota_left: bool) -> Verdict:
    """Market facts first: they say more than a past refusal about why a pool is out."""
    if offer is None:
        return Verdict.NOT_OFFERED
    if offer.sold_out or offer.status_category == WITHOUT_STOCK:
        return Verdict.SOLD_OUT
    if offer.spot_price is None:
        return Verdict.NO_PRICE
    if offer.spot_price > max_price:
        return Verdict.PRICE_ABOVE_MAX
    if not quota_left:
        return Verdict.NO_QUOTA
    if backing_off:
        return Verdict.BACKING_OFF
    return Verdict.BUYABLE


_SHORTAGE_BY_VERDICT = {
    Verdict.NOT_OFFERED: FallbackReason.SOLD_OUT,
    Verdict.SOLD_OUT: FallbackReason.SOLD_OUT,
    Verdict.NO_QUOTA: FallbackReason.QUOTA_EXCEEDED,
    Verdict.PRICE_ABOVE_MAX: FallbackReason.PRICE_ABOVE_MAX,
}
_SHORTAGE_BY_REFUSAL = {
    ErrorCategory.CAPACITY: FallbackReason.SOLD_OUT,
    ErrorCategory.QUOTA: FallbackReason.QUOTA_EXCEEDED,
    ErrorCategory.PRICE: FallbackReason.PRICE_ABOVE_MAX,
}


def shortage_reason(assessment: PoolAssessment) -> FallbackReason | None:
    """Why a pool that cannot be bought is out, in the words of `spec.onDemand.fallback.reasons`;
    None for reasons that are not the market's (no price reported, a refusal of another kind)."""
    reason = _SHORTAGE_BY_VERDICT.get(assessment.verdict)
    if reason is None and assessment.verdict is Verdict.BACKING_OFF and assessment.backoff is not None:
        category = assessment.backoff.category
        reason = _SHORTAGE_BY_REFUSAL.get(category) if category is not None else None
    return reason


def order_buyable(
    spec: EnvironmentSpec,
    assessments: list[PoolAssessment],
    reclaims: Mapping[PoolKey, int] | None = None,
) -> list[PoolAssessment]:
    """The buyable pools in the order the allocation strategy tries them.

    LowestPrice: cheapest market price first; ties follow instanceTypes order, then zones order
    (candidate order). CapacityOptimized: lowest `capacity_score` first (the market price weighed
    by stock and by the pool's recent reclaims), the same ties. Prioritized and Diversified:
    candidate order (Diversified then spreads by occupancy, using this order only to break ties).
    """
    buyable = [assessment for assessment in assessments if assessment.buyable]
    position = {assessment.key: index for index, assessment in enumerate(assessments)}
    if spec.allocation_strategy is AllocationStrategy.LOWEST_PRICE:
        return sorted(buyable, key=lambda a: (a.market_price, position[a.key]))
    if spec.allocation_strategy is AllocationStrategy.CAPACITY_OPTIMIZED:
        recent = reclaims or {}
        return sorted(buyable, key=lambda a: (capacity_score(a.offer, recent.get(a.key, 0)), position[a.key]))
    return buyable


STOCK_WEIGHT = {"EnoughStock": Decimal("1.0"), "NormalStock": Decimal("1.25"), "UnderStock": Decimal("2.0")}
"""How much dearer a pool looks per StatusCategory: a pool with little stock is bought from only
when it is much cheaper than one with plenty. An unknown category weighs as NormalStock."""

RECLAIM_WEIGHT = Decimal("0.25")
"""Each instance reclaimed in a pool in the last hour makes it look this much (of its price)
dearer, up to `MAX_RECLAIMS_WEIGHED` reclaims."""

MAX_RECLAIMS_WEIGHED = 20

assert set(STOCK_WEIGHT) | {WITHOUT_STOCK} == set(STOCK_CATEGORIES)


def capacity_score(offer: SpotOffer | None, reclaims: int) -> Decimal:
    """CapacityOptimized's order key for a buyable pool: price x stock weight x reclaim weight.

    Monotone in each input: a cheaper pool, a pool with more stock, or a pool reclaimed less
    never scores worse, all else equal.
    """
    assert offer is not None and offer.spot_price is not None  # buyable pools have a price
    stock = STOCK_WEIGHT.get(offer.status_category or "", STOCK_WEIGHT["NormalStock"])
    reclaim = 1 + RECLAIM_WEIGHT * min(max(reclaims, 0), MAX_RECLAIMS_WEIGHED)
    return offer.spot_price * stock * reclaim
