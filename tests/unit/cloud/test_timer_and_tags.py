"""Issue 20 in the client: RunInstances' ActionTimer and the tag service's TagResources /
UnTagResources, on the wire (byte for byte against Tencent's SDK models), their bounds, and the
answers (`FailedResources`) over httpx.MockTransport. tests/unit/simulator/test_tag_service.py and
test_action_timer.py run the same client against the simulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from tencentcloud.cvm.v20170312 import models as cvm_sdk
from tencentcloud.tag.v20180813 import models as tag_sdk

from spotpool.api.names import service_endpoint, sts_endpoint
from spotpool.cloud import wire
from spotpool.cloud.client import API_VERSIONS, CvmClient, TagFailure
from spotpool.cloud.errors import ACTION_TIMER_REFUSED, CloudError, ErrorCategory, classify
from spotpool.cloud.models import Credentials, RunInstancesRequest
from tests.unit.cloud.test_client_unit import _sdk_body, make_client, reply

INSTANCE = "qcs::cvm:ap-guangzhou:uin/100000000001:instance/ins-abcd1234"
OTHER = "qcs::cvm:ap-guangzhou:uin/100000000001:instance/ins-0a1b2c3d"


def purchase(**changes: Any) -> RunInstancesRequest:
    fields: dict[str, Any] = {
        "zone": "ap-guangzhou-3", "instance_type": "S5.MEDIUM4", "image_id": "img-pmqg1cw7",
        "count": 1, "client_token": "tok-1", "max_price": "1.0", "tags": {"pool": "a"},
    }
    return RunInstancesRequest(**{**fields, **changes})


# ------------------------------------------------------------------------------ ActionTimer


def test_action_timer_is_emitted_in_utc_to_the_second_after_the_client_token() -> None:
    beijing = timezone(timedelta(hours=8))
    params = wire.run_instances_params(
        purchase(terminate_at=datetime(2026, 5, 1, 20, 30, 15, 999_999, tzinfo=beijing)))
    assert params["ActionTimer"] == {"TimerAction": "TerminateInstances", "ActionTime": "2026-05-01T12:30:15Z"}
    keys = list(params)
    assert keys.index("ClientToken") + 1 == keys.index("ActionTimer") < keys.index("TagSpecification")
    assert "ActionTimer" not in wire.run_instances_params(purchase())


def test_a_naive_terminate_time_is_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        wire.run_instances_params(purchase(terminate_at=datetime(2026, 5, 1, 12, 0, 0)))


async def test_run_instances_with_a_timer_is_byte_identical_to_the_sdk() -> None:
    client, fake, _ = make_client(lambda action, body, req: reply({"InstanceIdSet": ["ins-abcd1234"]}))
    async with client:
        await client.run_instances(purchase(terminate_at=datetime(2026, 5, 1, 12, 0, tzinfo=UTC)))
    sdk = cvm_sdk.RunInstancesRequest()
    sdk.from_json_string(json.dumps({
        "InstanceChargeType": "SPOTPAID",
        "Placement": {"Zone": "ap-guangzhou-3", "ProjectId": 0},
        "InstanceType": "S5.MEDIUM4",
        "ImageId": "img-pmqg1cw7",
        "InstanceCount": 1,
        "ClientToken": "tok-1",
        "ActionTimer": {"TimerAction": "TerminateInstances", "ActionTime": "2026-05-01T12:00:00Z"},
        "TagSpecification": [{"ResourceType": "instance", "Tags": [{"Key": "pool", "Value": "a"}]}],
        "InstanceMarketOptions": {"MarketType": "spot",
                                  "SpotOptions": {"MaxPrice": "1.0", "SpotInstanceType": "one-time"}},
    }))
    assert fake.requests[0].content == _sdk_body(sdk)


async def test_the_timer_refusal_is_an_invalid_request_and_not_retried() -> None:
    client, fake, _ = make_client(lambda action, body, req: reply(
        {"Error": {"Code": ACTION_TIMER_REFUSED, "Message": "ActionTime must be 5 minutes later"}}))
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.run_instances(purchase(terminate_at=datetime(2020, 1, 1, tzinfo=UTC)))
    assert caught.value.category is ErrorCategory.INVALID_REQUEST and not caught.value.retryable
    assert len(fake.requests) == 1
    assert classify("UnsupportedOperation.NotSupportImportInstancesActionTimer") is ErrorCategory.INVALID_REQUEST


# ------------------------------------------------------------------------- resource names


def test_instance_resource_is_the_six_segment_name() -> None:
    assert wire.instance_resource("ap-guangzhou", "100000000001", "ins-abcd1234") == INSTANCE


@pytest.mark.parametrize(("region", "account", "instance"), [
    ("", "100000000001", "ins-abcd1234"),
    ("ap-guangzhou:uin/1", "100000000001", "ins-abcd1234"),
    ("ap-guangzhou", "AKIDEXAMPLE", "ins-abcd1234"),
    ("ap-guangzhou", "", "ins-abcd1234"),
    ("ap-guangzhou", "100000000001", "ins-abcd1234/../x"),
    ("ap-guangzhou", "100000000001", ""),
])
def test_instance_resource_refuses_what_would_name_something_else(region: str, account: str, instance: str) -> None:
    with pytest.raises(ValueError):
        wire.instance_resource(region, account, instance)


@pytest.mark.parametrize(("cvm", "service", "expected"), [
    ("https://cvm.tencentcloudapi.com", "tag", "https://tag.tencentcloudapi.com"),
    ("https://cvm.ap-guangzhou.tencentcloudapi.com/", "tag", "https://tag.ap-guangzhou.tencentcloudapi.com"),
    ("https://cvm.internal.tencentcloudapi.com", "sts", "https://sts.internal.tencentcloudapi.com"),
    ("https://cvm.intl.tencentcloudapi.com", "tag", "https://tag.intl.tencentcloudapi.com"),
    ("http://127.0.0.1:9000", "tag", "http://127.0.0.1:9000"),
    ("https://gateway.example.com", "tag", "https://gateway.example.com"),
])
def test_service_endpoint_pairs_tencent_hosts_and_asks_any_other_itself(cvm: str, service: str, expected: str) -> None:
    assert service_endpoint(cvm, service) == expected


def test_sts_endpoint_is_unchanged() -> None:
    assert sts_endpoint("https://cvm.tencentcloudapi.com") == "https://sts.tencentcloudapi.com"
    assert sts_endpoint("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"


# ------------------------------------------------------------------------- tag parameters


def test_tag_parameters_are_sorted_deduplicated_and_byte_identical_to_the_sdk() -> None:
    params = wire.tag_resources_params([INSTANCE, OTHER, INSTANCE],
                                       {"spotpool.io/draining": "2026-05-01T12:00:00Z", "a": "1"})
    assert params == {"ResourceList": [INSTANCE, OTHER],
                      "Tags": [{"TagKey": "a", "TagValue": "1"},
                               {"TagKey": "spotpool.io/draining", "TagValue": "2026-05-01T12:00:00Z"}]}
    sdk = tag_sdk.TagResourcesRequest()
    sdk.from_json_string(json.dumps(params))
    assert json.dumps(params).encode() == _sdk_body(sdk)
    untag = wire.untag_resources_params([INSTANCE], ["spotpool.io/draining", "spotpool.io/draining"])
    assert untag == {"ResourceList": [INSTANCE], "TagKeys": ["spotpool.io/draining"]}
    sdk_untag = tag_sdk.UnTagResourcesRequest()
    sdk_untag.from_json_string(json.dumps(untag))
    assert json.dumps(untag).encode() == _sdk_body(sdk_untag)


def _instances(count: int) -> list[str]:
    return [wire.instance_resource("ap-guangzhou", "100000000001", f"ins-{n:08d}") for n in range(count)]


@pytest.mark.parametrize(("resources", "tags"), [
    ([], {"k": "v"}),
    (_instances(11), {"k": "v"}),
    ([INSTANCE], {}),
    ([INSTANCE], {f"k{n}": "v" for n in range(11)}),
    ([INSTANCE], {"": "v"}),
    ([INSTANCE], {"k" * 128: "v"}),
    ([INSTANCE], {" k": "v"}),
    ([INSTANCE], {"k": ""}),
    ([INSTANCE], {"k": "v" * 256}),
    ([INSTANCE], {"k": "v "}),
    (["ins-abcd1234"], {"k": "v"}),  # an id is not a resource name
    ([INSTANCE + "\n"], {"k": "v"}),
    (INSTANCE, {"k": "v"}),  # a string, not a list of names
])
def test_tag_calls_are_bounded_before_any_call(resources: Any, tags: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        wire.tag_resources_params(resources, tags)


def test_the_documented_limits_are_accepted() -> None:
    wire.tag_resources_params(_instances(10), {f"k{n}" * 20: "v" * 255 for n in range(10)})
    wire.untag_resources_params(_instances(10), [f"k{n}" for n in range(10)])
    with pytest.raises(ValueError):
        wire.untag_resources_params([INSTANCE], [f"k{n}" for n in range(11)])
    with pytest.raises(ValueError):
        wire.untag_resources_params([INSTANCE], "spotpool.io/draining")


# ---------------------------------------------------------------------------- the client


def tag_client(handler: Any) -> tuple[CvmClient, Any]:
    client, fake, _ = make_client(handler, endpoint="https://tag.tencentcloudapi.com", service="tag",
                                  clock=lambda: 1735689600)
    return client, fake


async def test_tag_resources_is_signed_for_the_tag_service() -> None:
    assert API_VERSIONS["tag"] == "2018-08-13"
    client, fake = tag_client(lambda action, body, req: reply({"FailedResources": []}))
    async with client:
        await client.tag_resources([INSTANCE], {"spotpool.io/draining": "2026-05-01T12:00:00Z"})
        await client.untag_resources([INSTANCE], ["spotpool.io/draining"])
    tag, untag = fake.requests
    assert tag.headers["X-TC-Action"] == "TagResources" and untag.headers["X-TC-Action"] == "UnTagResources"
    assert tag.headers["X-TC-Version"] == "2018-08-13" and tag.headers["Host"] == "tag.tencentcloudapi.com"
    assert "/2025-01-01/tag/tc3_request" in tag.headers["Authorization"]


async def test_failed_resources_raise_with_what_was_not_changed() -> None:
    client, _ = tag_client(lambda action, body, req: reply({"FailedResources": [
        {"Resource": OTHER, "Code": "ResourceNotFound.RecordNotFound", "Message": "gone\x1b[31m"}]}))
    async with client:
        with pytest.raises(TagFailure) as caught:
            await client.tag_resources([INSTANCE, OTHER], {"k": "v"})
    failure = caught.value
    assert failure.failed == {OTHER: ("ResourceNotFound.RecordNotFound", "gone[31m")}
    assert failure.code == "ResourceNotFound.RecordNotFound" and failure.category is ErrorCategory.NOT_FOUND
    assert failure.action == "TagResources" and "1 resource(s) not changed" in str(failure)


@pytest.mark.parametrize("failed", [
    "all of them",
    [{"Resource": "qcs::cvm:ap-guangzhou:uin/1:instance/ins-99999999", "Code": "X", "Message": ""}],
    [{"Resource": INSTANCE, "Code": "<script>", "Message": ""}],
    [{"Resource": INSTANCE, "Code": "X"}, {"Resource": INSTANCE, "Code": "X"}],
    [["not", "an", "object"]],
])
async def test_a_failed_resources_list_off_the_documented_shape_is_an_invalid_response(failed: Any) -> None:
    client, _ = tag_client(lambda action, body, req: reply({"FailedResources": failed}))
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.tag_resources([INSTANCE], {"k": "v"})
    assert caught.value.code == "InvalidResponse"


async def test_tag_calls_need_a_tag_client_and_a_busy_tag_service_is_retried() -> None:
    answers = iter([reply({"Error": {"Code": "FailedOperation.ResourceTagProcessing", "Message": "busy"}}),
                    reply({"FailedResources": None})])
    client, fake = tag_client(lambda action, body, req: next(answers))
    async with client:
        await client.untag_resources([INSTANCE], ["k"])
    assert len(fake.requests) == 2
    cvm = CvmClient(Credentials("AKIDEXAMPLE", "key"), "ap-guangzhou",
                    transport=httpx.MockTransport(lambda request: reply({})))
    async with cvm:
        with pytest.raises(ValueError, match="service='tag'"):
            await cvm.tag_resources([INSTANCE], {"k": "v"})
    with pytest.raises(ValueError, match="unsigned"):
        CvmClient(None, "ap-guangzhou", service="tag")
