"""The administrator's policy, in process: endpoints a pool may name, and spend guards.

An endpoint outside the allow-list is refused (InvalidConfig) before any request is sent: the
simulator's ledger stays empty and the Secret gets no finalizer. A pool over a spend guard buys
nothing (Degraded/SpendGuard, Progressing False) but still scales in and is deleted.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from spotpool.controller.cloudaccess import CloudAccess
from spotpool.controller.policy import EndpointPolicy, Policy, SpendGuards
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.support.inprocess import World, pool_spec, world


def _condition(w: World, name: str, kind: str, namespace: str = "team") -> dict[str, Any]:
    status = w.kube.objects[(namespace, name)]["status"]
    return next(c for c in status["conditions"] if c["type"] == kind)


def _guarded(**guards: Any) -> Policy:
    return Policy.development(SpendGuards(**guards))


# -- endpoints -----------------------------------------------------------------------------------------

async def test_loopback_endpoint_refused_by_default_before_any_request() -> None:
    async with world(policy=Policy()) as w:  # the reconciler's default: Tencent's endpoints only
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        obj = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=2))
        await w.settle("team", "pool")
        degraded = _condition(w, "pool", "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "InvalidConfig"
        assert "spec.endpoint" in degraded["message"] and "--allowed-endpoint" in degraded["message"]
        assert "--allow-loopback-endpoints" in degraded["message"]
        assert w.sim.simulator.ledger.entries() == [], "no request (not even GetCallerIdentity) was sent"
        assert w.kube.secrets[("team", "creds")]["finalizers"] == [], "the Secret was not touched"
        assert w.bought(obj["metadata"]["uid"]) == 0
        # Never bought: its deletion completes without contacting the endpoint.
        w.kube.delete("team", "pool")
        await w.settle("team", "pool")
        assert ("team", "pool") not in w.kube.objects
        assert w.sim.simulator.ledger.entries() == []


async def test_endpoint_not_in_allow_list_refused() -> None:
    policy = Policy(EndpointPolicy(allowed=("https://cvm.example.internal",)))
    async with world(policy=policy) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.create("team", "pool", pool_spec(w.sim, endpoint="https://metadata.internal:8443"))
        await w.settle("team", "pool")
        degraded = _condition(w, "pool", "Degraded")
        assert degraded["reason"] == "InvalidConfig"
        assert "'https://metadata.internal:8443'" in degraded["message"]
        assert "https://cvm.example.internal" in degraded["message"]
        assert w.sim.simulator.ledger.entries() == []


async def test_allowed_loopback_endpoint_buys() -> None:
    async with world(policy=Policy.development()) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        obj = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=2))
        await w.settle("team", "pool")
        assert len(w.owned(obj["metadata"]["uid"])) == 2


async def test_client_value_error_becomes_invalid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever CvmClient's own checks refuse is a condition, never an exception out of a pass."""
    async def refuse(*_: Any, **__: Any) -> Any:
        raise ValueError("endpoint must be http(s)://host[:port], got 'https://u:p@host'")

    monkeypatch.setattr(CloudAccess, "identity", refuse)
    async with world() as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.create("team", "pool", pool_spec(w.sim))
        outcome = await w.reconcile("team", "pool")
        assert outcome is not None and outcome.problem and "cannot make a CVM client" in outcome.problem
        assert _condition(w, "pool", "Degraded")["reason"] == "InvalidConfig"


async def test_userinfo_endpoint_is_invalid_config_not_a_crash() -> None:
    async with world() as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.create("team", "pool", pool_spec(w.sim, endpoint=w.sim.url.replace("http://", "http://u:p@")))
        await w.settle("team", "pool")
        assert _condition(w, "pool", "Degraded")["reason"] == "InvalidConfig"
        assert w.sim.simulator.ledger.entries() == []


# -- spend guards --------------------------------------------------------------------------------------

async def _refused(w: World, name: str, needle: str, namespace: str = "team") -> None:
    before = len(w.sim.simulator.ledger.entries("RunInstances"))
    await w.settle(namespace, name)
    degraded = _condition(w, name, "Degraded", namespace)
    assert degraded["status"] == "True" and degraded["reason"] == "SpendGuard", degraded
    assert needle in degraded["message"], degraded["message"]
    progressing = _condition(w, name, "Progressing", namespace)
    assert progressing["status"] == "False" and progressing["reason"] == "SpendGuard", progressing
    uid = w.kube.objects[(namespace, name)]["metadata"]["uid"]
    assert w.bought(uid) == 0
    assert len(w.sim.simulator.ledger.entries("RunInstances")) == before, "not even tried"


async def test_max_expected_count_guard_then_lowered_buys() -> None:
    async with world(policy=_guarded(max_expected_count=3)) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        obj = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=5))
        await _refused(w, "pool", "spec.expectedCount 5 is over the limit of 3 per pool (--max-expected-count)")
        w.kube.edit_spec("team", "pool", {"expectedCount": 3})
        await w.settle("team", "pool")
        assert len(w.owned(obj["metadata"]["uid"])) == 3
        assert _condition(w, "pool", "Degraded")["status"] == "False"


