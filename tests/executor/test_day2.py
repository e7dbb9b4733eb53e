"""Day 2 in process: a changed spec rolls out surge-first under a budget, instances expire with a
CVM ActionTimer, work on an instance holds it, and a drain grace marks before releasing.

Every scenario watches the money and the service at each pass: running never drops below
expectedCount for a voluntary reason, alive never exceeds expectedCount plus the budget, and
each drifted instance is replaced exactly once (the purchases are counted), crashes included.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from spotpool.api.names import DO_NOT_DISRUPT_TAG, DRAINING_TAG, LAUNCH_SPEC_TAG
from spotpool.cloud.models import RUNNING
from spotpool.controller.reporting import PoolMemory
from spotpool.planner.disruption import EXPIRY_TIMER_GRACE
from tests.support.inprocess import NAME, NS, World, condition, passes_crashing_at, status, world

OLD_IMAGE, NEW_IMAGE = "img-pmqg1cw7", "img-8toqc6s3"


async def start(w: World, **spec: Any) -> str:
    uid = await w.start_pool(NS, NAME, **spec)
    await w.mark_launch_checked(NS, NAME)
    return str(uid)


def counts(w: World, uid: str) -> tuple[int, int]:
    """(alive, running) of the pool's instances as the cloud has them now."""
    alive = w.owned(uid)
    return len(alive), sum(1 for i in alive if i.state == RUNNING)


async def roll(w: World, uid: str, expected: int, budget: int, *, passes: int = 80, step: float = 5.0,
               crash_every: int | None = None) -> tuple[int, int]:
    """Reconcile until settled, checking the two bounds after every pass; returns (peak alive,
    least running). `crash_every`: throw the operator away every that many passes."""
    peak, least = 0, expected
    for count in range(1, passes + 1):
        outcome = await w.reconcile(NS, NAME)
        alive, running = counts(w, uid)
        peak, least = max(peak, alive), min(least, running)
        assert alive <= expected + budget, f"pass {count}: {alive} alive for {expected} + budget {budget}"
        assert running >= expected, f"pass {count}: {running} running for expectedCount {expected}"
        if crash_every and count % crash_every == 0:
            await w.crash()
        w.clock.advance(step)
        if outcome is not None and not outcome.progressing and count > 2:
            return peak, least
    raise AssertionError(f"did not settle in {passes} passes")


async def test_a_changed_image_rolls_out_surge_first_under_a_budget_of_two() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=6, disruption={"budgets": [{"instances": 2}]})
        await w.settle(NS, NAME)
        assert status(w)["updatedCount"] == 6 and w.bought(uid) == 6
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        await w.reconcile(NS, NAME)
        assert status(w)["updatedCount"] == 2, "the budget's two replacements, bought while the six still run"
        assert condition(w, "Progressing")["reason"] == "RollingOut"
        entries = status(w)["instances"]
        assert sorted(len(i.get("drifted", [])) for i in entries) == [0, 0, 1, 1, 1, 1, 1, 1]
        assert all(i["drifted"] == ["Image"] for i in entries if "drifted" in i)
        drifted = [e for e in w.events if e.reason == "Drifted"]
        assert len(drifted) == 1 and "6 instances differ from the spec (Image)" in drifted[0].message
        peak, least = await roll(w, uid, expected=6, budget=2)
        alive = w.owned(uid)
        assert {i.image_id for i in alive} == {NEW_IMAGE} and len(alive) == 6
        assert w.bought(uid) == 12, "each drifted instance is replaced exactly once"
        assert peak == 8 and least == 6
        assert status(w)["updatedCount"] == 6 and "drifted" not in str(status(w)["instances"])
        assert condition(w, "Progressing")["reason"] == "Stable"
        assert len([e for e in w.events if e.reason == "Drifted"]) == 1, "said once, not every pass"


