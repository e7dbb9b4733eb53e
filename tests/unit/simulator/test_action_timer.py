"""RunInstances' ActionTimer in the simulator: a server-side lifetime (issue 20).

Refused (InvalidParameterValue.InvalidTimeFormat, nothing bought, the ClientToken not consumed)
when ActionTime is malformed, past, or under the 5-minute lead on the simulator's clock; otherwise
each instance terminates at its time, as TerminateInstances would take it, seen on the simulator's
clock with nobody calling anything (the market applies due events whenever it is looked at, as it
does reclaims). Time is a fake clock: a test moves it with `clock.advance`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from spotpool.cloud.errors import ACTION_TIMER_REFUSED, CloudError, ErrorCategory
from spotpool.cloud.models import Credentials, RunInstancesRequest
from spotpool.cloud.ratelimit import RateLimiterRegistry
from spotpool.simulator.actions import ACTIONS, CallContext
from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from spotpool.simulator.market import LaunchRequest, Market
from spotpool.simulator.params import RunInstancesParams, parse_json
from spotpool.simulator.render import iso_time
from spotpool.simulator.server import Simulator
from tests.support.simtransport import SimulatorTransport
from tests.unit.simulator.test_failed_termination import operation
from tests.unit.simulator.test_market import REGION, TYPE, ZONE, FakeClock, refusal, small_config, state

PURCHASE: dict[str, Any] = {
    "Placement": {"Zone": ZONE},
    "InstanceChargeType": "SPOTPAID",
    "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}},
    "ImageId": "img-pmqg1cw7",
    "InstanceType": TYPE,
    "InstanceCount": 2,
}


def run(market: Market, timer: dict[str, Any] | None, **changes: Any) -> list[str]:
    """One RunInstances through the action's own checks (parameters, then the market)."""
    fields = {**PURCHASE, **changes}
    if timer is not None:
        fields["ActionTimer"] = timer
    params = parse_json(RunInstancesParams, json.dumps(fields).encode())
    body = ACTIONS["RunInstances"].handle(CallContext(market, REGION, "req-1"), params)
    ids: list[str] = json.loads(body)["Response"]["InstanceIdSet"]
    return ids


def at(market: Market, seconds: float) -> dict[str, str]:
    """An ActionTimer `seconds` from the market's now."""
    return {"TimerAction": "TerminateInstances", "ActionTime": iso_time(market.now() + seconds)}


def stock(market: Market) -> int:
    pool = market.pool(ZONE, TYPE)
    assert pool is not None
    return pool.stock


@pytest.mark.parametrize("action_time", [
    "2030-01-01 00:00:00",  # not ISO 8601 with T and Z
    "2030-01-01T00:00:00+08:00",  # not UTC with Z
    "2030-01-01T00:00:00.5Z",
    "2030-02-30T00:00:00Z",  # no such day
    "2030-01-01T25:00:00Z",
    "",
    "tomorrow",
])
def test_a_malformed_action_time_is_refused_and_buys_nothing(market: Market, action_time: str) -> None:
    before = stock(market)
    timer = {"TimerAction": "TerminateInstances", "ActionTime": action_time}
    assert refusal(lambda: run(market, timer, ClientToken="tok-1")) == ACTION_TIMER_REFUSED
    assert market.all_instances_ever() == [] and stock(market) == before


@pytest.mark.parametrize("lead", [-3600, -1, 0, 1, 299])
def test_a_time_past_or_under_five_minutes_ahead_is_refused_without_consuming_the_token(
    market: Market, lead: float
) -> None:
    before = stock(market)
    assert refusal(lambda: run(market, at(market, lead), ClientToken="tok-1")) == ACTION_TIMER_REFUSED
    assert market.all_instances_ever() == [] and stock(market) == before
    assert market.quota_used(ZONE) == 0
    # The token is still free: the same token with a valid timer buys (a consumed token reused
    # with other parameters would be refused with InvalidParameterValue).
    assert len(run(market, at(market, 3600), ClientToken="tok-1")) == 2


