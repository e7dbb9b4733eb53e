"""The simulator's wire protocol: envelope, signature checks, parameter errors, control API,
fault injection and rate limits, driven over real HTTP with independently built requests."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest
import yarl
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotpool.cloud.signing import sign
from spotpool.simulator import RunningSimulator, Simulator, SimulatorConfig, run_simulator
from spotpool.simulator.cli import cli
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY

ZONE = "ap-guangzhou-3"
GUIDE_PURCHASE = {
    "Placement": {"Zone": ZONE},
    "InstanceChargeType": "SPOTPAID",
    "InstanceMarketOptions": {
        "MarketType": "spot",
        "SpotOptions": {"MaxPrice": "0.0923", "SpotInstanceType": "one-time"},
    },
    "ImageId": "img-pmqg1cw7",
    "InstanceType": "S2.MEDIUM4",
    "InstanceCount": 1,
}


def purchase(**changes: Any) -> dict[str, Any]:
    return {**GUIDE_PURCHASE, **changes}


def signed_request(
    base_url: str,
    action: str,
    params: dict[str, Any] | bytes | None = None,
    *,
    region: str | None = "ap-guangzhou",
    secret_id: str = DEMO_SECRET_ID,
    secret_key: str = DEMO_SECRET_KEY,
    timestamp: int | None = None,
    version: str | None = "2017-03-12",
    method: str = "POST",
    content_type: str = "application/json",
    query: str = "",
) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) signed like the official SDK does."""
    host = base_url.removeprefix("http://")
    body = params if isinstance(params, bytes) else json.dumps(params or {}).encode()
    if method == "GET":
        body = b""
    ts = int(time.time()) if timestamp is None else timestamp
    signature = sign(
        secret_id=secret_id,
        secret_key=secret_key,
        service="cvm",
        host=host,
        content_type=content_type,
        payload=body,
        timestamp=ts,
        method=method,
        query=query,
    )
    headers = {
        "Content-Type": content_type,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Timestamp": str(ts),
        "Authorization": signature.authorization,
    }
    if version is not None:
        headers["X-TC-Version"] = version
    if region is not None:
        headers["X-TC-Region"] = region
    return f"{base_url}/" + (f"?{query}" if query else ""), headers, body


class Endpoint(Protocol):
    """Anything serving the API at `url` (a RunningSimulator, or a simulator in a subprocess)."""

    @property
    def url(self) -> str: ...