async def test_max_price_guard() -> None:
    async with world(policy=_guarded(max_price=Decimal("0.5"))) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.create("team", "pool", pool_spec(w.sim, maxPrice="1.0"))
        await _refused(w, "pool", "spec.maxPrice 1.0 is over the limit of 0.5 USD/h (--max-price)")


async def test_instance_type_guard() -> None:
    async with world(policy=_guarded(instance_types=("S5.*",))) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.create("team", "pool", pool_spec(w.sim))  # S5.MEDIUM4 and SA2.MEDIUM4
        await _refused(w, "pool", "spec.instanceTypes SA2.MEDIUM4 match none of the allowed patterns S5.*")
        w.kube.edit_spec("team", "pool", {"instanceTypes": ["S5.MEDIUM4"]})
        await w.settle("team", "pool")
        assert len(w.owned(w.kube.objects[("team", "pool")]["metadata"]["uid"])) == 5


async def test_namespace_total_guard_counts_other_pools_only_in_the_namespace() -> None:
    async with world(policy=_guarded(max_namespace_instances=6)) as w:
        for namespace in ("team", "other"):
            w.kube.put_secret(namespace, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        first = w.kube.create("team", "first", pool_spec(w.sim, expectedCount=4))
        await w.settle("team", "first")
        assert len(w.owned(first["metadata"]["uid"])) == 4
        w.kube.create("other", "elsewhere", pool_spec(w.sim, expectedCount=4))  # another namespace: fine
        await w.settle("other", "elsewhere")
        w.kube.create("team", "second", pool_spec(w.sim, expectedCount=3))
        await _refused(w, "second", "namespace team would expect 7 instances (this pool 3, 1 others 4: older pools as "
                                    "they expect, younger ones as they hold), over the limit of 6 "
                                    "(--max-namespace-instances)")
        w.kube.edit_spec("team", "second", {"expectedCount": 2})
        await w.settle("team", "second")
        assert len(w.owned(w.kube.objects[("team", "second")]["metadata"]["uid"])) == 2


async def test_installation_total_guard() -> None:
    async with world(policy=_guarded(max_total_instances=5)) as w:
        for namespace in ("team", "other"):
            w.kube.put_secret(namespace, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.create("team", "first", pool_spec(w.sim, expectedCount=4))
        await w.settle("team", "first")
        w.kube.create("other", "second", pool_spec(w.sim, expectedCount=2))
        await _refused(w, "second", "the installation would expect 6 instances (this pool 2, 1 others 4: older pools "
                                    "as they expect, younger ones as they hold), over the limit of 5 "
                                    "(--max-total-instances)", namespace="other")


async def test_a_refused_young_pool_freezes_no_older_one() -> None:
    """Team B created two pools of 20 under a limit of 30, the second refused; team A, older, then
    lost 3 instances to reclaims and could not replace them (7 of 10) for as long as B's refused
    pool existed: its claim of 20 counted while it bought nothing (issue 18)."""
    async with world(policy=_guarded(max_total_instances=30)) as w:
        for namespace in ("team-a", "team-b"):
            w.kube.put_secret(namespace, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        a = w.kube.create("team-a", "pool", pool_spec(w.sim, expectedCount=10))["metadata"]["uid"]
        await w.settle("team-a", "pool")
        w.kube.create("team-b", "one", pool_spec(w.sim, expectedCount=20))
        await w.settle("team-b", "one")
        w.kube.create("team-b", "two", pool_spec(w.sim, expectedCount=20))
        await _refused(w, "two", "the installation would expect 50 instances", namespace="team-b")
        w.sim.simulator.market.reclaim([i.instance_id for i in w.owned(a)][:3])
        await w.settle("team-a", "pool")
        assert len(w.owned(a)) == 10
        await w.settle("team-b", "two")
        assert _condition(w, "two", "Degraded", "team-b")["reason"] == "SpendGuard"
        alive = sum(len(w.owned(o["metadata"]["uid"])) for o in w.kube.objects.values())
        assert alive == 30


async def test_pools_created_together_never_both_buy_past_a_total() -> None:
    """Two pools that do not fit together, created at once, their passes interleaved: only the
    older one buys, whatever each saw of the other's refusal."""
    async with world(policy=_guarded(max_total_instances=30)) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        p = w.kube.create("team", "p", pool_spec(w.sim, expectedCount=20))["metadata"]["uid"]
        q = w.kube.create("team", "q", pool_spec(w.sim, expectedCount=20))["metadata"]["uid"]
        for _ in range(12):
            for name in ("q", "p"):
                await w.reconcile("team", name)
                assert len(w.owned(p)) + len(w.owned(q)) <= 30
            w.clock.advance(5)
        assert len(w.owned(p)) == 20 and w.bought(q) == 0


async def test_the_price_guard_bounds_on_demand_purchases_too() -> None:
    """`--max-price 0.05`: a pool bidding within it with `onDemand.baseCount: 5` bought 5
    on-demand at 0.0859 USD/h each, Degraded False (issue 18). On-demand is bought at the list
    price, which the guard now bounds as it bounds the bid."""
    async with world(policy=_guarded(max_price=Decimal("0.05"))) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        uid = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=5, maxPrice="0.05",
                                                      onDemand={"baseCount": 5}))["metadata"]["uid"]
        await w.settle("team", "pool")
        assert w.bought_on_demand(uid) == 0
        degraded = _condition(w, "pool", "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "SpendGuard"
        assert "(--max-price)" in degraded["message"] and "on-demand" in degraded["message"]


async def test_guard_blocks_purchases_only_scale_in_and_deletion_still_work() -> None:
    async with world() as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        obj = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=5))
        uid = obj["metadata"]["uid"]
        await w.settle("team", "pool")
        assert len(w.owned(uid)) == 5
        # The administrator sets a guard below what the pool already has (a restart with new flags).
        w.policy = _guarded(max_expected_count=2)
        await w.crash()
        w.kube.edit_spec("team", "pool", {"expectedCount": 4})  # still over: scale-in still happens
        await w.settle("team", "pool")
        assert len(w.owned(uid)) == 4
        assert _condition(w, "pool", "Degraded")["reason"] == "SpendGuard"
        # Instances lost are not replaced while over the guard.
        victim = w.owned(uid)[0].instance_id
        w.sim.simulator.market.reclaim([victim])
        await w.settle("team", "pool")
        assert len(w.owned(uid)) == 3 and w.bought(uid) == 5
        w.kube.delete("team", "pool")
        await w.settle("team", "pool")
        assert ("team", "pool") not in w.kube.objects and w.owned(uid) == []


