"""The planner's entry point: observed state in, the next actions out. Pure: no I/O, no clock.

How the numbers are derived (see `Census` for the counting):

    deficit = max(0, expected - alive - inflight_unseen)
    surplus = max(0, alive - expected)

In-flight launches count toward the deficit (they will be alive) but not toward the surplus. This
is deliberate. `alive - expected` instances are surplus however the in-flight launches end: if they
all fail, exactly that many are too many; if they succeed, more are, and those are released once
they are observed (as PENDING, first in line). Releasing that lower bound at once is therefore
never wrong and stops paying for surplus sooner, whereas waiting for launches to resolve would tie
scale-in to the launch bookkeeping: one stuck record would block releases. Counting unseen
launches into the surplus instead could release instances that are still needed if a launch then
fails. Deficit and surplus can never both be positive.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import Decimal

from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.models import LAUNCH_FAILED, SHUTDOWN, TERMINATING, Instance, SpotOffer
from spotpool.planner.census import Census, take_census
from spotpool.planner.launch import plan_launches
from spotpool.planner.model import (
    InflightLaunch,
    LaunchBatch,
    Plan,
    PoolBackoff,
    PoolKey,
    ReleaseReason,
)
from spotpool.planner.pools import assess_pools, order_buyable
from spotpool.planner.release import batch_ids, release_order

DEAD_STATES = frozenset({LAUNCH_FAILED, SHUTDOWN})
"""States of instances that will never serve again but still exist: released as Unwanted.

STOPPED and the transient states (rebooting, migrating...) are left alone: someone or something
may bring those back, and they are not the planner's to destroy while the object lives.
"""


def plan(
    *,
    spec: EnvironmentSpec,
    instances: list[Instance],
    offers: dict[PoolKey, SpotOffer],
    inflight: list[InflightLaunch],
    backoff: dict[PoolKey, PoolBackoff],
    now: datetime,
    owner_uid: str,
    deleting: bool = False,
) -> Plan:
    """Decide what to buy and what to release now.

    `instances` should be the owned instances (listed by ownership tag); any without
    `spotpool.io/environment-uid == owner_uid` are ignored. `offers` is the spot market per pool;
    `backoff` the per-pool refusal history. Deleting overrides `paused`: a deletion must release
    everything before the finalizer goes, or instances would leak.
    """
    census = take_census(instances=instances, inflight=inflight, owner_uid=owner_uid, now=now)
    if deleting:
        return _plan_deletion(spec, census, offers)

    deficit = census.deficit(spec.expected_count)
    surplus = census.surplus(spec.expected_count)
    notes = [f"ignored {census.foreign} instances not owned by {owner_uid}"] if census.foreign else []
    launches: list[LaunchBatch] = []
    releases: list[list[str]] = []
    cleanup: list[list[str]] = []

    if spec.paused:
        notes.append("paused: buying and releasing nothing")
    else:
        if deficit:
            assessments = assess_pools(spec, offers, backoff, now)
            buyable = order_buyable(spec, assessments)
            if not buyable:
                reasons = "; ".join(a.why_not(spec.max_price) for a in assessments)
                notes.append(f"{deficit} instances short and no pool can be bought: {reasons}")
            occupancy = census.alive_by_pool() + Counter(census.unseen_by_pool)
            launches = plan_launches(
                deficit=deficit,
                strategy=spec.allocation_strategy,
                pools=buyable,
                occupancy=occupancy,
                max_price=spec.max_price,
            )
        if surplus:
            ordered = release_order(census.alive, spec.scale_in_policy, _known_prices(offers))
            releases = batch_ids(ordered[:surplus])
        cleanup = batch_ids(
            sorted(
                (instance for instance in census.owned if instance.state in DEAD_STATES),
                key=lambda instance: instance.instance_id,
            )
        )

    return Plan(
        launches=launches,
        releases=releases,
        release_reason=ReleaseReason.SCALE_IN if releases else None,
        deficit=deficit,
        surplus=surplus,
        alive=census.alive_count,
        inflight_unseen=census.inflight_unseen,
        cleanup=cleanup,
        resolved_inflight=census.resolved_inflight,
        notes=tuple(notes),
    )


def _plan_deletion(spec: EnvironmentSpec, census: Census, offers: dict[PoolKey, SpotOffer]) -> Plan:
    """Release every owned instance not already terminating; buy nothing.

    Done only when nothing owned remains except terminating instances AND no launch is unresolved:
    a launch that may still create instances must become visible (or time out) first, otherwise
    its instances would outlive the object. The executor must not replay in-flight tokens while
    deleting: a replay could buy what the original call never did.
    """
    remaining = [instance for instance in census.owned if instance.state != TERMINATING]
    releases = batch_ids(release_order(remaining, spec.scale_in_policy, _known_prices(offers)))
    return Plan(
        launches=[],
        releases=releases,
        release_reason=ReleaseReason.DELETE if releases else None,
        deficit=0,
        surplus=census.alive_count,
        alive=census.alive_count,
        inflight_unseen=census.inflight_unseen,
        resolved_inflight=census.resolved_inflight,
        deletion_complete=not remaining and census.inflight_unseen == 0,
    )


def _known_prices(offers: dict[PoolKey, SpotOffer]) -> dict[PoolKey, Decimal]:
    return {key: offer.spot_price for key, offer in offers.items() if offer.spot_price is not None}
