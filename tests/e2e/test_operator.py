"""The operator end to end: a real kube-apiserver, `spotpool operator` and `spotpool simulator` as
processes, driven the way users drive them (kubectl apply, kubectl scale, kubectl delete)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC
from decimal import Decimal

import pytest

from spotpool.cloud.client import CvmClient
from spotpool.cloud.models import Credentials, RunInstancesRequest
from tests.e2e.conftest import Pools, condition, ready, status
from tests.support.kube import wait_for
from tests.support.processes import DEMO_SECRET_ID, DEMO_SECRET_KEY, OperatorProcess, SimulatorProcess

pytestmark = pytest.mark.cluster

ZONES = ["ap-guangzhou-3", "ap-guangzhou-4"]
TYPES = ["S5.MEDIUM4", "SA2.MEDIUM4"]


def market(sim: SimulatorProcess) -> dict[tuple[str, str], dict]:
    return {(p["zone"], p["instanceType"]): p for p in sim.control("GET", "market")["pools"]}


def cvm(sim: SimulatorProcess) -> CvmClient:
    return CvmClient(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY), "ap-guangzhou", sim.url)


def by_pool(instances: list[dict]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for i in instances:
        counts[(i["zone"], i["instanceType"])] = counts.get((i["zone"], i["instanceType"]), 0) + 1
    return counts


def test_lowest_price_fills_cheapest_pool_first_and_skips_a_pool_that_sells_out(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    prices = {k: Decimal(str(v["spotPrice"])) for k, v in market(simulator).items()
              if k[0] in ZONES and k[1] in TYPES}
    ranked = sorted(prices, key=lambda k: prices[k])
    cheapest, second = ranked[0], ranked[1]

    pools.create("farm", expectedCount=4, zones=ZONES, instanceTypes=TYPES, allocationStrategy="LowestPrice")
    pools.wait_ready("farm", 4)
    uid = pools.uid("farm")
    assert by_pool(simulator.alive(uid)) == {cheapest: 4}

    # The cheapest pool sells out; the operator's cached price still says it sells, so it tries,
    # is refused, backs that pool off and buys the rest in the next cheapest pool.
    simulator.control("POST", "market", {"pools": [
        {"zone": cheapest[0], "instanceType": cheapest[1], "stock": 0}]})
    pools.scale("farm", 10)
    obj = pools.wait_ready("farm", 10)
    assert by_pool(simulator.alive(uid)) == {cheapest: 4, second: 6}
    pool_status = {(p["zone"], p["instanceType"]): p for p in status(obj)["pools"]}
    assert pool_status[cheapest]["running"] == 4 and pool_status[second]["running"] == 6
    refusals = [e for e in pools.events("farm") if e["reason"] == "LaunchRefused"]
    assert refusals, "no LaunchRefused event"
    assert any(code in refusals[0]["message"] for code in ("ResourcesSoldOut.", "ResourceInsufficient."))
    assert f"in {cheapest[0]}" in refusals[0]["message"] and cheapest[1] in refusals[0]["message"]
    assert len(simulator.alive(uid)) == 10


def test_max_price_below_market_buys_nothing_until_raised(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("cheap", expectedCount=3, maxPrice="0.001")
    obj = pools.wait(
        "cheap", lambda o: condition(o, "Degraded").get("reason") == "PriceAboveMax",
        what="Degraded/PriceAboveMax")
    message = condition(obj, "Degraded")["message"]
    lowest = min(Decimal(str(p["spotPrice"])) for k, p in market(simulator).items()
                 if k[0] in ZONES and k[1] in TYPES)
    assert "0.001" in message and str(lowest).rstrip("0") in message, message
    # Only the launch check's DryRun calls (a bid below market is a market answer, not a bad spec).
    assert [c for c in simulator.calls("RunInstances") if not c["params"].get("DryRun")] == []
    assert simulator.alive(pools.uid("cheap")) == []

    pools.patch_spec("cheap", maxPrice="0.0923")
    obj = pools.wait_ready("cheap", 3)
    assert condition(obj, "Degraded")["status"] == "False"


def test_reclaimed_and_outside_released_instances_are_replaced(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("heal", expectedCount=10, allocationStrategy="Diversified")
    pools.wait_ready("heal", 10)
    uid = pools.uid("heal")
    alive = [i["instanceId"] for i in simulator.alive(uid)]
    reclaimed, released = alive[:3], alive[3:5]
    simulator.control("POST", "reclaim", {"instanceIds": reclaimed})

    async def terminate() -> None:
        async with cvm(simulator) as client:
            await client.terminate_instances(released)

    asyncio.run(terminate())
    # Back to the expected count within two observation intervals (the operator observes every 2 s).
    wait_for(lambda: len(simulator.alive(uid)) == 10 and not set(reclaimed + released) & {
        i["instanceId"] for i in simulator.alive(uid)}, timeout=2 * operator.observe_interval + 2,
        interval=0.1, what="10 alive again, none of the lost ones")
    pools.wait_ready("heal", 10)
    lost = " ".join(e["message"] for e in pools.events("heal") if e["reason"] == "InstanceLost")
    for instance_id in reclaimed + released:
        assert instance_id in lost
    assert "spotpool_instance_interruptions_total" in operator.metrics()


def test_scale_in_releases_newest_first_then_everything(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("scale", expectedCount=4, scaleInPolicy="NewestFirst")
    pools.wait_ready("scale", 4)
    uid = pools.uid("scale")
    first = {i["instanceId"] for i in simulator.alive(uid)}
    # CreatedTime has one-second resolution: let the clock tick so the next six are strictly newer.
    wait_for(lambda: all(i["launchTime"] < _now_iso() for i in simulator.alive(uid)), timeout=5,
             what="a new second")
    pools.scale("scale", 10)
    pools.wait_ready("scale", 10)
    newer = {i["instanceId"] for i in simulator.alive(uid)} - first
    assert len(newer) == 6

    pools.scale("scale", 4)
    pools.wait_ready("scale", 4)
    assert {i["instanceId"] for i in simulator.alive(uid)} == first
    released = " ".join(e["message"] for e in pools.events("scale") if e["reason"] == "Released")
    assert all(instance_id in released for instance_id in newer)

    pools.scale("scale", 0)
    obj = pools.wait("scale", lambda o: status(o).get("currentCount") == 0 and ready(o), what="0 alive")
    assert simulator.alive(uid) == []
    assert status(obj)["selector"] == "spotpool.io/environment=scale"


def test_delete_releases_every_owned_instance_and_nothing_else(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("doomed", expectedCount=5)
    pools.create("neighbour", expectedCount=2)
    pools.wait_ready("doomed", 5)
    pools.wait_ready("neighbour", 2)
    doomed, neighbour = pools.uid("doomed"), pools.uid("neighbour")

    async def untagged() -> list[str]:
        async with cvm(simulator) as client:
            return await client.run_instances(RunInstancesRequest(zone="ap-guangzhou-3", instance_type="S5.MEDIUM4",
                                              image_id="img-pmqg1cw7", count=2, max_price="0.0923",
                                              client_token="hand-made", tags={}))

    hand_made = asyncio.run(untagged())
    pools.delete("doomed")
    # The finalizer went only after the cloud had every instance: none is alive now.
    assert simulator.alive(doomed) == []
    owned = [i for i in simulator.instances() if i["tags"].get("spotpool.io/environment-uid") == doomed]
    assert all(i["state"] in ("TERMINATING", "SHUTDOWN") for i in owned)
    assert len(simulator.alive(neighbour)) == 2
    states = {i["instanceId"]: i["state"] for i in simulator.instances()}
    assert all(states[i] in ("PENDING", "RUNNING") for i in hand_made)
    terminated = {i for call in simulator.calls("TerminateInstances") for i in call["params"]["InstanceIds"]}
    assert not terminated & set(hand_made)
    assert not terminated & {i["instanceId"] for i in simulator.alive(neighbour)}


def test_wrong_credentials_degrade_one_pool_and_leak_nowhere(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    wrong_key = "wrongSecretKeyZZZ9876543210abcdefgh"
    pools.secret("wrong", secret_key=wrong_key)
    pools.create("locked", expectedCount=2, secret="wrong")
    pools.create("fine", expectedCount=2)
    obj = pools.wait("locked", lambda o: condition(o, "Degraded").get("reason") == "AuthFailure",
                     what="Degraded/AuthFailure")
    assert "AuthFailure.SignatureFailure" in condition(obj, "Degraded")["message"]
    pools.wait_ready("fine", 2)
    assert simulator.alive(pools.uid("locked")) == []

    events = pools.kubectl.run("get", "events", f"--namespace={pools.namespace}", "-o", "yaml").stdout
    objects = pools.kubectl.run("get", "sce", f"--namespace={pools.namespace}", "-o", "yaml").stdout
    for secret in (wrong_key, DEMO_SECRET_KEY):
        assert secret not in operator.logs()
        assert secret not in events
        assert secret not in objects


def test_missing_secret_is_invalid_config_and_recovers_when_it_appears(
    operator: OperatorProcess, pools: Pools
) -> None:
    pools.create("orphan", expectedCount=1, secret="later")
    obj = pools.wait("orphan", lambda o: condition(o, "Degraded").get("reason") == "InvalidConfig",
                     what="Degraded/InvalidConfig")
    assert "later" in condition(obj, "Degraded")["message"]
    pools.secret("later")
    obj = pools.wait_ready("orphan", 1)
    assert condition(obj, "Degraded")["status"] == "False"


def test_paused_pool_buys_and_releases_nothing_but_reports(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("still", expectedCount=2)
    pools.wait_ready("still", 2)
    pools.patch_spec("still", paused=True, expectedCount=5)
    calls_before = len(simulator.calls("RunInstances"))
    obj = pools.wait("still", lambda o: status(o).get("observedGeneration") == o["metadata"]["generation"],
                     what="the paused spec observed")
    simulator.control("POST", "reclaim", {"instanceIds": [simulator.alive(pools.uid("still"))[0]["instanceId"]]})
    obj = pools.wait("still", lambda o: status(o).get("currentCount") == 1, what="the loss reported")
    assert len(simulator.calls("RunInstances")) == calls_before
    assert condition(obj, "Ready")["status"] == "False"
    pools.patch_spec("still", paused=False)
    pools.wait_ready("still", 5)


def test_converges_exactly_under_faults_and_throttling(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    simulator.control("POST", "faults", {"*": {
        "errorRate": 0.2,
        "errorCodes": ["InternalError", "RequestLimitExceeded", "ServiceUnavailable"],
        "dropRate": 0.05,
        "dropPhase": "after",
    }})
    pools.create("rough", expectedCount=12, allocationStrategy="Diversified")
    pools.wait_ready("rough", 12, timeout=120)
    uid = pools.uid("rough")

    # Keep it busy under the same faults: losses to replace, and enough calls that faults certainly
    # hit every kind of request. The count must be exact at every look, never above 12.
    def exact_and_busy() -> bool:
        alive = len(simulator.alive(uid))
        assert alive <= 12, f"{alive} alive: bought past the expected count"
        return len(simulator.calls()) >= 40 and alive == 12

    for _ in range(3):
        victim = simulator.alive(uid)[0]["instanceId"]
        simulator.control("POST", "reclaim", {"instanceIds": [victim]})
        wait_for(lambda victim=victim: victim not in {i["instanceId"] for i in simulator.alive(uid)}, timeout=10,
                 what="the reclaim")
        pools.wait_ready("rough", 12, timeout=120)
    wait_for(exact_and_busy, timeout=180, what="40 calls answered with 12 alive")
    calls = simulator.calls()
    failed = {c["action"] for c in calls if c.get("errorCode")}
    # The observation path takes most of the calls, so faults certainly hit it; every purchase and
    # replacement above went through the same faulty server.
    assert "DescribeInstances" in failed, f"faults hit only {failed}"
    pools.wait_ready("rough", 12)


def _now_iso() -> str:
    from datetime import datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_kubectl_get_shows_the_pool(operator: OperatorProcess, pools: Pools) -> None:
    pools.create("glance", expectedCount=2)
    pools.wait_ready("glance", 2)
    out = pools.kubectl.run("get", "sce", "glance", f"--namespace={pools.namespace}").stdout.splitlines()
    assert out[1].split()[:8] == ["glance", "2", "2", "2", "2", "0.0923", json.loads(json.dumps(
        status(pools.get("glance"))["hourlyCost"])), "True"]  # UP-TO-DATE is the fourth count


def test_deleting_the_namespace_releases_the_pool_even_though_its_secret_goes_too(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("tenant", expectedCount=3)
    pools.wait_ready("tenant", 3)
    uid = pools.uid("tenant")
    # The worst order the namespace controller can pick: the Secret goes first. It carries
    # spotpool's finalizer, so it stays (Terminating, still readable) while the pool needs it.
    pools.kubectl.run("delete", "secret", "cvm", f"--namespace={pools.namespace}", "--wait=false")
    secret = pools.kubectl.get("secret", "cvm", pools.namespace)
    assert secret is not None and secret["metadata"].get("deletionTimestamp"), secret
    assert secret["metadata"]["finalizers"] == ["spotpool.io/credentials-in-use"]
    pools.kubectl.run("delete", "namespace", pools.namespace, "--wait=false")
    # The namespace controller deletes the pool too; the operator releases with the Secret it kept,
    # lets the pool go, and only then the Secret (and so the namespace).
    wait_for(lambda: pools.kubectl.get("sce", "tenant", pools.namespace) is None, timeout=90,
             what="the pool to be deleted with its namespace")
    wait_for(lambda: pools.kubectl.get("secret", "cvm", pools.namespace) is None, timeout=30,
             what="the Secret to go once no pool needs it")
    assert simulator.alive(uid) == []