def test_exactly_five_minutes_ahead_is_accepted_and_dry_run_checks_the_timer(market: Market) -> None:
    assert refusal(lambda: run(market, at(market, 299), DryRun=True)) == ACTION_TIMER_REFUSED
    assert refusal(lambda: run(market, at(market, 300), DryRun=True)) == "DryRunOperation"
    assert len(run(market, at(market, 300))) == 2


@pytest.mark.parametrize(("timer", "code"), [
    ({"TimerAction": "StopInstances", "ActionTime": "2030-01-01T00:00:00Z"}, "InvalidParameterValue"),
    ({"ActionTime": "2030-01-01T00:00:00Z"}, "MissingParameter"),
    ({"TimerAction": "TerminateInstances"}, "MissingParameter"),
    ({"TimerAction": "TerminateInstances", "ActionTime": 1893456000}, "InvalidParameter"),
    ({"TimerAction": "TerminateInstances", "ActionTime": "2030-01-01T00:00:00Z", "Bogus": 1}, "UnknownParameter"),
])
def test_a_timer_of_another_shape_is_refused(market: Market, timer: dict[str, Any], code: str) -> None:
    with pytest.raises(ApiError) as caught:
        run(market, timer)
    assert caught.value.code == code
    assert market.all_instances_ever() == []


def test_the_sdk_output_only_fields_are_accepted(market: Market) -> None:
    timer = {**at(market, 600), "Externals": {"ReleaseAddress": True}, "ActionTimerId": "x", "Status": "UNDO"}
    assert len(run(market, timer)) == 2


def test_each_instance_terminates_at_its_time_on_the_simulators_clock(clock: FakeClock, market: Market) -> None:
    before = stock(market)
    ids = run(market, at(market, 600))
    inst = market.get(ids[0])
    assert inst is not None and inst.terminate_at == clock.now + 600
    clock.advance(599)
    assert [state(market, iid) for iid in ids] == ["RUNNING", "RUNNING"]
    clock.advance(1)  # nobody calls anything: looking is enough, as for reclaims
    assert [state(market, iid) for iid in ids] == ["TERMINATING", "TERMINATING"]
    gone = market.get(ids[0])
    assert gone is not None and gone.terminated_by == "timer" and gone.terminated_at == clock.now
    assert operation(market, ids[0])[:3] == ("TERMINATING", "TerminateInstances", "OPERATING")
    clock.advance(market.config.lifecycle.terminate_delay_seconds)
    assert [state(market, iid) for iid in ids] == [None, None]
    assert stock(market) == before and market.quota_used(ZONE) == 0
    # Gone as a termination leaves it: TerminateInstances now says so.
    assert refusal(lambda: market.terminate_instances(REGION, ids, "req-2")) == (
        "UnsupportedOperation.InstanceStateTerminated")


def test_a_timer_that_fires_in_a_long_jump_is_applied_in_time_order(clock: FakeClock, market: Market) -> None:
    ids = run(market, at(market, 600))
    clock.advance(10_000)  # boot, the timer and the disappearance all fall due at once
    assert [state(market, iid) for iid in ids] == [None, None]
    ever = {inst.instance_id: inst for inst in market.all_instances_ever()}
    assert ever[ids[0]].running_at is not None and ever[ids[0]].terminated_at == ever[ids[0]].terminate_at


def test_a_replay_after_the_lead_has_passed_answers_the_same_ids(clock: FakeClock, market: Market) -> None:
    timer = at(market, 400)
    ids = run(market, timer, ClientToken="tok-r")
    clock.advance(200)  # the same request is now only 200 s ahead
    assert run(market, timer, ClientToken="tok-r") == ids
    assert len(market.all_instances_ever()) == 2
    other = {**timer, "ActionTime": iso_time(clock.now + 4000)}
    assert refusal(lambda: run(market, other, ClientToken="tok-r")) == "InvalidParameterValue"


