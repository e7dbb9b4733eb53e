"""Key pairs restricted by a CAM-like policy (`Credential.visible_tags`): what they may see and
terminate. The market and the action handlers are driven directly with a fake clock;
tests/integration/test_simulator_frictions.py checks the same over signed HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from spotpool.cloud.models import PENDING, TERMINATING
from spotpool.simulator.actions import ACTIONS, CallContext
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY, SimulatorConfig
from spotpool.simulator.market import Market
from spotpool.simulator.params import parse_json
from tests.unit.simulator.test_market import REGION, FakeClock, launch, refusal, small_config, state

TEAM_A = {"team": "a", "env": "prod"}
RESTRICTED = "AKIDTEAMA"


def restricted_config(**changes: Any) -> SimulatorConfig:
    return small_config(
        credentials=[
            {"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
            {"secret_id": RESTRICTED, "secret_key": "team-a-key", "visible_tags": TEAM_A},
        ],
        **changes,
    )


@pytest.fixture
def market(clock: FakeClock) -> Market:
    return Market(restricted_config(), clock)


def call(market: Market, action: str, params: dict[str, Any], secret_id: str | None) -> Any:
    """Run one action handler as the server does for a call signed by `secret_id`."""
    handler = ACTIONS[action]
    parsed = parse_json(handler.params, json.dumps(params).encode())
    body = handler.handle(CallContext(market, REGION, "req-test", secret_id), parsed)
    return json.loads(body)["Response"]


def fleet(market: Market) -> tuple[list[str], list[str]]:
    """(instances team A may see, instances it may not), interleaved in launch order."""
    visible: list[str] = []
    hidden: list[str] = []
    for _ in range(3):
        visible += launch(market, 1, tags=(("team", "a"), ("env", "prod"), ("pool", "p")))
        hidden += launch(market, 1, tags=(("team", "a"), ("env", "dev")))  # one tag short
        hidden += launch(market, 1, tags=(("team", "b"), ("env", "prod")))
    return visible, hidden


def ids_of(response: dict[str, Any], key: str = "InstanceSet") -> list[str]:
    return [item["InstanceId"] for item in response[key]]


def test_the_restriction_comes_from_the_key_pair(market: Market) -> None:
    assert market.visible_tags(RESTRICTED) == TEAM_A
    assert market.visible_tags(DEMO_SECRET_ID) is None
    assert market.visible_tags(None) is None


def test_an_empty_restriction_is_refused() -> None:
    with pytest.raises(ValidationError, match="visible_tags"):
        small_config(credentials=[{"secret_id": "A", "secret_key": "k", "visible_tags": {}}])


def test_listings_show_and_count_only_what_the_key_may_see(market: Market) -> None:
    visible, _ = fleet(market)
    everything = call(market, "DescribeInstances", {"Limit": 100}, DEMO_SECRET_ID)
    assert everything["TotalCount"] == 9
    mine = call(market, "DescribeInstances", {"Limit": 100}, RESTRICTED)
    assert mine["TotalCount"] == 3 and ids_of(mine) == visible
    page = call(market, "DescribeInstances", {"Offset": 1, "Limit": 1}, RESTRICTED)
    assert page["TotalCount"] == 3 and ids_of(page) == visible[1:2]
    by_filter = call(
        market,
        "DescribeInstances",
        {"Filters": [{"Name": "tag:team", "Values": ["a", "b"]}], "Limit": 100},
        RESTRICTED,
    )
    assert by_filter["TotalCount"] == 3 and ids_of(by_filter) == visible
    status = call(market, "DescribeInstancesStatus", {"Limit": 100}, RESTRICTED)
    assert status["TotalCount"] == 3 and ids_of(status, "InstanceStatusSet") == visible


def test_lookups_by_id_omit_what_the_key_may_not_see(market: Market) -> None:
    visible, hidden = fleet(market)
    asked = {"InstanceIds": hidden[:2] + visible[:2]}
    found = call(market, "DescribeInstances", asked, RESTRICTED)
    assert found["TotalCount"] == 2 and ids_of(found) == visible[:2]
    status = call(market, "DescribeInstancesStatus", asked, RESTRICTED)
    assert status["TotalCount"] == 2 and ids_of(status, "InstanceStatusSet") == visible[:2]
    assert call(market, "DescribeInstances", asked, None)["TotalCount"] == 4


def test_terminating_an_instance_it_may_not_see_refuses_the_whole_call(market: Market) -> None:
    visible, hidden = fleet(market)
    code = refusal(
        lambda: call(
            market, "TerminateInstances", {"InstanceIds": [visible[0], hidden[0]]}, RESTRICTED
        )
    )
    assert code == "UnauthorizedOperation"
    assert state(market, visible[0]) == state(market, hidden[0]) == PENDING  # nothing terminated
    call(market, "TerminateInstances", {"InstanceIds": visible[:1]}, RESTRICTED)
    assert state(market, visible[0]) == TERMINATING
    call(market, "TerminateInstances", {"InstanceIds": hidden[:1]}, DEMO_SECRET_ID)
    assert state(market, hidden[0]) == TERMINATING


def test_authorization_comes_before_the_other_checks(market: Market) -> None:
    visible, hidden = fleet(market)
    market.terminate_instances(REGION, visible[:1], "r")
    assert (
        refusal(
            lambda: market.terminate_instances(
                REGION, [visible[0], hidden[0]], "r", visible_tags=TEAM_A
            )
        )
        == "UnauthorizedOperation"
    )
    # Ids of no instance are not the policy's business: the usual answer.
    unknown = ["ins-00000000"]
    assert (
        refusal(lambda: market.terminate_instances(REGION, unknown, "r", visible_tags=TEAM_A))
        == "InvalidInstanceId.NotFound"
    )


def test_purchases_are_not_restricted(market: Market) -> None:
    purchase = {
        "InstanceChargeType": "SPOTPAID",
        "Placement": {"Zone": "ap-guangzhou-3"},
        "InstanceType": "S5.MEDIUM4",
        "ImageId": "img-pmqg1cw7",
        "InstanceCount": 1,
    }
    [untagged] = call(market, "RunInstances", purchase, RESTRICTED)["InstanceIdSet"]
    assert state(market, untagged) == PENDING
    seen = call(market, "DescribeInstances", {"InstanceIds": [untagged]}, RESTRICTED)
    assert seen["TotalCount"] == 0
