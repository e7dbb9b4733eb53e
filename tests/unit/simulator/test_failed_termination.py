"""Terminations that are accepted and then fail (`Market.fail_next_termination`,
`lifecycle.terminate_failure_rate`), as CVM reports them: the instance comes back with
LatestOperation TerminateInstances, LatestOperationState FAILED, its capacity and its bill.

Time is a fake clock; tests/integration/test_simulator_frictions.py checks the same over HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from spotpool.cloud.models import LAUNCH_FAILED, PENDING, RUNNING, TERMINATING
from spotpool.simulator.market import Market
from spotpool.simulator.render import instance_json
from spotpool.simulator.server import Simulator
from spotpool.simulator.state import SimInstance
from tests.unit.simulator.test_market import (
    REGION,
    TYPE,
    ZONE,
    FakeClock,
    launch,
    refusal,
    small_config,
    state,
)


def instance(market: Market, iid: str) -> SimInstance:
    inst = market.get(iid)
    assert inst is not None, iid
    return inst


def rendered(market: Market, iid: str) -> dict[str, Any]:
    """The instance as DescribeInstances shows it."""
    fields: dict[str, Any] = json.loads(instance_json(instance(market, iid)))
    return fields


def operation(market: Market, iid: str) -> tuple[str, str, str, str]:
    """(InstanceState, LatestOperation, LatestOperationState, LatestOperationRequestId)."""
    seen = rendered(market, iid)
    return (
        seen["InstanceState"],
        seen["LatestOperation"],
        seen["LatestOperationState"],
        seen["LatestOperationRequestId"],
    )


def stock(market: Market) -> int:
    pool = market.pool(ZONE, TYPE)
    assert pool is not None
    return pool.stock


def test_a_failed_termination_looks_accepted_then_the_instance_comes_back(
    market: Market, clock: FakeClock
) -> None:
    [iid] = launch(market)
    clock.advance(2)
    market.fail_next_termination([iid])
    market.terminate_instances(REGION, [iid], "req-t")
    assert operation(market, iid) == (TERMINATING, "TerminateInstances", "OPERATING", "req-t")
    clock.advance(1)  # the terminate delay: it would be gone now
    assert operation(market, iid) == (RUNNING, "TerminateInstances", "FAILED", "req-t")
    assert rendered(market, iid)["LatestOperationErrorMsg"] == (
        "The instance failed to terminate; terminate it again."
    )
    inst = instance(market, iid)
    assert inst.terminated_by is None and inst.terminated_at is None  # still billed
    assert inst.failed_terminations == [(clock.now, "req-t")]
    assert stock(market) == 9 and market.quota_used(ZONE) == 2  # capacity still held
    clock.advance(3600)
    assert state(market, iid) == RUNNING


def test_the_next_termination_after_a_failure_works(market: Market, clock: FakeClock) -> None:
    [iid] = launch(market)
    market.fail_next_termination([iid])
    clock.advance(2)
    market.terminate_instances(REGION, [iid], "req-1")
    clock.advance(1)
    market.terminate_instances(REGION, [iid], "req-2")
    assert state(market, iid) == TERMINATING
    assert instance(market, iid).terminated_by == "user"
    clock.advance(1)
    assert state(market, iid) is None
    assert stock(market) == 10 and market.quota_used(ZONE) == 0


def test_only_the_marked_instances_of_a_batch_fail(market: Market, clock: FakeClock) -> None:
    failing, going = launch(market, 2)
    clock.advance(2)
    market.fail_next_termination([failing])
    market.terminate_instances(REGION, [failing, going], "req-t")
    assert state(market, failing) == state(market, going) == TERMINATING
    clock.advance(1)
    assert state(market, failing) == RUNNING and state(market, going) is None


def test_a_pending_instance_keeps_booting_after_a_failed_termination(
    market: Market, clock: FakeClock
) -> None:
    early, late = launch(market, 2)  # both boot at +2
    market.fail_next_termination([early, late])
    clock.advance(0.5)
    market.terminate_instances(REGION, [early], "req-early")  # fails at +1.5, before the boot
    clock.advance(1)
    market.terminate_instances(REGION, [late], "req-late")  # fails at +2.5, after the boot time
    assert state(market, early) == PENDING
    assert rendered(market, early)["LatestOperationState"] == "FAILED"
    clock.advance(0.5)  # +2: the boot
    assert state(market, early) == RUNNING and state(market, late) == TERMINATING
    assert rendered(market, early)["LatestOperation"] == "TerminateInstances"
    assert rendered(market, early)["LatestOperationState"] == "FAILED"  # not a SUCCESS to misread
    clock.advance(0.5)  # +2.5: the boot it missed while terminating happens now
    assert state(market, late) == RUNNING
    assert instance(market, late).running_at == clock.now


def test_a_launch_that_fails_after_a_failed_termination_reports_the_launch(
    clock: FakeClock,
) -> None:
    market = Market(small_config(lifecycle={"launch_failure_rate": 1}), clock)
    [iid] = launch(market)
    market.fail_next_termination([iid])
    market.terminate_instances(REGION, [iid], "req-t")
    clock.advance(2)
    seen = rendered(market, iid)
    assert seen["InstanceState"] == LAUNCH_FAILED
    assert (seen["LatestOperation"], seen["LatestOperationRequestId"]) == ("RunInstances", "req-1")
    assert seen["LatestOperationErrorMsg"] == "The instance failed to launch."
    assert stock(market) == 10


def test_a_refused_call_leaves_the_mark_for_the_next_one(market: Market, clock: FakeClock) -> None:
    [iid] = launch(market)
    market.fail_next_termination([iid])
    assert refusal(lambda: market.terminate_instances(REGION, [iid, "ins-00000000"], "r")) == (
        "InvalidInstanceId.NotFound"
    )
    market.terminate_instances(REGION, [iid], "req-t")
    clock.advance(1)
    assert state(market, iid) == PENDING  # the mark was used by this call


def test_a_spot_instance_back_from_a_failed_termination_can_be_reclaimed(
    clock: FakeClock,
) -> None:
    market = Market(small_config(market={"reclaim_rate_per_hour": 3600.0}), clock)
    [iid] = launch(market)
    clock.advance(2)
    market.update_pool(ZONE, TYPE, reclaim_rate_per_hour=0)
    market.fail_next_termination([iid])
    market.terminate_instances(REGION, [iid], "req-t")
    clock.advance(1)
    assert state(market, iid) == RUNNING
    assert market.reclaim([iid]) == ([iid], {})
    assert instance(market, iid).terminated_by == "reclaim"


def test_the_failure_rate_is_seeded_and_off_by_default() -> None:
    def outcome(**lifecycle: Any) -> tuple[list[str], list[str]]:
        """(ids bought, ids still there once their termination ended)."""
        clock = FakeClock()
        market = Market(small_config(lifecycle=lifecycle), clock)
        ids = launch(market, 10)
        market.terminate_instances(REGION, ids, "req-t")
        clock.advance(1)
        return ids, [iid for iid in ids if market.get(iid) is not None]

    ids, survivors = outcome(terminate_failure_rate=0.5)
    assert 0 < len(survivors) < 10
    assert outcome(terminate_failure_rate=0.5) == (ids, survivors)  # same seed, same failures
    assert outcome(terminate_failure_rate=1.0)[1] == ids
    plain_ids, plain_survivors = outcome()
    assert plain_ids == ids and plain_survivors == []  # the rate off draws nothing at all


def test_marks_are_forgotten_on_reset(market: Market, clock: FakeClock) -> None:
    [iid] = launch(market)
    market.fail_next_termination([iid])
    market.reset()
    assert launch(market) == [iid]  # the same seed issues the same id again
    market.terminate_instances(REGION, [iid], "req-t")
    clock.advance(1)
    assert state(market, iid) is None


# ---------------------------------------------------------------------------- control API


async def control(sim: Simulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One control API call from a loopback client."""
    async with TestClient(TestServer(sim.app)) as client:
        response = await client.request(method, f"/_sim/{path}", json=body)
        return response.status, await response.json()