async def test_a_rollout_survives_crashes_and_replaces_each_instance_once() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=5, disruption={"budgets": [{"instances": 2}]})
        await w.settle(NS, NAME)
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE, "userData": "IyEvYmluL3NoCmVjaG8gaGkK"})
        await w.mark_launch_checked(NS, NAME)
        # Crashes right after RunInstances answered and right after a release, then a crash of the
        # whole operator every third pass until the rollout is done.
        await passes_crashing_at(w, "after-run-instances", 1, 3)
        await passes_crashing_at(w, "after-terminate-instances", 1, 8)
        await roll(w, uid, expected=5, budget=2, crash_every=3)
        assert {i.image_id for i in w.owned(uid)} == {NEW_IMAGE}
        assert w.bought(uid) == 10, "each drifted instance is replaced exactly once, crashes or not"


async def test_a_budget_of_zero_disrupts_nothing_and_says_which_budget() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=4, disruption={"budgets": [{"instances": 0}]})
        await w.settle(NS, NAME)
        before = {i.instance_id for i in w.owned(uid)}
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        await w.settle(NS, NAME)
        assert {i.instance_id for i in w.owned(uid)} == before and w.bought(uid) == 4
        progressing = condition(w, "Progressing")
        assert progressing["status"] == "False" and progressing["reason"] == "RolloutBlocked"
        assert "spec.disruption.budgets[0]" in progressing["message"]
        assert status(w)["disruption"]["remaining"] == 4 and status(w)["updatedCount"] == 0
        assert any(e.reason == "DisruptionBlocked" for e in w.events)
        # Opened again: the rollout goes on.
        w.kube.edit_spec(NS, NAME, {"disruption": {"budgets": [{"instances": "50%"}]}})
        await roll(w, uid, expected=4, budget=2)
        assert {i.image_id for i in w.owned(uid)} == {NEW_IMAGE} and w.bought(uid) == 8


async def test_drifted_instances_beyond_a_lower_count_go_as_scale_in_not_as_replaced() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=5, disruption={"budgets": [{"instances": 0}]})
        await w.settle(NS, NAME)
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        await w.settle(NS, NAME)
        w.kube.edit_spec(NS, NAME, {"expectedCount": 2})
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 2 and w.bought(uid) == 5
        released = [e.message for e in w.events if e.reason == "Released"]
        assert len(released) == 1 and "(ScaleIn:" in released[0] and "3 instances" in released[0]
        assert status(w)["updatedCount"] == 0 and status(w)["disruption"]["remaining"] == 2


async def test_a_scheduled_budget_replaces_only_while_its_window_is_open() -> None:
    async with world() as w:
        now = datetime.fromtimestamp(w.clock.now, UTC)
        opens = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
        schedule = f"{opens.minute} {opens.hour} * * *"
        budgets = [{"instances": 0}, {"instances": 3, "schedule": schedule, "duration": "30m"}]
        uid = await start(w, expectedCount=3, disruption={"budgets": budgets})
        await w.settle(NS, NAME)
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        await w.settle(NS, NAME)
        assert w.bought(uid) == 3, "the window is closed, and budgets[0] allows nothing outside it"
        # Inside the window the most restrictive *active* budget is budgets[0] still (0 at a time):
        # a budget of 0 without a schedule stops everything, always.
        w.clock.advance((opens - now).total_seconds() + 60)
        await w.settle(NS, NAME)
        assert w.bought(uid) == 3
        # With only the scheduled budget: nothing outside the window, the rollout inside it.
        w.kube.edit_spec(NS, NAME, {"disruption": {"budgets": [budgets[1], {"instances": 0, "schedule": "@daily",
                                                                            "duration": "1s"}]}})
        await w.settle(NS, NAME)
        assert {i.image_id for i in w.owned(uid)} == {NEW_IMAGE} and w.bought(uid) == 6


