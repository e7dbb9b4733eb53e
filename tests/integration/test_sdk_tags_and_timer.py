"""Tencent's official SDKs against the simulator for issue 20: the tag service's TagResources /
UnTagResources (tencentcloud-sdk-python-tag) and CVM's RunInstances with an ActionTimer.

The SDKs are unchanged but for the endpoint: if they sign, send and parse against the simulator,
the simulator speaks those APIs' protocol (version, signing scope `tag`, field names, the
FailedResources answer). The simulator's clock is real time plus an offset a test moves forward,
so a timer minutes ahead fires at once; the SDK signs with real time (the skew check is relaxed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.cvm.v20170312 import cvm_client
from tencentcloud.cvm.v20170312 import models as cvm_models
from tencentcloud.tag.v20180813 import models as tag_models
from tencentcloud.tag.v20180813 import tag_client

from spotpool.api.names import service_endpoint
from spotpool.cloud.client import CvmClient
from spotpool.cloud.models import Credentials
from spotpool.cloud.wire import instance_resource
from spotpool.simulator import RunningSimulator, run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from spotpool.simulator.render import iso_time
from tests.integration.conftest import fast_config

T = TypeVar("T")
ACCOUNT = "100000000001"
OTHER = ("AKIDOTHERACCOUNT000000000000000000000", "otherAccountSecretKey0000000000000", "200000000002")
REGION = "ap-guangzhou"
DO_NOT_DISRUPT_TAG = "spotpool.io/do-not-disrupt"  # set by workloads on their own instance


class OffsetClock:
    """Real time plus an offset that only grows: the simulator's clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
async def sim(clock: OffsetClock) -> AsyncIterator[RunningSimulator]:
    config = fast_config(
        api={"max_clock_skew_seconds": 10**9},
        lifecycle={"terminate_delay_seconds": 30},  # on the offset clock: TERMINATING until moved on
        credentials=[{"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
                     {"secret_id": OTHER[0], "secret_key": OTHER[1], "account_id": OTHER[2]}],
    )
    async with run_simulator(config, clock=clock) as running:
        yield running


def profile(sim: RunningSimulator) -> ClientProfile:
    return ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=f"127.0.0.1:{sim.port}"))


def tags_sdk(sim: RunningSimulator, secret_id: str = DEMO_SECRET_ID,
             secret_key: str = DEMO_SECRET_KEY) -> tag_client.TagClient:
    return tag_client.TagClient(credential.Credential(secret_id, secret_key), REGION, profile(sim))


def cvm_sdk(sim: RunningSimulator) -> cvm_client.CvmClient:
    return cvm_client.CvmClient(credential.Credential(DEMO_SECRET_ID, DEMO_SECRET_KEY), REGION, profile(sim))


def request(model: type[T], fields: dict[str, Any]) -> T:
    built = model()
    built.from_json_string(json.dumps(fields))  # type: ignore[attr-defined]
    return built


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


async def sdk_error(fn: Callable[[], Any]) -> TencentCloudSDKException:
    with pytest.raises(TencentCloudSDKException) as caught:
        await in_thread(fn)
    return caught.value


def purchase(count: int = 1, **extra: Any) -> cvm_models.RunInstancesRequest:
    return request(cvm_models.RunInstancesRequest, {
        "Placement": {"Zone": "ap-guangzhou-3"},
        "InstanceChargeType": "SPOTPAID",
        "InstanceMarketOptions": {"MarketType": "spot",
                                  "SpotOptions": {"MaxPrice": "0.0923", "SpotInstanceType": "one-time"}},
        "ImageId": "img-pmqg1cw7",
        "InstanceType": "S2.MEDIUM4",
        "InstanceCount": count,
        "TagSpecification": [{"ResourceType": "instance", "Tags": [{"Key": "pool", "Value": "sdk"}]}],
        **extra,
    })


async def listed(sim: RunningSimulator, filters: list[dict[str, Any]]) -> list[str]:
    answer = await in_thread(lambda: cvm_sdk(sim).DescribeInstances(
        request(cvm_models.DescribeInstancesRequest, {"Filters": filters, "Limit": 100})))
    return [inst.InstanceId for inst in answer.InstanceSet]


