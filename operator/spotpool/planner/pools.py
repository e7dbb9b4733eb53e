"""Candidate pools: which zone x instance type pools may be bought from now, and in what order.

One assessment per candidate serves the plan (where to buy), the status (`pools[].available`) and
the Degraded condition (why nothing could be bought), so the three always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from spotpool.api.spec import AllocationStrategy, EnvironmentSpec
from spotpool.cloud.models import SpotOffer
from spotpool.planner.backoff import is_backing_off
from spotpool.planner.formatting import format_price, format_time
from spotpool.planner.model import PoolBackoff, PoolKey


class Verdict(StrEnum):
    """Whether a pool can be bought from now, and if not the first reason why."""

    BUYABLE = "Buyable"
    NOT_OFFERED = "NotOffered"  # the market lists no spot offer for it
    SOLD_OUT = "SoldOut"
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
    offers: dict[PoolKey, SpotOffer],
    backoff: dict[PoolKey, PoolBackoff],
    now: datetime,
) -> list[PoolAssessment]:
    """Assess every candidate pool, in candidate order."""
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
                verdict=_verdict(offer, backing_off, spec.max_price),
                backing_off=backing_off,
            )
        )
    return assessments


def _verdict(offer: SpotOffer | None, backing_off: bool, max_price: Decimal) -> Verdict:
    """Market facts first: they say more than a past refusal about why a pool is out."""
    if offer is None:
        return Verdict.NOT_OFFERED
    if offer.sold_out:
        return Verdict.SOLD_OUT
    if offer.spot_price is None:
        return Verdict.NO_PRICE
    if offer.spot_price > max_price:
        return Verdict.PRICE_ABOVE_MAX
    if backing_off:
        return Verdict.BACKING_OFF
    return Verdict.BUYABLE


def order_buyable(spec: EnvironmentSpec, assessments: list[PoolAssessment]) -> list[PoolAssessment]:
    """The buyable pools in the order the allocation strategy tries them.

    LowestPrice: cheapest market price first; ties follow instanceTypes order, then zones order
    (candidate order). Prioritized and Diversified: candidate order (Diversified then spreads by
    occupancy, using this order only to break ties).
    """
    buyable = [assessment for assessment in assessments if assessment.buyable]
    if spec.allocation_strategy is AllocationStrategy.LOWEST_PRICE:
        position = {assessment.key: index for index, assessment in enumerate(assessments)}
        return sorted(buyable, key=lambda a: (a.market_price, position[a.key]))
    return buyable