def test_an_instance_already_going_is_left_to_that(clock: FakeClock, market: Market) -> None:
    ids = run(market, at(market, 600))
    clock.advance(300)
    market.terminate_instances(REGION, ids[:1], "req-user")
    clock.advance(300)
    user = market.get(ids[0])
    assert user is None or user.terminated_by == "user"
    timed = market.get(ids[1])
    assert timed is not None and timed.terminated_by == "timer"


def test_a_timer_that_came_during_a_failed_termination_still_ends_the_instance(
    clock: FakeClock,
) -> None:
    market = Market(small_config(lifecycle={"terminate_delay_seconds": 60}), clock)
    (iid,) = run(market, at(market, 600), InstanceCount=1)
    clock.advance(570)
    market.fail_next_termination([iid])
    market.terminate_instances(REGION, [iid], "req-user")
    clock.advance(60)  # the timer came at 600, during the termination; it failed at 630
    inst = market.get(iid)
    assert inst is not None and inst.terminated_by == "timer" and inst.state == "TERMINATING"
    clock.advance(60)
    assert market.get(iid) is None


def test_a_launch_that_failed_is_removed_by_its_timer(clock: FakeClock) -> None:
    market = Market(small_config(lifecycle={"launch_failure_rate": 1.0}), clock)
    (iid,) = run(market, at(market, 600), InstanceCount=1)
    clock.advance(10)
    assert state(market, iid) == "LAUNCH_FAILED"
    clock.advance(600)
    assert state(market, iid) is None


def test_without_a_timer_nothing_changes(clock: FakeClock, market: Market) -> None:
    request = LaunchRequest(region=REGION, zone=ZONE, instance_type=TYPE, image_id="img-pmqg1cw7",
                            count=1, fingerprint="f")
    (iid,) = market.run_instances(request, "req-1")
    clock.advance(10**7)
    inst = market.get(iid)
    assert inst is not None and inst.terminate_at is None and inst.state == "RUNNING"


def test_the_minimum_lead_is_configurable(clock: FakeClock) -> None:
    market = Market(small_config(api={"action_timer_min_lead_seconds": 5}), clock)
    ids = run(market, at(market, 5))
    clock.advance(5)
    assert state(market, ids[0]) == "TERMINATING"


# ----------------------------------------------------------- through spotpool's client


async def test_the_client_buys_with_a_timer_and_sees_it_fire(clock: FakeClock) -> None:
    simulator = Simulator(small_config(), clock)
    client_args: dict[str, Any] = {
        "transport": SimulatorTransport(simulator), "clock": clock,
        "limiter": RateLimiterRegistry(clock=clock, sleep=_no_wait), "sleep": _no_wait,
    }
    start = datetime.fromtimestamp(clock.now, UTC)
    request = RunInstancesRequest(zone=ZONE, instance_type=TYPE, image_id="img-pmqg1cw7", count=1,
                                  client_token="tok-c", max_price="1.0",
                                  terminate_at=start.replace(microsecond=0) + _minutes(10))
    from spotpool.cloud.client import CvmClient

    async with CvmClient(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY), REGION, "http://simulator",
                         **client_args) as client:
        (iid,) = await client.run_instances(request)
        too_soon = RunInstancesRequest(**{**request.__dict__, "client_token": "tok-d",
                                          "terminate_at": start + _minutes(4)})
        with pytest.raises(CloudError) as caught:
            await client.run_instances(too_soon)
        assert caught.value.code == ACTION_TIMER_REFUSED
        assert caught.value.category is ErrorCategory.INVALID_REQUEST
        clock.advance(600)
        (seen,) = await client.describe_instances(instance_ids=[iid])
        assert seen.state == "TERMINATING"
        clock.advance(60)
        assert await client.describe_instances(instance_ids=[iid]) == []
    assert len(simulator.market.all_instances_ever()) == 1


def _minutes(n: int) -> Any:
    from datetime import timedelta

    return timedelta(minutes=n)


async def _no_wait(_: float) -> None:
    return None
