"""CvmClient over httpx.MockTransport: wire format, pagination, chunking, retries, secrets."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from tencentcloud.cvm.v20170312 import models as sdk

from spotpool import __version__
from spotpool.cloud.client import CvmClient
from spotpool.cloud.errors import CloudError, CloudNetworkError, ErrorCategory
from spotpool.cloud.models import Credentials, Instance, RunInstancesRequest
from spotpool.cloud.ratelimit import RateLimiterRegistry

FAKE_KEY = "EXAMPLEKEYtc3fakeSecretKey0123456"
SECRET = "S3cr3tKeyThatMustNeverLeak0123456789"
TOKEN = "SessionTokenThatMustNeverLeak"

Handler = Callable[[str, dict[str, Any], httpx.Request], httpx.Response]


def reply(payload: dict[str, Any], request_id: str = "req-1") -> httpx.Response:
    return httpx.Response(
        200,
        json={"Response": {**payload, "RequestId": request_id}},
        headers={"Content-Type": "application/json"},
    )


def error(code: str, message: str = "boom", request_id: str = "req-err") -> httpx.Response:
    return reply({"Error": {"Code": code, "Message": message}}, request_id)


class FakeCvm:
    """Records every request and answers through a per-test handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request.headers["X-TC-Action"], json.loads(request.content), request)

    def bodies(self, action: str | None = None) -> list[dict[str, Any]]:
        return [
            json.loads(r.content) for r in self.requests
            if action is None or r.headers["X-TC-Action"] == action
        ]


