"""Beyond spot end to end: a real kube-apiserver, `spotpool operator` and `spotpool simulator` as
processes. One test per behaviour: the on-demand base, the fallback after its wait, the return to
spot under its budget (replacement first), the hourly spend cap, and quota-aware planning.

What the operator bought, when, and with which charge type is read from the simulator (its call
ledger and its instances' timelines), never from the operator's own account.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.conftest import Pools, condition, ready, status
from tests.support.kube import wait_for
from tests.support.processes import OperatorProcess, SimulatorProcess

pytestmark = pytest.mark.cluster

ZONES = ["ap-guangzhou-3", "ap-guangzhou-4"]  # Pools.create's candidates
TYPES = ["S5.MEDIUM4", "SA2.MEDIUM4"]
SPOT, ON_DEMAND = "SPOTPAID", "POSTPAID_BY_HOUR"


def sell_out_spot(sim: SimulatorProcess, sold_out: bool = True) -> None:
    """Every candidate pool sold out (or restocked) as spot; pay-as-you-go stays for sale."""
    sim.control("POST", "market", {"pools": [
        {"zone": zone, "instanceType": kind, "soldOut": sold_out} for zone in ZONES for kind in TYPES]})


def purchases(sim: SimulatorProcess) -> list[dict[str, Any]]:
    """RunInstances calls that bought (DryRun launch checks and refusals excluded), one per
    ClientToken (a replayed purchase buys nothing new)."""
    bought: dict[str, dict[str, Any]] = {}
    for call in sim.calls("RunInstances"):
        if call["errorCode"] is None and not call["params"].get("DryRun"):
            bought.setdefault(call["params"]["ClientToken"], call)
    return sorted(bought.values(), key=lambda c: c["time"])


def charge_type(call: dict[str, Any]) -> str:
    return str(call["params"].get("InstanceChargeType", SPOT))


def by_charge(instances: list[dict[str, Any]]) -> dict[str, int]:
    counts = {SPOT: 0, ON_DEMAND: 0}
    for instance in instances:
        counts[instance["chargeType"]] += 1
    return counts


def capacity(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(status(obj).get("capacity") or {})


def ever_bought(sim: SimulatorProcess, uid: str) -> list[dict[str, Any]]:
    """Every instance of the pool since the simulator started, gone ones included."""
    return sim.instances(ever="true", tag=f"spotpool.io/environment-uid={uid}")


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def metric(operator: OperatorProcess, name: str, namespace: str, environment: str) -> float | None:
    """One series of the pool from the operator's /metrics, None when absent."""
    for line in operator.metrics().splitlines():
        found = re.fullmatch(rf"{name}{{(.*)}} (\S+)", line)
        if found and f'namespace="{namespace}"' in found.group(1) and f'environment="{environment}"' in found.group(1):
            return float(found.group(2))
    return None