async def call(
    sim: Endpoint, action: str, params: dict[str, Any] | bytes | None = None, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    """POST a signed request; returns the response and its `Response` object."""
    url, headers, body = signed_request(sim.url, action, params, **kwargs)
    method = kwargs.get("method", "POST")
    async with aiohttp.ClientSession() as session:
        # encoded=True: send the query exactly as signed (yarl would re-quote it otherwise)
        async with session.request(
            method, yarl.URL(url, encoded=True), headers=headers, data=body or None
        ) as resp:
            data = json.loads(await resp.read())
            return resp, data["Response"]


async def ok(
    sim: Endpoint, action: str, params: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    _, response = await call(sim, action, params, **kw)
    assert "Error" not in response, response
    return response


async def error_code(sim: Endpoint, action: str, params: Any = None, **kw: Any) -> str:
    resp, response = await call(sim, action, params, **kw)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert set(response) == {"Error", "RequestId"}, response
    assert response["Error"]["Message"]
    return str(response["Error"]["Code"])


async def control(
    sim: RunningSimulator, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        kwargs = {} if body is None else {"json": body}
        async with session.request(method, f"{sim.url}/_sim/{path}", **kwargs) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            return resp.status, await resp.json()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- envelope


async def test_success_envelope_is_exact(simulator: RunningSimulator) -> None:
    resp, response = await call(simulator, "RunInstances", purchase())
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert re.fullmatch(r"ins-[a-z0-9]{8}", response["InstanceIdSet"][0])
    assert str(uuid.UUID(response["RequestId"])) == response["RequestId"]


async def test_error_envelope_is_exact(simulator: RunningSimulator) -> None:
    resp, response = await call(simulator, "NoSuchThing")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert response["Error"]["Code"] == "InvalidAction"
    assert str(uuid.UUID(response["RequestId"])) == response["RequestId"]


# ---------------------------------------------------------------------------- signatures


async def test_missing_and_malformed_authorization(simulator: RunningSimulator) -> None:
    url, headers, body = signed_request(simulator.url, "DescribeZones")
    async with aiohttp.ClientSession() as session:
        for value in (None, "Bearer x", "TC3-HMAC-SHA256 Credential=a/b, Signature=c"):
            sent = {k: v for k, v in headers.items() if k != "Authorization"}
            if value is not None:
                sent["Authorization"] = value
            async with session.post(url, headers=sent, data=body) as resp:
                assert (await resp.json())["Response"]["Error"][
                    "Code"
                ] == "AuthFailure.InvalidAuthorization"


async def test_unknown_secret_id(simulator: RunningSimulator) -> None:
    assert (
        await error_code(simulator, "DescribeZones", secret_id="AKIDUNKNOWN")
        == "AuthFailure.SecretIdNotFound"
    )


async def test_wrong_key_and_tampered_body_fail_the_signature(simulator: RunningSimulator) -> None:
    assert (
        await error_code(simulator, "DescribeZones", secret_key="wrong")
        == "AuthFailure.SignatureFailure"
    )
    url, headers, body = signed_request(simulator.url, "DescribeInstances", {"Limit": 1})
    async with aiohttp.ClientSession() as session:
        async with session.post(url, headers=headers, data=body.replace(b"1", b"2")) as resp:
            assert (await resp.json())["Response"]["Error"][
                "Code"
            ] == "AuthFailure.SignatureFailure"
    # an expired request is reported as expired even when its signature is wrong too
    assert (
        await error_code(
            simulator, "DescribeZones", timestamp=int(time.time()) - 3600, secret_key="wrong"
        )
        == "AuthFailure.SignatureExpire"
    )


@pytest.mark.parametrize("skew", [-301, 301, -400, 3600])
async def test_stale_or_future_timestamps_expire(simulator: RunningSimulator, skew: int) -> None:
    ts = int(time.time()) + skew
    assert (
        await error_code(simulator, "DescribeZones", timestamp=ts) == "AuthFailure.SignatureExpire"
    )


async def test_a_small_skew_is_accepted(simulator: RunningSimulator) -> None:
    await ok(simulator, "DescribeZones", timestamp=int(time.time()) - 250)


async def test_unsigned_payload_is_accepted(simulator: RunningSimulator) -> None:
    url, headers, body = signed_request(simulator.url, "DescribeZones")
    headers["Authorization"] = sign(
        secret_id=DEMO_SECRET_ID,
        secret_key=DEMO_SECRET_KEY,
        service="cvm",
        host=simulator.url.removeprefix("http://"),
        content_type="application/json",
        payload=body,
        timestamp=int(headers["X-TC-Timestamp"]),
        unsigned_payload=True,
    ).authorization
    headers["X-TC-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, headers=headers, data=body) as resp:
            assert "ZoneSet" in (await resp.json())["Response"]


# ------------------------------------------------------------------- request-level errors


async def test_version_action_region_and_method_errors(simulator: RunningSimulator) -> None:
    assert await error_code(simulator, "DescribeZones", version="2099-01-01") == "NoSuchVersion"
    assert await error_code(simulator, "DescribeZones", version=None) == "MissingParameter"
    assert await error_code(simulator, "DescribeSpotTypeConfig") == "InvalidAction"
    assert await error_code(simulator, "DescribeZones", region="mars-base-1") == "UnsupportedRegion"
    assert await error_code(simulator, "DescribeZones", region=None) == "MissingParameter"
    url, headers, body = signed_request(simulator.url, "DescribeZones")
    async with aiohttp.ClientSession() as session:
        async with session.put(url, headers=headers, data=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["Response"]["Error"]["Code"] == "UnsupportedProtocol"


@pytest.mark.parametrize(
    ("action", "params", "code"),
    [
        ("DescribeInstances", b"{not json", "InvalidParameter"),
        ("DescribeInstances", b"[1, 2]", "InvalidParameter"),
        ("DescribeInstances", {"Limt": 5}, "UnknownParameter"),
        ("DescribeInstances", {"Limit": "5"}, "InvalidParameter"),
        ("DescribeInstances", {"Limit": 101}, "InvalidParameterValue"),
        ("DescribeInstances", {"Offset": -1}, "InvalidParameterValue"),
        ("DescribeInstances", {"InstanceIds": ["ins-1122"]}, "InvalidInstanceId.Malformed"),
        (
            "DescribeInstances",
            {"InstanceIds": [f"ins-{i:08d}" for i in range(101)]},
            "InvalidParameterValue.LimitExceeded",
        ),
        (
            "DescribeInstances",
            {"InstanceIds": ["ins-12345678"], "Filters": [{"Name": "zone", "Values": [ZONE]}]},
            "InvalidParameter",
        ),
        (
            "DescribeInstances",
            {"Filters": [{"Name": "zone", "Values": [ZONE]}] * 11},
            "InvalidParameterValue.LimitExceeded",
        ),
        (
            "DescribeInstances",
            {"Filters": [{"Name": "zone", "Values": ["a"] * 6}]},
            "InvalidFilterValue.LimitExceeded",
        ),
        (
            "DescribeInstances",
            {"Filters": [{"Name": "instance-type", "Values": ["S5.MEDIUM4"]}]},
            "InvalidFilter",
        ),
        ("DescribeInstances", {"Filters": [{"Name": "zone"}]}, "MissingParameter"),
        (
            "DescribeInstances",
            {"Filters": [{"Name": "creation-start-time", "Values": ["yesterday"]}]},
            "InvalidParameterValue",
        ),
        ("TerminateInstances", {}, "MissingParameter"),
        ("TerminateInstances", {"InstanceIds": ["i-123"]}, "InvalidInstanceId.Malformed"),
        ("TerminateInstances", {"InstanceIds": ["ins-00000000"]}, "InvalidInstanceId.NotFound"),
        (
            "TerminateInstances",
            {"InstanceIds": [f"ins-{i:08d}" for i in range(101)]},
            "InvalidParameterValue.LimitExceeded",
        ),
        (
            "RunInstances",
            {k: v for k, v in GUIDE_PURCHASE.items() if k != "Placement"},
            "MissingParameter",
        ),
        (
            "RunInstances",
            {k: v for k, v in GUIDE_PURCHASE.items() if k != "ImageId"},
            "MissingParameter",
        ),
        ("RunInstances", purchase(ImageId="centos"), "InvalidImageId.Malformed"),
        ("RunInstances", purchase(InstanceType="big"), "InvalidInstanceType.Malformed"),
        (
            "RunInstances",
            purchase(InstanceType="Z9.MEDIUM4"),
            "InvalidParameterValue.InstanceTypeNotFound",
        ),
        (
            "RunInstances",
            purchase(Placement={"Zone": "ap-guangzhou-99"}),
            "InvalidParameterValue.ZoneNotSupported",
        ),
        (
            "RunInstances",
            purchase(Placement={"Zone": "ap-shanghai-2"}),
            "InvalidZone.MismatchRegion",
        ),
        ("RunInstances", purchase(InstanceCount=101), "InvalidParameterValue.Range"),
        ("RunInstances", purchase(InstanceCount=0), "InvalidParameterValue.Range"),
        ("RunInstances", purchase(InstanceCount="1"), "InvalidParameter"),
        (  # the documented default charge type is POSTPAID_BY_HOUR: no market options there
            "RunInstances",
            {k: v for k, v in GUIDE_PURCHASE.items() if k != "InstanceChargeType"},
            "InvalidParameterCombination",
        ),
        ("RunInstances", purchase(InstanceChargeType="PREPAID"), "UnsupportedOperation"),
        ("RunInstances", purchase(InstanceChargeType="FREE"), "InvalidParameterValue"),
        (
            "RunInstances",
            purchase(UserData="not base64!"),
            "InvalidParameterValue.InvalidUserDataFormat",
        ),
        (
            "RunInstances",
            purchase(UserData=base64.b64encode(b"x" * 13000).decode()),
            "InvalidParameterValue.InvalidUserDataFormat",
        ),
        ("RunInstances", purchase(ClientToken="x" * 65), "InvalidClientToken.TooLong"),
        ("RunInstances", purchase(InstanceName="n" * 61), "InvalidInstanceName.TooLong"),
        (
            "RunInstances",
            purchase(
                InstanceMarketOptions={"MarketType": "spot", "SpotOptions": {"MaxPrice": "cheap"}}
            ),
            "InvalidParameterValue",
        ),
        (
            "RunInstances",
            purchase(
                InstanceMarketOptions={"MarketType": "spot", "SpotOptions": {"MaxPrice": 0.5}}
            ),
            "InvalidParameter",
        ),
        (
            "RunInstances",
            purchase(
                InstanceMarketOptions={"MarketType": "spot", "SpotOptions": {"MaxPrice": "0.001"}}
            ),
            "InvalidParameterValue.InsufficientPrice",
        ),
        (
            "RunInstances",
            purchase(InstanceMarketOptions={"MarketType": "reserved"}),
            "InvalidParameterValue",
        ),
        ("RunInstances", purchase(MinCount=2), "InvalidParameterValue.InvalidParameterMinCount"),
        (
            "RunInstances",
            purchase(
                TagSpecification=[
                    {
                        "ResourceType": "instance",
                        "Tags": [{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}],
                    }
                ]
            ),
            "InvalidParameterValue.DuplicateTags",
        ),
        (
            "RunInstances",
            purchase(
                TagSpecification=[
                    {"ResourceType": "instance", "Tags": [{"Key": "qcloud:x", "Value": "1"}]}
                ]
            ),
            "FailedOperation.TagKeyReserved",
        ),
        ("RunInstances", purchase(SecurityGroupIds=["sg-bad"]), "InvalidSgId.Malformed"),
        (
            "RunInstances",
            purchase(VirtualPrivateCloud={"VpcId": "vpc-x", "SubnetId": "DEFAULT"}),
            "InvalidParameterValue.VpcIdMalformed",
        ),
        (
            "RunInstances",
            purchase(LaunchTemplate={"LaunchTemplateId": "lt-12345678"}),
            "UnsupportedOperation",
        ),
        (
            "DescribeZoneInstanceConfigInfos",
            {"Filters": [{"Name": "zone", "Values": ["ap-shanghai-2"]}]},
            "InvalidZone.MismatchRegion",
        ),
        (
            "DescribeZoneInstanceConfigInfos",
            {"Filters": [{"Name": "color", "Values": ["red"]}]},
            "InvalidFilter",
        ),
    ],
)
async def test_malformed_requests_get_documented_codes(
    simulator: RunningSimulator, action: str, params: Any, code: str
) -> None:
    assert await error_code(simulator, action, params) == code


async def test_oversized_body_is_refused_with_an_envelope(simulator: RunningSimulator) -> None:
    body = json.dumps({"Filters": [{"Name": "zone", "Values": ["x" * (2 * 1024 * 1024)]}]}).encode()
    assert await error_code(simulator, "DescribeInstances", body) == "RequestSizeLimitExceeded"


async def test_unsupported_content_type_is_refused(simulator: RunningSimulator) -> None:
    assert (
        await error_code(simulator, "DescribeZones", b"x", content_type="text/xml")
        == "InvalidParameter"
    )


# ------------------------------------------------------------------------- GET and forms


async def test_get_with_dotted_zero_based_parameters(simulator: RunningSimulator) -> None:
    tag = [{"ResourceType": "instance", "Tags": [{"Key": "pool", "Value": "get"}]}]
    [iid] = (await ok(simulator, "RunInstances", purchase(TagSpecification=tag)))["InstanceIdSet"]
    query = urlencode({"Filters.0.Name": "tag:pool", "Filters.0.Values.0": "get", "Limit": "10"})
    response = await ok(
        simulator,
        "DescribeInstances",
        method="GET",
        query=query,
        content_type="application/x-www-form-urlencoded",
    )
    assert [i["InstanceId"] for i in response["InstanceSet"]] == [iid]
    gap = urlencode({"InstanceIds.0": iid, "InstanceIds.2": iid})
    assert (
        await error_code(
            simulator,
            "DescribeInstances",
            method="GET",
            query=gap,
            content_type="application/x-www-form-urlencoded",
        )
        == "InvalidParameter"
    )


async def test_post_form_body(simulator: RunningSimulator) -> None:
    body = urlencode({"Limit": "1"}).encode()
    response = await ok(
        simulator, "DescribeInstances", body, content_type="application/x-www-form-urlencoded"
    )  # type: ignore[arg-type]
    assert response["TotalCount"] == 0


# ------------------------------------------------------------------------------ actions


async def test_purchase_describe_terminate_round_trip(simulator: RunningSimulator) -> None:
    tags = [
        {
            "ResourceType": "instance",
            "Tags": [{"Key": "pool", "Value": "p1"}, {"Key": "team", "Value": "x"}],
        }
    ]
    ids = (
        await ok(
            simulator,
            "RunInstances",
            purchase(InstanceCount=3, InstanceName="web-{R:1}", TagSpecification=tags),
        )
    )["InstanceIdSet"]
    page = await ok(
        simulator,
        "DescribeInstances",
        {"Filters": [{"Name": "tag:pool", "Values": ["p1"]}], "Limit": 2},
    )
    assert page["TotalCount"] == 3 and [i["InstanceId"] for i in page["InstanceSet"]] == ids[:2]
    first = page["InstanceSet"][0]
    assert first["Placement"] == {"Zone": ZONE, "ProjectId": 0, "HostId": None}
    assert first["InstanceChargeType"] == "SPOTPAID" and first["InstanceName"] == "web-1"
    assert first["CPU"] == 2 and first["Memory"] == 4 and first["InstanceState"] == "PENDING"
    assert first["Tags"] == [{"Key": "pool", "Value": "p1"}, {"Key": "team", "Value": "x"}]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["CreatedTime"])

    async def all_running() -> bool:
        status = await ok(simulator, "DescribeInstancesStatus", {"InstanceIds": ids})
        return [s["InstanceState"] for s in status["InstanceStatusSet"]] == ["RUNNING"] * 3

    await wait_for(all_running)
    await ok(simulator, "TerminateInstances", {"InstanceIds": ids[:1]})
    state = (await ok(simulator, "DescribeInstances", {"InstanceIds": ids[:1]}))["InstanceSet"][0]
    assert (
        state["InstanceState"] == "TERMINATING" and state["LatestOperation"] == "TerminateInstances"
    )

    async def gone() -> bool:
        return (await ok(simulator, "DescribeInstances", {"InstanceIds": ids[:1]}))[
            "TotalCount"
        ] == 0

    await wait_for(gone)
    assert await error_code(simulator, "TerminateInstances", {"InstanceIds": ids[:1]}) == (
        "UnsupportedOperation.InstanceStateTerminated"
    )


async def test_client_token_replay_over_http(simulator: RunningSimulator) -> None:
    first = await ok(
        simulator, "RunInstances", purchase(ClientToken="crash-safe-1", InstanceCount=2)
    )
    again = await ok(
        simulator, "RunInstances", purchase(ClientToken="crash-safe-1", InstanceCount=2)
    )
    assert (
        again["InstanceIdSet"] == first["InstanceIdSet"]
        and again["RequestId"] != first["RequestId"]
    )
    assert await error_code(
        simulator, "RunInstances", purchase(ClientToken="crash-safe-1", InstanceCount=3)
    ) == ("InvalidParameterValue")
    assert len(simulator.market.instances()) == 2


async def test_a_passing_dry_run_answers_dry_run_operation(simulator: RunningSimulator) -> None:
    assert await error_code(simulator, "RunInstances", purchase(DryRun=True)) == "DryRunOperation"
    assert simulator.market.instances() == []


async def test_zone_instance_config_infos_carry_spot_prices(simulator: RunningSimulator) -> None:
    response = await ok(
        simulator,
        "DescribeZoneInstanceConfigInfos",
        {
            "Filters": [
                {"Name": "zone", "Values": [ZONE]},
                {"Name": "instance-type", "Values": ["S2.MEDIUM4"]},
                {"Name": "instance-charge-type", "Values": ["SPOTPAID"]},
            ]
        },
    )
    [item] = response["InstanceTypeQuotaSet"]
    assert item["Status"] == "SELL" and item["InstanceFamily"] == "S2" and item["Cpu"] == 2
    assert item["Price"]["UnitPrice"] == 0.0896
    assert item["Price"]["UnitPriceDiscount"] == 0.01792 and item["Price"]["Discount"] == 20.0
    assert item["Price"]["ChargeUnit"] == "HOUR" and item["StatusCategory"] == "EnoughStock"
    both = await ok(
        simulator,
        "DescribeZoneInstanceConfigInfos",
        {
            "Filters": [
                {"Name": "instance-family", "Values": ["S5"]},
                {"Name": "sort-keys", "Values": ["cpu:desc"]},
            ]
        },
    )
    items = both["InstanceTypeQuotaSet"]
    assert {i["InstanceChargeType"] for i in items} == {"SPOTPAID", "POSTPAID_BY_HOUR"}
    assert [i["Cpu"] for i in items] == sorted((i["Cpu"] for i in items), reverse=True)


async def test_inquiry_price_for_spot(simulator: RunningSimulator) -> None:
    response = await ok(simulator, "InquiryPriceRunInstances", purchase(InstanceCount=2))
    price = response["Price"]["InstancePrice"]
    assert price["UnitPriceDiscount"] == round(0.01792 * 2, 5) and price["UnitPrice"] == round(
        0.0896 * 2, 5
    )
    assert simulator.market.instances() == []


async def test_describe_zones(simulator: RunningSimulator) -> None:
    response = await ok(simulator, "DescribeZones")
    assert {
        "Zone": ZONE,
        "ZoneName": "Guangzhou Zone 3",
        "ZoneId": "100003",
        "ZoneState": "AVAILABLE",
    } in response["ZoneSet"]


# --------------------------------------------------------------------------- control API


async def test_control_health_instances_and_calls(simulator: RunningSimulator) -> None:
    status, health = await control(simulator, "GET", "health")
    assert status == 200 and health["status"] == "ok"
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "pool", "Value": "c"}]}]
    [iid] = (await ok(simulator, "RunInstances", purchase(TagSpecification=tags)))["InstanceIdSet"]
    await error_code(simulator, "RunInstances", purchase(InstanceType="Z9.MEDIUM4"))
    _, listed = await control(simulator, "GET", "instances?tag=pool=c&zone=ap-guangzhou-3")
    assert [i["instanceId"] for i in listed["instances"]] == [iid]
    assert (
        listed["instances"][0]["spotPrice"] == 0.01792
        and listed["instances"][0]["maxPrice"] == "0.0923"
    )
    _, none = await control(simulator, "GET", "instances?tag=pool=other")
    assert none["count"] == 0
    _, calls = await control(simulator, "GET", "calls?action=RunInstances")
    assert [c["errorCode"] for c in calls["calls"]] == [
        None,
        "InvalidParameterValue.InstanceTypeNotFound",
    ]
    assert calls["calls"][0]["secretId"] == DEMO_SECRET_ID
    assert calls["calls"][0]["params"]["InstanceType"] == "S2.MEDIUM4"
    _, cleared = await control(simulator, "DELETE", "calls")
    assert cleared["cleared"] >= 2
    assert (await control(simulator, "GET", "calls"))[1]["count"] == 0


