"""Beyond spot, in-process against the simulator: the on-demand base, the fallback after its wait,
the return to spot under its budget (replacement first), the hourly spend cap, quota-aware
planning, and an on-demand purchase replayed after a crash with its own charge type."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from spotpool.cloud.models import POSTPAID_BY_HOUR, RUNNING, SPOTPAID
from spotpool.controller import failpoints
from tests.support.inprocess import NAME, NS, TYPES, ZONES, Crash, World, condition, passes_crashing_at, status, world


async def start_checked(w: World, **spec: Any) -> str:
    """A pool whose launch spec counts as checked: these tests are about what it buys."""
    uid = await w.start_pool(NS, NAME, **spec)
    await w.mark_launch_checked(NS, NAME)
    return uid


def by_charge(w: World, uid: str) -> dict[str, int]:
    counts = {SPOTPAID: 0, POSTPAID_BY_HOUR: 0}
    for instance in w.owned(uid):
        counts[instance.charge_type] += 1
    return counts


def reasons(w: World) -> list[str]:
    return [e.reason for e in w.events]


async def passes_until(w: World, done: Callable[[], bool], *, limit: int = 200, step: float = 5.0,
                       each: Callable[[], None] | None = None) -> int:
    """Reconcile, `step` simulated seconds apart, until `done()`; `each` checks an invariant after
    every pass."""
    for count in range(1, limit + 1):
        await w.reconcile(NS, NAME)
        if each is not None:
            each()
        if done():
            return count
        w.clock.advance(step)
    raise AssertionError(f"not done after {limit} passes")


async def test_the_base_is_on_demand_and_the_rest_spot() -> None:
    async with world() as w:
        uid = await start_checked(w, expectedCount=5, onDemand={"baseCount": 2})
        await w.settle(NS, NAME)
        assert by_charge(w, uid) == {SPOTPAID: 3, POSTPAID_BY_HOUR: 2}
        capacity = status(w)["capacity"]
        assert (capacity["spot"], capacity["onDemandBase"], capacity["onDemandFallback"]) == (3, 2, 0)
        roles = sorted(i["capacity"] for i in status(w)["instances"])
        assert roles == ["OnDemandBase", "OnDemandBase", "Spot", "Spot", "Spot"]
        assert condition(w, "Ready")["status"] == "True"
        assert w.bought(uid) == 5


async def test_fallback_after_the_wait_survives_a_restart_then_returns_to_spot_replacement_first() -> None:
    async with world() as w:
        w.sell_out_spot()
        uid = await start_checked(w, expectedCount=4, onDemand={
            "fallback": {"after": "5m"}, "returnToSpot": {"maxInFlight": 2}})
        started = w.clock()
        await passes_until(w, lambda: "spotShortSince" in status(w).get("capacity", {}))
        await w.crash()  # the wait is in the status: a restart does not start it again
        await passes_until(w, lambda: by_charge(w, uid)[POSTPAID_BY_HOUR] > 0, step=15.0)
        waited = w.clock() - started
        assert 300 <= waited <= 300 + 2 * 15.0, waited
        assert by_charge(w, uid) == {SPOTPAID: 0, POSTPAID_BY_HOUR: 4}
        assert "FallbackToOnDemand" in reasons(w)
        await w.settle(NS, NAME)
        assert status(w)["capacity"]["onDemandFallback"] == 4 and condition(w, "Ready")["status"] == "True"
        assert "spotShortSince" not in status(w)["capacity"]  # nothing missing: no shortage

        w.sell_out_spot(False)  # restocked
        market = w.sim.simulator.market
        calls_before_return = len(w.sim.simulator.ledger.entries())

        progressing: set[str] = set()

        def replacement_first() -> None:
            progressing.add(condition(w, "Progressing")["reason"])
            alive = w.owned(uid)
            running = [i for i in alive if i.state == RUNNING]
            assert len(running) >= 4, "an on-demand instance went before its replacement ran"
            extra_spot = sum(1 for i in alive if i.charge_type == SPOTPAID) - (4 - sum(
                1 for i in alive if i.charge_type == POSTPAID_BY_HOUR))
            assert extra_spot <= 2, "more replacements in flight than the budget"

        await passes_until(w, lambda: by_charge(w, uid) == {SPOTPAID: 4, POSTPAID_BY_HOUR: 0},
                           each=replacement_first)
        await w.settle(NS, NAME)
        assert "ReturnedToSpot" in reasons(w)
        assert "ReturningToSpot" in progressing and "ScalingIn" not in progressing, progressing
        # Within passes too: replaying the cloud's calls in order, the pool never held more than
        # expectedCount + maxInFlight (a return's release comes before the next replacements).
        alive, peak = 4, 4
        for call in w.sim.simulator.ledger.entries()[calls_before_return:]:
            if call.error_code or call.params.get("DryRun"):
                continue
            if call.action == "RunInstances":
                alive += int(call.params["InstanceCount"])
            elif call.action == "TerminateInstances":
                alive -= len(call.params["InstanceIds"])
            peak = max(peak, alive)
        assert alive == 4 and peak <= 4 + 2, peak
        assert status(w)["capacity"] == {"spot": 4, "onDemandBase": 0, "onDemandFallback": 0}
        # Every on-demand instance ever bought was a fallback one, and each was replaced once.
        ever = [i for i in market.all_instances_ever() if i.tags.get("spotpool.io/environment-uid") == uid]
        assert sum(1 for i in ever if i.charge_type == POSTPAID_BY_HOUR) == 4
        assert sum(1 for i in ever if i.charge_type == SPOTPAID) == 4


async def test_no_fallback_without_one_configured() -> None:
    async with world() as w:
        w.sell_out_spot()
        uid = await start_checked(w, expectedCount=3)
        await passes_until(w, lambda: w.clock() > 1200, step=60.0)
        assert w.bought(uid) == 0
        assert condition(w, "Degraded")["reason"] == "InsufficientCapacity"
        assert status(w)["capacity"]["spotShortReasons"] == ["SoldOut"]


async def test_the_cap_holds_while_stock_is_plentiful() -> None:
    async with world() as w:
        market = w.sim.simulator.market
        prices = sorted(p.spot_price for p in market.pools("ap-guangzhou"))
        cap = round(prices[0] * 3.5, 6)  # room for three of the cheapest, not four
        uid = await start_checked(w, expectedCount=10, maxHourlyCost=f"{cap:.6f}")
        await w.settle(NS, NAME)
        assert w.bought(uid) == 3
        degraded = condition(w, "Degraded")
        assert degraded["reason"] == "MaxHourlyCostReached"
        cost = sum(i.spot_price for i in w.owned(uid))
        assert degraded["message"] == (f"the pool costs {cost:.4f} USD/h with this pass's purchases, against "
                                       f"spec.maxHourlyCost {cap:.6f} USD/h: 7 instances short are not bought")
        assert condition(w, "Progressing")["reason"] == "MaxHourlyCostReached"
        # Lowering the cap below the cost stops buying but releases nothing; expectedCount does.
        w.kube.edit_spec(NS, NAME, {"maxHourlyCost": "0.000001"})
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 3
        w.kube.edit_spec(NS, NAME, {"expectedCount": 1})
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 1 and w.bought(uid) == 3


async def test_quota_steers_purchases_to_the_zone_with_quota_left() -> None:
    async with world() as w:
        w.sim.simulator.market.set_zone_quota(ZONES[0], 0)
        uid = await start_checked(w, expectedCount=6)
        await w.settle(NS, NAME)
        assert {i.zone for i in w.owned(uid)} == {ZONES[1]} and len(w.owned(uid)) == 6
        refused = [c for c in w.sim.simulator.ledger.entries("RunInstances") if c.error_code]
        assert refused == [], "the plan learnt the quota from DescribeAccountQuota, not from refusals"
        pools = {(p["zone"], p["instanceType"]): p for p in status(w)["pools"]}
        assert not pools[(ZONES[0], TYPES[0])]["available"]


async def test_an_on_demand_purchase_lost_in_a_crash_is_replayed_on_demand() -> None:
    async with world() as w:
        uid = await start_checked(w, expectedCount=2, onDemand={"baseCount": 2})
        failpoints.arm("after-run-instances", raise_=Crash())
        with pytest.raises(Crash):
            await w.reconcile(NS, NAME)
        await w.crash()
        await w.settle(NS, NAME)
        assert by_charge(w, uid) == {SPOTPAID: 0, POSTPAID_BY_HOUR: 2}
        assert w.bought(uid) == 2


@pytest.mark.parametrize("point", failpoints.POINTS)
async def test_a_crash_at_any_point_of_a_fallback_and_its_return_buys_each_instance_once(point: str) -> None:
    async with world() as w:
        w.sell_out_spot()
        uid = await start_checked(w, expectedCount=6, onDemand={
            "baseCount": 2, "fallback": {"after": "0s"}, "returnToSpot": {"maxInFlight": 2}})
        await passes_crashing_at(w, point, 1, passes=6)
        await w.settle(NS, NAME)
        assert by_charge(w, uid) == {SPOTPAID: 0, POSTPAID_BY_HOUR: 6} and w.bought(uid) == 6
        w.sell_out_spot(False)
        await passes_crashing_at(w, point, 1, passes=6)
        await passes_until(w, lambda: by_charge(w, uid) == {SPOTPAID: 4, POSTPAID_BY_HOUR: 2})
        await w.settle(NS, NAME)
        assert by_charge(w, uid) == {SPOTPAID: 4, POSTPAID_BY_HOUR: 2}
        assert w.bought(uid) == 10  # 2 base + 4 fallback + one spot replacement per fallback instance


async def test_a_replacement_that_runs_releases_its_fallback_instance_before_the_next_sweep() -> None:
    """The shared sweep runs every 15 s here; pending replacements are looked up by id each pass,
    so the fallback instances go in the first pass after their replacements run."""
    async with world(observe_interval=15.0) as w:
        w.sell_out_spot()
        uid = await start_checked(w, expectedCount=4, onDemand={
            "fallback": {"after": "0s"}, "returnToSpot": {"maxInFlight": 4}})
        await passes_until(w, lambda: by_charge(w, uid)[POSTPAID_BY_HOUR] == 4 and condition(
            w, "Ready")["status"] == "True", step=5.0)
        w.sell_out_spot(False)
        running_at: list[float] = []

        def note_running() -> None:
            spot_running = [i for i in w.owned(uid) if i.charge_type == SPOTPAID and i.state == RUNNING]
            if len(spot_running) == 4 and not running_at:
                running_at.append(w.clock())

        await passes_until(w, lambda: by_charge(w, uid)[POSTPAID_BY_HOUR] == 0, step=2.0, each=note_running)
        assert running_at and w.clock() - running_at[0] <= 2.0, (running_at, w.clock())


async def test_a_spend_cap_the_fallback_nearly_fills_lets_the_pool_return_to_spot() -> None:
    """Five fallback instances under a cap just above their on-demand cost: a spot replacement on
    top of them would pass it, so none was ever bought and the pool stayed on-demand (issue 18).
    Weighed against the cost once the return is done, the pool goes back to spot."""
    async with world() as w:
        w.sell_out_spot()
        uid = await start_checked(w, expectedCount=5, instanceTypes=["S5.MEDIUM4"], onDemand={
            "fallback": {"after": "0s"}, "returnToSpot": {"maxInFlight": 1}})
        await passes_until(w, lambda: by_charge(w, uid)[POSTPAID_BY_HOUR] == 5)
        on_demand = float(status(w)["hourlyCost"])
        w.kube.edit_spec(NS, NAME, {"maxHourlyCost": f"{on_demand + 0.005:.4f}"})
        w.sell_out_spot(False)
        await passes_until(w, lambda: by_charge(w, uid) == {SPOTPAID: 5, POSTPAID_BY_HOUR: 0})
        assert w.bought(uid) == 10


async def test_instances_of_a_type_removed_from_the_spec_are_priced_for_the_cap_and_the_status() -> None:
    """After switching type and raising the count, the instances of the removed type still bill,
    but the market was read only for the spec's pools: the cap priced them at spec.maxPrice (no
    bound for on-demand) and status.hourlyCost at nothing; a pool ran at 1.29 USD/h against a
    0.9 cap while its status said 0.43 (issue 18)."""
    async with world() as w:
        uid = await start_checked(w, expectedCount=3, instanceTypes=["S5.MEDIUM4"], maxPrice="0.05",
                                  onDemand={"baseCount": 3})
        await w.settle(NS, NAME)
        assert by_charge(w, uid) == {SPOTPAID: 0, POSTPAID_BY_HOUR: 3}
        before = Decimal(status(w)["hourlyCost"])
        w.kube.edit_spec(NS, NAME, {"instanceTypes": ["SA2.MEDIUM4"], "expectedCount": 4, "onDemand": None,
                                    "maxHourlyCost": str(before + Decimal("0.01"))})
        await w.settle(NS, NAME)
        # The three on-demand instances still run (nothing replaces them), and they are priced:
        assert Decimal(status(w)["hourlyCost"]) >= before
        # so the cap, which they nearly fill, leaves no room for a fourth at spot prices above 0.01.
        assert len(w.owned(uid)) == 3, "bought past maxHourlyCost: the removed type was priced at maxPrice"
        assert condition(w, "Degraded")["reason"] == "MaxHourlyCostReached"
