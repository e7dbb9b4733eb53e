"""The simulator's opt-in frictions over signed HTTP: key pairs restricted to tagged instances
(`Credential.visible_tags`), terminations that are accepted and then fail
(`lifecycle.terminate_failure_rate`, `POST /_sim/fail-termination`), and offset pages that shift
under churn (`api.listing_skew_rate`, `Market.skew_next_pages`).

The simulator runs on a fake clock (started at the real time, so signatures stay fresh), so the
lifecycle moves only when a test says so. tests/unit/simulator covers each rule in detail.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from spotpool.simulator import RunningSimulator, SimulatorConfig, run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.integration.test_simulator_protocol import control, error_code, ok, purchase

RESTRICTED = {"secret_id": "AKIDTEAMRENDER", "secret_key": "team-render-key"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def serving(config: SimulatorConfig) -> AsyncIterator[tuple[RunningSimulator, Clock]]:
    clock = Clock()
    async with run_simulator(config, clock=clock) as sim:
        yield sim, clock


def tagged(team: str, count: int = 1) -> dict[str, Any]:
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "team", "Value": team}]}]
    return purchase(InstanceCount=count, TagSpecification=tags)


def ids_of(response: dict[str, Any], key: str = "InstanceSet") -> list[str]:
    return [item["InstanceId"] for item in response[key]]


# ------------------------------------------------------------------------------ visibility


async def test_a_restricted_key_sees_and_terminates_only_its_tagged_instances(
    fast_config: Callable[..., SimulatorConfig],
) -> None:
    config = fast_config(
        credentials=[
            {"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
            {**RESTRICTED, "visible_tags": {"team": "render"}},
        ]
    )
    async with serving(config) as (sim, _):
        mine = (await ok(sim, "RunInstances", tagged("render", 2)))["InstanceIdSet"]
        others = (await ok(sim, "RunInstances", tagged("web", 2)))["InstanceIdSet"]
        # RunInstances is not restricted: the restricted key buys one it will not see.
        [unseen] = (await ok(sim, "RunInstances", tagged("web"), **RESTRICTED))["InstanceIdSet"]

        listed = await ok(sim, "DescribeInstances", {"Limit": 100}, **RESTRICTED)
        assert listed["TotalCount"] == 2 and ids_of(listed) == mine
        assert (await ok(sim, "DescribeInstances", {"Limit": 100}))["TotalCount"] == 5
        by_ids = await ok(
            sim, "DescribeInstances", {"InstanceIds": [*others, unseen, *mine]}, **RESTRICTED
        )
        assert by_ids["TotalCount"] == 2 and ids_of(by_ids) == mine
        status = await ok(sim, "DescribeInstancesStatus", {"Limit": 100}, **RESTRICTED)
        assert ids_of(status, "InstanceStatusSet") == mine

        refused = {"InstanceIds": [mine[0], others[0]]}
        assert await error_code(sim, "TerminateInstances", refused, **RESTRICTED) == (
            "UnauthorizedOperation"
        )
        _, alive = await control(sim, "GET", "instances?state=PENDING")
        assert alive["count"] == 5  # the whole call was refused: nothing terminated
        await ok(sim, "TerminateInstances", {"InstanceIds": mine[:1]}, **RESTRICTED)
        _, calls = await control(sim, "GET", "calls?action=TerminateInstances")
        assert [(c["secretId"], c["errorCode"]) for c in calls["calls"]] == [
            (RESTRICTED["secret_id"], "UnauthorizedOperation"),
            (RESTRICTED["secret_id"], None),
        ]


# ---------------------------------------------------------------------- failed termination


async def state_of(sim: RunningSimulator, iid: str) -> tuple[str, str, str]:
    [item] = (await ok(sim, "DescribeInstances", {"InstanceIds": [iid]}))["InstanceSet"]
    return item["InstanceState"], item["LatestOperation"], item["LatestOperationState"]


async def test_a_termination_marked_to_fail_is_accepted_then_fails(
    fast_config: Callable[..., SimulatorConfig],
) -> None:
    async with serving(fast_config()) as (sim, clock):
        [iid] = (await ok(sim, "RunInstances", purchase()))["InstanceIdSet"]
        clock.now += 1  # booted
        status, marked = await control(
            sim, "POST", "fail-termination", {"instanceIds": [iid, "ins-zzzzzzzz"]}
        )
        assert status == 200
        assert marked == {"marked": [iid], "skipped": {"ins-zzzzzzzz": "not found"}}

        terminate = await ok(sim, "TerminateInstances", {"InstanceIds": [iid]})
        assert await state_of(sim, iid) == ("TERMINATING", "TerminateInstances", "OPERATING")
        clock.now += 1  # past the 0.2 s terminate delay
        assert await state_of(sim, iid) == ("RUNNING", "TerminateInstances", "FAILED")
        _, listed = await control(sim, "GET", "instances")
        [view] = listed["instances"]
        assert view["timeline"]["terminatedAt"] is None and view["terminatedBy"] is None
        assert [f["requestId"] for f in view["failedTerminations"]] == [terminate["RequestId"]]
        _, market = await control(sim, "GET", "market")
        assert market["zoneQuotas"]["ap-guangzhou-3"]["usedVcpus"] == 2  # capacity still held

        await ok(sim, "TerminateInstances", {"InstanceIds": [iid]})  # the next one works
        clock.now += 1
        assert (await ok(sim, "DescribeInstances", {"InstanceIds": [iid]}))["TotalCount"] == 0
        status, bad = await control(sim, "POST", "fail-termination", {})
        assert status == 400 and "instanceIds" in bad["error"]


async def test_the_terminate_failure_rate_fails_terminations_after_accepting_them(
    fast_config: Callable[..., SimulatorConfig],
) -> None:
    async with serving(fast_config(lifecycle={"terminate_failure_rate": 1.0})) as (sim, clock):
        ids = (await ok(sim, "RunInstances", purchase(InstanceCount=3)))["InstanceIdSet"]
        clock.now += 1
        await ok(sim, "TerminateInstances", {"InstanceIds": ids})
        clock.now += 1
        status = await ok(sim, "DescribeInstancesStatus", {"InstanceIds": ids})
        assert [s["InstanceState"] for s in status["InstanceStatusSet"]] == ["RUNNING"] * 3


# ------------------------------------------------------------------------- listing skew


async def read_by_offset(sim: RunningSimulator, limit: int) -> tuple[list[str], set[int]]:
    """(ids a client paging by offset collects, the TotalCounts it was told)."""
    seen: list[str] = []
    totals: set[int] = set()
    offset, total = 0, 1
    render = [{"Name": "tag:team", "Values": ["render"]}]
    while offset < total:
        page = await ok(
            sim, "DescribeInstances", {"Filters": render, "Offset": offset, "Limit": limit}
        )
        total = page["TotalCount"]
        totals.add(total)
        seen += ids_of(page)
        offset += limit
    return seen, totals


async def test_offset_pages_skew_under_the_configured_churn(
    fast_config: Callable[..., SimulatorConfig],
) -> None:
    async with serving(fast_config(api={"listing_skew_rate": 1.0})) as (sim, _):
        ids = (await ok(sim, "RunInstances", tagged("render", 6)))["InstanceIdSet"]
        seen, totals = await read_by_offset(sim, 2)
        assert totals == {6}
        assert seen == ids[:2] + ids[3:5] + ids[5:]  # every later page one late: ids[2] missed
        by_ids = await ok(sim, "DescribeInstances", {"InstanceIds": ids, "Offset": 2, "Limit": 2})
        assert ids_of(by_ids) == ids[2:4]  # lookups by id are not listings: never skewed


async def test_the_skew_hook_shifts_the_next_offset_pages(
    fast_config: Callable[..., SimulatorConfig],
) -> None:
    async with serving(fast_config()) as (sim, _):
        ids = (await ok(sim, "RunInstances", tagged("render", 5)))["InstanceIdSet"]
        assert (await read_by_offset(sim, 2))[0] == ids  # off by default
        sim.market.skew_next_pages(1)
        seen, totals = await read_by_offset(sim, 2)
        assert totals == {5} and ids[2] not in seen and seen == ids[:2] + ids[3:5] + ids[4:]