async def test_ledger_never_stores_secrets(simulator: RunningSimulator) -> None:
    await ok(
        simulator,
        "RunInstances",
        purchase(LoginSettings={"Password": "Hunter2-secret!"}, UserData="ZWNobyBoaQ=="),
    )
    _, calls = await control(simulator, "GET", "calls")
    text = json.dumps(calls)
    assert "Hunter2-secret!" not in text and "ZWNobyBoaQ==" not in text


async def test_control_reclaim_by_ids_and_by_pool(simulator: RunningSimulator) -> None:
    ids = (await ok(simulator, "RunInstances", purchase(InstanceCount=3)))["InstanceIdSet"]
    status, result = await control(simulator, "POST", "reclaim", {"instanceIds": [ids[0]]})
    assert status == 200 and result["reclaimed"] == [ids[0]]
    state = (await ok(simulator, "DescribeInstances", {"InstanceIds": [ids[0]]}))["InstanceSet"][0][
        "InstanceState"
    ]
    assert state == "TERMINATING"
    _, result = await control(
        simulator, "POST", "reclaim", {"zone": ZONE, "instanceType": "S2.MEDIUM4", "count": 5}
    )
    assert sorted(result["reclaimed"]) == sorted(ids[1:])
    status, bad = await control(simulator, "POST", "reclaim", {"zone": ZONE})
    assert status == 400 and "instanceIds" in bad["error"]


