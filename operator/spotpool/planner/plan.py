"""The planner's entry point: observed state in, the next actions out. Pure: no I/O, no clock.

How the numbers are derived (see `Census` for the counting, `planner.journal` for the records):

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

from datetime import datetime
from decimal import Decimal

from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.models import LAUNCH_FAILED, SHUTDOWN, TERMINATING, SpotOffer
from spotpool.planner.census import Census, take_census
from spotpool.planner.journal import JournalDecision, decide_journal
from spotpool.planner.launch import plan_launches
from spotpool.planner.model import (
    InflightLaunch,
    LaunchBatch,
    Observation,
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
    observation: Observation,
    journal: list[InflightLaunch] | tuple[InflightLaunch, ...],
    offers: dict[PoolKey, SpotOffer],
    backoff: dict[PoolKey, PoolBackoff],
    now: datetime,
    owner_uid: str,
    deleting: bool = False,
    purchases_refused: str | None = None,
) -> Plan:
    """Decide, once per pass, what to replay, buy and release.

    Only observed instances carrying `spotpool.io/environment-uid == owner_uid` count. `offers` is
    the spot market per pool; `backoff` the per-pool refusal history; `journal` the launch records
    read back from status (see `planner.journal` for what happens to each). Deleting overrides
    `paused`: a deletion must release everything before the finalizer goes, or instances leak.
    `purchases_refused` (why: a spend guard the administrator set) buys and replays nothing but
    releases as usual: a guard stops spending, never scale-in, cleanup or deletion.
    """
    observed = take_census(
        instances=observation.listed, inflight=journal, owner_uid=owner_uid, confirmed=observation.confirmed
    )
    decision = decide_journal(spec=spec, census=observed, now=now, deleting=deleting,
                              purchases_refused=purchases_refused)
    census = observed.keeping(decision.keep)
    if deleting:
        return _plan_deletion(spec, census, offers, decision)

    deficit = census.deficit(spec.expected_count)
    surplus = census.surplus(spec.expected_count)
    notes = [f"ignored {census.foreign} instances not owned by {owner_uid}"] if census.foreign else []
    launches: list[LaunchBatch] = []
    releases: list[list[str]] = []
    cleanup: list[list[str]] = []

    if spec.paused:
        notes.append("paused: buying and releasing nothing")
    else:
        if deficit and purchases_refused:
            notes.append(f"{deficit} instances short: {purchases_refused}")
        elif deficit:
            assessments = assess_pools(spec, offers, backoff, now)
            buyable = order_buyable(spec, assessments)
            if not buyable:
                reasons = "; ".join(a.why_not(spec.max_price) for a in assessments)
                notes.append(f"{deficit} instances short and no pool can be bought: {reasons}")
            occupancy = census.alive_by_pool() + census.unseen_by_pool
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
        journal=decision.keep,
        replays=decision.replay,
        launches=tuple(launches),
        releases=_frozen(releases),
        release_reason=ReleaseReason.SCALE_IN if releases else None,
        cleanup=_frozen(cleanup),
        dropped=decision.dropped,
        census=census,
        unlisted_overdue=decision.unlisted_overdue,
        notes=tuple(notes),
    )


def _plan_deletion(
    spec: EnvironmentSpec, census: Census, offers: dict[PoolKey, SpotOffer], decision: JournalDecision
) -> Plan:
    """Release every owned instance not already terminating; buy and replay nothing.

    Done only when nothing owned remains except terminating instances AND no launch record is
    left: a launch that may still create instances must become visible (or expire) first,
    otherwise its instances would outlive the object.
    """
    remaining = [instance for instance in census.owned if instance.state != TERMINATING]
    releases = batch_ids(release_order(remaining, spec.scale_in_policy, _known_prices(offers)))
    return Plan(
        journal=decision.keep,
        replays=(),
        launches=(),
        releases=_frozen(releases),
        release_reason=ReleaseReason.DELETE if releases else None,
        cleanup=(),
        dropped=decision.dropped,
        census=census,
        unlisted_overdue=decision.unlisted_overdue,
        deletion_complete=not remaining and not decision.keep,
    )


def _frozen(batches: list[list[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(batch) for batch in batches)


def _known_prices(offers: dict[PoolKey, SpotOffer]) -> dict[PoolKey, Decimal]:
    return {key: offer.spot_price for key, offer in offers.items() if offer.spot_price is not None}