class Recorder:
    """Stands in for asyncio.sleep (backoff) and for the metrics observer."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.observed: list[tuple[str, float, str | None]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def observe(self, action: str, seconds: float, code: str | None) -> None:
        self.observed.append((action, seconds, code))


async def _no_wait(_: float) -> None:
    return None


def make_client(
    handler: Handler | FakeCvm,
    *,
    credentials: Credentials | None = None,
    region: str = "ap-guangzhou",
    endpoint: str = "https://cvm.tencentcloudapi.com",
    recorder: Recorder | None = None,
    **kwargs: Any,
) -> tuple[CvmClient, FakeCvm, Recorder]:
    fake = handler if isinstance(handler, FakeCvm) else FakeCvm(handler)
    rec = recorder or Recorder()
    client = CvmClient(
        credentials or Credentials("AKIDEXAMPLE", FAKE_KEY),
        region,
        endpoint,
        transport=httpx.MockTransport(fake),
        observer=rec.observe,
        limiter=RateLimiterRegistry(sleep=_no_wait),
        sleep=rec.sleep,
        rng=random.Random(7),
        **kwargs,
    )
    return client, fake, rec


# --------------------------------------------------------------- wire format against the SDK

V2_BODY = (
    b'{"InstanceChargeType": "SPOTPAID", "Placement": {"Zone": "ap-guangzhou-3", "ProjectId": 0},'
    b' "InstanceType": "S5.MEDIUM4", "ImageId": "img-eb30mz89", "InstanceCount": 2,'
    b' "InstanceName": "pool-a-{R:1}", "ClientToken": "8f0e7c0d-2a44-4c39-9d0a-1d2c3b4a5e6f",'
    b' "TagSpecification": [{"ResourceType": "instance", "Tags": [{"Key": "pool", "Value":'
    b' "pool-a"}]}], "InstanceMarketOptions": {"SpotOptions": {"MaxPrice": "1000",'
    b' "SpotInstanceType": "one-time"}, "MarketType": "spot"}}'
)
V2_AUTHORIZATION = (
    "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2024-12-31/cvm/tc3_request, "
    "SignedHeaders=content-type;host, "
    "Signature=b82dfd446df3fd1342c5cb2f51b4ddb9b6e393e83c31ddce04f410a914e46903"
)


async def test_run_instances_sends_vector_v2_byte_for_byte() -> None:
    client, fake, _ = make_client(
        lambda action, body, req: reply({"InstanceIdSet": ["ins-aaaa1111", "ins-bbbb2222"]}),
        clock=lambda: 1735689599.7,
    )
    async with client:
        ids = await client.run_instances(RunInstancesRequest(
            zone="ap-guangzhou-3", instance_type="S5.MEDIUM4", image_id="img-eb30mz89", count=2,
            max_price="1000", client_token="8f0e7c0d-2a44-4c39-9d0a-1d2c3b4a5e6f",
            tags={"pool": "pool-a"}, instance_name="pool-a-{R:1}",
        ))
    assert ids == ["ins-aaaa1111", "ins-bbbb2222"]
    (request,) = fake.requests
    assert request.method == "POST" and request.url == "https://cvm.tencentcloudapi.com/"
    assert request.content == V2_BODY
    assert request.headers["Authorization"] == V2_AUTHORIZATION
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Host"] == "cvm.tencentcloudapi.com"
    assert request.headers["X-TC-Action"] == "RunInstances"
    assert request.headers["X-TC-Version"] == "2017-03-12"
    assert request.headers["X-TC-Region"] == "ap-guangzhou"
    assert request.headers["X-TC-Timestamp"] == "1735689599"
    assert request.headers["X-TC-RequestClient"] == f"spotpool/{__version__}"
    assert "X-TC-Token" not in request.headers


async def test_describe_sends_vector_v5_with_port_in_host() -> None:
    client, fake, _ = make_client(
        lambda action, body, req: reply({"TotalCount": 0, "InstanceSet": []}),
        endpoint="http://127.0.0.1:18443", clock=lambda: 1700000000,
    )
    async with client:
        assert await client.describe_instances(filters={"instance-name": ["测试"]}) == []
    (request,) = fake.requests
    assert request.content == (
        b'{"Filters": [{"Name": "instance-name", "Values": ["\\u6d4b\\u8bd5"]}],'
        b' "Offset": 0, "Limit": 100}'
    )
    assert request.headers["Host"] == "127.0.0.1:18443"
    assert request.headers["Authorization"].endswith(
        "Signature=59602a9c15d745d177804ebffc5ec05f27da37aa8318d0f33e72b777514d39c1"
    )


async def test_terminate_sends_vector_v3_with_session_token() -> None:
    client, fake, _ = make_client(
        lambda action, body, req: reply({}),
        credentials=Credentials("AKIDTEMPEXAMPLE0001", "tmpSecretKeyEXAMPLE/+=abc",
                                "EXAMPLESESSIONTOKEN"),
        region="ap-shanghai", clock=lambda: 1735689600,
    )
    async with client:
        await client.terminate_instances(["ins-abcd1234", "ins-0a1b2c3d"])
    (request,) = fake.requests
    assert request.content == b'{"InstanceIds": ["ins-abcd1234", "ins-0a1b2c3d"]}'
    assert request.headers["X-TC-Token"] == "EXAMPLESESSIONTOKEN"
    assert request.headers["X-TC-Region"] == "ap-shanghai"
    assert request.headers["Authorization"] == (
        "TC3-HMAC-SHA256 Credential=AKIDTEMPEXAMPLE0001/2025-01-01/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=95cf0ade6e639347b1c36e25bf6ebef3758f32c355aada8071e12352df8441d3"
    )


async def test_generic_call_sends_vector_v1() -> None:
    client, fake, _ = make_client(lambda action, body, req: reply({"TotalCount": 0}),
                                  clock=lambda: 1700000000)
    async with client:
        response = await client.call("DescribeInstances", {"Limit": 1})
    assert response == {"TotalCount": 0, "RequestId": "req-1"}
    assert fake.requests[0].headers["Authorization"].endswith(
        "Signature=c8114a048d85f2ddc88bc6e9af86d058cc74d1da8250f9b6f4e4f93a6923b64c"
    )


def _sdk_body(request: sdk.AbstractModel) -> bytes:
    return json.dumps(request._serialize()).encode()


async def test_full_run_instances_body_equals_the_sdk_serialisation() -> None:
    client, fake, _ = make_client(lambda action, body, req: reply({"InstanceIdSet": []}))
    async with client:
        await client.run_instances(RunInstancesRequest(
            zone="ap-guangzhou-4", instance_type="SA2.MEDIUM4", image_id="img-pmqg1cw7", count=3,
            max_price=Decimal("0.0923"), client_token="tok-1", tags={"b": "2", "a": "1"},
            instance_name="farm", vpc_id="vpc-12345678", subnet_id="subnet-12345678",
            security_group_ids=["sg-8jlk3f3r"], system_disk_type="CLOUD_PREMIUM",
            system_disk_size_gib=50, key_ids=["skey-12345678"], user_data="#!/bin/sh\necho é\n",
            dry_run=True,
        ))
    req = sdk.RunInstancesRequest()
    req.from_json_string(json.dumps({
        "InstanceChargeType": "SPOTPAID",
        "Placement": {"Zone": "ap-guangzhou-4", "ProjectId": 0},
        "InstanceType": "SA2.MEDIUM4",
        "ImageId": "img-pmqg1cw7",
        "SystemDisk": {"DiskType": "CLOUD_PREMIUM", "DiskSize": 50},
        "VirtualPrivateCloud": {"VpcId": "vpc-12345678", "SubnetId": "subnet-12345678"},
        "InstanceCount": 3,
        "InstanceName": "farm",
        "LoginSettings": {"KeyIds": ["skey-12345678"]},
        "SecurityGroupIds": ["sg-8jlk3f3r"],
        "ClientToken": "tok-1",
        "TagSpecification": [{"ResourceType": "instance",
                              "Tags": [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]}],
        "InstanceMarketOptions": {"MarketType": "spot",
                                  "SpotOptions": {"MaxPrice": "0.0923",
                                                  "SpotInstanceType": "one-time"}},
        "UserData": base64.b64encode("#!/bin/sh\necho é\n".encode()).decode(),
        "DryRun": True,
    }))
    assert fake.requests[0].content == _sdk_body(req)


async def test_describe_and_offers_bodies_equal_the_sdk_serialisation() -> None:
    def handler(action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        return reply({"TotalCount": 0, "InstanceSet": [], "InstanceTypeQuotaSet": []})

    client, fake, _ = make_client(handler)
    async with client:
        await client.describe_instances(instance_ids=["ins-abcd1234"])
        await client.describe_spot_offers(zones=["ap-guangzhou-3"], instance_types=["S5.MEDIUM4"])
    by_ids = sdk.DescribeInstancesRequest()
    by_ids.from_json_string(json.dumps({"InstanceIds": ["ins-abcd1234"], "Offset": 0,
                                        "Limit": 100}))
    offers = sdk.DescribeZoneInstanceConfigInfosRequest()
    offers.from_json_string(json.dumps({"Filters": [
        {"Name": "zone", "Values": ["ap-guangzhou-3"]},
        {"Name": "instance-type", "Values": ["S5.MEDIUM4"]},
        {"Name": "instance-charge-type", "Values": ["SPOTPAID"]},
    ]}))
    assert [r.content for r in fake.requests] == [_sdk_body(by_ids), _sdk_body(offers)]


@pytest.mark.parametrize(
    ("price", "sent"),
    [("0.0923", "0.0923"), (Decimal("0.60"), "0.60"), (Decimal("1E+3"), "1000"), ("5", "5")],
)
async def test_max_price_is_a_plain_decimal_string(price: Decimal | str, sent: str) -> None:
    client, fake, _ = make_client(lambda action, body, req: reply({"InstanceIdSet": ["ins-1"]}))
    async with client:
        await client.run_instances(RunInstancesRequest(zone="z", instance_type="t", image_id="i", count=1,
                                   max_price=price, client_token="t", tags={}))
    body = fake.bodies()[0]
    assert body["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] == sent
    assert "TagSpecification" not in body


RUN_DEFAULTS: dict[str, Any] = dict(
    zone="ap-guangzhou-3", instance_type="S5.MEDIUM4", image_id="img-eb30mz89", count=1,
    max_price="0.05", client_token="tok", tags={"k": "v"},
)


@pytest.mark.parametrize(
    "override",
    [
        {"count": 0},
        {"count": 101},
        {"client_token": ""},
        {"client_token": "x" * 65},
        {"client_token": "jeton-é"},
        {"max_price": "0"},
        {"max_price": "-1"},
        {"max_price": "cheap"},
        {"max_price": "NaN"},
        {"vpc_id": "vpc-12345678"},
        {"user_data": "x" * 12289},  # 16388 bytes once encoded
    ],
    ids=str,
)
async def test_run_instances_refuses_what_the_api_would_before_calling(
    override: dict[str, Any]
) -> None:
    client, fake, _ = make_client(lambda action, body, req: reply({"InstanceIdSet": []}))
    async with client:
        with pytest.raises(ValueError):
            await client.run_instances(RunInstancesRequest(**{**RUN_DEFAULTS, **override}))
    assert fake.requests == []


async def test_user_data_is_base64_and_limit_is_inclusive() -> None:
    text = "x" * 12288  # exactly 16384 bytes once encoded
    client, fake, _ = make_client(lambda action, body, req: reply({"InstanceIdSet": ["ins-1"]}))
    async with client:
        await client.run_instances(RunInstancesRequest(**RUN_DEFAULTS, user_data=text))
    assert base64.b64decode(fake.bodies()[0]["UserData"]).decode() == text


@pytest.mark.parametrize(
    "answer",
    [reply({"InstanceIdSet": []}), error("DryRunOperation", "would have succeeded")],
    ids=["empty-success", "DryRunOperation"],
)
async def test_dry_run_passes_as_empty_list(answer: httpx.Response) -> None:
    client, fake, _ = make_client(lambda action, body, req: answer)
    async with client:
        assert await client.run_instances(RunInstancesRequest(**RUN_DEFAULTS, dry_run=True)) == []
    assert fake.bodies()[0]["DryRun"] is True


async def test_dry_run_operation_without_dry_run_is_an_error() -> None:
    client, _, _ = make_client(lambda action, body, req: error("DryRunOperation"))
    async with client:
        with pytest.raises(CloudError):
            await client.run_instances(RunInstancesRequest(**RUN_DEFAULTS))


@pytest.mark.parametrize("endpoint", ["ftp://x", "https://cvm.tencentcloudapi.com/v3",
                                      "https://u:p@cvm.tencentcloudapi.com", "https://h/?a=1"])
def test_endpoint_must_be_a_bare_origin(endpoint: str) -> None:
    with pytest.raises(ValueError):
        CvmClient(Credentials("AKID", "k"), "ap-guangzhou", endpoint)


async def test_default_port_is_not_in_the_host_header() -> None:
    client, fake, _ = make_client(lambda action, body, req: reply({}),
                                  endpoint="https://cvm.ap-guangzhou.tencentcloudapi.com:443")
    async with client:
        await client.call("DescribeZones", {})
    assert fake.requests[0].headers["Host"] == "cvm.ap-guangzhou.tencentcloudapi.com"


# --------------------------------------------------------------- DescribeInstances


def raw_instance(n: int, state: str = "RUNNING", **extra: Any) -> dict[str, Any]:
    return {
        "InstanceId": f"ins-{n:08d}",
        "Placement": {"Zone": "ap-guangzhou-3", "ProjectId": 0},
        "InstanceType": "S5.MEDIUM4",
        "InstanceState": state,
        "InstanceChargeType": "SPOTPAID",
        "CreatedTime": "2024-05-01T08:30:00Z",
        "Tags": [{"Key": "spotpool.io/environment", "Value": "batch/farm"}],
        "InstanceName": f"farm-{n}",
        "CPU": 2,
        "Memory": 4,
        **extra,
    }


def paging_server(instances: list[dict[str, Any]], page_cap: int = 100) -> Handler:
    def handler(action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        assert action == "DescribeInstances"
        assert body["Limit"] <= 100
        matched = instances
        if "InstanceIds" in body:
            assert len(body["InstanceIds"]) <= 100 and "Filters" not in body
            wanted = set(body["InstanceIds"])
            matched = [i for i in instances if i["InstanceId"] in wanted]
        start = body.get("Offset", 0)
        page = matched[start:start + min(body["Limit"], page_cap)]
        return reply({"TotalCount": len(matched), "InstanceSet": page})
    return handler


async def test_pagination_reads_every_page() -> None:
    instances = [raw_instance(n) for n in range(250)]
    client, fake, _ = make_client(paging_server(instances))
    async with client:
        found = await client.describe_by_tag("spotpool.io/environment", "batch/farm")
    assert [i.instance_id for i in found] == [i["InstanceId"] for i in instances]
    assert [(b["Offset"], b["Limit"]) for b in fake.bodies()] == [(0, 100), (100, 100), (200, 100)]
    assert fake.bodies()[0]["Filters"] == [
        {"Name": "tag:spotpool.io/environment", "Values": ["batch/farm"]}
    ]


async def test_pagination_follows_total_count_when_the_server_caps_pages() -> None:
    instances = [raw_instance(n) for n in range(45)]
    client, fake, _ = make_client(paging_server(instances, page_cap=20))
    async with client:
        found = await client.describe_instances()
    assert len(found) == 45
    assert [b["Offset"] for b in fake.bodies()] == [0, 20, 40]


async def test_pagination_exact_multiple_and_empty() -> None:
    client, fake, _ = make_client(paging_server([raw_instance(n) for n in range(200)]))
    async with client:
        assert len(await client.describe_instances()) == 200
    assert [b["Offset"] for b in fake.bodies()] == [0, 100]
    client, fake, _ = make_client(paging_server([]))
    async with client:
        assert await client.describe_instances() == []
    assert len(fake.requests) == 1


async def test_pagination_drops_duplicates_when_pages_shift() -> None:
    """An instance created between pages shifts the later ones forward: no duplicate. The pages
    disagree on TotalCount, so the listing is read again; this server never holds still, and the
    last read is returned."""
    pages = {0: (150, [raw_instance(n) for n in range(100)]),
             100: (151, [raw_instance(n) for n in range(99, 150)])}

    def handler(action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        total, page = pages[body["Offset"]]
        return reply({"TotalCount": total, "InstanceSet": page})

    client, fake, _ = make_client(handler)
    async with client:
        found = await client.describe_instances()
    assert [i.instance_id for i in found] == [f"ins-{n:08d}" for n in range(150)]
    assert [b["Offset"] for b in fake.bodies()] == [0, 100] * 3


async def test_a_listing_that_missed_an_instance_is_read_again() -> None:
    """ins-0 is terminated between the two page reads: ins-100 slides onto page one, already read,
    and the first listing misses it. TotalCount 150 then 149 gives it away; the re-read is whole."""
    before = [raw_instance(n) for n in range(150)]
    after = before[1:]
    reads: list[int] = []

    def handler(action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        reads.append(body["Offset"])
        current = before if len(reads) == 1 else after
        page = current[body["Offset"]:body["Offset"] + body["Limit"]]
        return reply({"TotalCount": len(current), "InstanceSet": page})

    client, _, _ = make_client(handler)
    async with client:
        found = await client.describe_instances()
    assert {i.instance_id for i in found} == {i["InstanceId"] for i in after}
    assert reads == [0, 100, 0, 100]


async def test_a_listing_with_the_same_total_that_skipped_an_instance_is_read_again() -> None:
    """Between two page reads one instance goes and another comes: TotalCount stays 101, the second
    page starts one late, and the instance at the boundary is never listed (issue 17). Fewer
    instances than TotalCount give it away; the re-read is whole."""
    instances = [raw_instance(n) for n in range(101)]
    reads: list[int] = []

    def handler(action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        reads.append(body["Offset"])
        skew = 1 if body["Offset"] and len(reads) <= 3 else 0  # the first listing's later pages start late
        start = body["Offset"] + skew
        return reply({"TotalCount": 101, "InstanceSet": instances[start:start + body["Limit"]]})

    client, _, _ = make_client(handler)
    async with client:
        found = await client.describe_instances()
    assert len(found) == 101 and reads[0] == 0 and reads.count(0) == 2


async def test_a_listing_that_shows_an_instance_twice_is_read_again() -> None:
    instances = [raw_instance(n) for n in range(150)]
    reads: list[int] = []

    def handler(action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        reads.append(body["Offset"])
        shift = -1 if body["Offset"] and len(reads) <= 2 else 0  # page two starts one early: a repeat
        start = body["Offset"] + shift
        return reply({"TotalCount": 150, "InstanceSet": instances[start:start + body["Limit"]]})

    client, _, _ = make_client(handler)
    async with client:
        found = await client.describe_instances()
    assert len(found) == 150 and reads.count(0) == 2


async def test_ids_are_deduplicated_and_chunked_by_100() -> None:
    instances = [raw_instance(n) for n in range(250)]
    ids = [i["InstanceId"] for i in instances]
    client, fake, _ = make_client(paging_server(instances))
    async with client:
        found = await client.describe_instances(instance_ids=ids + ids[:10])
    assert [i.instance_id for i in found] == ids
    assert [len(b["InstanceIds"]) for b in fake.bodies()] == [100, 100, 50]
    assert all(b["Offset"] == 0 and b["Limit"] == 100 for b in fake.bodies())


async def test_empty_id_list_matches_nothing_without_a_call() -> None:
    client, fake, _ = make_client(paging_server([raw_instance(1)]))
    async with client:
        assert await client.describe_instances(instance_ids=[]) == []
    assert fake.requests == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": {f"tag:k{n}": ["v"] for n in range(11)}},
        {"filters": {"zone": ["a", "b", "c", "d", "e", "f"]}},
        {"filters": {"zone": []}},
        {"filters": {"zone": "ap-guangzhou-3"}},
        {"filters": {"zone": ["a"]}, "instance_ids": ["ins-1"]},
    ],
    ids=["11-filters", "6-values", "no-values", "string-values", "ids-and-filters"],
)
async def test_describe_refuses_what_the_api_would(kwargs: dict[str, Any]) -> None:
    client, fake, _ = make_client(paging_server([]))
    async with client:
        with pytest.raises(ValueError):
            await client.describe_instances(**kwargs)
    assert fake.requests == []


async def test_ten_filters_of_five_values_are_allowed() -> None:
    client, fake, _ = make_client(paging_server([]))
    async with client:
        await client.describe_instances(filters={f"tag:k{n}": list("abcde") for n in range(10)})
    assert len(fake.bodies()[0]["Filters"]) == 10


async def test_instance_fields_are_mapped() -> None:
    client, _, _ = make_client(paging_server([raw_instance(7, "PENDING")]))
    async with client:
        (instance,) = await client.describe_instances()
    assert instance == Instance(
        instance_id="ins-00000007", zone="ap-guangzhou-3", instance_type="S5.MEDIUM4",
        state="PENDING", charge_type="SPOTPAID",
        created_time=datetime(2024, 5, 1, 8, 30, tzinfo=UTC),
        tags={"spotpool.io/environment": "batch/farm"}, name="farm-7", cpu=2, memory_gib=4,
    )
    assert instance.alive


async def test_sparse_instance_fields_do_not_break_mapping() -> None:
    sparse = {"InstanceId": "ins-00000009", "Tags": None, "CreatedTime": "garbled",
              "Placement": None}
    client, _, _ = make_client(paging_server([sparse]))
    async with client:
        (instance,) = await client.describe_instances()
    assert (instance.zone, instance.tags, instance.created_time, instance.cpu) == ("", {}, None, 0)


# --------------------------------------------------------------- retries


def scripted(*answers: httpx.Response | Exception) -> Handler:
    queue = list(answers)

    def handler(action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer
    return handler


@pytest.mark.parametrize(
    "code",
    ["RequestLimitExceeded", "RequestLimitExceeded.UinLimitExceeded", "InternalError",
     "InternalError.TradeUnknownError", "ServiceUnavailable"],
)
async def test_throttled_and_transient_errors_are_retried_until_success(code: str) -> None:
    client, fake, rec = make_client(
        scripted(error(code), error(code), reply({"TotalCount": 0, "InstanceSet": []})),
    )
    async with client:
        assert await client.describe_instances() == []
    assert len(fake.requests) == 3
    assert [c for _, _, c in rec.observed] == [code, code, None]
    assert len(rec.sleeps) == 2
    assert 0 <= rec.sleeps[0] <= 0.2 and 0 <= rec.sleeps[1] <= 0.4


async def test_retries_stop_at_max_attempts_with_capped_full_jitter() -> None:
    client, fake, rec = make_client(scripted(error("InternalError")), max_attempts=7,
                                    backoff_base=1.0, backoff_cap=3.0)
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.call("DescribeZones", {})
    assert caught.value.code == "InternalError" and caught.value.category is ErrorCategory.TRANSIENT
    assert len(fake.requests) == 7
    ceilings = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert len(rec.sleeps) == 6
    assert all(0 <= s <= c for s, c in zip(rec.sleeps, ceilings, strict=True))
    assert len(set(rec.sleeps)) == 6  # jittered, not a fixed schedule


@pytest.mark.parametrize(
    ("code", "category"),
    [("InvalidParameterValue.InsufficientPrice", ErrorCategory.PRICE),
     ("ResourceInsufficient.SpecifiedInstanceType", ErrorCategory.CAPACITY),
     ("LimitExceeded.UserSpotQuota", ErrorCategory.QUOTA),
     ("AuthFailure.SignatureFailure", ErrorCategory.AUTH),
     ("InvalidParameterValue", ErrorCategory.INVALID_REQUEST),
     ("SomethingNobodyKnows", ErrorCategory.UNKNOWN)],
)
async def test_other_categories_are_raised_at_once(code: str, category: ErrorCategory) -> None:
    client, fake, rec = make_client(scripted(error(code, "no", "rid-9")))
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.run_instances(RunInstancesRequest(**RUN_DEFAULTS))
    err = caught.value
    assert (err.code, err.category, err.request_id, err.action) == (
        code, category, "rid-9", "RunInstances")
    assert str(err) == f"RunInstances failed: {code}: no (RequestId rid-9)"
    assert len(fake.requests) == 1 and rec.sleeps == []


async def test_network_failures_are_retried() -> None:
    client, fake, rec = make_client(scripted(httpx.ConnectError("refused"),
                                             httpx.ReadTimeout("slow"), reply({})))
    async with client:
        await client.call("DescribeZones", {})
    assert len(fake.requests) == 3
    assert [c for _, _, c in rec.observed] == ["ClientNetworkError", "ClientNetworkError", None]


async def test_network_failure_exhausting_attempts_raises_network_error() -> None:
    client, _, _ = make_client(scripted(httpx.ConnectError("refused")), max_attempts=2)
    async with client:
        with pytest.raises(CloudNetworkError) as caught:
            await client.call("DescribeZones", {})
    assert caught.value.code == "ClientNetworkError"
    assert caught.value.category is ErrorCategory.TRANSIENT
    assert caught.value.__cause__ is None  # the httpx request (and its headers) is not attached


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (httpx.Response(502, text="<html>bad gateway</html>"), 502),
        (httpx.Response(200, text="not json"), 200),
        (httpx.Response(200, json={"NoResponse": 1}), 200),
        (httpx.Response(200, json={"Response": {"Error": "flat"}}), 200),
    ],
    ids=["502", "not-json", "no-envelope", "malformed-error"],
)
async def test_garbled_answers_are_server_network_errors(answer: httpx.Response,
                                                         status: int) -> None:
    client, fake, _ = make_client(scripted(answer), max_attempts=2)
    async with client:
        with pytest.raises(CloudNetworkError) as caught:
            await client.call("DescribeZones", {})
    assert caught.value.code == "ServerNetworkError"
    assert caught.value.http_status == status
    assert len(fake.requests) == 2


async def test_run_instances_without_client_token_is_never_retried() -> None:
    client, fake, _ = make_client(scripted(error("InternalError"), reply({})))
    async with client:
        with pytest.raises(CloudError):
            await client.call("RunInstances", {"InstanceCount": 1})
    assert len(fake.requests) == 1


async def test_run_instances_with_client_token_is_retried_with_the_same_body() -> None:
    client, fake, _ = make_client(scripted(httpx.ReadTimeout("lost"), error("InternalError"),
                                           reply({"InstanceIdSet": ["ins-1"]})))
    async with client:
        assert await client.run_instances(RunInstancesRequest(**RUN_DEFAULTS)) == ["ins-1"]
    assert len({r.content for r in fake.requests}) == 1
    assert len(fake.requests) == 3


async def test_signature_expire_is_retried_once_with_a_fresh_timestamp() -> None:
    times = iter([1700000000, 1700000400, 1700000800])
    client, fake, rec = make_client(
        scripted(error("AuthFailure.SignatureExpire"), reply({})), clock=lambda: next(times))
    async with client:
        await client.call("DescribeZones", {})
    assert [r.headers["X-TC-Timestamp"] for r in fake.requests] == ["1700000000", "1700000400"]
    assert rec.sleeps == []


async def test_signature_expire_twice_is_raised() -> None:
    client, fake, _ = make_client(scripted(error("AuthFailure.SignatureExpire")))
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.call("DescribeZones", {})
    assert caught.value.category is ErrorCategory.AUTH
    assert len(fake.requests) == 2


async def test_observer_is_called_per_attempt_and_its_failures_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str | None] = []

    def broken_observer(action: str, seconds: float, code: str | None) -> None:
        calls.append(code)
        raise RuntimeError("metrics down")

    client = CvmClient(
        Credentials("AKID", "k"), "ap-guangzhou",
        transport=httpx.MockTransport(FakeCvm(scripted(error("RequestLimitExceeded"),
                                                       reply({})))),
        observer=broken_observer, limiter=RateLimiterRegistry(sleep=_no_wait), sleep=_no_wait,
    )
    async with client:
        await client.call("DescribeZones", {})
    assert calls == ["RequestLimitExceeded", None]
    assert "observer failed" in caplog.text


async def test_observer_gets_the_action_and_a_duration() -> None:
    client, _, rec = make_client(scripted(reply({})))
    async with client:
        await client.call("DescribeZones", {})
    ((action, seconds, code),) = rec.observed
    assert action == "DescribeZones" and code is None and 0 <= seconds < 5


async def test_closed_client_refuses_calls() -> None:
    client, fake, rec = make_client(scripted(reply({})))
    async with client:
        pass
    with pytest.raises(RuntimeError):
        await client.call("DescribeZones", {})
    assert fake.requests == []
    assert rec.observed == []  # no HTTP attempt took place, so no latency sample


# --------------------------------------------------------------- TerminateInstances


class TerminateWorld:
    """Instances by id and state; TerminateInstances behaves as the API does per batch."""

    def __init__(self, alive: list[str], gone: list[str], terminating: tuple[str, ...] = (),
                 ghost: str | None = None) -> None:
        self.states = {i: "RUNNING" for i in alive} | {i: "TERMINATING" for i in terminating}
        self.gone = set(gone)
        self.ghost = ghost  # refused as terminated, yet still described RUNNING (inconsistency)
        if ghost:
            self.states[ghost] = "RUNNING"
        self.terminated: list[str] = []

    def __call__(self, action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        ids = body["InstanceIds"]
        if action == "DescribeInstances":
            found = [raw_instance(0, self.states[i]) | {"InstanceId": i}
                     for i in ids if i in self.states]
            return reply({"TotalCount": len(found), "InstanceSet": found})
        assert action == "TerminateInstances" and len(ids) <= 100
        for i in ids:
            if i in self.gone or i == self.ghost:
                return error("UnsupportedOperation.InstanceStateTerminated", f"{i} terminated")
            if self.states.get(i) == "TERMINATING":
                return error("UnsupportedOperation.InstanceStateTerminating", f"{i} terminating")
            if i not in self.states:
                return error("InvalidInstanceId.NotFound", f"{i} not found")
        for i in ids:
            del self.states[i]
            self.terminated.append(i)
        return reply({})


async def test_terminate_batches_by_100() -> None:
    ids = [f"ins-{n:08d}" for n in range(230)]
    world = TerminateWorld(alive=ids, gone=[])
    client, fake, _ = make_client(world)
    async with client:
        await client.terminate_instances(ids + ids[:5])
    assert [len(b["InstanceIds"]) for b in fake.bodies()] == [100, 100, 30]
    assert world.terminated == ids


async def test_terminate_of_a_single_gone_instance_is_success() -> None:
    for code_world in (TerminateWorld([], gone=["ins-gone0001"]),
                       TerminateWorld([], gone=[], terminating=("ins-gone0001",)),
                       TerminateWorld([], gone=[])):
        client, fake, _ = make_client(code_world)
        async with client:
            await client.terminate_instances(["ins-gone0001"])
        assert len(fake.requests) == 1


async def test_terminate_redescribes_a_refused_batch_and_finishes_the_survivors() -> None:
    world = TerminateWorld(alive=["ins-a", "ins-b", "ins-c"], gone=["ins-x"],
                           terminating=("ins-t",))
    client, fake, _ = make_client(world)
    async with client:
        await client.terminate_instances(["ins-a", "ins-x", "ins-b", "ins-t", "ins-c"])
    assert sorted(world.terminated) == ["ins-a", "ins-b", "ins-c"]
    assert [r.headers["X-TC-Action"] for r in fake.requests] == [
        "TerminateInstances", "DescribeInstances", "TerminateInstances"]
    assert fake.bodies()[-1]["InstanceIds"] == ["ins-a", "ins-b", "ins-c"]


async def test_terminate_falls_back_to_one_by_one_when_describe_disagrees() -> None:
    world = TerminateWorld(alive=["ins-a", "ins-b"], gone=[], ghost="ins-g")
    client, fake, _ = make_client(world)
    async with client:
        await client.terminate_instances(["ins-a", "ins-g", "ins-b"])
    assert sorted(world.terminated) == ["ins-a", "ins-b"]
    singles = [b["InstanceIds"] for b in fake.bodies("TerminateInstances")][1:]
    assert singles == [["ins-a"], ["ins-g"], ["ins-b"]]


async def test_terminate_raises_other_errors() -> None:
    client, fake, _ = make_client(scripted(error("UnsupportedOperation.InstancesProtected")))
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.terminate_instances(["ins-a", "ins-b"])
    assert caught.value.code == "UnsupportedOperation.InstancesProtected"
    assert len(fake.requests) == 1


# --------------------------------------------------------------- spot offers


def offer_item(zone: str, itype: str, **price: Any) -> dict[str, Any]:
    return {"Zone": zone, "InstanceType": itype, "InstanceChargeType": "SPOTPAID",
            "Status": "SELL", "Cpu": 2, "Memory": 4, "Price": price}


async def test_spot_offers_chunk_filters_and_parse_prices() -> None:
    zones = [f"ap-guangzhou-{n}" for n in range(1, 8)]

    def handler(action: str, body: dict[str, Any], req: httpx.Request) -> httpx.Response:
        assert action == "DescribeZoneInstanceConfigInfos"
        filters = {f["Name"]: f["Values"] for f in body["Filters"]}
        assert filters["instance-charge-type"] == ["SPOTPAID"]
        assert all(len(v) <= 5 for v in filters.values())
        items = [offer_item(z, t, UnitPrice=0.2, UnitPriceDiscount=0.0213, ChargeUnit="HOUR")
                 for z in filters["zone"] for t in filters["instance-type"]]
        items.append(offer_item("ap-guangzhou-99", "S5.MEDIUM4", UnitPrice=1))  # not asked for
        items.append(offer_item(filters["zone"][0], "S5.MEDIUM4", UnitPrice=1)
                     | {"InstanceChargeType": "POSTPAID_BY_HOUR"})
        return reply({"InstanceTypeQuotaSet": items})

    client, fake, _ = make_client(handler)
    async with client:
        offers = await client.describe_spot_offers(zones=zones, instance_types=["S5.MEDIUM4"])
    assert len(fake.requests) == 2
    assert sorted(o.zone for o in offers) == zones
    assert {(o.spot_price, o.list_price, o.sold_out, o.cpu, o.memory_gib) for o in offers} == {
        (Decimal("0.0213"), Decimal("0.2"), False, 2, 4)}


@pytest.mark.parametrize(
    ("price", "status", "expected"),
    [
        ({"UnitPrice": 0.64}, "SELL", (Decimal("0.64"), Decimal("0.64"), False)),
        ({"UnitPrice": 0.64, "UnitPriceDiscount": 0}, "SELL",
         (Decimal("0.64"), Decimal("0.64"), False)),
        ({"UnitPrice": 0.64, "UnitPriceDiscount": 0.128}, "SOLD_OUT",
         (Decimal("0.128"), Decimal("0.64"), True)),
        ({}, "SELL", (None, None, False)),
    ],
)
async def test_spot_price_falls_back_to_list_price(price: dict[str, Any], status: str,
                                                   expected: tuple[Any, ...]) -> None:
    item = offer_item("ap-guangzhou-3", "S5.MEDIUM4", **price) | {"Status": status}
    client, _, _ = make_client(lambda a, b, r: reply({"InstanceTypeQuotaSet": [item]}))
    async with client:
        (offer,) = await client.describe_spot_offers(zones=["ap-guangzhou-3"],
                                                     instance_types=["S5.MEDIUM4"])
    assert (offer.spot_price, offer.list_price, offer.sold_out) == expected


async def test_spot_offers_for_nothing_make_no_call() -> None:
    client, fake, _ = make_client(lambda a, b, r: reply({"InstanceTypeQuotaSet": []}))
    async with client:
        assert await client.describe_spot_offers(zones=[], instance_types=["S5.MEDIUM4"]) == []
    assert fake.requests == []


# --------------------------------------------------------------- secrets


async def test_secrets_never_leak_to_logs_reprs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    credentials = Credentials("AKIDLEAKTEST", SECRET, TOKEN)
    answers = scripted(
        httpx.ConnectError(f"connect failed {SECRET}"),
        error("RequestLimitExceeded"),
        error("AuthFailure.SignatureFailure", f"bad signature for key {SECRET} token {TOKEN}"),
    )
    client, fake, _ = make_client(answers, credentials=credentials)
    texts = [repr(client), str(client), repr(credentials), str(credentials)]
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.call("DescribeZones", {})
        err = caught.value
        texts += [str(err), repr(err), err.message, str(err.args)]
        client2, _, _ = make_client(scripted(httpx.Response(500, text=f"dump {SECRET}")),
                                    credentials=credentials, max_attempts=1)
        async with client2:
            with pytest.raises(CloudNetworkError) as caught2:
                await client2.call("DescribeZones", {})
        texts += [str(caught2.value), repr(caught2.value)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.args) for record in caplog.records]
    assert caplog.records, "the client should log at DEBUG"
    assert err.code == "AuthFailure.SignatureFailure" and "***" in err.message
    for text in texts:
        assert SECRET not in text
        assert TOKEN not in text
    assert all(SECRET.encode() not in r.content for r in fake.requests)
    assert "AKIDLEAKTEST" in repr(client)


# --------------------------------------------------------------- a guard fences every attempt (issue 17)

class Term:
    """A caller's leadership term for the client's guard: it ends when `ended` is set."""

    class Over(Exception):
        pass

    def __init__(self, remaining: float | None = 10.0) -> None:
        self.ended = False
        self.left = remaining
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if self.ended:
            raise Term.Over("the term ended")

    def remaining(self) -> float | None:
        return self.left


RUN = RunInstancesRequest(zone="ap-guangzhou-3", instance_type="S5.MEDIUM4", image_id="img-eb30mz89", count=1,
                          max_price=Decimal("0.1"), client_token="8f0e7c0d-2a44-4c39-9d0a-1d2c3b4a5e6f")


async def test_a_retry_after_the_term_ended_is_never_sent() -> None:
    """The first attempt is throttled; the term ends during the backoff: the retry, which would go
    out past the term, is not signed."""
    term = Term()
    rec = Recorder()

    async def sleep(seconds: float) -> None:
        term.ended = True  # the backoff outlasted the term

    rec.sleep = sleep  # type: ignore[method-assign]
    client, fake, _ = make_client(scripted(error("RequestLimitExceeded"), reply({"InstanceIdSet": ["ins-aaaaaaaa"]})),
                                  recorder=rec)
    async with client:
        with pytest.raises(Term.Over):
            await client.run_instances(RUN, guard=term)
    assert len(fake.requests) == 1


async def test_a_call_that_waited_in_the_rate_limiter_past_its_term_is_never_sent() -> None:
    term = Term()

    class Slow(RateLimiterRegistry):
        async def acquire(self, *args: Any, **kwargs: Any) -> None:
            term.ended = True  # a few hundred pools queued ahead: the wait outlasted the term

    fake = FakeCvm(scripted(reply({"InstanceIdSet": ["ins-aaaaaaaa"]})))
    client = CvmClient(Credentials("AKIDEXAMPLE", FAKE_KEY), "ap-guangzhou", "https://cvm.tencentcloudapi.com",
                       transport=httpx.MockTransport(fake), limiter=Slow(sleep=_no_wait), sleep=_no_wait)
    async with client:
        with pytest.raises(Term.Over):
            await client.terminate_instances(["ins-aaaaaaaa"], guard=term)
    assert fake.requests == []


async def test_an_attempt_is_bounded_by_the_time_the_term_has_left() -> None:
    term = Term(remaining=0.05)

    async def hang(request: httpx.Request) -> httpx.Response:
        term.ended = True
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    client = CvmClient(Credentials("AKIDEXAMPLE", FAKE_KEY), "ap-guangzhou", "https://cvm.tencentcloudapi.com",
                       transport=httpx.MockTransport(hang), limiter=RateLimiterRegistry(sleep=_no_wait),
                       sleep=_no_wait)
    async with client:
        with pytest.raises(Term.Over):
            await client.run_instances(RUN, guard=term)


async def test_without_a_guard_nothing_changes() -> None:
    client, fake, _ = make_client(scripted(reply({"InstanceIdSet": ["ins-aaaaaaaa"]})))
    async with client:
        assert await client.run_instances(RUN) == ["ins-aaaaaaaa"]
    assert len(fake.requests) == 1