async def test_do_not_disrupt_holds_an_instance_up_to_its_maximum_and_scale_in_takes_it_last() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=3, disruption={"budgets": [{"instances": 3}],
                                                         "doNotDisruptMaxHold": "10m"})
        await w.settle(NS, NAME)
        busy = sorted(i.instance_id for i in w.owned(uid))[0]
        w.sim.simulator.market.change_tags("ap-guangzhou", [busy], set_tags={DO_NOT_DISRUPT_TAG: "true"})
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        await w.settle(NS, NAME)
        alive = {i.instance_id: i for i in w.owned(uid)}
        assert busy in alive and len(alive) == 3 and w.bought(uid) == 5
        held = status(w)["disruption"]["held"]
        assert [h["id"] for h in held] == [busy]
        assert condition(w, "Progressing")["reason"] == "RolloutBlocked"
        assert "spotpool.io/do-not-disrupt" in condition(w, "Progressing")["message"]
        # A scale-in takes the others first, though the held one is drifted.
        w.kube.edit_spec(NS, NAME, {"expectedCount": 2})
        await w.settle(NS, NAME)
        assert busy in {i.instance_id for i in w.owned(uid)}
        # Past the maximum hold it is replaced like the rest, surge-first.
        w.kube.edit_spec(NS, NAME, {"expectedCount": 3})
        await w.settle(NS, NAME)
        w.clock.advance(600)
        await roll(w, uid, expected=3, budget=3)
        assert busy not in {i.instance_id for i in w.owned(uid)}
        assert {i.image_id for i in w.owned(uid)} == {NEW_IMAGE}


async def test_a_drain_grace_marks_the_instance_then_releases_it() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=2, disruption={"budgets": [{"instances": 1}], "drainGrace": "2m"})
        await w.settle(NS, NAME)
        old = {i.instance_id for i in w.owned(uid)}
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        marked_at: dict[str, float] = {}
        released_at: dict[str, float] = {}
        for _ in range(200):
            outcome = await w.reconcile(NS, NAME)
            for instance in w.sim.simulator.market.all_instances_ever():
                if instance.instance_id in old and DRAINING_TAG in instance.tags:
                    marked_at.setdefault(instance.instance_id, w.clock.now)
                if instance.instance_id in old and not instance.alive:
                    released_at.setdefault(instance.instance_id, w.clock.now)
            alive, running = counts(w, uid)
            assert running >= 2 and alive <= 3
            if outcome is not None and not outcome.progressing and len(released_at) == 2:
                break
            w.clock.advance(5)
        assert set(marked_at) == old == set(released_at)
        for instance_id in old:
            assert released_at[instance_id] - marked_at[instance_id] >= 120, "released only after the grace"
        assert len([e for e in w.events if e.reason == "Draining"]) == 2


async def test_expired_instances_are_replaced_and_carry_a_server_side_timer() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=3, disruption={"expireAfter": "2h", "budgets": [{"instances": 1}]})
        await w.settle(NS, NAME)
        first = w.owned(uid)
        assert all(i.terminate_at is not None for i in first)
        for instance in first:
            lifetime = instance.terminate_at - instance.created_at
            assert 2 * 3600 <= lifetime <= 2 * 3600 + EXPIRY_TIMER_GRACE.total_seconds() + 60
        entry = status(w)["instances"][0]
        assert "expiresAt" in entry
        w.clock.advance(2 * 3600 + 30)
        await w.reconcile(NS, NAME)
        assert any(e.reason == "Expired" for e in w.events)
        await roll(w, uid, expected=3, budget=1, passes=120)
        assert not {i.instance_id for i in first} & {i.instance_id for i in w.owned(uid)}
        assert w.bought(uid) == 6
        assert all(i.terminated_by != "timer" for i in w.sim.simulator.market.all_instances_ever()
                   if i.instance_id in {f.instance_id for f in first}), "the operator replaced them first"


async def test_the_timer_ends_an_instance_the_operator_no_longer_looks_after() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=2, disruption={"expireAfter": "1h"})
        await w.settle(NS, NAME)
        # The operator is gone (no pass runs); the cloud ends the instances at expireAfter + grace.
        w.clock.advance(3600 + EXPIRY_TIMER_GRACE.total_seconds() + 30)
        assert w.owned(uid) == []
        assert {i.terminated_by for i in w.sim.simulator.market.all_instances_ever()
                if i.tags.get("spotpool.io/environment-uid") == uid} == {"timer"}


