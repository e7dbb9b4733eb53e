"""Choosing which instances to release, and in what order.

Not-yet-running (PENDING) instances always go first: nothing runs on them yet, so releasing them
loses no work. Then the spec's scaleInPolicy decides; instance ids break every remaining tie so the
choice never depends on the order the cloud listed instances in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

from spotpool.api.spec import ScaleInPolicy
from spotpool.cloud.models import PENDING, POSTPAID_BY_HOUR, Instance
from spotpool.planner.formatting import as_utc
from spotpool.planner.model import MAX_RELEASE_IDS, PoolKey


def release_order(
    instances: Iterable[Instance],
    policy: ScaleInPolicy,
    prices: Mapping[PoolKey, Decimal],
    on_demand_prices: Mapping[PoolKey, Decimal] | None = None,
) -> list[Instance]:
    """All `instances`, most releasable first.

    - NewestFirst: latest `created_time` first (least invested, least likely to hold state).
    - OldestFirst: earliest first (refreshes the fleet).
    - MostExpensiveFirst: highest hourly price first (the pool's market price for spot, its list
      price, from `on_demand_prices`, for on-demand), then newest. An instance without a known
      price sorts after every priced one.
    An instance with no `created_time` sorts after those with one.
    """

    def key(instance: Instance) -> tuple[object, ...]:
        started = 0 if instance.state == PENDING else 1
        moment = _timestamp(instance.created_time)
        unknown_time = moment is None
        newest_first = -(moment or 0.0)
        if policy is ScaleInPolicy.OLDEST_FIRST:
            return (started, unknown_time, moment or 0.0, instance.instance_id)
        if policy is ScaleInPolicy.MOST_EXPENSIVE_FIRST:
            table = (on_demand_prices or {}) if instance.charge_type == POSTPAID_BY_HOUR else prices
            price = table.get((instance.zone, instance.instance_type))
            return (
                started,
                price is None,
                -(price or Decimal(0)),
                unknown_time,
                newest_first,
                instance.instance_id,
            )
        return (started, unknown_time, newest_first, instance.instance_id)

    return sorted(instances, key=key)


def batch_ids(instances: Iterable[Instance]) -> list[list[str]]:
    """Instance ids in TerminateInstances-sized batches (each 1..MAX_RELEASE_IDS), order kept."""
    ids = [instance.instance_id for instance in instances]
    return [ids[start : start + MAX_RELEASE_IDS] for start in range(0, len(ids), MAX_RELEASE_IDS)]


def _timestamp(moment: datetime | None) -> float | None:
    return as_utc(moment).timestamp() if moment is not None else None