@pytest.mark.parametrize("guard", [{"max_total_instances": 12}, {"max_namespace_instances": 12},
                                   {"max_expected_count": 12}])
async def test_the_guards_bound_what_a_return_to_spot_holds_at_once(guard: dict[str, int]) -> None:
    """During a return to spot with `maxInFlight: 100%` a pool held up to twice its expectedCount
    (20 for 10), while the guards compared expectedCount only (issue 18). The replacements in flight
    now stay within what the guards leave: never more than 12 alive at once, and the return still
    completes, two at a time."""
    async with world(policy=_guarded(**guard)) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.sell_out_spot()
        uid = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=10, onDemand={
            "fallback": {"after": "0s"}, "returnToSpot": {"maxInFlight": "100%"}}))["metadata"]["uid"]
        await w.settle("team", "pool")
        assert w.bought_on_demand(uid) == 10
        w.sell_out_spot(False)
        w.clock.advance(60)  # past the market read's reuse
        most = 0
        for _ in range(80):
            await w.reconcile("team", "pool")
            most = max(most, len(w.owned(uid)))
            w.clock.advance(5)
        assert most <= 12, f"held {most} at once under a guard of 12"
        assert w.status("team", "pool")["capacity"]["onDemandFallback"] == 0
        assert w.bought(uid) - w.bought_on_demand(uid) == 10 and len(w.owned(uid)) == 10


async def test_a_return_with_no_room_under_the_guards_waits_and_says_so() -> None:
    """A guard that leaves no room beyond the count: no spot replacement is bought (it would boot
    while the fallback instance it replaces still runs), and Degraded names the guard."""
    async with world(policy=_guarded(max_total_instances=10)) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.sell_out_spot()
        uid = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=10, onDemand={
            "fallback": {"after": "0s"}}))["metadata"]["uid"]
        await w.settle("team", "pool")
        w.sell_out_spot(False)
        w.clock.advance(60)  # past the market read's reuse
        for _ in range(6):
            await w.reconcile("team", "pool")
            w.clock.advance(5)
        assert w.bought(uid) == w.bought_on_demand(uid) == 10 and len(w.owned(uid)) == 10
        degraded = _condition(w, "pool", "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "SpendGuard"
        assert "return to spot" in degraded["message"] and "hold 10 instances at once" in degraded["message"]
        assert _condition(w, "pool", "Ready")["status"] == "True"


async def test_a_namespace_not_allowed_on_demand_buys_only_spot() -> None:
    """`--on-demand-namespace platform-*`: the team namespace may not buy pay-as-you-go at all
    (issue 18). Its base is not bought, and Degraded names the guard; a platform namespace
    still buys its base on-demand."""
    async with world(policy=_guarded(on_demand_namespaces=("platform-*",))) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.put_secret("platform-infra", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        team = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=3, onDemand={"baseCount": 2}))
        platform = w.kube.create("platform-infra", "pool", pool_spec(w.sim, expectedCount=3,
                                                                     onDemand={"baseCount": 2}))
        await w.settle("team", "pool")
        await w.settle("platform-infra", "pool")
        assert w.bought_on_demand(team["metadata"]["uid"]) == 0
        degraded = _condition(w, "pool", "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "SpendGuard"
        assert "--on-demand-namespace" in degraded["message"] and "platform-*" in degraded["message"]
        assert w.bought_on_demand(platform["metadata"]["uid"]) == 2
        assert _condition(w, "pool", "Degraded", namespace="platform-infra")["status"] == "False"
