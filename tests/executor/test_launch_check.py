"""The launch check, in-process: a new or changed pool is tried with RunInstances DryRun before
anything is bought; a bad image, subnet or instance type is Degraded/InvalidConfig and buys
nothing; a good spec is checked once, across passes and restarts. "Bought" counts instances the
simulator ever created for the pool; the ledger tells DryRun calls from purchases."""

from __future__ import annotations

from typing import Any

from spotpool.api.spec import EnvironmentSpec
from spotpool.controller.launchcheck import STATUS_FIELD, launch_digest
from tests.support.inprocess import NAME, NS, World, condition, start, status, world

ACCOUNT = "100000000001"
GOOD_IMAGE, MISSING_IMAGE = "img-pmqg1cw7", "img-0000dead"
SUBNETS = {"ap-guangzhou-3": "subnet-ahv6swf2", "ap-guangzhou-4": "subnet-mt7v2yvb"}


def dry_runs(w: World) -> list[Any]:
    return [c for c in w.sim.simulator.ledger.entries("RunInstances") if c.params.get("DryRun")]


def purchases(w: World) -> list[Any]:
    return [c for c in w.sim.simulator.ledger.entries("RunInstances") if not c.params.get("DryRun")]


def digest(w: World) -> str:
    return launch_digest(EnvironmentSpec.from_k8s(w.kube.objects[(NS, NAME)]["spec"]), ACCOUNT)


def assert_refused(w: World, field: str, value: str, code: str) -> None:
    degraded, ready = condition(w, "Degraded"), condition(w, "Ready")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidConfig", degraded
    assert f"{field}: RunInstances DryRun refused {value}" in degraded["message"], degraded["message"]
    assert code in degraded["message"], degraded["message"]
    assert ready["status"] == "False"
    assert condition(w, "Progressing")["reason"] == "InvalidConfig"
    assert STATUS_FIELD not in status(w)
    assert [e for e in w.events if e.type == "Warning" and e.reason == "InvalidConfig"]


async def test_a_missing_image_buys_nothing_and_the_fixed_spec_fills_the_pool() -> None:
    async with world() as w:
        w.sim.simulator.market.set_images([GOOD_IMAGE])
        uid = await start(w, expectedCount=5, imageId=MISSING_IMAGE)
        await w.settle(NS, NAME)
        await w.settle(NS, NAME)
        assert_refused(w, "spec.imageId", MISSING_IMAGE, "InvalidImageId.NotFound")
        assert w.bought(uid) == 0 and purchases(w) == []
        assert len(dry_runs(w)) == 3, "2 zones + 2 types - 1, asked once: the refusal is remembered a while"
        assert status(w)["currentCount"] == 0, "the pass still observes and reports"

        w.kube.edit_spec(NS, NAME, {"imageId": GOOD_IMAGE})
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 5 and w.bought(uid) == 5
        assert len(dry_runs(w)) == 6, "the fixed spec is checked again at once"
        assert status(w)[STATUS_FIELD] == digest(w)
        assert condition(w, "Ready")["status"] == "True"
        assert condition(w, "Degraded")["status"] == "False"


async def test_a_refused_spec_is_asked_again_until_the_cloud_accepts_it() -> None:
    async with world() as w:
        w.sim.simulator.market.set_images([GOOD_IMAGE])
        uid = await start(w, expectedCount=2, imageId=MISSING_IMAGE, zones=["ap-guangzhou-3"],
                          instanceTypes=["S5.MEDIUM4"])
        await w.settle(NS, NAME)
        w.sim.simulator.market.set_images([GOOD_IMAGE, MISSING_IMAGE])  # the image is published later
        await w.settle(NS, NAME, step=61)  # past the time a refusal is remembered
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 2 and status(w)[STATUS_FIELD] == digest(w)


