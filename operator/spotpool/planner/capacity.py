"""Capacity types: which alive instances are spot, on-demand base or on-demand fallback, and what
the pool costs per hour.

An on-demand instance's role is derived, never stored: the oldest `base_count` alive on-demand
instances are the base, any others are fallback. Deriving it keeps the answer right whatever the
user edits (lowering baseCount turns base instances into fallback ones, which then return to
spot) and whatever crashes (nothing to lose between passes). Spot instances are recognised by
CVM's own `InstanceChargeType`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from spotpool.cloud.models import POSTPAID_BY_HOUR, RUNNING, Instance, Offer, SpotOffer
from spotpool.planner.census import Census
from spotpool.planner.model import PoolKey


class Capacity(StrEnum):
    """Why an alive instance exists (`status.instances[].capacity`, the metrics' `role`)."""

    SPOT = "Spot"
    BASE = "OnDemandBase"
    FALLBACK = "OnDemandFallback"


def is_on_demand(instance: Instance) -> bool:
    return instance.charge_type == POSTPAID_BY_HOUR


@dataclass(frozen=True)
class Mix:
    """The alive instances by capacity type, and the in-flight purchases by charge type."""

    spot: tuple[Instance, ...]
    base: tuple[Instance, ...]
    fallback: tuple[Instance, ...]  # newest last
    spot_unseen: int
    on_demand_unseen: int

    @property
    def on_demand(self) -> int:
        return len(self.base) + len(self.fallback)

    @property
    def spot_running(self) -> int:
        return sum(1 for instance in self.spot if instance.state == RUNNING)

    @property
    def spot_pending(self) -> tuple[Instance, ...]:
        return tuple(instance for instance in self.spot if instance.state != RUNNING)

    def returning(self, expected: int, returned: int = 0) -> tuple[Instance, ...]:
        """The spot replacements on their way for fallback on-demand instances: pending spot
        instances the pool holds beyond expectedCount, at most one per fallback instance not
        `returned` (released this pass). The one answer the plan (which keeps them from scale-in)
        and the status (`capacity.returning`, Progressing `ReturningToSpot`) both read."""
        beyond = len(self.spot) + self.on_demand - expected
        room = max(0, min(len(self.spot_pending), len(self.fallback) - returned, beyond))
        return self.spot_pending[:room]

    def roles(self) -> dict[str, Capacity]:
        roles = {instance.instance_id: Capacity.SPOT for instance in self.spot}
        roles.update({instance.instance_id: Capacity.BASE for instance in self.base})
        roles.update({instance.instance_id: Capacity.FALLBACK for instance in self.fallback})
        return roles


def take_mix(census: Census, base_count: int, excluding: frozenset[str] | set[str] = frozenset()) -> Mix:
    """Split the census's alive instances by capacity type; `base_count` is already capped at
    expectedCount (`EnvironmentSpec.base_count`). `excluding`: instances on their way out (drifted
    or expired, `planner.disruption`), which hold no role: their replacements take it."""
    alive = [i for i in census.alive if i.instance_id not in excluding]
    on_demand = sorted((i for i in alive if is_on_demand(i)), key=_age)
    spot_unseen = sum(r.unseen for r in census.records if not r.launch.on_demand)
    return Mix(
        spot=tuple(i for i in alive if not is_on_demand(i)),
        base=tuple(on_demand[:base_count]),
        fallback=tuple(on_demand[base_count:]),
        spot_unseen=spot_unseen,
        on_demand_unseen=census.inflight_unseen - spot_unseen,
    )


def _age(instance: Instance) -> tuple[datetime, str]:
    """Oldest first; an instance without a creation time is the newest (it was just bought)."""
    return (instance.created_time or datetime.max.replace(tzinfo=UTC), instance.instance_id)


@dataclass(frozen=True)
class Prices:
    """Hourly prices per pool: spot at the market, on-demand at the list price.

    The on-demand list price comes from the pool's POSTPAID_BY_HOUR offer, else from the list
    price the spot offer carries (CVM reports it on both).
    """

    spot: Mapping[PoolKey, SpotOffer]
    on_demand: Mapping[PoolKey, Offer]

    def of(self, pool: PoolKey, on_demand: bool) -> Decimal | None:
        if on_demand:
            offer = self.on_demand.get(pool)
            if offer is not None and offer.price is not None:
                return offer.price
            spot = self.spot.get(pool)
            return spot.list_price if spot is not None else None
        spot = self.spot.get(pool)
        return spot.spot_price if spot is not None else None


def hourly_cost(alive: Iterable[Instance], prices: Prices, *, unknown: Decimal = Decimal(0)) -> Decimal:
    """What `alive` costs per hour: spot bills the market price, on-demand the list price.

    An instance whose price is not known adds `unknown`: 0 for the status (a lower bound), the
    bid for the spend cap (the most a spot instance can bill).
    """
    total = Decimal(0)
    for instance in alive:
        price = prices.of((instance.zone, instance.instance_type), is_on_demand(instance))
        total += price if price is not None else unknown
    return total