async def test_control_market_changes_what_the_api_sells(simulator: RunningSimulator) -> None:
    status, result = await control(
        simulator, "POST", "market", {"zone": ZONE, "instanceType": "S2.MEDIUM4", "soldOut": True}
    )
    assert status == 200 and result["pools"][0]["soldOut"] is True
    assert (
        await error_code(simulator, "RunInstances", purchase())
        == "ResourcesSoldOut.SpecifiedInstanceType"
    )
    await control(
        simulator,
        "POST",
        "market",
        {
            "pools": [
                {
                    "zone": ZONE,
                    "instanceType": "S2.MEDIUM4",
                    "soldOut": False,
                    "onDemandPrice": 1.0,
                },
            ]
        },
    )
    assert (
        await error_code(simulator, "RunInstances", purchase())
        == "InvalidParameterValue.InsufficientPrice"
    )
    await control(
        simulator,
        "POST",
        "market",
        {
            "pools": [
                {"zone": ZONE, "instanceType": "S2.MEDIUM4", "onDemandPrice": 0.0896, "stock": 1}
            ],
            "zoneQuotas": {ZONE: 2},
        },
    )
    assert (
        await error_code(simulator, "RunInstances", purchase(InstanceCount=2))
        == "LimitExceeded.UserSpotQuota"
    )
    _, market = await control(simulator, "GET", "market")
    assert market["zoneQuotas"][ZONE] == {
        "quotaVcpus": 2,
        "usedVcpus": 0,
        "onDemandQuotaVcpus": 20000,
        "onDemandUsedVcpus": 0,
    }
    for bad in (
        {"zone": "nowhere", "instanceType": "S2.MEDIUM4"},
        {"zone": ZONE, "instanceType": "S2.MEDIUM4", "stock": -1},
        {"zone": ZONE, "instanceType": "S2.MEDIUM4", "onDemandStock": -1},
        {"zoneQuotas": {"nowhere": 1}},
        {"onDemandZoneQuotas": {ZONE: -1}},
        {"pools": "x"},
    ):
        status, error = await control(simulator, "POST", "market", bad)
        assert status == 400 and error["error"]