async def test_tag_and_untag_resources_through_the_sdk(sim: RunningSimulator) -> None:
    ids = (await in_thread(lambda: cvm_sdk(sim).RunInstances(purchase(2)))).InstanceIdSet
    resources = [instance_resource(REGION, ACCOUNT, iid) for iid in ids]
    tagged = await in_thread(lambda: tags_sdk(sim).TagResources(request(tag_models.TagResourcesRequest, {
        "ResourceList": resources, "Tags": [{"TagKey": DO_NOT_DISRUPT_TAG, "TagValue": "true"}]})))
    assert tagged.FailedResources == [] and tagged.RequestId
    wanted = [{"Name": f"tag:{DO_NOT_DISRUPT_TAG}", "Values": ["true"]}]
    assert await listed(sim, wanted) == ids
    untagged = await in_thread(lambda: tags_sdk(sim).UnTagResources(request(tag_models.UnTagResourcesRequest, {
        "ResourceList": resources[:1], "TagKeys": [DO_NOT_DISRUPT_TAG]})))
    assert untagged.FailedResources == []
    assert await listed(sim, wanted) == ids[1:]
    described = await in_thread(lambda: cvm_sdk(sim).DescribeInstances(
        request(cvm_models.DescribeInstancesRequest, {"InstanceIds": ids})))
    assert {i.InstanceId: {t.Key: t.Value for t in i.Tags} for i in described.InstanceSet} == {
        ids[0]: {"pool": "sdk"}, ids[1]: {"pool": "sdk", DO_NOT_DISRUPT_TAG: "true"}}


async def test_the_sdk_gets_the_tag_services_refusals(sim: RunningSimulator) -> None:
    (iid,) = (await in_thread(lambda: cvm_sdk(sim).RunInstances(purchase()))).InstanceIdSet
    mine = instance_resource(REGION, ACCOUNT, iid)
    other = tags_sdk(sim, OTHER[0], OTHER[1])
    denied = await sdk_error(lambda: other.TagResources(request(tag_models.TagResourcesRequest, {
        "ResourceList": [mine], "Tags": [{"TagKey": "k", "TagValue": "v"}]})))
    assert denied.code == "AuthFailure.UnauthorizedOperation" and denied.requestId
    reserved = await sdk_error(lambda: tags_sdk(sim).TagResources(request(tag_models.TagResourcesRequest, {
        "ResourceList": [mine], "Tags": [{"TagKey": "qcs:owner", "TagValue": "v"}]})))
    assert reserved.code == "InvalidParameter.ReservedTagKey"
    too_many = await sdk_error(lambda: tags_sdk(sim).UnTagResources(request(tag_models.UnTagResourcesRequest, {
        "ResourceList": [mine], "TagKeys": [f"k{n}" for n in range(11)]})))
    assert too_many.code == "LimitExceeded.TagNumPerRequest"


async def test_run_instances_with_an_action_timer_through_the_sdk(sim: RunningSimulator, clock: OffsetClock) -> None:
    def timer(seconds: float) -> dict[str, Any]:
        return {"ActionTimer": {"TimerAction": "TerminateInstances", "ActionTime": iso_time(clock() + seconds)}}

    refused = await sdk_error(lambda: cvm_sdk(sim).RunInstances(purchase(2, ClientToken="tok-t", **timer(60))))
    assert refused.code == "InvalidParameterValue.InvalidTimeFormat"
    malformed = await sdk_error(lambda: cvm_sdk(sim).RunInstances(purchase(2, ActionTimer={
        "TimerAction": "TerminateInstances", "ActionTime": "2030-01-01 00:00:00"})))
    assert malformed.code == "InvalidParameterValue.InvalidTimeFormat"
    assert sim.market.all_instances_ever() == []
    ids = (await in_thread(lambda: cvm_sdk(sim).RunInstances(purchase(2, ClientToken="tok-t", **timer(600)))))
    ids = ids.InstanceIdSet
    assert len(ids) == 2

    async def states() -> dict[str, str]:
        described = await in_thread(lambda: cvm_sdk(sim).DescribeInstances(
            request(cvm_models.DescribeInstancesRequest, {"InstanceIds": ids})))
        return {i.InstanceId: i.InstanceState for i in described.InstanceSet}

    clock.advance(300)
    assert set((await states()).values()) == {"RUNNING"}
    clock.advance(301)
    assert set((await states()).values()) == {"TERMINATING"}
    clock.advance(30)
    assert await states() == {}


async def test_spotpools_tag_client_reaches_the_simulator_at_its_own_endpoint(sim: RunningSimulator) -> None:
    (iid,) = (await in_thread(lambda: cvm_sdk(sim).RunInstances(purchase()))).InstanceIdSet
    assert service_endpoint(sim.url, "tag") == sim.url
    async with CvmClient(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY), REGION, service_endpoint(sim.url, "tag"),
                         service="tag") as client:
        await client.tag_resources([instance_resource(REGION, ACCOUNT, iid)], {"spotpool.io/draining": "now"})
    assert await listed(sim, [{"Name": "tag:spotpool.io/draining", "Values": ["now"]}]) == [iid]