async def test_a_good_spec_is_checked_exactly_once_across_passes_and_restarts() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=4)
        for _ in range(3):
            await w.settle(NS, NAME, step=20)
        assert len(w.owned(uid)) == 4
        assert len(dry_runs(w)) == 3
        assert status(w)[STATUS_FIELD] == digest(w)
        await w.crash()
        w.kube.edit_spec(NS, NAME, {"expectedCount": 6, "allocationStrategy": "Diversified"})  # not launch fields
        for _ in range(3):
            await w.settle(NS, NAME, step=20)
        assert len(w.owned(uid)) == 6
        assert len(dry_runs(w)) == 3, "checked again after a restart, or for a change that buys the same"
        w.kube.edit_spec(NS, NAME, {"tags": {"team": "render"}})
        await w.settle(NS, NAME)
        assert len(dry_runs(w)) == 6 and status(w)[STATUS_FIELD] == digest(w)
        for call in dry_runs(w):
            assert call.params["InstanceCount"] == 1 and call.params["InstanceChargeType"] == "SPOTPAID"
            assert call.params["ClientToken"].startswith("dryrun-")
            assert call.params["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] == "1.0"
        assert w.bought(uid) == 6


async def test_a_missing_subnet_is_invalid_config_naming_its_zone() -> None:
    async with world() as w:
        w.sim.simulator.market.set_subnets({SUBNETS["ap-guangzhou-3"]: "ap-guangzhou-3",
                                            SUBNETS["ap-guangzhou-4"]: "ap-guangzhou-4"})
        network = {"vpcId": "vpc-2ari9m7h", "subnetIds": {**SUBNETS, "ap-guangzhou-4": "subnet-0000dead"}}
        uid = await start(w, expectedCount=3, network=network)
        await w.settle(NS, NAME)
        assert_refused(w, "spec.network.subnetIds[ap-guangzhou-4]", "subnet-0000dead",
                       "InvalidParameterValue.SubnetNotExist")
        assert "ap-guangzhou-3" not in condition(w, "Degraded")["message"], "the good zone is not blamed"
        assert w.bought(uid) == 0 and purchases(w) == []
        w.kube.edit_spec(NS, NAME, {"network": {"subnetIds": SUBNETS}})
        await w.settle(NS, NAME)
        assert len(w.owned(uid)) == 3 and condition(w, "Degraded")["status"] == "False"
        assert {i.subnet_id for i in w.owned(uid)} <= set(SUBNETS.values())


async def test_an_unknown_instance_type_is_invalid_config_even_beside_a_good_one() -> None:
    async with world() as w:
        uid = await start(w, expectedCount=3, instanceTypes=["S5.MEDIUM4", "S9.MEDIUM4"])
        await w.settle(NS, NAME)
        assert_refused(w, "spec.instanceTypes", "S9.MEDIUM4", "InvalidParameterValue.InstanceTypeNotFound")
        assert w.bought(uid) == 0 and purchases(w) == []


async def test_a_bad_image_stops_buying_never_releasing() -> None:
    async with world() as w:
        w.sim.simulator.market.set_images([GOOD_IMAGE])
        uid = await start(w, expectedCount=4)
        await w.settle(NS, NAME)
        checked = status(w)[STATUS_FIELD]
        w.kube.edit_spec(NS, NAME, {"imageId": MISSING_IMAGE, "expectedCount": 2})
        await w.settle(NS, NAME, step=20)
        assert len(w.owned(uid)) == 2, "scale-in goes on while the spec is refused"
        assert condition(w, "Degraded")["reason"] == "InvalidConfig"
        assert status(w)[STATUS_FIELD] == checked, "the last spec that passed stays recorded"
        w.kube.delete(NS, NAME)
        await w.settle(NS, NAME, step=20)
        assert (NS, NAME) not in w.kube.objects and w.owned(uid) == [] and w.bought(uid) == 4


async def test_a_sold_out_market_is_no_configuration_error() -> None:
    async with world() as w:
        for zone in ("ap-guangzhou-3", "ap-guangzhou-4"):
            for kind in ("S5.MEDIUM4", "SA2.MEDIUM4"):
                w.sim.simulator.market.update_pool(zone, kind, sold_out=True)
        uid = await start(w, expectedCount=2)
        for _ in range(3):
            await w.reconcile(NS, NAME)  # it keeps applying: never settled
            w.clock.advance(5)
        assert condition(w, "Degraded")["reason"] == "InsufficientCapacity"
        assert status(w)[STATUS_FIELD] == digest(w) and len(dry_runs(w)) == 3
        assert w.bought(uid) == 0


async def test_nothing_is_checked_while_paused_at_zero_or_deleting() -> None:
    async with world() as w:
        w.sim.simulator.market.set_images([GOOD_IMAGE])
        await start(w, expectedCount=0, imageId=MISSING_IMAGE)
        await w.settle(NS, NAME)
        w.kube.edit_spec(NS, NAME, {"expectedCount": 3, "paused": True})
        await w.settle(NS, NAME)
        assert dry_runs(w) == [] and condition(w, "Degraded")["status"] == "False"
        w.kube.delete(NS, NAME)
        await w.settle(NS, NAME)
        assert (NS, NAME) not in w.kube.objects and dry_runs(w) == []