def on_demand(**changes: Any) -> dict[str, Any]:
    fields = {k: v for k, v in GUIDE_PURCHASE.items() if k != "InstanceMarketOptions"}
    return {**fields, "InstanceChargeType": "POSTPAID_BY_HOUR", **changes}


async def test_control_sells_out_and_restocks_on_demand_apart_from_spot(
    simulator: RunningSimulator,
) -> None:
    pool = {"zone": ZONE, "instanceType": "S2.MEDIUM4"}
    status, result = await control(
        simulator, "POST", "market", {**pool, "soldOut": True, "onDemandStock": 3}
    )
    assert status == 200
    view = result["pools"][0]
    assert view["statusCategory"] == "WithoutStock" and view["onDemandStock"] == 3
    assert view["onDemandStatusCategory"] == "UnderStock"
    assert await error_code(simulator, "RunInstances", purchase()) == (
        "ResourcesSoldOut.SpecifiedInstanceType"
    )
    bought = await ok(simulator, "RunInstances", on_demand(InstanceCount=2))
    _, listed = await control(simulator, "GET", "instances?chargeType=POSTPAID_BY_HOUR")
    assert sorted(i["instanceId"] for i in listed["instances"]) == sorted(bought["InstanceIdSet"])
    await control(simulator, "POST", "market", {**pool, "soldOut": False, "onDemandSoldOut": True})
    assert await error_code(simulator, "RunInstances", on_demand()) == (
        "ResourcesSoldOut.SpecifiedInstanceType"
    )
    await ok(simulator, "RunInstances", purchase())
    status, result = await control(
        simulator,
        "POST",
        "market",
        {"pools": [{**pool, "onDemandSoldOut": False}], "onDemandZoneQuotas": {ZONE: 5}},
    )
    assert result["zoneQuotas"][ZONE]["onDemandQuotaVcpus"] == 5
    assert result["zoneQuotas"][ZONE]["onDemandUsedVcpus"] == 4
    assert await error_code(simulator, "RunInstances", on_demand()) == (
        "LimitExceeded.InstanceQuota"
    )
    quota = await ok(
        simulator, "DescribeAccountQuota", {"Filters": [{"Name": "zone", "Values": [ZONE]}]}
    )
    [row] = quota["AccountQuotaOverview"]["AccountQuota"]["PostPaidQuotaSet"]
    assert row == {"UsedQuota": 4, "RemainingQuota": 1, "TotalQuota": 5, "Zone": ZONE}