async def test_instances_bought_before_drift_detection_do_not_drift_in_launch_fields() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=2)
        await w.settle(NS, NAME)
        ids = [i.instance_id for i in w.owned(uid)]
        w.sim.simulator.market.change_tags("ap-guangzhou", ids, remove_keys=[LAUNCH_SPEC_TAG])
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        await w.settle(NS, NAME)
        assert sorted(i.instance_id for i in w.owned(uid)) == sorted(ids) and w.bought(uid) == 2
        assert status(w)["updatedCount"] == 2, "no drift without a visible change"


async def test_a_write_that_touched_nothing_a_plan_reads_does_not_cost_the_pass() -> None:
    """kopf annotates the object after it handles a spec change; the pass planned from the body
    before that write still buys (its journal write finds the status and the spec as it read them),
    where it used to give up and wait a progress interval. A spec edit in between still stops it."""
    async with world() as w:
        uid = await start(w, expectedCount=2)
        stale = w.kube.body(NS, NAME)
        assert stale is not None
        w.kube.annotate(NS, NAME, "kopf.zalando.org/last-handled-configuration", "{}")
        memory = w.memos.setdefault(uid, (PoolMemory(), asyncio.Lock()))
        await w.reconciler.reconcile(stale, *memory)
        assert w.bought(uid) == 2
        w.kube.edit_spec(NS, NAME, {"expectedCount": 4})
        stale = w.kube.body(NS, NAME)
        assert stale is not None
        w.kube.edit_spec(NS, NAME, {"expectedCount": 3})
        await w.crash()
        memory = w.memos.setdefault(uid, (PoolMemory(), asyncio.Lock()))
        outcome = await w.reconciler.reconcile(stale, *memory)
        assert w.bought(uid) == 2 and outcome.problem is not None, "planned from expectedCount 4: nothing bought"
        await w.settle(NS, NAME)
        assert w.bought(uid) == 3


async def test_a_budget_for_return_to_spot_bounds_its_surge_below_max_in_flight() -> None:
    """The return to spot is a voluntary disruption: a budget naming ReturnToSpot bounds it as
    maxInFlight does, the most restrictive winning (here 1 at a time, where maxInFlight allows 4)."""
    async with world() as w:
        w.sell_out_spot()
        uid = await start(w, expectedCount=4, onDemand={"fallback": {"after": "0s"},
                                                        "returnToSpot": {"maxInFlight": "100%"}},
                          disruption={"budgets": [{"instances": 1, "reasons": ["ReturnToSpot"]}]})
        await w.settle(NS, NAME)
        assert status(w)["capacity"]["onDemandFallback"] == 4
        w.sell_out_spot(False)
        w.clock.advance(60)  # past the market read's reuse
        peak, least = await roll(w, uid, expected=4, budget=1)
        assert peak == 5 and least == 4
        assert status(w)["capacity"]["onDemandFallback"] == 0 and w.bought(uid) == 8


async def test_a_held_fallback_instance_is_not_returned_and_buys_no_replacement_again_and_again() -> None:
    async with world() as w:
        w.sell_out_spot()
        uid = await start(w, expectedCount=2, onDemand={"fallback": {"after": "0s"}})
        await w.settle(NS, NAME)
        fallback = sorted(i.instance_id for i in w.owned(uid))
        w.sim.simulator.market.change_tags("ap-guangzhou", fallback[:1], set_tags={DO_NOT_DISRUPT_TAG: "true"})
        w.sell_out_spot(False)
        w.clock.advance(60)  # past the market read's reuse
        await w.settle(NS, NAME)
        for _ in range(5):  # settled stays settled: no replacement bought and released in a loop
            w.clock.advance(30)
            await w.reconcile(NS, NAME)
        alive = {i.instance_id for i in w.owned(uid)}
        assert fallback[0] in alive and fallback[1] not in alive and len(alive) == 2
        assert w.bought(uid) == 3, "one spot replacement for the free fallback instance, none for the held one"


