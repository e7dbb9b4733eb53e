"""Each money rule of the executor, proven in-process against the simulator and the Kubernetes fake.

Every scenario here was reproduced against the executor before it was rebuilt (issue 8): each test
fails on that code and passes now. "Bought" counts instances the simulator ever created for the
environment, gone ones included: the money spent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from spotpool.api.names import SECRET_FINALIZER
from spotpool.controller import failpoints
from spotpool.controller.reconciler import Outcome
from spotpool.controller.reporting import PoolMemory
from spotpool.simulator.faults import FaultSpec
from tests.support.inprocess import (
    NAME,
    NS,
    OTHER_ACCOUNT,
    ROTATED_KEY,
    Crash,
    World,
    condition,
    passes_crashing_at,
    pool_spec,
    start,
    status,
    world,
)


def run_instances_calls(w: World, secret_id: str | None = None) -> list[Any]:
    """RunInstances calls that may buy (a DryRun launch check never does)."""
    return [c for c in w.sim.simulator.ledger.entries("RunInstances")
            if (secret_id is None or c.secret_id == secret_id) and not c.params.get("DryRun")]


async def launch_spec_checked(w: World) -> None:
    await w.mark_launch_checked(NS, NAME)


async def crash_before_the_call(w: World) -> None:
    """One pass that records its launch and dies before RunInstances leaves the process."""
    failpoints.arm("before-run-instances", raise_=Crash())
    with pytest.raises(Crash):
        await w.reconcile(NS, NAME)
    await w.crash()
    assert status(w)["inflightLaunches"], "the intent must have been recorded before the crash"


# -- where the instances live cannot silently change ----------------------------------------------------

async def test_changing_region_strands_nothing_and_buys_nothing() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=3)
        await w.settle(NS, NAME)
        calls = len(run_instances_calls(w))
        # The CRD refuses this change (test_crd); an object that bypassed it must not move either.
        w.kube.edit_spec(NS, NAME, {"region": "ap-shanghai", "zones": ["ap-shanghai-2"]})
        await w.settle(NS, NAME)
        assert len(run_instances_calls(w)) == calls, "bought a second pool in the new region"
        assert condition(w, "Degraded")["reason"] == "InvalidConfig"
        assert "spec.region" in condition(w, "Degraded")["message"]
        w.kube.delete(NS, NAME)
        await w.settle(NS, NAME)
        assert (NS, NAME) in w.kube.objects, "deletion reported complete while instances run elsewhere"
        assert len(w.owned(uid)) == 3
        w.kube.edit_spec(NS, NAME, {"region": "ap-guangzhou", "zones": ["ap-guangzhou-3", "ap-guangzhou-4"]})
        await w.settle(NS, NAME, step=20)
        assert w.owned(uid) == [] and (NS, NAME) not in w.kube.objects


async def test_credentials_of_another_account_are_refused_while_instances_remain() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=2)
        await w.settle(NS, NAME)
        w.kube.put_secret(NS, "creds", *OTHER_ACCOUNT[:2])
        w.kube.edit_spec(NS, NAME, {"expectedCount": 4})
        await w.settle(NS, NAME)
        assert run_instances_calls(w, OTHER_ACCOUNT[0]) == []
        degraded = condition(w, "Degraded")
        assert degraded["reason"] == "AccountChanged", degraded
        assert OTHER_ACCOUNT[2] in degraded["message"] and "100000000001" in degraded["message"]
        assert len(w.owned(uid)) == 2


async def test_key_rotation_within_the_account_keeps_working() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=2)
        await w.settle(NS, NAME)
        w.kube.put_secret(NS, "creds", *ROTATED_KEY[:2])
        w.kube.edit_spec(NS, NAME, {"expectedCount": 4})
        await w.settle(NS, NAME)
        assert len(run_instances_calls(w, ROTATED_KEY[0])) >= 1
        assert len(w.owned(uid)) == 4
        assert condition(w, "Degraded")["status"] == "False"
        assert status(w)["account"]["id"] == ROTATED_KEY[2]


# -- replays ------------------------------------------------------------------------------------------

async def test_no_replay_while_deleting() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=250)
        await crash_before_the_call(w)
        w.kube.delete(NS, NAME)
        await w.settle(NS, NAME, passes=30, step=60)  # held until the grace passes
        assert (NS, NAME) not in w.kube.objects
        assert w.bought(uid) == 0 and run_instances_calls(w) == []


async def test_no_replay_after_expected_count_drops_to_zero() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=5)
        await crash_before_the_call(w)
        w.kube.edit_spec(NS, NAME, {"expectedCount": 0})
        await w.settle(NS, NAME, passes=30, step=60)
        assert w.bought(uid) == 0
        assert status(w)["inflightLaunches"] == []
        assert any(e.reason == "LaunchRecordDropped" for e in w.events)


async def test_no_replay_into_a_pool_removed_from_the_spec() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=5, zones=["ap-guangzhou-3"], instanceTypes=["S5.MEDIUM4"])
        await crash_before_the_call(w)
        w.kube.edit_spec(NS, NAME, {"instanceTypes": ["SA2.MEDIUM4"]})
        await w.settle(NS, NAME, passes=40, step=60)
        types = {i.instance_type for i in w.owned(uid)}
        assert types == {"SA2.MEDIUM4"} and len(w.owned(uid)) == 5
        assert w.bought(uid) == 5


async def test_replay_buys_what_the_lost_call_never_bought_once() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=5)
        await crash_before_the_call(w)
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 5 and w.bought(uid) == 5


async def test_replay_of_a_call_whose_answer_was_lost_returns_the_same_instances() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=5)
        await launch_spec_checked(w)
        w.sim.simulator.faults.set("RunInstances", FaultSpec(drop_rate=1.0, drop_phase="after", times=3))
        await w.reconcile(NS, NAME)  # bought, but every answer lost: outcome unknown
        assert w.bought(uid) == 5 and status(w)["inflightLaunches"][0]["instanceIds"] == []
        await w.crash()
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 5 and w.bought(uid) == 5


@pytest.mark.parametrize("record", [
    {"clientToken": "not-a-token", "zone": "ap-guangzhou-3", "instanceType": "S5.MEDIUM4", "count": 5},
    {"clientToken": "6f1c2b0e-5d0a-4c55-9a47-2f6e8a3b9d10", "zone": "ap-guangzhou-3",
     "instanceType": "S5.MEDIUM4", "count": 100000},
    {"clientToken": "6f1c2b0e-5d0a-4c55-9a47-2f6e8a3b9d10", "zone": "ap-guangzhou-3",
     "instanceType": "S5.MEDIUM4", "count": 2, "instanceIds": ["ins-aaaaaaaa", "ins-bbbbbbbb", "ins-cccccccc"]},
    {"clientToken": "6f1c2b0e-5d0a-4c55-9a47-2f6e8a3b9d10", "zone": "x", "instanceType": "S5.MEDIUM4", "count": 1},
])
async def test_malformed_records_are_dropped_with_a_warning_never_replayed(record: dict[str, Any]) -> None:
    async with world() as w:
        uid = await start(w, expectedCount=0)
        await w.kube.patch_status(NS, NAME, {"inflightLaunches": [{"requestedAt": "2026-01-01T00:00:00Z", **record}]})
        await w.settle(NS, NAME)
        assert run_instances_calls(w) == [] and w.bought(uid) == 0
        assert status(w)["inflightLaunches"] == []
        assert [e for e in w.events if e.reason == "LaunchRecordDropped" and e.type == "Warning"]


async def test_a_forged_instance_id_never_counts_nor_gets_released() -> None:
    async with world() as w:
        victim = await start(w, expectedCount=2)
        await w.settle(NS, NAME)
        stolen = [i.instance_id for i in w.owned(victim)]
        w.kube.create(NS, "thief", pool_spec(w.sim, expectedCount=0))
        await w.kube.patch_status(NS, "thief", {"inflightLaunches": [{
            "clientToken": "6f1c2b0e-5d0a-4c55-9a47-2f6e8a3b9d10", "zone": "ap-guangzhou-3",
            "instanceType": "S5.MEDIUM4", "count": 2, "requestedAt": "2026-01-01T00:00:00Z",
            "instanceIds": stolen}]})
        await w.settle(NS, "thief")
        w.kube.delete(NS, "thief")
        await w.settle(NS, "thief", passes=5)
        assert sorted(i.instance_id for i in w.owned(victim)) == sorted(stolen)


# -- unseen purchases ------------------------------------------------------------------------------------

async def test_purchases_missing_from_the_tag_listing_are_looked_up_not_bought_again() -> None:
    async with world(tag_index_delay_seconds=10**9) as w:
        uid = await start(w, expectedCount=5)
        for _ in range(72):  # 72 simulated minutes
            await w.reconcile(NS, NAME)
            w.clock.advance(60)
        assert len(w.owned(uid)) == 5 and w.bought(uid) == 5
        assert status(w)["currentCount"] == 5
        assert condition(w, "Degraded")["reason"] == "InstancesUnlisted"
        w.kube.edit_spec(NS, NAME, {"expectedCount": 2})  # released by id like any other
        await w.settle(NS, NAME, step=20)
        assert len(w.owned(uid)) == 2 and w.bought(uid) == 5


# -- deletion ----------------------------------------------------------------------------------------------

async def test_namespace_deletion_releases_everything_across_a_restart() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=4)
        await w.settle(NS, NAME)
        assert w.kube.secrets[(NS, "creds")]["finalizers"] == [SECRET_FINALIZER]
        w.kube.delete_namespace(NS)
        await w.crash()  # the operator restarts while the namespace is going
        assert (NS, "creds") in w.kube.secrets, "the Secret went before the instances"
        await w.settle(NS, NAME, step=20)
        assert w.owned(uid) == []
        assert (NS, NAME) not in w.kube.objects and (NS, "creds") not in w.kube.secrets


async def test_secret_stays_protected_while_another_pool_names_it() -> None:
    async with world() as w:
        await start(w, expectedCount=1)
        w.kube.create(NS, "second", pool_spec(w.sim, expectedCount=1))
        await w.settle(NS, NAME)
        await w.settle(NS, "second")
        w.kube.delete(NS, NAME)
        await w.settle(NS, NAME, step=20)
        assert w.kube.secrets[(NS, "creds")]["finalizers"] == [SECRET_FINALIZER]
        w.kube.delete(NS, "second")
        await w.settle(NS, "second", step=20)
        assert w.kube.secrets[(NS, "creds")]["finalizers"] == []


# -- the journal write is fenced ---------------------------------------------------------------------------

async def test_nothing_is_bought_when_the_journal_write_loses_its_precondition() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=3)
        body = w.kube.body(NS, NAME)
        assert body is not None
        w.kube.edit_spec(NS, NAME, {"expectedCount": 1})  # someone else writes after we read
        outcome = await w.reconciler.reconcile(body, PoolMemory(), asyncio.Lock())
        assert outcome.problem is not None and w.bought(uid) == 0
        await w.settle(NS, NAME)
        assert w.bought(uid) == 1


async def _pass_while_the_watch_delivers(w: World, monkeypatch: pytest.MonkeyPatch,
                                         meanwhile: Callable[[], Awaitable[None]]) -> Outcome:
    """One pass over a live body (kopf's: the watch updates it in place), and `meanwhile` done
    while the pass reads the cloud, its result delivered to that body before the journal write."""
    body = w.kube.body(NS, NAME)
    assert body is not None
    quota = w.cloud.quota

    async def reading(*args: Any) -> Any:
        await meanwhile()
        body.clear()
        body.update(w.kube.body(NS, NAME) or {})  # the watch event reaches the live body
        return await quota(*args)

    monkeypatch.setattr(w.cloud, "quota", reading)
    try:
        return await w.reconciler.reconcile(body, PoolMemory(), asyncio.Lock())
    finally:
        monkeypatch.setattr(w.cloud, "quota", quota)


async def test_the_journal_write_goes_over_kopfs_writes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async with world() as w:
        uid = await start(w, expectedCount=3)
        reads = 0
        read_object = w.kube.read_object

        async def counted(*args: Any) -> Any:
            nonlocal reads
            reads += 1
            return await read_object(*args)

        monkeypatch.setattr(w.kube, "read_object", counted)

        async def kopf_annotates() -> None:
            w.kube.annotate(NS, NAME, "kopf.zalando.org/last-handled-configuration", "{}")

        outcome = await _pass_while_the_watch_delivers(w, monkeypatch, kopf_annotates)
        assert outcome.problem is None and w.bought(uid) == 3
        assert reads == 0, "written over the live body's version: no refused write, no read"


async def test_the_journal_write_never_goes_over_another_writers_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that still believes it leads plans from the body it read; meanwhile another
    replica bought and recorded its journal, and the watch delivered that. The live body's
    version is not written over (its status differs from the plan's): this pass buys nothing.
    The other replica's purchase starts its launch sequence a second later, so its ClientToken
    differs: had this pass bought, CVM would have sold it new instances, not answered with those."""
    async with world() as w:
        uid = await start(w, expectedCount=3)
        other = World(w.sim, w.clock, kube=w.kube)

        async def another_replica_buys() -> None:
            w.clock.advance(1)
            await other.reconcile(NS, NAME)
            assert w.bought(uid) == 3

        outcome = await _pass_while_the_watch_delivers(w, monkeypatch, another_replica_buys)
        assert outcome.problem is not None and w.bought(uid) == 3
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 3 and w.bought(uid) == 3
        await other.cloud.close()


# -- crash at every failpoint ---------------------------------------------------------------------------

@pytest.mark.parametrize("point", failpoints.POINTS)
@pytest.mark.parametrize("hit", [1, 2])
async def test_a_crash_at_any_point_neither_overbuys_nor_leaks(point: str, hit: int) -> None:
    async with world() as w:
        uid = await start(w, expectedCount=150, zones=["ap-guangzhou-3"])
        await passes_crashing_at(w, point, hit, passes=6)
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 150 and w.bought(uid) == 150
        w.kube.edit_spec(NS, NAME, {"expectedCount": 20})
        await passes_crashing_at(w, point, hit, passes=4)
        await w.settle(NS, NAME, step=20)
        assert len(w.owned(uid)) == 20 and w.bought(uid) == 150


async def test_nothing_is_bought_while_the_secrets_finalizer_cannot_be_added(monkeypatch: pytest.MonkeyPatch) -> None:
    """The finalizer goes on beside the account look-up and the first reads; a purchase waits for
    it. An operator whose role lacks `patch` on Secrets buys nothing, and says what to grant."""
    async def forbidden(*_: Any, **__: Any) -> bool:
        raise PermissionError("secrets is forbidden: cannot patch")

    async with world() as w:
        monkeypatch.setattr(w.kube, "add_secret_finalizer", forbidden)
        await start(w, expectedCount=3)
        for _ in range(3):
            await w.reconcile(NS, NAME)
        assert run_instances_calls(w) == []
        degraded = condition(w, "Degraded")
        assert degraded["reason"] == "InvalidConfig" and "grant patch on secrets" in degraded["message"]