async def test_control_reset_and_unknown_endpoints(simulator: RunningSimulator) -> None:
    await ok(simulator, "RunInstances", purchase())
    await control(simulator, "POST", "faults", {"*": {"errorRate": 1}})
    assert (await control(simulator, "POST", "reset"))[1] == {"status": "reset"}
    assert simulator.market.instances() == []
    await ok(simulator, "DescribeZones")
    status, error = await control(simulator, "GET", "nothing-here")
    assert status == 404 and "nothing-here" in error["error"]


def test_control_refuses_remote_peers(fast_config: Callable[..., SimulatorConfig]) -> None:
    sim = Simulator(fast_config())

    class RemoteTransport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("10.1.2.3", 40000) if name == "peername" else default

    request = make_mocked_request("GET", "/_sim/health", app=sim.app, transport=RemoteTransport())
    match = asyncio.run(sim.app.router.resolve(request))
    response = asyncio.run(match.handler(request))
    assert response.status == 403
    opened = Simulator(fast_config(api={"allow_remote_control": True}))
    request = make_mocked_request(
        "GET", "/_sim/health", app=opened.app, transport=RemoteTransport()
    )
    response = asyncio.run(asyncio.run(opened.app.router.resolve(request)).handler(request))
    assert response.status == 200


# ---------------------------------------------------------------------------- faults


