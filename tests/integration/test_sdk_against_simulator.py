"""Tencent's official Python SDK, unchanged except for the endpoint, against the simulator.

The SDK is the reference client: if it signs, sends and parses against the simulator, the
simulator speaks the real protocol (envelope, Content-Type, signature, field names). The SDK is
synchronous, so each test runs its SDK calls in a worker thread while the simulator serves from
the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.cvm.v20170312 import cvm_client, models

from spotpool.simulator import RunningSimulator, SimulatorConfig, run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY

T = TypeVar("T")
GUIDE_PURCHASE = {
    "Placement": {"Zone": "ap-guangzhou-3"},
    "InstanceChargeType": "SPOTPAID",
    "InstanceMarketOptions": {
        "MarketType": "spot",
        "SpotOptions": {"MaxPrice": "0.0923", "SpotInstanceType": "one-time"},
    },
    "ImageId": "img-pmqg1cw7",
    "InstanceType": "S2.MEDIUM4",
    "InstanceCount": 1,
}


def sdk_client(
    sim: RunningSimulator, secret_key: str = DEMO_SECRET_KEY, method: str = "POST"
) -> cvm_client.CvmClient:
    """The documented way to reach a plain-HTTP endpoint: HttpProfile(protocol="http")."""
    http = HttpProfile(protocol="http", endpoint=f"127.0.0.1:{sim.port}", reqMethod=method)
    return cvm_client.CvmClient(
        credential.Credential(DEMO_SECRET_ID, secret_key),
        "ap-guangzhou",
        ClientProfile(httpProfile=http),
    )


def request(model: type[T], fields: dict[str, Any]) -> T:
    built = model()
    built.from_json_string(json.dumps(fields))  # type: ignore[attr-defined]
    return built


def tagged_purchase(pool: str, count: int = 1) -> models.RunInstancesRequest:
    return request(
        models.RunInstancesRequest,
        {
            **GUIDE_PURCHASE,
            "InstanceCount": count,
            "TagSpecification": [
                {"ResourceType": "instance", "Tags": [{"Key": "pool", "Value": pool}]}
            ],
        },
    )


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


async def sdk_error(fn: Callable[[], Any]) -> TencentCloudSDKException:
    with pytest.raises(TencentCloudSDKException) as caught:
        await in_thread(fn)
    return caught.value


async def test_the_guides_purchase_returns_one_instance_id(simulator: RunningSimulator) -> None:
    client = sdk_client(simulator)
    response = await in_thread(
        lambda: client.RunInstances(request(models.RunInstancesRequest, GUIDE_PURCHASE))
    )
    assert len(response.InstanceIdSet) == 1
    assert re.fullmatch(r"ins-[a-z0-9]{8}", response.InstanceIdSet[0])
    assert response.RequestId


async def test_describe_by_tag_and_by_id_until_running(simulator: RunningSimulator) -> None:
    client = sdk_client(simulator)
    ids = (await in_thread(lambda: client.RunInstances(tagged_purchase("sdk", 2)))).InstanceIdSet
    await in_thread(lambda: client.RunInstances(tagged_purchase("other")))
    by_tag = await in_thread(
        lambda: client.DescribeInstances(
            request(
                models.DescribeInstancesRequest,
                {"Filters": [{"Name": "tag:pool", "Values": ["sdk"]}], "Limit": 100},
            )
        )
    )
    assert by_tag.TotalCount == 2
    assert [i.InstanceId for i in by_tag.InstanceSet] == ids
    first = by_tag.InstanceSet[0]
    assert first.Placement.Zone == "ap-guangzhou-3" and first.InstanceType == "S2.MEDIUM4"
    assert first.InstanceChargeType == "SPOTPAID" and first.CPU == 2 and first.Memory == 4
    assert [(t.Key, t.Value) for t in first.Tags] == [("pool", "sdk")]
    assert first.ImageId == "img-pmqg1cw7" and first.PrivateIpAddresses

    deadline = time.monotonic() + 5
    while True:
        by_id = await in_thread(
            lambda: client.DescribeInstances(
                request(models.DescribeInstancesRequest, {"InstanceIds": ids})
            )
        )
        if all(i.InstanceState == "RUNNING" for i in by_id.InstanceSet):
            break
        assert time.monotonic() < deadline, "instances did not reach RUNNING"
        await asyncio.sleep(0.05)
    assert by_id.TotalCount == 2


async def test_get_requests_are_signed_and_answered_too(simulator: RunningSimulator) -> None:
    client = sdk_client(simulator, method="GET")
    await in_thread(lambda: client.RunInstances(tagged_purchase("via-get")))
    found = await in_thread(
        lambda: client.DescribeInstances(
            request(
                models.DescribeInstancesRequest,
                {"Filters": [{"Name": "tag:pool", "Values": ["via-get"]}]},
            )
        )
    )
    assert found.TotalCount == 1


async def test_terminate_then_the_instance_disappears(simulator: RunningSimulator) -> None:
    client = sdk_client(simulator)
    [iid] = (await in_thread(lambda: client.RunInstances(tagged_purchase("bye")))).InstanceIdSet
    await in_thread(
        lambda: client.TerminateInstances(
            request(models.TerminateInstancesRequest, {"InstanceIds": [iid]})
        )
    )
    again = await sdk_error(
        lambda: client.TerminateInstances(
            request(models.TerminateInstancesRequest, {"InstanceIds": [iid]})
        )
    )
    assert again.code == "UnsupportedOperation.InstanceStateTerminating"
    deadline = time.monotonic() + 5
    while (
        await in_thread(
            lambda: client.DescribeInstances(
                request(models.DescribeInstancesRequest, {"InstanceIds": [iid]})
            )
        )
    ).TotalCount:
        assert time.monotonic() < deadline, "the terminated instance did not disappear"
        await asyncio.sleep(0.05)


async def test_wrong_secret_key_is_a_signature_failure(simulator: RunningSimulator) -> None:
    client = sdk_client(simulator, secret_key="not-the-key")
    error = await sdk_error(lambda: client.DescribeZones(models.DescribeZonesRequest()))
    assert error.code == "AuthFailure.SignatureFailure"
    assert error.requestId


async def test_a_bid_below_the_market_is_insufficient_price(simulator: RunningSimulator) -> None:
    client = sdk_client(simulator)
    low = {
        **GUIDE_PURCHASE,
        "InstanceMarketOptions": {
            "MarketType": "spot",
            "SpotOptions": {"MaxPrice": "0.001", "SpotInstanceType": "one-time"},
        },
    }
    error = await sdk_error(lambda: client.RunInstances(request(models.RunInstancesRequest, low)))
    assert error.code == "InvalidParameterValue.InsufficientPrice"
    assert simulator.market.instances() == []


async def test_throttling_is_request_limit_exceeded(
    fast_config: Callable[..., SimulatorConfig],
) -> None:
    frozen = time.time()  # a frozen clock makes the bucket exact: 10 calls, then throttled
    async with run_simulator(fast_config(), clock=lambda: frozen) as sim:
        client = sdk_client(sim)
        for _ in range(10):
            await in_thread(
                lambda: client.RunInstances(request(models.RunInstancesRequest, GUIDE_PURCHASE))
            )
        error = await sdk_error(
            lambda: client.RunInstances(request(models.RunInstancesRequest, GUIDE_PURCHASE))
        )
        assert error.code == "RequestLimitExceeded"


async def test_spot_prices_and_zones_parse_into_sdk_models(simulator: RunningSimulator) -> None:
    client = sdk_client(simulator)
    configs = await in_thread(
        lambda: client.DescribeZoneInstanceConfigInfos(
            request(
                models.DescribeZoneInstanceConfigInfosRequest,
                {
                    "Filters": [
                        {"Name": "zone", "Values": ["ap-guangzhou-3"]},
                        {"Name": "instance-charge-type", "Values": ["SPOTPAID"]},
                    ]
                },
            )
        )
    )
    item = next(i for i in configs.InstanceTypeQuotaSet if i.InstanceType == "S2.MEDIUM4")
    assert item.Status == "SELL" and item.Price.ChargeUnit == "HOUR"
    assert item.Price.UnitPrice == 0.0896 and item.Price.UnitPriceDiscount == 0.01792
    zones = await in_thread(lambda: client.DescribeZones(models.DescribeZonesRequest()))
    assert "ap-guangzhou-3" in [z.Zone for z in zones.ZoneSet]