async def test_a_reclaim_and_a_scale_up_mid_rollout_buy_exactly_what_they_need() -> None:
    """The plan after each event differs from the one before (a replayed ClientToken cannot hide
    an overbuy): a reclaimed replacement is bought again once, a scale-up buys its count, and every
    drifted instance is still replaced once."""
    async with world() as w:
        uid = await start(w, expectedCount=4, disruption={"budgets": [{"instances": 2}]})
        await w.settle(NS, NAME)
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        await w.reconcile(NS, NAME)  # the first two replacements are bought
        w.clock.advance(25)
        await w.reconcile(NS, NAME)  # they run: two drifted ones go
        new = sorted(i.instance_id for i in w.owned(uid) if i.image_id == NEW_IMAGE)
        assert len(new) >= 2
        w.sim.simulator.market.reclaim(new[:1])
        w.kube.edit_spec(NS, NAME, {"expectedCount": 5})
        await w.mark_launch_checked(NS, NAME)
        for _ in range(40):  # a reclaim may take running below the count (not a voluntary reason)
            outcome = await w.reconcile(NS, NAME)
            assert len(w.owned(uid)) <= 5 + 2, "never above the count plus the budget"
            w.clock.advance(5)
            if outcome is not None and not outcome.progressing:
                break
        alive = w.owned(uid)
        assert len(alive) == 5 and {i.image_id for i in alive} == {NEW_IMAGE}
        assert w.bought(uid) == 4 + 4 + 1 + 1, "4 first, 4 replacements, 1 for the reclaim, 1 for the scale-up"


async def test_a_deletion_mid_rollout_leaves_nothing_alive() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=4, disruption={"budgets": [{"instances": 2}], "drainGrace": "1m"})
        await w.settle(NS, NAME)
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        for _ in range(4):  # replacements bought and booted, old ones marked draining
            await w.reconcile(NS, NAME)
            w.clock.advance(15)
        assert any(DRAINING_TAG in i.tags for i in w.owned(uid))
        w.kube.delete(NS, NAME)
        await w.settle(NS, NAME, step=15)
        assert (NS, NAME) not in w.kube.objects
        w.clock.advance(60)
        assert w.owned(uid) == [], "no instance of the pool alive anywhere once the deletion completed"


async def test_an_instance_is_marked_draining_once_though_the_sweep_shows_the_mark_an_interval_later() -> None:
    """Passes come every few seconds, the sweep every 15 s: a mark the sweep does not list yet is
    the operator's own (TagResources answered), as a release is. Marked again each pass, the drain
    grace started over each time, and every pass posted another Draining Event."""
    async with world(observe_interval=15.0) as w:
        uid = await start(w, expectedCount=2, disruption={"budgets": [{"instances": 1}], "drainGrace": "1m"})
        await w.settle(NS, NAME)
        old = {i.instance_id for i in w.owned(uid)}
        w.kube.edit_spec(NS, NAME, {"imageId": NEW_IMAGE})
        await w.mark_launch_checked(NS, NAME)
        marks: dict[str, set[str]] = {i: set() for i in old}
        for _ in range(200):
            outcome = await w.reconcile(NS, NAME)
            for instance in w.sim.simulator.market.all_instances_ever():
                if instance.instance_id in old and DRAINING_TAG in instance.tags:
                    marks[instance.instance_id].add(instance.tags[DRAINING_TAG])
            if outcome is not None and not outcome.progressing and not (old & {i.instance_id for i in w.owned(uid)}):
                break
            w.clock.advance(3)
        assert all(len(times) == 1 for times in marks.values()), f"marked more than once: {marks}"
        assert len([e for e in w.events if e.reason == "Draining"]) == 2
        tagging = w.sim.simulator.ledger.entries("TagResources")
        assert len(tagging) == 2, f"{len(tagging)} TagResources calls for 2 instances marked one at a time"