async def test_fault_error_codes_and_times(simulator: RunningSimulator) -> None:
    status, faults = await control(
        simulator,
        "POST",
        "faults",
        {
            "RunInstances": {
                "errorRate": 1,
                "errorCodes": ["InternalError.TradeUnknownError"],
                "times": 2,
            }
        },
    )
    assert status == 200 and faults["faults"]["RunInstances"]["remaining"] == 2
    assert (
        await error_code(simulator, "RunInstances", purchase()) == "InternalError.TradeUnknownError"
    )
    await ok(simulator, "DescribeZones")  # other actions are untouched
    assert (
        await error_code(simulator, "RunInstances", purchase()) == "InternalError.TradeUnknownError"
    )
    await ok(simulator, "RunInstances", purchase())  # the fault expired after two calls
    assert (await control(simulator, "GET", "faults"))[1]["faults"] == {}
    status, error = await control(simulator, "POST", "faults", {"RunInstances": {"errorRate": 2}})
    assert status == 400 and "RunInstances" in error["error"]


async def test_fault_latency_and_forced_throttle(simulator: RunningSimulator) -> None:
    await control(
        simulator, "POST", "faults", {"DescribeZones": {"latencyMs": 300}, "*": {"throttle": True}}
    )
    started = time.monotonic()
    await ok(simulator, "DescribeZones")
    assert time.monotonic() - started >= 0.3
    assert await error_code(simulator, "DescribeInstances") == "RequestLimitExceeded"
    await control(simulator, "DELETE", "faults?action=*")
    await ok(simulator, "DescribeInstances")


