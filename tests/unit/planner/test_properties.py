"""Property tests: the planner's safety rules hold for any observed state hypothesis can build.

The oracle below recounts owned, alive and in-flight instances independently of the planner's own
census, so a counting bug cannot hide behind itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from spotpool.api.names import LAUNCH_TAG
from spotpool.cloud.errors import ErrorCategory
from spotpool.cloud.models import (
    LAUNCH_FAILED,
    PENDING,
    RUNNING,
    SHUTDOWN,
    STOPPED,
    TERMINATING,
    Instance,
    SpotOffer,
)
from spotpool.planner import (
    INFLIGHT_VISIBILITY_GRACE,
    MAX_LAUNCH_COUNT,
    MAX_RELEASE_IDS,
    NOT_VISIBLE_HOLD,
    OWNER_UID_TAG,
    DropReason,
    InflightLaunch,
    Observation,
    Plan,
    PoolBackoff,
    PoolKey,
    build_status,
    plan,
    record_refusal,
)
from spotpool.planner.backoff import BACKOFF_BASE, BACKOFF_CAP, BACKOFF_JITTER, ESCALATING
from spotpool.planner.conditions import REASON_PATTERN
from tests.unit.planner.plannerkit import NOW, UID, decided, make_spec

ZONES = ["ap-guangzhou-3", "ap-guangzhou-4", "ap-guangzhou-6"]
TYPES = ["S5.MEDIUM4", "SA2.MEDIUM4", "S6.MEDIUM4"]
OUTSIDE = ("ap-guangzhou-7", "C5.LARGE8")  # never a candidate: instances there still count
UNIVERSE: list[PoolKey] = [(z, t) for z in ZONES for t in TYPES] + [OUTSIDE]
STATES = [PENDING, RUNNING, RUNNING, RUNNING, LAUNCH_FAILED, SHUTDOWN, TERMINATING, STOPPED]
PRICES = [Decimal(f"0.{n:04d}") for n in range(50, 700, 25)]


@dataclass(frozen=True)
class World:
    """Everything `plan` takes, as hypothesis drew it."""

    spec: Any
    instances: list[Instance]
    offers: dict[PoolKey, SpotOffer]
    inflight: list[InflightLaunch]
    backoff: dict[PoolKey, PoolBackoff]
    confirmed: dict[str, Instance | None]

    def plan(self, *, deleting: bool = False, instances: list[Instance] | None = None) -> Plan:
        listed = self.instances if instances is None else instances
        return plan(
            spec=self.spec,
            observation=Observation(listed=tuple(listed), confirmed=self.confirmed),
            offers=self.offers,
            journal=self.inflight,
            backoff=self.backoff,
            now=NOW,
            owner_uid=UID,
            deleting=deleting,
        )


@st.composite
def worlds(draw: st.DrawFn) -> World:
    instances = [
        Instance(
            instance_id=f"ins-{index:08d}",
            zone=pool[0],
            instance_type=pool[1],
            state=draw(st.sampled_from(STATES)),
            charge_type="SPOTPAID",
            created_time=draw(st.none() | st.integers(0, 10_000).map(lambda m: NOW - timedelta(minutes=m))),
            tags={
                **draw(st.sampled_from([{OWNER_UID_TAG: UID}] * 6 + [{OWNER_UID_TAG: "other"}, {}])),
                # some carry the launch tag of a record (found by it when its call never answered)
                **draw(st.sampled_from([{}] * 4 + [{LAUNCH_TAG: f"token-{n}"} for n in range(4)])),
            },
        )
        for index, pool in enumerate(draw(st.lists(st.sampled_from(UNIVERSE), max_size=60)))
    ]
    alive = sum(1 for i in instances if i.state in (PENDING, RUNNING))
    spec = make_spec(
        # below the alive count makes surplus likely, large counts make multi-batch launches likely
        expectedCount=draw(st.integers(0, max(0, alive - 1)) | st.integers(0, 250)),
        maxPrice=str(draw(st.sampled_from(PRICES))),
        zones=draw(st.lists(st.sampled_from(ZONES), min_size=1, unique=True)),
        instanceTypes=draw(st.lists(st.sampled_from(TYPES), min_size=1, unique=True)),
        allocationStrategy=draw(st.sampled_from(["LowestPrice", "Diversified", "Prioritized"])),
        scaleInPolicy=draw(st.sampled_from(["NewestFirst", "OldestFirst", "MostExpensiveFirst"])),
        paused=draw(st.integers(0, 5)) == 0,  # mostly unpaused: paused plans are all empty
        # Instances of zones and types the spec no longer names have drifted: these properties are
        # of a pool that replaces nothing voluntarily (test_disruption_properties.py has the rest),
        # so drifted instances only go first when there is surplus.
        disruption={"budgets": [{"instances": 0}]},
    )
    offers = {}
    for pool in UNIVERSE:
        if draw(st.integers(0, 5)) > 0:
            offers[pool] = SpotOffer(
                zone=pool[0],
                instance_type=pool[1],
                spot_price=draw(st.none() | st.sampled_from(PRICES))
                if draw(st.integers(0, 8)) == 0
                else draw(st.sampled_from(PRICES)),
                list_price=None,
                sold_out=draw(st.integers(0, 6)) == 0,
            )
    known_ids = [i.instance_id for i in instances]
    inflight = []
    for index, pool in enumerate(draw(st.lists(st.sampled_from(UNIVERSE), max_size=4))):
        count = draw(st.integers(1, 150))
        age = draw(st.integers(0, 1200) | st.just(int(NOT_VISIBLE_HOLD.total_seconds()) + 60))
        ids = tuple(
            draw(
                st.just([])
                | st.lists(st.sampled_from([*known_ids, "ins-unseen01", "ins-unseen02"]), max_size=4)
                if known_ids
                else st.just([])
            )
        )
        # Which of its ids an earlier observation showed (kept in status): "not found" proves those gone.
        seen = tuple(dict.fromkeys(i for i in ids if draw(st.booleans())))
        inflight.append(InflightLaunch(
            client_token=f"token-{index}", zone=pool[0], instance_type=pool[1], count=count,
            requested_at=NOW - timedelta(seconds=age), instance_ids=ids, seen=seen,
        ))
    backoff = {
        pool: PoolBackoff(
            failures=draw(st.integers(1, 6)),
            retry_after=NOW + timedelta(seconds=draw(st.integers(-300, 300))),
            last_code="Some.Code",
            last_message="refused",
            last_time=NOW,
            category=draw(st.sampled_from(list(ErrorCategory))),
        )
        for pool in draw(st.lists(st.sampled_from(UNIVERSE), max_size=4, unique=True))
    }
    # InstanceIds lookups of record ids the listing lacked: gone (None), ours, or someone else's
    confirmed: dict[str, Instance | None] = {}
    for instance_id in ("ins-unseen01", "ins-unseen02"):
        if any(instance_id in launch.instance_ids for launch in inflight):
            found = draw(st.sampled_from(["absent", "gone", "ours", "other"]))
            if found == "gone":
                confirmed[instance_id] = None
            elif found != "absent":
                confirmed[instance_id] = Instance(
                    instance_id=instance_id,
                    zone=ZONES[0],
                    instance_type=TYPES[0],
                    state=draw(st.sampled_from(STATES)),
                    charge_type="SPOTPAID",
                    created_time=None,
                    tags={OWNER_UID_TAG: UID if found == "ours" else "other"},
                )
    return World(spec, instances, offers, inflight, backoff, confirmed)


# -- the independent oracle ---------------------------------------------------------------------


def owned(world: World) -> dict[str, Instance]:
    mine: dict[str, Instance] = {}
    for instance in world.instances:
        if instance.tags.get(OWNER_UID_TAG) == UID:
            mine.setdefault(instance.instance_id, instance)
    for instance_id, looked_up in world.confirmed.items():
        if looked_up is not None and looked_up.tags.get(OWNER_UID_TAG) == UID:
            mine.setdefault(instance_id, looked_up)
    return mine


def alive_ids(world: World) -> set[str]:
    return {i for i, inst in owned(world).items() if inst.state in (PENDING, RUNNING)}


def gone(world: World) -> set[str]:
    """Ids a look-up proved gone (not found, or not ours), except `hidden` ones."""
    lost = {i for i, inst in world.confirmed.items() if inst is None or inst.tags.get(OWNER_UID_TAG) != UID}
    return lost - hidden(world)


def hidden(world: World) -> set[str]:
    """Ids RunInstances returned that a look-up does not find and nothing ever showed, of a record
    younger than the hold, of a pool nothing shows: the key may not see them (CAM), so they still
    count."""
    if owned(world) or any(launch.seen for launch in world.inflight):
        return set()
    return {i for launch in world.inflight if launch.requested_at + NOT_VISIBLE_HOLD > NOW
            for i in launch.instance_ids
            if i in world.confirmed and world.confirmed[i] is None and i not in launch.seen}


@dataclass(frozen=True)
class Fate:
    """What the journal rules make of each record, recomputed independently of the planner."""

    unseen: int  # instances the kept records may still add
    kept: list[str]
    replayed: list[str]
    dropped: list[str]
    resolved: list[str]


def fates(world: World, *, deleting: bool = False) -> Fate:
    mine = owned(world)
    lost = gone(world)
    listed_mine = {i.instance_id for i in world.instances if i.tags.get(OWNER_UID_TAG) == UID}
    candidates = {(z, t) for z in world.spec.zones for t in world.spec.instance_types}

    def found(launch: InflightLaunch) -> set[str]:
        if launch.instance_ids:
            return set(launch.instance_ids)
        return {i for i, inst in mine.items() if inst.tags.get(LAUNCH_TAG) == launch.client_token}

    with_ids = [launch for launch in world.inflight if launch.instance_ids]
    budget = (0 if deleting else world.spec.expected_count) - len(alive_ids(world)) - sum(
        len(found(launch) - set(mine) - lost) for launch in with_ids
    )
    unseen, kept, replayed, dropped, resolved = 0, [], [], [], []
    for launch in sorted(world.inflight, key=lambda r: (r.requested_at, r.client_token)):
        ids = found(launch)
        missing = len(ids - set(mine) - lost)
        by_lookup_only = ids & (set(mine) - listed_mine)
        if ids and missing == 0 and not by_lookup_only:
            resolved.append(launch.client_token)
            continue
        if ids:  # ids known: kept until every one is listed or gone, however old
            kept.append(launch.client_token)
            unseen += missing
            continue
        overdue = launch.requested_at + INFLIGHT_VISIBILITY_GRACE <= NOW
        # Never past the grace (CVM may have forgotten the token), never while deleting, and only
        # what the deficit still covers.
        may_replay = not overdue and not deleting and (
            not world.spec.paused and launch.pool in candidates and launch.count <= budget)
        budget -= launch.count
        if may_replay:
            replayed.append(launch.client_token)
        elif overdue:
            dropped.append(launch.client_token)
            continue
        kept.append(launch.client_token)
        unseen += launch.count
    return Fate(unseen, kept, replayed, dropped, resolved)


def unseen(world: World) -> int:
    return fates(world).unseen


def buyable(world: World, pool: PoolKey) -> bool:
    offer = world.offers.get(pool)
    entry = world.backoff.get(pool)
    return (
        pool[0] in world.spec.zones
        and pool[1] in world.spec.instance_types
        and offer is not None
        and not offer.sold_out
        and offer.spot_price is not None
        and offer.spot_price <= world.spec.max_price
        and (entry is None or entry.retry_after is None or entry.retry_after <= NOW)
    )


def released(p: Plan) -> list[str]:
    """Every id the plan releases as surplus: scale-in, and drifted instances (an instance of a
    zone or type the spec no longer names has drifted, and goes first)."""
    return [i for batch in p.releases for i in batch] + [i for _, batch in p.voluntary for i in batch]


# -- properties -----------------------------------------------------------------------------------


@given(worlds())
def test_never_plans_more_alive_than_expected(world: World) -> None:
    p = world.plan()
    launched = sum(b.count for b in p.launches)
    on_the_way = len(alive_ids(world)) + unseen(world)
    assert launched == 0 or on_the_way + launched <= world.spec.expected_count
    assert launched <= max(0, world.spec.expected_count - on_the_way)


@given(worlds())
def test_buys_the_whole_deficit_when_some_pool_is_buyable(world: World) -> None:
    p = world.plan()
    if world.spec.paused or not any(buyable(world, pool) for pool in UNIVERSE):
        assert p.launches == ()
    else:
        assert sum(b.count for b in p.launches) == max(
            0, world.spec.expected_count - len(alive_ids(world)) - unseen(world)
        )


@given(worlds())
def test_never_buys_where_it_may_not(world: World) -> None:
    for batch in world.plan().launches:
        assert buyable(world, batch.pool)
        assert batch.max_price == world.spec.max_price
        assert batch.market_price is not None and batch.market_price <= world.spec.max_price


@given(worlds(), st.booleans())
def test_never_releases_an_instance_it_does_not_own(world: World, deleting: bool) -> None:
    p = world.plan(deleting=deleting)
    ids = released(p) + [i for batch in p.cleanup for i in batch]
    assert set(ids) <= set(owned(world))
    assert len(ids) == len(set(ids))


@given(worlds(), st.booleans())
def test_batches_stay_within_the_api_limits(world: World, deleting: bool) -> None:
    p = world.plan(deleting=deleting)
    assert all(1 <= b.count <= MAX_LAUNCH_COUNT for b in p.launches)
    assert all(1 <= len(batch) <= MAX_RELEASE_IDS for batch in p.releases + p.cleanup)


@given(worlds())
def test_releases_exactly_the_surplus_and_never_when_paused(world: World) -> None:
    p = world.plan()
    surplus = max(0, len(alive_ids(world)) - world.spec.expected_count)
    if world.spec.paused:
        assert p.releases == () and p.cleanup == () and p.launches == ()
    else:
        assert len(released(p)) == surplus
        assert set(released(p)) <= alive_ids(world)
    assert bool(p.releases) == (p.release_reason is not None)
    mine = owned(world)
    assert all(mine[i].state in (LAUNCH_FAILED, SHUTDOWN) for batch in p.cleanup for i in batch)


@given(worlds(), st.booleans())
def test_pending_is_released_before_running(world: World, deleting: bool) -> None:
    mine = owned(world)
    states = [mine[i].state for i in released(world.plan(deleting=deleting))]
    if RUNNING in states:
        assert PENDING not in states[states.index(RUNNING) :]


@given(worlds())
def test_deletion_releases_everything_owned_and_buys_nothing(world: World) -> None:
    p = world.plan(deleting=True)
    assert p.launches == () and p.cleanup == () and p.replays == ()
    assert set(released(p)) == {i for i, inst in owned(world).items() if inst.state != TERMINATING}


@given(worlds(), st.randoms(use_true_random=False), st.booleans())
def test_same_inputs_give_the_same_plan_in_any_listing_order(
    world: World, rng: random.Random, deleting: bool
) -> None:
    shuffled = list(world.instances)
    rng.shuffle(shuffled)
    assert world.plan(deleting=deleting) == world.plan(deleting=deleting)
    assert decided(world.plan(deleting=deleting, instances=shuffled)) == decided(world.plan(deleting=deleting))


@given(worlds(), st.booleans())
def test_status_is_always_writable_and_consistent(world: World, deleting: bool) -> None:
    p = world.plan(deleting=deleting)
    report = build_status(
        spec=world.spec,
        generation=1,
        census=p.census,
        journal=p.journal,
        offers=world.offers,
        backoff=world.backoff,
        now=NOW,
        previous_conditions=[],
        environment_label="env",
        deleting=deleting,
        unlisted_overdue=p.unlisted_overdue,
    )
    status = report.body
    assert [c["status"] == "True" for c in status["conditions"]] == [
        report.ready, report.progressing, report.degraded
    ]
    assert [launch["clientToken"] for launch in status["inflightLaunches"]] == fates(world, deleting=deleting).kept
    assert status["currentCount"] == len(alive_ids(world))
    assert status["currentCount"] == status["runningCount"] + status["pendingCount"]
    assert len(status["pools"]) == len(world.spec.zones) * len(world.spec.instance_types)
    assert sum(pool["running"] for pool in status["pools"]) <= status["runningCount"]
    assert all(REASON_PATTERN.fullmatch(c["reason"]) for c in status["conditions"])
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"] == "True") == (
        not deleting and status["runningCount"] == world.spec.expected_count
    )


@given(worlds(), st.booleans())
def test_every_record_is_kept_replayed_dropped_or_resolved_by_the_rules(world: World, deleting: bool) -> None:
    p = world.plan(deleting=deleting)
    fate = fates(world, deleting=deleting)
    assert [r.client_token for r in p.journal] == fate.kept
    assert [r.client_token for r in p.replays] == fate.replayed
    assert [d.client_token for d in p.dropped] == fate.dropped
    assert all(d.reason is DropReason.EXPIRED for d in p.dropped)
    assert p.census.inflight_unseen == fate.unseen
    assert sorted(fate.kept + fate.dropped + fate.resolved) == sorted(r.client_token for r in world.inflight)
    if deleting or world.spec.paused:
        assert p.replays == ()
    assert all(r.requested_at + INFLIGHT_VISIBILITY_GRACE > NOW for r in p.replays)  # never past the grace
    # a record with ids is never dropped unaccounted: its instances may be alive and billed
    assert not {d.client_token for d in p.dropped} & {r.client_token for r in world.inflight if r.instance_ids}


@given(worlds())
def test_deletion_is_complete_only_when_nothing_is_left(world: World) -> None:
    p = world.plan(deleting=True)
    # Terminating is not gone: only an id the cloud no longer shows lets the deletion finish.
    assert p.deletion_complete == (not owned(world) and not fates(world, deleting=True).kept)


# -- backoff ----------------------------------------------------------------------------------------


def lower_bound(failures: int, category: ErrorCategory) -> timedelta:
    nominal = (
        min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 40)) if category in ESCALATING else BACKOFF_CAP
    )
    return nominal * (1 - BACKOFF_JITTER)


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@settings(max_examples=200)
@given(st.sampled_from(list(ErrorCategory)), st.integers(1, 40), st.floats(0, 1, exclude_max=True))
def test_backoff_is_monotone_for_a_given_jitter_and_capped(
    category: ErrorCategory, refusals: int, jitter: float
) -> None:
    backoff: dict[PoolKey, PoolBackoff] = {}
    delays = []
    for _ in range(refusals):
        backoff = record_refusal(
            backoff, UNIVERSE[0], code="C", message="m", category=category, now=NOW, rng=FixedRandom(jitter)
        )
        retry_after = backoff[UNIVERSE[0]].retry_after
        assert retry_after is not None
        delays.append(retry_after - NOW)
    assert delays == sorted(delays)
    assert all(timedelta(0) < delay <= BACKOFF_CAP for delay in delays)


@given(st.sampled_from(list(ErrorCategory)), st.integers(1, 40), st.randoms(use_true_random=False))
def test_backoff_never_drops_below_its_monotone_lower_bound(
    category: ErrorCategory, refusals: int, rng: random.Random
) -> None:
    backoff: dict[PoolKey, PoolBackoff] = {}
    for failures in range(1, refusals + 1):
        backoff = record_refusal(
            backoff, UNIVERSE[0], code="C", message="m", category=category, now=NOW, rng=rng
        )
        entry = backoff[UNIVERSE[0]]
        assert entry.failures == failures and entry.retry_after is not None
        assert lower_bound(failures, category) <= entry.retry_after - NOW <= BACKOFF_CAP