def test_the_base_is_bought_on_demand_and_the_rest_spot(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("based", expectedCount=3, onDemand={"baseCount": 1})
    obj = pools.wait_ready("based", 3)
    uid = pools.uid("based")
    assert by_charge(simulator.alive(uid)) == {SPOT: 2, ON_DEMAND: 1}
    assert capacity(obj) == {"spot": 2, "onDemandBase": 1, "onDemandFallback": 0}
    charges = {i["instanceId"]: i["chargeType"] for i in simulator.alive(uid)}
    roles = {i["id"]: i["capacity"] for i in status(obj)["instances"]}
    assert roles == {iid: "OnDemandBase" if charges[iid] == ON_DEMAND else "Spot" for iid in charges}
    bought = purchases(simulator)
    assert sum(c["params"]["InstanceCount"] for c in bought if charge_type(c) == ON_DEMAND) == 1
    assert sum(c["params"]["InstanceCount"] for c in bought if charge_type(c) == SPOT) == 2


AFTER = 12  # seconds of spot shortage before the fallback buys on-demand


def test_the_fallback_buys_on_demand_only_once_spot_has_been_short_for_after(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    sell_out_spot(simulator)
    pools.create("short", expectedCount=3, onDemand={"fallback": {"after": f"{AFTER}s"}})
    obj = pools.wait("short", lambda o: "spotShortSince" in capacity(o), what="status.capacity.spotShortSince")
    assert capacity(obj)["spotShortReasons"] == ["SoldOut"]
    since = epoch(capacity(obj)["spotShortSince"])

    obj = pools.wait_ready("short", 3, timeout=AFTER + 30)
    bought = purchases(simulator)
    assert bought, "Ready without a purchase"
    # Nothing before the wait was over, then on-demand for the whole deficit, without delay.
    assert all(c["time"] >= since + AFTER for c in bought), (since, [c["time"] for c in bought])
    assert bought[0]["time"] <= since + AFTER + 2 * operator.observe_interval + 3, (since, bought[0]["time"])
    assert {charge_type(c) for c in bought} == {ON_DEMAND}
    assert sum(c["params"]["InstanceCount"] for c in bought) == 3
    uid = pools.uid("short")
    assert by_charge(simulator.alive(uid)) == {SPOT: 0, ON_DEMAND: 3}
    # Nothing is missing any more: the shortage is over, and the instances are fallback ones.
    assert capacity(obj) == {"spot": 0, "onDemandBase": 0, "onDemandFallback": 3}
    assert {i["capacity"] for i in status(obj)["instances"]} == {"OnDemandFallback"}
    fallbacks = [e for e in pools.events("short") if e["reason"] == "FallbackToOnDemand"]
    assert fallbacks, [e["reason"] for e in pools.events("short")]
    assert metric(operator, "spotpool_fallback_instances_total", pools.namespace, "short") == 3


EXPECTED, IN_FLIGHT = 4, 2


def test_the_return_to_spot_keeps_the_pool_running_and_its_budget(
    operator_factory: Callable[..., OperatorProcess], pools: Pools, simulator: SimulatorProcess
) -> None:
    operator = operator_factory(extra_args=("--market-max-age=3",))  # the restock is seen within 3 s
    sell_out_spot(simulator)
    pools.create("back", expectedCount=EXPECTED,
                 onDemand={"fallback": {"after": "0s"}, "returnToSpot": {"maxInFlight": IN_FLIGHT}})
    pools.wait("back", lambda o: ready(o) and capacity(o).get("onDemandFallback") == EXPECTED,
               what=f"Ready on {EXPECTED} fallback on-demand instances")
    uid = pools.uid("back")
    assert by_charge(simulator.alive(uid)) == {SPOT: 0, ON_DEMAND: EXPECTED}

    sell_out_spot(simulator, False)  # restocked
    observations = 0

    def all_spot() -> bool:
        """One look at the cloud: never fewer running than expected, never more replacements
        being bought (spot not yet running) than the budget."""
        nonlocal observations
        observations += 1
        alive = simulator.alive(uid)
        running = [i for i in alive if i["state"] == "RUNNING"]
        assert len(running) >= EXPECTED, f"{len(running)} running: an on-demand instance went before its replacement"
        pending_spot = [i for i in alive if i["chargeType"] == SPOT and i["state"] != "RUNNING"]
        assert len(pending_spot) <= IN_FLIGHT, f"{len(pending_spot)} replacements in flight"
        return by_charge(alive) == {SPOT: EXPECTED, ON_DEMAND: 0} and len(running) == EXPECTED

    # The market read of the fallback's pass is reused for up to 30 s (offers_max_age), and a
    # pool holding fallback instances looks again every observe interval: well within 60 s.
    wait_for(all_spot, timeout=60, interval=0.1, what="every fallback instance replaced by spot")
    assert observations > 5, "too few observations to say anything about the return"
    obj = pools.wait_ready("back", EXPECTED)
    assert capacity(obj) == {"spot": EXPECTED, "onDemandBase": 0, "onDemandFallback": 0}

    # Replacements were bought at most IN_FLIGHT at a time, and no more than needed.
    spot_buys = [c for c in purchases(simulator) if charge_type(c) == SPOT]
    assert all(c["params"]["InstanceCount"] <= IN_FLIGHT for c in spot_buys)
    assert sum(c["params"]["InstanceCount"] for c in spot_buys) == EXPECTED

    # Each release of an on-demand instance came after a spot replacement ran: at every
    # TerminateInstances, expectedCount others were running and as many spot instances had come
    # up as on-demand ones had been released, this call's included.
    ever = {i["instanceId"]: i for i in ever_bought(simulator, uid)}
    on_demand = {iid for iid, i in ever.items() if i["chargeType"] == ON_DEMAND}
    terminations = [c for c in simulator.calls("TerminateInstances") if c["errorCode"] is None]
    released = 0
    for call in terminations:
        ids = set(call["params"]["InstanceIds"])
        assert ids <= on_demand, f"released {ids - on_demand}, not fallback on-demand instances"
        released += len(ids)
        at = call["time"]
        spot_up = [i for i in ever.values() if i["chargeType"] == SPOT and i["timeline"]["runningAt"] is not None
                   and i["timeline"]["runningAt"] <= at]
        assert len(spot_up) >= released, f"{released} released at {at} with {len(spot_up)} spot running"
        others = [i for iid, i in ever.items() if iid not in ids and i["timeline"]["runningAt"] is not None
                  and i["timeline"]["runningAt"] <= at
                  and (i["timeline"]["terminatedAt"] is None or i["timeline"]["terminatedAt"] > at)]
        assert len(others) >= EXPECTED, f"{len(others)} left running when {sorted(ids)} went"
    assert released == EXPECTED and on_demand == {iid for c in terminations for iid in c["params"]["InstanceIds"]}
    returned = [e for e in pools.events("back") if e["reason"] == "ReturnedToSpot"]
    assert returned, [e["reason"] for e in pools.events("back")]
    assert metric(operator, "spotpool_returns_to_spot_total", pools.namespace, "back") == EXPECTED


def test_the_hourly_cap_holds_while_stock_is_plentiful(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    prices = {(p["zone"], p["instanceType"]): Decimal(str(p["spotPrice"]))
              for p in simulator.control("GET", "market")["pools"] if p["zone"] in ZONES and p["instanceType"] in TYPES}
    cheapest = min(prices.values())  # LowestPrice buys there only, and stock is plentiful
    cap = (cheapest * Decimal("2.5")).quantize(Decimal("0.000001"))  # room for 2, not 3
    pools.create("capped", expectedCount=5, maxHourlyCost=str(cap))
    obj = pools.wait("capped", lambda o: condition(o, "Degraded").get("reason") == "MaxHourlyCostReached",
                     what="Degraded/MaxHourlyCostReached")
    degraded = condition(obj, "Degraded")
    assert f"spec.maxHourlyCost {cap} USD/h" in degraded["message"], degraded["message"]
    assert "3 instances short" in degraded["message"], degraded["message"]
    assert condition(obj, "Progressing").get("reason") == "MaxHourlyCostReached"
    # A few more passes see the same market: still nothing more bought.
    uid = pools.uid("capped")
    listings = len(simulator.calls("DescribeInstances"))
    wait_for(lambda: len(simulator.calls("DescribeInstances")) >= listings + 3, timeout=30,
             what="three more observations")
    bought = purchases(simulator)
    assert sum(c["params"]["InstanceCount"] for c in bought) == 2, bought
    assert len(ever_bought(simulator, uid)) == 2
    assert sum(Decimal(str(i["spotPrice"])) for i in simulator.alive(uid)) <= cap
    assert metric(operator, "spotpool_environment_max_hourly_cost_usd", pools.namespace, "capped") == float(cap)
    assert not ready(pools.get("capped"))


def test_a_zone_without_quota_gets_no_purchase_and_no_refusal(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    empty, other = ZONES
    simulator.control("POST", "market", {"zoneQuotas": {empty: 0}})
    pools.create("steered", expectedCount=4, allocationStrategy="Diversified")
    obj = pools.wait_ready("steered", 4)
    uid = pools.uid("steered")
    assert {i["zone"] for i in simulator.alive(uid)} == {other}
    # The plan knew the quota from DescribeAccountQuota: no purchase was sent there to be refused.
    # (The DryRun launch checks are not purchases: they check the spec in every zone, and one in
    # the empty zone answers LimitExceeded.UserSpotQuota, a market answer that passes the check.)
    sent = [c for c in simulator.calls("RunInstances") if not c["params"].get("DryRun")]
    assert sent and all(c["errorCode"] is None for c in sent), [c["errorCode"] for c in sent]
    assert all(c["params"]["Placement"]["Zone"] == other for c in sent)
    assert simulator.calls("DescribeAccountQuota"), "the operator never read the quota"
    pool_status = {(p["zone"], p["instanceType"]): p for p in status(obj)["pools"]}
    assert not any(pool_status[(empty, kind)]["available"] for kind in TYPES)