async def test_control_marks_instances_and_keeps_the_timeline_truthful() -> None:
    clock = FakeClock()
    sim = Simulator(small_config(), clock)
    start = clock.now
    [iid] = launch(sim.market)
    body = {"instanceIds": [iid, "ins-00000000"]}
    status, answer = await control(sim, "POST", "fail-termination", body)
    assert status == 200
    assert answer == {"marked": [iid], "skipped": {"ins-00000000": "not found"}}
    clock.advance(2)
    sim.market.terminate_instances(REGION, [iid], "req-t")
    _, listed = await control(sim, "GET", "instances")
    assert listed["instances"][0]["timeline"]["terminatedAt"] == start + 2  # terminating
    clock.advance(1)
    _, listed = await control(sim, "GET", "instances?ever=true")
    [view] = listed["instances"]
    assert view["state"] == RUNNING and view["terminatedBy"] is None
    assert view["timeline"] == {"launchedAt": start, "runningAt": start + 2, "terminatedAt": None}
    assert view["failedTerminations"] == [{"at": start + 3, "requestId": "req-t"}]

    status, error = await control(sim, "POST", "fail-termination", {"instanceIds": []})
    assert status == 400 and "instanceIds" in error["error"]
    status, error = await control(sim, "POST", "fail-termination", {"ids": [iid]})
    assert status == 400
