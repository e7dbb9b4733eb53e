"""Accounts kept apart in the simulator: instances, quotas, ClientTokens and rate limits belong to
the account (UIN) of the credentials that signed the call; one account behaves as before.

The market is driven directly with a fake clock, and over signed calls (in process, no socket)
with key pairs and role sessions of two accounts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from spotpool.cloud.errors import CloudError
from spotpool.cloud.models import Credentials, RunInstancesRequest
from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from spotpool.simulator.market import Market
from tests.support.identity import (
    ACCOUNT,
    EXTERNAL_ID,
    TEAM_ACCOUNT,
    TEAM_KEY,
    TEAM_ROLE_ARN,
    Issuer,
    Rig,
    identity_config,
)
from tests.unit.simulator.test_market import REGION, TYPE, ZONE, FakeClock, launch, small_config

A, B = "100000000001", "200000000002"


def two_accounts() -> Any:
    return small_config(credentials=[
        {"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
        {"secret_id": TEAM_KEY[0], "secret_key": TEAM_KEY[1], "account_id": B},
    ])


@pytest.fixture
def market(clock: FakeClock) -> Market:
    return Market(two_accounts(), clock)


def buy(market: Market, account: str | None, count: int = 1, token: str | None = None) -> list[str]:
    from dataclasses import replace

    from spotpool.simulator.market import LaunchRequest

    request = LaunchRequest(region=REGION, zone=ZONE, instance_type=TYPE, image_id="img-12345678",
                            count=count, fingerprint="f", client_token=token,
                            tags=(("pool", "a"),), account=account)
    return market.run_instances(replace(request), "req")


def test_calls_naming_no_account_act_in_the_first_key_pairs(market: Market) -> None:
    assert market.default_account == A
    ids = launch(market, 2)  # the helpers of the one-account tests name no account
    assert [i.account_id for i in market.instances()] == [A, A]
    assert market.describe_instances(REGION, instance_ids=ids)[0] == 2
    assert market.describe_instances(REGION, instance_ids=ids, account=A)[0] == 2


def test_an_account_sees_only_its_own_instances(market: Market) -> None:
    mine, theirs = buy(market, A, 2), buy(market, B, 3)
    assert market.describe_instances(REGION, limit=100, account=A)[0] == 2
    total, page = market.describe_instances(REGION, limit=100, account=B)
    assert total == 3 and [i.instance_id for i in page] == theirs
    assert market.describe_instances(REGION, instance_ids=theirs, account=A)[0] == 0
    assert {i.instance_id for i in market.instances(account=A)} == set(mine)
    assert len(market.instances()) == 5  # the control API sees everything


def test_an_account_cannot_terminate_another_accounts_instance(market: Market) -> None:
    (theirs,) = buy(market, B)
    with pytest.raises(ApiError) as caught:
        market.terminate_instances(REGION, [theirs], "req", account=A)
    assert caught.value.code == "InvalidInstanceId.NotFound"
    assert market.get(theirs) is not None and market.get(theirs).terminated_by is None  # type: ignore[union-attr]


def test_a_terminated_instance_is_terminated_only_for_its_account(market: Market, clock: FakeClock) -> None:
    (theirs,) = buy(market, B)
    market.terminate_instances(REGION, [theirs], "req", account=B)
    clock.advance(5)
    with pytest.raises(ApiError) as caught:
        market.terminate_instances(REGION, [theirs], "req", account=B)
    assert caught.value.code == "UnsupportedOperation.InstanceStateTerminated"
    with pytest.raises(ApiError) as caught:
        market.terminate_instances(REGION, [theirs], "req", account=A)
    assert caught.value.code == "InvalidInstanceId.NotFound"


def test_client_tokens_are_per_account(market: Market) -> None:
    first = buy(market, A, 2, token="tok")
    assert buy(market, A, 2, token="tok") == first  # a replay in the same account
    other = buy(market, B, 2, token="tok")  # the same token elsewhere buys anew
    assert set(other).isdisjoint(first)
    assert buy(market, B, 2, token="tok") == other
    assert len(market.instances()) == 4


def test_quotas_are_per_account(market: Market) -> None:
    market.set_zone_quota(ZONE, 2, account=B)  # one 2-vCPU instance
    buy(market, B)
    with pytest.raises(ApiError) as caught:
        buy(market, B)
    assert caught.value.code == "LimitExceeded.UserSpotQuota"
    assert len(buy(market, A, 3)) == 3
    assert market.quota_used(ZONE, account=B) == 2 and market.quota_used(ZONE, account=A) == 6
    assert market.zone_quota(ZONE, account=A) == 1000


def test_stock_is_shared_as_the_regions_capacity_is(market: Market) -> None:
    pool = market.pool(ZONE, TYPE)
    assert pool is not None
    before = pool.stock
    buy(market, A, 2)
    buy(market, B, 3)
    assert pool.stock == before - 5


def test_a_gone_instance_gives_its_capacity_back_to_its_account(market: Market, clock: FakeClock) -> None:
    (theirs,) = buy(market, B)
    market.terminate_instances(REGION, [theirs], "req", account=B)
    clock.advance(5)
    market.advance()
    assert market.quota_used(ZONE, account=B) == 0


# ----------------------------------------------------------------- over signed calls


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    issuer = Issuer()
    config = identity_config(small_config(), issuer, team_visible_tags={"team": "render"})
    config = config.with_overrides({"api": {"rate_limits": {"DescribeInstances": 1}}})
    rig = Rig(config, issuer)
    yield rig
    await rig.close()


def request(tags: dict[str, str], token: str = "") -> RunInstancesRequest:
    return RunInstancesRequest(zone=ZONE, instance_type=TYPE, image_id="img-12345678", count=1,
                               client_token=token or f"t-{sorted(tags.items())}", tags=tags,
                               max_price="1.0")


async def team_session(rig: Rig) -> Credentials:
    operator = await rig.client(None, service="sts").call("AssumeRoleWithWebIdentity", {
        "ProviderId": "tke-cls-test", "WebIdentityToken": rig.token(),
        "RoleArn": f"qcs::cam::uin/{ACCOUNT}:roleName/spotpool-operator", "RoleSessionName": "op"})
    op = operator["Credentials"]
    answer = await rig.client(Credentials(op["TmpSecretId"], op["TmpSecretKey"], op["Token"]),
                              service="sts").call("AssumeRole", {
        "RoleArn": TEAM_ROLE_ARN, "RoleSessionName": "pool", "ExternalId": EXTERNAL_ID})
    c = answer["Credentials"]
    return Credentials(c["TmpSecretId"], c["TmpSecretKey"], c["Token"], answer["ExpiredTime"])


async def test_a_role_session_buys_and_sees_in_its_roles_account(rig: Rig) -> None:
    team = rig.client(await team_session(rig))
    demo = rig.client(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY))
    team_key = rig.client(Credentials(*TEAM_KEY))
    (bought,) = await team.run_instances(request({"team": "render"}))
    (hidden_by_tag,) = await team_key.run_instances(request({"team": "other"}))
    assert [i.account_id for i in rig.simulator.market.instances()] == [TEAM_ACCOUNT, TEAM_ACCOUNT]
    assert await demo.describe_instances() == []
    rig.clock.advance(1)
    # The team role's CAM tag restriction holds for its sessions, as for a key pair's.
    assert [i.instance_id for i in await team.describe_instances()] == [bought]
    rig.clock.advance(1)
    assert {i.instance_id for i in await team_key.describe_instances()} == {bought, hidden_by_tag}
    with pytest.raises(CloudError) as caught:
        await demo.call("TerminateInstances", {"InstanceIds": [bought]})
    assert caught.value.code == "InvalidInstanceId.NotFound"
    ledger = rig.calls("RunInstances")
    assert [entry.account_id for entry in ledger] == [TEAM_ACCOUNT, TEAM_ACCOUNT]


async def test_rate_limits_are_the_principals_own(rig: Rig) -> None:
    """DescribeInstances at 1/s: one account's burst does not throttle another's."""
    demo = rig.client(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY), max_attempts=1)
    team = rig.client(Credentials(*TEAM_KEY), max_attempts=1)
    await team.call("DescribeInstances", {})
    with pytest.raises(CloudError) as caught:
        await team.call("DescribeInstances", {})
    assert caught.value.code == "RequestLimitExceeded"
    await demo.call("DescribeInstances", {})


async def test_sessions_of_one_role_share_its_rate_limit(rig: Rig) -> None:
    one = rig.client(await team_session(rig), max_attempts=1)
    two = rig.client(await team_session(rig), max_attempts=1)
    await one.call("DescribeInstances", {})
    with pytest.raises(CloudError) as caught:
        await two.call("DescribeInstances", {})
    assert caught.value.code == "RequestLimitExceeded"


def test_the_cli_takes_a_key_pair_of_another_account() -> None:
    from spotpool.simulator.cli import _credential

    assert _credential("AKIDX:key").account_id == A
    other = _credential(f"AKIDX:key:with:colons:{B}")
    assert (other.secret_key, other.account_id) == ("key:with:colons", B)
    assert _credential("AKIDX:key:notdigits").secret_key == "key:notdigits"
