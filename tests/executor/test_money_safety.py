"""Money safety II (issue 17): an instance is never forgotten, and a write lands only in the term and
the picture it was planned from.

Each test is a scenario that bought past the count or left instances running on the code before
the change, reproduced in-process: the real Reconciler, CloudAccess and CvmClient against the
simulator and a Kubernetes fake with the API server's write semantics. ClientTokens are
deterministic, so a stale plan equal to the lost one would be answered without buying and hide the
bug: each scenario makes the plan differ (a second scale, a new term's edits).

"Bought" counts every instance the simulator ever created for the pool: the money spent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from spotpool.controller import failpoints
from spotpool.planner.formatting import format_time
from spotpool.planner.model import INFLIGHT_VISIBILITY_GRACE, MAX_JOURNAL_RECORDS
from spotpool.simulator import run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from spotpool.simulator.faults import FaultSpec
from tests.support.inprocess import (
    NAME,
    NS,
    FakeClock,
    FakeKube,
    Switch,
    World,
    pool_spec,
    simulator_config,
    start,
    status,
    world,
)

LAG = 600.0  # a tag index this slow keeps new instances out of every sweep for the whole scenario


def run_instances(w: World) -> list[Any]:
    return [c for c in w.sim.simulator.ledger.entries("RunInstances") if not c.params.get("DryRun")]


async def checked(w: World, **spec: Any) -> str:
    uid = await start(w, **spec)
    await w.mark_launch_checked(NS, NAME)
    return uid


async def passes(w: World, count: int, step: float = 5.0, *worlds: World) -> None:
    for _ in range(count):
        for each in worlds or (w,):
            await each.reconcile(NS, NAME)
        w.clock.advance(step)


# -- never act on an unconfirmed absence ----------------------------------------------------------------

async def fill(w: World, count: int) -> None:
    """Another pool of the installation with `count` instances, bought first (launch order)."""
    w.kube.create(NS, "filler", pool_spec(w.sim, expectedCount=count))
    await w.mark_launch_checked(NS, "filler")
    await w.settle(NS, "filler")


async def test_a_sweep_that_skips_an_instance_between_pages_buys_no_replacement_for_it() -> None:
    """Offset paging: between two page reads an instance goes and another comes, and the one at
    the page boundary is never listed. The pool knew it: it is looked up by id before anything is
    bought for it (before, a replacement was bought for an instance still running)."""
    async with world() as w:
        w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        await fill(w, 100)
        uid = await checked(w, expectedCount=1)
        await w.settle(NS, NAME)
        w.clock.advance(5)
        w.sim.simulator.market.skew_next_pages(2)  # the re-read of the short page too
        await w.reconcile(NS, NAME)
        assert w.bought(uid) == 1 and len(w.owned(uid)) == 1


async def test_a_deletion_does_not_complete_on_a_sweep_that_skipped_its_instance() -> None:
    """101 instances of the installation in the region; the deleted pool's one instance falls
    between the pages. Before, the deletion completed at once and the instance ran on."""
    async with world() as w:
        w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        await fill(w, 100)
        uid = await checked(w, expectedCount=1)
        await w.settle(NS, NAME)
        w.kube.delete(NS, NAME)
        w.clock.advance(5)
        w.sim.simulator.market.skew_next_pages(2)  # the re-read of the short page too
        outcome = await w.reconcile(NS, NAME)
        assert outcome is not None and not outcome.deletion_complete
        await w.settle(NS, NAME)
        assert (NS, NAME) not in w.kube.objects and w.owned(uid) == []


async def test_a_termination_that_fails_after_it_was_accepted_is_retried() -> None:
    """TerminateInstances is asynchronous: CVM may accept it and fail later (LatestOperationState
    FAILED), and the instance runs on. Before, the deletion completed on the local TERMINATING mark
    after two passes, the instance still running."""
    async with world() as w:
        uid = await checked(w, expectedCount=2)
        await w.settle(NS, NAME)
        ids = [i.instance_id for i in w.owned(uid)]
        w.sim.simulator.market.fail_next_termination(ids[:1])
        w.kube.delete(NS, NAME)
        for _ in range(60):
            if await w.reconcile(NS, NAME) is None:
                break
            w.clock.advance(5)
        assert (NS, NAME) not in w.kube.objects
        assert w.owned(uid) == [], "the deletion completed with a termination that failed"
        assert w.sim.simulator.market.get(ids[0]) is None or not w.sim.simulator.market.get(ids[0]).alive


TEAM_B = ("AKIDTEAMBKEY000000000000000000000000", "teamBSecretKey00000000000000000000")


async def test_another_teams_key_never_makes_this_pools_sweep() -> None:
    """Two teams' keys of one account: CAM lets team B's key list only team B's instances. Sweeps
    were made per account with whichever pool's key asked last: team A's pool then saw nothing,
    bought 5 it already ran (10 for 5), and deleting it left 5 running."""
    clock = FakeClock()
    config = simulator_config().with_overrides({"credentials": [
        *[c.model_dump() for c in simulator_config().credentials],
        {"secret_id": TEAM_B[0], "secret_key": TEAM_B[1], "visible_tags": {"team": "b"}},
    ]})
    async with run_simulator(config, clock=clock) as sim:
        w = World(sim, clock)
        try:
            w.kube.put_secret("team-b", "creds", *TEAM_B)
            w.kube.create("team-b", NAME, pool_spec(sim, expectedCount=5, tags={"team": "b"}))
            uid_a = await w.start_pool(NS, NAME, expectedCount=5)
            for round_ in range(12):
                # Whichever pool's pass comes first after the interval makes the sweep.
                order = [("team-b", NAME), (NS, NAME)] if round_ % 2 else [(NS, NAME), ("team-b", NAME)]
                for namespace, name in order:
                    await w.reconcile(namespace, name)
                clock.advance(5)
            assert w.bought(uid_a) == 5 and len(w.owned(uid_a)) == 5
            w.kube.delete(NS, NAME)
            for _ in range(40):
                await w.reconcile("team-b", NAME)
                if await w.reconcile(NS, NAME) is None:
                    break
                clock.advance(5)
            assert (NS, NAME) not in w.kube.objects and w.owned(uid_a) == []
        finally:
            await w.close()


# -- plans from the truth ------------------------------------------------------------------------------

async def test_a_failed_status_write_does_not_leave_the_next_plan_on_an_old_picture() -> None:
    """Scale 5 -> 10: the purchase happens, its status write fails (a 5xx, a 429 from Priority and
    Fairness) and the process lives on. Scaled to 12, the next pass must count the 5 just bought:
    before, it planned from its memory of the status before the journal write (17 bought)."""
    async with world(tag_index_delay_seconds=LAG) as w:
        uid = await checked(w, expectedCount=5)
        await w.settle(NS, NAME)
        w.kube.edit_spec(NS, NAME, {"expectedCount": 10})
        failpoints.arm("status-write", raise_=RuntimeError("500 from the API server"))
        with pytest.raises(RuntimeError):
            await w.reconcile(NS, NAME)
        failpoints.disarm()
        assert w.bought(uid) == 10
        w.kube.edit_spec(NS, NAME, {"expectedCount": 12})
        await w.settle(NS, NAME)
        assert w.bought(uid) == 12 and len(w.owned(uid)) == 12


async def test_a_new_term_plans_from_the_object_not_from_its_first_terms_memory() -> None:
    """Replica A leads, loses the Lease without dying; B leads and scales the pool while the tag
    index still hides what it bought; A leads again. A must plan from the object (B's journal),
    not from what it wrote in its first term (17 for 12 before)."""
    async with world(tag_index_delay_seconds=LAG) as w:
        a_lease, b_lease = Switch(), Switch(leading=False)
        a = World(w.sim, w.clock, kube=w.kube, leadership=a_lease)
        b = World(w.sim, w.clock, kube=w.kube, leadership=b_lease)
        uid = await checked(w, expectedCount=5)
        await a.settle(NS, NAME)
        a_lease.lose()
        b_lease.regain()
        w.kube.edit_spec(NS, NAME, {"expectedCount": 10})
        await passes(w, 2, 5.0, b)
        assert w.bought(uid) == 10
        b_lease.lose()
        a_lease.regain()
        w.kube.edit_spec(NS, NAME, {"expectedCount": 12})
        await a.settle(NS, NAME)
        assert w.bought(uid) == 12 and len(w.owned(uid)) == 12
        await a.close()
        await b.close()


async def test_two_installations_acting_on_one_pool_never_buy_past_the_count() -> None:
    """Two operators that do not share a Lease both act on one pool while an autoscaler steps it
    up between their passes (so their plans differ, and no ClientToken hides a stale one): each
    plans from the object and writes its journal only over the version it planned from, so a
    conflict replans. Before, each planned from its own memory (36 bought for 30)."""
    async with world(tag_index_delay_seconds=120) as w:
        a = World(w.sim, w.clock, kube=w.kube, seed=1)
        b = World(w.sim, w.clock, kube=w.kube, seed=2)
        uid = await checked(w, expectedCount=2)
        expected = 2
        for _ in range(7):
            for replica in (a, b):
                expected += 2
                w.kube.edit_spec(NS, NAME, {"expectedCount": expected})
                await replica.reconcile(NS, NAME)
                assert len(w.owned(uid)) <= expected and w.bought(uid) <= expected, (
                    f"bought {w.bought(uid)} for {expected}")
                w.clock.advance(2)
        await a.settle(NS, NAME)
        assert w.bought(uid) == expected == 30 and len(w.owned(uid)) == 30
        await a.close()
        await b.close()


# -- writes only in their term -------------------------------------------------------------------------

class DelayedWrites(FakeKube):
    """A status write that is sent but lands late (a paused process, a slow network): `hold` makes
    the next status write wait until `release` is set, then apply as the API server would."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                           resource_version: str | None = None, timeout: float | None = None) -> str:
        if self.hold and "inflightLaunches" in status and "conditions" in status:
            self.hold = False
            self.held.set()
            await self.release.wait()
        return await super().patch_status(namespace, name, status, resource_version=resource_version, timeout=timeout)


async def test_a_late_status_write_of_a_past_leader_erases_nothing() -> None:
    """The old leader's status write is on the wire when its term ends; the new leader scales and
    records its purchases; then the old write lands. Unconditional before, it erased the new
    leader's launch records and rolled launchSequence back (17 bought for 12)."""
    kube = DelayedWrites()
    async with world(tag_index_delay_seconds=LAG) as w:
        w.kube = kube
        a_lease, b_lease = Switch(), Switch(leading=False)
        a = World(w.sim, w.clock, kube=kube, leadership=a_lease)
        b = World(w.sim, w.clock, kube=kube, leadership=b_lease)
        uid = await checked(w, expectedCount=5)
        kube.hold = True
        late = asyncio.create_task(a.reconcile(NS, NAME))  # buys 5, its status write waits
        await kube.held.wait()
        a_lease.lose()
        b_lease.regain()
        w.kube.edit_spec(NS, NAME, {"expectedCount": 10})
        await passes(w, 2, 5.0, b)
        sequence = status(w)["launchSequence"]
        kube.release.set()
        await late  # the late write loses its precondition; it is not retried over b's journal
        assert status(w)["launchSequence"] == sequence
        w.kube.edit_spec(NS, NAME, {"expectedCount": 12})
        await b.settle(NS, NAME)
        assert w.bought(uid) == 12 and len(w.owned(uid)) == 12
        await a.close()
        await b.close()


# -- the journal ---------------------------------------------------------------------------------------

async def test_the_journal_never_holds_more_records_than_are_read_back() -> None:
    """A Diversified pool raised every pass while the tag index lags: records pile up. Written
    without limit and read back capped at 200, the rest were dropped as malformed (392 bought for
    360, and a deletion right after left 156 running)."""
    async with world(tag_index_delay_seconds=120) as w:
        uid = await checked(w, expectedCount=4, allocationStrategy="Diversified")
        for n in range(2, 90):
            w.kube.edit_spec(NS, NAME, {"expectedCount": 4 * n})
            await w.reconcile(NS, NAME)
            records = status(w).get("inflightLaunches") or []
            assert len(records) <= MAX_JOURNAL_RECORDS
            assert w.bought(uid) <= 4 * n
            w.clock.advance(1)
        assert not [e for e in w.events if e.reason == "LaunchRecordDropped"]
        w.kube.delete(NS, NAME)
        await w.settle(NS, NAME, passes=200, step=5)
        assert (NS, NAME) not in w.kube.objects
        assert w.owned(uid) == [] and w.bought(uid) <= 4 * 89


async def test_a_record_older_than_the_grace_is_never_replayed() -> None:
    """docs/cvm-api.md promises no replay past the grace (CVM may have forgotten the token and buy
    anew); the planner replayed a 2-day-old record."""
    async with world() as w:
        uid = await checked(w, expectedCount=2)
        old = w.clock.datetime() - INFLIGHT_VISIBILITY_GRACE - timedelta(days=2)
        token = "0c0ffee0-0000-4000-8000-000000000001"
        await w.kube.patch_status(NS, NAME, {"inflightLaunches": [{
            "clientToken": token, "zone": "ap-guangzhou-3", "instanceType": "S5.MEDIUM4", "count": 2,
            "requestedAt": format_time(old), "instanceIds": []}], "launchSequence": 1})
        await w.settle(NS, NAME)
        assert not [c for c in run_instances(w) if c.params.get("ClientToken") == token]
        assert w.bought(uid) == 2 and status(w)["inflightLaunches"] == []
        assert any(e.reason == "LaunchRecordDropped" and token in e.message for e in w.events)


# -- confirm before forgetting -------------------------------------------------------------------------

async def test_a_deletion_resolves_an_unanswered_launch_without_trusting_the_tag_index() -> None:
    """RunInstances bought but its answer was lost, and the tag index lags an hour: the deletion
    dropped the record after the 10-minute grace and completed with 5 running. Now the record is
    resolved from a listing of its zone that does not go through the tag index."""
    async with world(tag_index_delay_seconds=3600) as w:
        uid = await checked(w, expectedCount=5)
        w.sim.simulator.faults.set("RunInstances", FaultSpec(drop_rate=1.0, drop_phase="after", times=3))
        await w.reconcile(NS, NAME)
        w.sim.simulator.faults.clear()
        assert w.bought(uid) == 5 and status(w)["inflightLaunches"][0]["instanceIds"] == []
        w.kube.delete(NS, NAME)
        took = await w.settle(NS, NAME, passes=60, step=5)
        assert (NS, NAME) not in w.kube.objects
        assert w.owned(uid) == [], "the deletion completed with instances running"
        assert took * 5 < INFLIGHT_VISIBILITY_GRACE.total_seconds() / 2, "it waited out the grace"


async def test_a_deletion_holding_a_call_that_never_left_buys_nothing_and_says_what_it_waits_for() -> None:
    async with world() as w:
        uid = await checked(w, expectedCount=3)
        failpoints.arm("before-run-instances", raise_=RuntimeError("the process stops here"))
        with pytest.raises(RuntimeError):
            await w.reconcile(NS, NAME)
        failpoints.disarm()
        w.kube.delete(NS, NAME)
        outcome = await w.reconcile(NS, NAME)
        assert outcome is not None and not outcome.deletion_complete
        assert outcome.waiting is not None and status(w)["inflightLaunches"][0]["clientToken"] in outcome.waiting
        took = await w.settle(NS, NAME, passes=60, step=5)
        assert (NS, NAME) not in w.kube.objects and w.bought(uid) == 0
        assert took * 5 <= 90, "resolved once its call could no longer land, not after the grace"
        assert any(e.reason == "LaunchRecordDropped" and "NotBought" in e.message for e in w.events)


# -- the orphan collector ------------------------------------------------------------------------------

async def test_the_collector_releases_instances_of_a_pool_whose_finalizer_was_removed_by_hand() -> None:
    async with world(tag_index_delay_seconds=0) as w:
        uid = await checked(w, expectedCount=3)
        await w.settle(NS, NAME)
        other = str(w.kube.create(NS, "other", w.kube.objects[(NS, NAME)]["spec"] | {"expectedCount": 1})
                    ["metadata"]["uid"])
        await w.settle(NS, "other")
        w.kube.delete(NS, NAME)
        w.kube.remove_finalizer(NS, NAME)  # by hand: the operator never completed the deletion
        assert len(w.owned(uid)) == 3
        for _ in range(40):
            await w.reconcile(NS, "other")  # the other pool's passes keep the key pair's sweeps going
            w.clock.advance(5)
        assert w.owned(uid) == [], "the orphans still run"
        assert len(w.owned(other)) == 1, "the collector released a live pool's instance"
        reasons = [e.reason for e in w.events]
        assert "OrphanInstances" in reasons and "OrphanInstancesReleased" in reasons
        first = reasons.index("OrphanInstances")
        released = reasons.index("OrphanInstancesReleased")
        assert first < released


# -- a key that cannot see what it buys ----------------------------------------------------------------

@asynccontextmanager
async def hidden_key_pool() -> AsyncIterator[tuple[World, str]]:
    """A pool of 2 in team-b whose key CAM restricts to instances tagged team=b, which the pool
    does not put on what it buys; the World and the pool's uid."""
    config = simulator_config().with_overrides({"credentials": [
        *[c.model_dump() for c in simulator_config().credentials],
        {"secret_id": TEAM_B[0], "secret_key": TEAM_B[1], "visible_tags": {"team": "b"}},
    ]})
    clock = FakeClock()
    async with run_simulator(config, clock=clock) as sim:
        w = World(sim, clock)
        try:
            w.kube.put_secret("team-b", "creds", *TEAM_B)
            yield w, w.kube.create("team-b", NAME, pool_spec(sim, expectedCount=2))["metadata"]["uid"]
        finally:
            await w.close()


async def test_a_key_that_cannot_see_what_it_buys_never_buys_again_for_it() -> None:
    """Team B's key may list and look up only instances tagged team=b, and the pool does not put that
    tag on what it buys: the ids RunInstances returns are 'not found' by id. Taken as gone, they were
    bought again every pass (300 for 2 in 150 passes, found by the stateful machine's author). An id
    no observation ever showed is not gone on a look-up's word: it stays counted, past the 10-minute
    grace too, and Degraded InstancesNotVisible says why and what to change."""
    async with hidden_key_pool() as (w, uid):
        for _ in range(80):  # 20 simulated minutes: twice the grace
            await w.reconcile("team-b", NAME)
            w.clock.advance(15)
        assert w.bought(uid) == 2, f"bought {w.bought(uid)} for 2"
        degraded = w.condition("team-b", NAME, "Degraded")
        assert degraded["reason"] == "InstancesNotVisible" and "spec.tags" in degraded["message"]
        assert len(w.status("team-b", NAME)["inflightLaunches"]) == 1


async def test_a_deletion_never_completes_on_a_look_up_that_cannot_see_the_pools_instances() -> None:
    """The same hidden key, and the pool is deleted: its instances are 'not found' by id, and the
    deletion completed at once with them running. Now it waits and says why; it releases nothing by
    id (nothing proves an unseen id the pool's), and once the policy lets the key see them, it
    releases them and completes."""
    async with hidden_key_pool() as (w, uid):
        for _ in range(3):
            await w.reconcile("team-b", NAME)
            w.clock.advance(5)
        w.kube.delete("team-b", NAME)
        for _ in range(12):
            outcome = await w.reconcile("team-b", NAME)
            assert outcome is not None and not outcome.deletion_complete, "completed with 2 running"
            w.clock.advance(5)
        assert len(w.owned(uid)) == 2
        assert outcome.waiting is not None and "cannot find them" in outcome.waiting
        assert not [c for c in w.sim.simulator.ledger.entries("TerminateInstances")]
        w.sim.simulator.market._visible_tags.pop(TEAM_B[0])  # the administrator widens the policy
        took = await w.settle("team-b", NAME, passes=40, step=5)
        assert ("team-b", NAME) not in w.kube.objects and w.owned(uid) == [], took


async def test_instances_released_before_any_sweep_listed_them_do_not_hold_a_deletion_after_a_restart() -> None:
    """The other side of the rule above: ids a look-up showed (and the status kept as seen) and that
    the pool released are gone when a look-up no longer finds them, after a restart too. Holding
    them as hidden made a deletion wait out the grace (e2e crash-safety caught it)."""
    async with world(tag_index_delay_seconds=LAG) as w:
        uid = await checked(w, expectedCount=3)
        await w.reconcile(NS, NAME)  # bought; the tag index hides them from every sweep
        w.clock.advance(2)
        await w.reconcile(NS, NAME)  # the look-ups by id show them
        w.kube.edit_spec(NS, NAME, {"expectedCount": 1})
        w.clock.advance(2)
        await w.reconcile(NS, NAME)  # releases 2 that no sweep ever listed
        assert len(w.owned(uid)) == 1
        w.clock.advance(120)  # terminated and gone from every answer
        await w.crash()
        w.kube.delete(NS, NAME)
        took = await w.settle(NS, NAME, passes=60, step=5)
        assert (NS, NAME) not in w.kube.objects and w.owned(uid) == []
        assert took * 5 < 120, "it waited for ids that were released and gone"


async def test_an_instance_reclaimed_before_any_sweep_listed_it_is_replaced_at_once() -> None:
    """An instance a look-up showed alive, then reclaimed before a sweep listed it, is gone, not
    hidden from the key: it is replaced at once, not after the grace, across a restart too."""
    async with world(tag_index_delay_seconds=LAG) as w:
        uid = await checked(w, expectedCount=3)
        await w.reconcile(NS, NAME)  # bought; the tag index hides them from every sweep
        w.clock.advance(2)
        await w.reconcile(NS, NAME)  # the look-ups by id show them
        victim = w.owned(uid)[0].instance_id
        w.sim.simulator.market.reclaim([victim])
        w.clock.advance(120)  # reclaimed, terminated and gone
        await w.crash()
        for _ in range(3):
            await w.reconcile(NS, NAME)
            w.clock.advance(2)
        assert len(w.owned(uid)) == 3 and w.bought(uid) == 4


async def test_a_pool_whose_status_was_lost_never_replays_an_old_launchs_token() -> None:
    """The ClientToken of a new launch names the pool's launch sequence, kept in the status. A
    status removed by hand (or restored without it) must not start the sequence again: the next
    purchase would reuse the first launch's token, CVM would answer with that launch's instances,
    long reclaimed, and the pool would count them as bought while it has none (found by
    scale_bench's return-to-spot run: 500 pools stuck without instances, InstancesNotVisible)."""
    async with world() as w:
        uid = await checked(w, expectedCount=2)
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 2 and w.bought(uid) == 2
        first = {i.instance_id for i in w.owned(uid)}
        w.clock.advance(600)
        await w.crash()
        w.kube.objects[(NS, NAME)].pop("status")  # the status is gone; the instances stay
        await w.settle(NS, NAME)  # adopted: nothing bought
        assert w.bought(uid) == 2
        w.sim.simulator.market.reclaim(sorted(first))
        w.clock.advance(120)  # reclaimed, terminated and gone
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 2 and w.bought(uid) == 4, "the replacements were never bought"
        assert not {i.instance_id for i in w.owned(uid)} & first
