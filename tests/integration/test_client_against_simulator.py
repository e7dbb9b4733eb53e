"""CvmClient against the CVM simulator over real HTTP: every error category, pagination, rate
limits under concurrency, retries after injected faults, ClientToken replay, already-gone
termination.

Assertions about what went over the wire use the simulator's call ledger (`GET /_sim/calls`),
not the client's own account of what it did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from spotpool.cloud import CloudError, CloudNetworkError, CvmClient, ErrorCategory
from spotpool.cloud.models import TERMINATING, Credentials, RunInstancesRequest
from spotpool.cloud.ratelimit import RateLimiterRegistry
from spotpool.simulator import RunningSimulator, SimulatorConfig, run_simulator
from tests.support.specs import simulator_config

DEMO = Credentials("AKIDSPOTPOOLDEMO00000000000000000000", "spotpoolDemoSecretKey0000000000000")
REGION = "ap-guangzhou"
ZONE = "ap-guangzhou-3"
TYPE = "S5.MEDIUM4"
IMAGE = "img-pmqg1cw7"


def lifecycle_config(**lifecycle: Any) -> SimulatorConfig:
    """For the tests that need exact lifecycle timings (the `simulator` fixture uses 0.2 s)."""
    return simulator_config(seed=20240501, lifecycle=lifecycle)


def make_client(simulator: RunningSimulator, credentials: Credentials = DEMO,
                **kwargs: Any) -> CvmClient:
    kwargs.setdefault("backoff_base", 0.05)
    kwargs.setdefault("backoff_cap", 0.5)
    return CvmClient(credentials, REGION, simulator.url, **kwargs)


@pytest.fixture
async def client(simulator: RunningSimulator) -> AsyncIterator[CvmClient]:
    async with make_client(simulator) as cvm:
        yield cvm


async def control(simulator: RunningSimulator, method: str, path: str,
                  body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        response = await http.request(method, f"/_sim/{path}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def ledger(simulator: RunningSimulator, action: str) -> list[dict[str, Any]]:
    return (await control(simulator, "GET", f"calls?action={action}"))["calls"]


async def buy(client: CvmClient, count: int, token: str, tags: dict[str, str] | None = None,
              **kwargs: Any) -> list[str]:
    args: dict[str, Any] = dict(zone=ZONE, instance_type=TYPE, image_id=IMAGE, count=count,
                                max_price="0.05", client_token=token,
                                tags=tags if tags is not None else {"suite": "client"})
    return await client.run_instances(RunInstancesRequest(**{**args, **kwargs}))


async def eventually(probe: Callable[[], Awaitable[Any]], expected: Any,
                     timeout: float = 10.0) -> None:
    """Wait until `probe()` returns `expected` (the simulator's lifecycle runs on its clock)."""
    deadline = time.monotonic() + timeout
    while (got := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}"
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------- the round trip


async def test_buy_describe_release(simulator: RunningSimulator, client: CvmClient) -> None:
    ids = await buy(client, 3, "roundtrip-1", {"spotpool.io/environment": "batch/farm"},
                    instance_name="farm-{R:1}", user_data="#!/bin/sh\necho hi\n")
    assert len(ids) == 3
    found = await client.describe_by_tag("spotpool.io/environment", "batch/farm")
    assert sorted(i.instance_id for i in found) == sorted(ids)
    assert {(i.zone, i.instance_type, i.charge_type, i.cpu, i.memory_gib) for i in found} == {
        (ZONE, TYPE, "SPOTPAID", 2, 4)}
    assert sorted(i.name for i in found) == ["farm-1", "farm-2", "farm-3"]
    assert all(i.alive and i.created_time is not None for i in found)
    assert all(i.tags == {"spotpool.io/environment": "batch/farm"} for i in found)

    await client.terminate_instances(ids)
    assert [(c["params"]["InstanceIds"], c["errorCode"])
            for c in await ledger(simulator, "TerminateInstances")] == [(ids, None)]
    await eventually(lambda: client.describe_instances(instance_ids=ids), [])


async def test_spot_offers_match_the_market(simulator: RunningSimulator,
                                            client: CvmClient) -> None:
    await control(simulator, "POST", "market", {"pools": [
        {"zone": "ap-guangzhou-4", "instanceType": "SA2.MEDIUM4", "soldOut": True}]})
    zones = ["ap-guangzhou-3", "ap-guangzhou-4", "ap-guangzhou-6", "ap-guangzhou-7"]
    types = ["S5.MEDIUM4", "SA2.MEDIUM4", "S5.LARGE8", "C5.LARGE8", "M5.MEDIUM16", "S6.MEDIUM4"]
    offers = await client.describe_spot_offers(zones=zones, instance_types=types)
    pools = (await control(simulator, "GET", "market"))["pools"]
    market = {(p["zone"], p["instanceType"]): p for p in pools}
    assert len(offers) == len(zones) * len(types)
    for offer in offers:
        pool = market[(offer.zone, offer.instance_type)]
        assert float(offer.spot_price) == pytest.approx(pool["spotPrice"])
        assert float(offer.list_price) == pytest.approx(pool["onDemandPrice"])
        assert offer.sold_out is pool["soldOut"]
    assert [o.sold_out for o in offers if (o.zone, o.instance_type) ==
            ("ap-guangzhou-4", "SA2.MEDIUM4")] == [True]
    assert len(await ledger(simulator, "DescribeZoneInstanceConfigInfos")) == 2  # 6 types: 5 + 1


# ----------------------------------------------------------------------- error categories


async def expect_error(awaitable: Any, category: ErrorCategory, code: str) -> CloudError:
    with pytest.raises(CloudError) as caught:
        await awaitable
    assert (caught.value.category, caught.value.code) == (category, code)
    assert caught.value.request_id  # the simulator's RequestId travels with the error
    return caught.value


async def test_price_below_market(simulator: RunningSimulator, client: CvmClient) -> None:
    err = await expect_error(buy(client, 1, "price-1", max_price="0.0001"), ErrorCategory.PRICE,
                             "InvalidParameterValue.InsufficientPrice")
    assert "RunInstances failed: InvalidParameterValue.InsufficientPrice" in str(err)
    assert len(await ledger(simulator, "RunInstances")) == 1  # not retried


async def test_capacity_sold_out_and_insufficient(simulator: RunningSimulator,
                                                  client: CvmClient) -> None:
    await control(simulator, "POST", "market", {"zone": ZONE, "instanceType": TYPE, "stock": 0})
    await expect_error(buy(client, 1, "cap-1"), ErrorCategory.CAPACITY,
                       "ResourcesSoldOut.SpecifiedInstanceType")
    await control(simulator, "POST", "market", {"zone": ZONE, "instanceType": TYPE, "stock": 1})
    await expect_error(buy(client, 2, "cap-2"), ErrorCategory.CAPACITY,
                       "ResourceInsufficient.SpecifiedInstanceType")
    assert len(await ledger(simulator, "RunInstances")) == 2


async def test_quota_exhausted(simulator: RunningSimulator, client: CvmClient) -> None:
    await control(simulator, "POST", "market", {"zoneQuotas": {ZONE: 2}})
    await buy(client, 1, "quota-1")
    await expect_error(buy(client, 1, "quota-2"), ErrorCategory.QUOTA,
                       "LimitExceeded.UserSpotQuota")


@pytest.mark.parametrize(
    ("credentials", "code"),
    [(Credentials(DEMO.secret_id, "wrongSecretKey000000000000000000"),
      "AuthFailure.SignatureFailure"),
     (Credentials("AKIDNOBODY0000000000000000000000000", DEMO.secret_key),
      "AuthFailure.SecretIdNotFound")],
    ids=["wrong-key", "unknown-id"],
)
async def test_auth_failures(simulator: RunningSimulator, credentials: Credentials,
                             code: str) -> None:
    async with make_client(simulator, credentials) as cvm:
        err = await expect_error(cvm.describe_instances(), ErrorCategory.AUTH, code)
    assert credentials.secret_key not in str(err)
    assert len(await ledger(simulator, "DescribeInstances")) == 1


async def test_skewed_clock_gets_one_fresh_try_then_auth_failure(
    simulator: RunningSimulator,
) -> None:
    async with make_client(simulator, clock=lambda: time.time() - 3600) as cvm:
        await expect_error(cvm.describe_instances(), ErrorCategory.AUTH,
                           "AuthFailure.SignatureExpire")
    assert [c["errorCode"] for c in await ledger(simulator, "DescribeInstances")] == [
        "AuthFailure.SignatureExpire"] * 2


async def test_invalid_requests(simulator: RunningSimulator, client: CvmClient) -> None:
    await expect_error(buy(client, 1, "bad-image", image_id="img-nope"),
                       ErrorCategory.INVALID_REQUEST, "InvalidImageId.Malformed")
    async with CvmClient(DEMO, "xx-nowhere", simulator.url) as cvm:
        await expect_error(cvm.describe_instances(), ErrorCategory.INVALID_REQUEST,
                           "UnsupportedRegion")


async def test_not_found(simulator: RunningSimulator, client: CvmClient) -> None:
    await expect_error(client.call("TerminateInstances", {"InstanceIds": ["ins-zzzzzzzz"]}),
                       ErrorCategory.NOT_FOUND, "InvalidInstanceId.NotFound")


async def test_unknown_codes_are_kept_and_not_retried(simulator: RunningSimulator,
                                                      client: CvmClient) -> None:
    await control(simulator, "POST", "faults", {"DescribeInstances": {
        "errorRate": 1.0, "errorCodes": ["SomethingNew.NeverSeenBefore"]}})
    await expect_error(client.describe_instances(), ErrorCategory.UNKNOWN,
                       "SomethingNew.NeverSeenBefore")
    assert len(await ledger(simulator, "DescribeInstances")) == 1


@pytest.mark.parametrize(
    ("fault", "category", "code"),
    [({"throttle": True}, ErrorCategory.THROTTLED, "RequestLimitExceeded"),
     ({"errorRate": 1.0, "errorCodes": ["InternalError"]}, ErrorCategory.TRANSIENT,
      "InternalError"),
     ({"errorRate": 1.0, "errorCodes": ["RequestLimitExceeded.UinLimitExceeded"]},
      ErrorCategory.THROTTLED, "RequestLimitExceeded.UinLimitExceeded")],
    ids=["throttle", "internal-error", "uin-limit"],
)
async def test_persistent_retryable_faults_give_up_after_max_attempts(
    simulator: RunningSimulator, fault: dict[str, Any], category: ErrorCategory, code: str
) -> None:
    await control(simulator, "POST", "faults", {"DescribeInstances": fault})
    async with make_client(simulator, max_attempts=4) as cvm:
        await expect_error(cvm.describe_instances(), category, code)
    assert [c["errorCode"] for c in await ledger(simulator, "DescribeInstances")] == [code] * 4


async def test_persistent_dropped_connections_are_network_errors(
    simulator: RunningSimulator,
) -> None:
    await control(simulator, "POST", "faults", {"DescribeInstances": {"dropRate": 1.0}})
    async with make_client(simulator, max_attempts=3) as cvm:
        with pytest.raises(CloudNetworkError) as caught:
            await cvm.describe_instances()
    assert caught.value.code == "ClientNetworkError"
    assert caught.value.category is ErrorCategory.TRANSIENT


# ----------------------------------------------------------------------- retries that succeed


@pytest.mark.parametrize(
    "fault",
    [{"errorRate": 1.0, "errorCodes": ["InternalError"], "times": 2},
     {"errorRate": 1.0, "errorCodes": ["ServiceUnavailable"], "times": 2},
     {"throttle": True, "times": 3},
     {"dropRate": 1.0, "times": 2}],
    ids=["internal-error", "unavailable", "throttle", "dropped"],
)
async def test_retries_succeed_after_transient_faults(
    simulator: RunningSimulator, client: CvmClient, fault: dict[str, Any]
) -> None:
    ids = await buy(client, 2, "seed-instances")
    await control(simulator, "POST", "faults", {"DescribeInstances": fault})
    found = await client.describe_instances(instance_ids=ids)
    assert sorted(i.instance_id for i in found) == sorted(ids)
    calls = await ledger(simulator, "DescribeInstances")
    assert calls[-1]["errorCode"] is None
    assert len([c for c in calls if c["errorCode"]]) == fault["times"]


async def test_run_instances_retry_after_a_lost_answer_buys_once(simulator: RunningSimulator,
                                                                 client: CvmClient) -> None:
    """The purchase happens, the answer is lost: the retry replays the ClientToken."""
    await control(simulator, "POST", "faults", {"RunInstances": {
        "dropRate": 1.0, "dropPhase": "after", "times": 1}})
    ids = await buy(client, 3, "lost-answer-1", {"case": "lost-answer"})
    assert len(ids) == 3
    held = await control(simulator, "GET", "instances?tag=case=lost-answer")
    assert sorted(i["instanceId"] for i in held["instances"]) == sorted(ids)
    assert len(await ledger(simulator, "RunInstances")) == 2


async def test_run_instances_retry_after_internal_errors(simulator: RunningSimulator,
                                                         client: CvmClient) -> None:
    await control(simulator, "POST", "faults", {"RunInstances": {
        "errorRate": 1.0, "errorCodes": ["InternalError.TradeUnknownError"], "times": 2}})
    ids = await buy(client, 2, "trade-error-1", {"case": "trade"})
    held = await control(simulator, "GET", "instances?tag=case=trade")
    assert held["count"] == len(ids) == 2


# ----------------------------------------------------------------------- ClientToken


async def test_client_token_replay_returns_the_same_ids(simulator: RunningSimulator,
                                                        client: CvmClient) -> None:
    first = await buy(client, 4, "replay-1", {"case": "replay"})
    again = await buy(client, 4, "replay-1", {"case": "replay"})
    assert again == first
    assert (await control(simulator, "GET", "instances?tag=case=replay"))["count"] == 4
    other = await buy(client, 4, "replay-2", {"case": "replay"})
    assert not set(other) & set(first)


async def test_client_token_reuse_with_other_parameters_is_refused(
    simulator: RunningSimulator, client: CvmClient
) -> None:
    await buy(client, 1, "reuse-1")
    await expect_error(buy(client, 2, "reuse-1"), ErrorCategory.INVALID_REQUEST,
                       "InvalidParameterValue")


# ----------------------------------------------------------------------- pagination


async def test_pagination_over_260_instances(simulator: RunningSimulator,
                                             client: CvmClient) -> None:
    tag = {"case": "pages"}
    ids = []
    for n, count in enumerate((100, 100, 60)):
        ids += await buy(client, count, f"pages-{n}", tag)
    await buy(client, 5, "pages-other", {"case": "not-this-one"})
    await control(simulator, "DELETE", "calls")

    found = await client.describe_by_tag("case", "pages")
    assert sorted(i.instance_id for i in found) == sorted(ids)
    assert len(found) == len({i.instance_id for i in found}) == 260
    pages = await ledger(simulator, "DescribeInstances")
    assert [(c["params"]["Offset"], c["params"]["Limit"]) for c in pages] == [
        (0, 100), (100, 100), (200, 100)]

    await control(simulator, "DELETE", "calls")
    by_id = await client.describe_instances(instance_ids=ids)
    assert sorted(i.instance_id for i in by_id) == sorted(ids)
    assert len(await ledger(simulator, "DescribeInstances")) == 3  # 100 + 100 + 60 ids


# ----------------------------------------------------------------------- rate limits


async def test_concurrent_callers_sharing_a_key_are_never_throttled(
    simulator: RunningSimulator,
) -> None:
    """Three clients (one process, one key) fire 60 calls at once; the shared bucket paces
    them to 40/s, under the simulator's limit, so not one is refused."""
    clients = [make_client(simulator) for _ in range(3)]
    started = time.monotonic()
    await asyncio.gather(*(c.call("DescribeInstances", {"Limit": 1})
                           for c in clients for _ in range(20)))
    elapsed = time.monotonic() - started
    for c in clients:
        await c.close()
    calls = await ledger(simulator, "DescribeInstances")
    assert len(calls) == 60
    assert [c["errorCode"] for c in calls] == [None] * 60
    assert elapsed >= 59 / 40 - 0.05


async def test_without_client_pacing_the_server_throttles_and_retries_recover(
    simulator: RunningSimulator,
) -> None:
    """The same burst with client limits lifted: the simulator refuses part of it, and the
    client's backoff still lands every call."""
    cvm = make_client(simulator, rate_limits={"DescribeInstances": 10_000},
                      limiter=RateLimiterRegistry(), max_attempts=12, backoff_cap=1.0)
    async with cvm:
        await asyncio.gather(*(cvm.call("DescribeInstances", {"Limit": 1}) for _ in range(80)))
    codes = [c["errorCode"] for c in await ledger(simulator, "DescribeInstances")]
    assert codes.count(None) == 80
    assert set(codes) == {None, "RequestLimitExceeded"}


# ----------------------------------------------------------------------- already gone


async def test_terminate_batch_with_a_terminating_instance() -> None:
    async with run_simulator(lifecycle_config(terminate_delay_seconds=600)) as running:
        async with make_client(running) as cvm:
            a, b, c = await buy(cvm, 3, "gone-1")
            await cvm.terminate_instances([a])
            await control(running, "DELETE", "calls")
            await cvm.terminate_instances([a, b, c])
            calls = await ledger(running, "TerminateInstances")
            assert [(x["params"]["InstanceIds"], x["errorCode"]) for x in calls] == [
                ([a, b, c], "UnsupportedOperation.InstanceStateTerminating"),
                ([b, c], None),
            ]
            after = await cvm.describe_instances(instance_ids=[a, b, c])
            assert {i.instance_id: i.state for i in after} == dict.fromkeys([a, b, c], TERMINATING)


async def test_terminate_batch_with_destroyed_and_unknown_instances() -> None:
    async with run_simulator(lifecycle_config(terminate_delay_seconds=0)) as running:
        async with make_client(running) as cvm:
            a, b, c = await buy(cvm, 3, "gone-2")
            await cvm.terminate_instances([a])
            assert await cvm.describe_instances(instance_ids=[a]) == []  # destroyed at once
            await control(running, "DELETE", "calls")
            await cvm.terminate_instances([a, b, "ins-zzzzzzzz", c])
            await cvm.terminate_instances([a])  # a lone gone id: success, no describe
            calls = await ledger(running, "TerminateInstances")
            assert [(x["params"]["InstanceIds"], x["errorCode"]) for x in calls] == [
                ([a, b, "ins-zzzzzzzz", c], "UnsupportedOperation.InstanceStateTerminated"),
                ([b, c], None),
                ([a], "UnsupportedOperation.InstanceStateTerminated"),
            ]
            assert len(await ledger(running, "DescribeInstances")) == 1
            assert (await control(running, "GET", "instances"))["count"] == 0