async def test_fault_dropped_connections(simulator: RunningSimulator) -> None:
    await control(simulator, "POST", "faults", {"RunInstances": {"dropRate": 1, "times": 1}})
    with pytest.raises(aiohttp.ClientError):
        await call(simulator, "RunInstances", purchase(ClientToken="drop-1"))
    assert simulator.market.instances() == []  # dropped before: nothing bought
    await control(
        simulator,
        "POST",
        "faults",
        {"RunInstances": {"dropRate": 1, "dropPhase": "after", "times": 1}},
    )
    with pytest.raises(aiohttp.ClientError):
        await call(simulator, "RunInstances", purchase(ClientToken="drop-2"))
    [bought] = simulator.market.instances()  # dropped after: bought, answer lost
    retry = await ok(simulator, "RunInstances", purchase(ClientToken="drop-2"))
    assert retry["InstanceIdSet"] == [bought.instance_id]
    _, calls = await control(simulator, "GET", "calls?action=RunInstances")
    assert [c["errorCode"] for c in calls["calls"]] == [
        "(connection dropped)",
        "(connection dropped)",
        None,
    ]


# ------------------------------------------------------------------------- rate limits


async def test_rate_limits_per_action_and_secret_id(
    fast_config: Callable[..., SimulatorConfig],
) -> None:
    frozen = time.time()
    clock = {"now": frozen}
    config = fast_config(
        credentials=[
            {"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
            {"secret_id": "AKIDSECOND", "secret_key": "second-key"},
        ]
    )
    async with run_simulator(config, clock=lambda: clock["now"]) as sim:
        ts = int(frozen)
        for _ in range(10):
            await ok(sim, "RunInstances", purchase(), timestamp=ts)
        assert (
            await error_code(sim, "RunInstances", purchase(), timestamp=ts)
            == "RequestLimitExceeded"
        )
        await ok(sim, "DescribeZones", timestamp=ts)  # another action, another bucket
        await ok(
            sim,
            "RunInstances",
            purchase(),
            timestamp=ts,
            secret_id="AKIDSECOND",
            secret_key="second-key",
        )
        clock["now"] += 0.1  # one token back at 10/s
        await ok(sim, "RunInstances", purchase(), timestamp=ts)
        assert (
            await error_code(sim, "RunInstances", purchase(), timestamp=ts)
            == "RequestLimitExceeded"
        )
        assert len(sim.market.instances()) == 12


# --------------------------------------------------------------------------- robustness

_ACTIONS = [
    "RunInstances",
    "DescribeInstances",
    "DescribeInstancesStatus",
    "TerminateInstances",
    "DescribeZoneInstanceConfigInfos",
    "DescribeZones",
    "InquiryPriceRunInstances",
    "DescribeAccountQuota",
]
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 200)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    [
        "InstanceIds",
        "Filters",
        "Offset",
        "Limit",
        "Placement",
        "ImageId",
        "InstanceType",
        "InstanceCount",
        "InstanceChargeType",
        "InstanceMarketOptions",
        "ClientToken",
        "TagSpecification",
        "UserData",
        "MinCount",
        "DryRun",
        "InstanceName",
        "SecurityGroupIds",
        "VirtualPrivateCloud",
        "LoginSettings",
        "SystemDisk",
    ]
)
_FUZZ_PARAMS = st.dictionaries(_KEYS, _JSON, max_size=5) | st.dictionaries(
    _KEYS,
    st.sampled_from(
        [
            {"Zone": ZONE},
            "img-pmqg1cw7",
            "S5.MEDIUM4",
            2,
            "SPOTPAID",
            [{"Name": "zone", "Values": [ZONE]}],
        ]
    ),
    max_size=6,
)


def test_arbitrary_parameters_never_crash_the_simulator(
    fast_config: Callable[..., SimulatorConfig], serve_in_thread: Callable[..., Any]
) -> None:
    """Whatever a client sends, the answer is a 200 envelope and never an InternalError."""
    config = fast_config(api={"rate_limits": dict.fromkeys(_ACTIONS, 1e9)})
    with serve_in_thread(config) as sim, httpx.Client() as client:

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(action=st.sampled_from(_ACTIONS), params=_FUZZ_PARAMS)
        def check(action: str, params: dict[str, Any]) -> None:
            url, headers, body = signed_request(sim.url, action, params)
            resp = client.post(url, headers=headers, content=body)
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/json"
            response = resp.json()["Response"]
            assert "RequestId" in response
            assert response.get("Error", {}).get("Code") != "InternalError", response

        check()


# ---------------------------------------------------------------------------------- CLI


async def test_cli_serves_logs_its_url_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spotpool.simulator",
        "--port",
        "0",
        "--credentials",
        "AKIDCLI:cli-key",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout=30)).decode()
        match = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
        assert match, line
        running = SimpleNamespace(url=match.group(1))
        await ok(running, "DescribeZones", secret_id="AKIDCLI", secret_key="cli-key")
        assert (
            await error_code(running, "DescribeZones") == "AuthFailure.SecretIdNotFound"
        )  # demo pair replaced
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


def test_cli_refuses_malformed_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["--credentials", "no-colon"])
    assert exited.value.code == 2
    assert "SECRET_ID:SECRET_KEY" in capsys.readouterr().err
