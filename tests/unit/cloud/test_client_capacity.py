"""CvmClient beyond spot: on-demand purchases, DryRun checks, offers with StatusCategory, account
quota and price inquiry, over httpx.MockTransport.

Request bodies are compared with the official SDK's serialisation of the same request, and the
parsers are fed Tencent's documented example answers (tccli's examples.json for CVM 2017-03-12)
as well as broken ones, which must become errors rather than numbers the planner trusts.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from tencentcloud.cvm.v20170312 import models as sdk

from spotpool.cloud.client import DryRunBought
from spotpool.cloud.errors import CloudError, CloudNetworkError
from spotpool.cloud.models import (
    ENOUGH_STOCK,
    POSTPAID_BY_HOUR,
    SPOTPAID,
    UNDER_STOCK,
    AccountQuota,
    Offer,
    RunInstancesRequest,
    ZoneQuota,
)
from tests.unit.cloud.test_client_unit import error, make_client, reply

ZONE = "ap-guangzhou-3"
RUN: dict[str, Any] = {
    "zone": ZONE,
    "instance_type": "S5.MEDIUM4",
    "image_id": "img-pmqg1cw7",
    "count": 2,
    "client_token": "tok-1",
    "tags": {"pool": "a"},
}

# DescribeAccountQuota's documented example answer (zones, sets and numbers as published).
QUOTA_EXAMPLE = {
    "AccountQuotaOverview": {
        "Region": "ap-guangzhou",
        "AccountQuota": {
            "PostPaidQuotaSet": [
                {"UsedQuota": 0, "RemainingQuota": 288, "TotalQuota": 288, "Zone": ZONE},
                {
                    "UsedQuota": 2,
                    "RemainingQuota": 1248,
                    "TotalQuota": 1250,
                    "Zone": "ap-guangzhou-4",
                },
            ],
            "DisasterRecoverGroupQuotaSet": [
                {
                    "CvmInRackGroupQuota": 30,
                    "GroupQuota": 10,
                    "CvmInHostGroupQuota": 50,
                    "CurrentNum": 0,
                    "CvmInSwitchGroupQuota": 20,
                }
            ],
            "PrePaidQuotaSet": [
                {
                    "UsedQuota": 0,
                    "OnceQuota": 300,
                    "Zone": ZONE,
                    "TotalQuota": 255,
                    "RemainingQuota": 255,
                }
            ],
            "SpotPaidQuotaSet": [
                {"UsedQuota": 0, "RemainingQuota": 244, "TotalQuota": 244, "Zone": ZONE},
                {
                    "UsedQuota": 4,
                    "RemainingQuota": 195,
                    "TotalQuota": 199,
                    "Zone": "ap-guangzhou-4",
                },
            ],
            "ImageQuotaSet": [{"UsedQuota": 0, "TotalQuota": 10}],
        },
    },
    "AppId": 251007416,
}


def sdk_body(model: type[Any], fields: dict[str, Any]) -> bytes:
    request = model()
    request.from_json_string(json.dumps(fields))
    return json.dumps(request._serialize()).encode()


def item(**changes: Any) -> dict[str, Any]:
    """A DescribeZoneInstanceConfigInfos item in the documented shape."""
    return {
        "Zone": ZONE,
        "InstanceType": "S5.MEDIUM4",
        "InstanceChargeType": SPOTPAID,
        "Cpu": 2,
        "Memory": 4,
        "Status": "SELL",
        "Price": {
            "UnitPrice": 0.0859,
            "UnitPriceDiscount": 0.01718,
            "Discount": 20.0,
            "ChargeUnit": "HOUR",
        },
        "StatusCategory": "EnoughStock",
        **changes,
    }


# ------------------------------------------------------------------------ run_instances


async def test_on_demand_purchase_body_equals_the_sdk_serialisation() -> None:
    client, fake, _ = make_client(lambda a, b, r: reply({"InstanceIdSet": ["ins-abcd1234"]}))
    async with client:
        ids = await client.run_instances(RunInstancesRequest(**RUN, charge_type=POSTPAID_BY_HOUR))
    assert ids == ["ins-abcd1234"]
    expected = sdk_body(
        sdk.RunInstancesRequest,
        {
            "InstanceChargeType": POSTPAID_BY_HOUR,
            "Placement": {"Zone": ZONE, "ProjectId": 0},
            "InstanceType": "S5.MEDIUM4",
            "ImageId": "img-pmqg1cw7",
            "InstanceCount": 2,
            "ClientToken": "tok-1",
            "TagSpecification": [
                {"ResourceType": "instance", "Tags": [{"Key": "pool", "Value": "a"}]}
            ],
        },
    )
    assert fake.requests[0].content == expected
    assert b"InstanceMarketOptions" not in expected


async def test_an_explicit_spot_charge_type_sends_the_same_bytes_as_before() -> None:
    client, fake, _ = make_client(lambda a, b, r: reply({"InstanceIdSet": []}))
    async with client:
        await client.run_instances(RunInstancesRequest(**RUN, max_price="0.05"))
        await client.run_instances(RunInstancesRequest(**RUN, max_price="0.05", charge_type=SPOTPAID))
    first, second = (r.content for r in fake.requests)
    assert first == second
    assert json.loads(first)["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] == "0.05"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"charge_type": POSTPAID_BY_HOUR, "max_price": "0.05"}, "spot bid"),
        ({"charge_type": SPOTPAID}, "needs max_price"),
        ({"charge_type": "PREPAID", "max_price": "0.05"}, "charge_type must be one of"),
    ],
)
async def test_purchase_arguments_that_make_no_sense_are_refused_before_any_call(
    kwargs: dict[str, Any], words: str
) -> None:
    client, fake, _ = make_client(lambda a, b, r: reply({"InstanceIdSet": []}))
    async with client:
        with pytest.raises(ValueError, match=words):
            await client.run_instances(RunInstancesRequest(**RUN, **kwargs))
    assert fake.requests == []


# ----------------------------------------------------------------------- check_purchase


def check(**changes: Any) -> RunInstancesRequest:
    """A one-instance purchase to check (check_purchase sets DryRun and its own token)."""
    return RunInstancesRequest(**{**RUN, "count": 1, "client_token": "unused", **changes})


@pytest.mark.parametrize(
    "answer",
    [error("DryRunOperation", "would have succeeded"), reply({"InstanceIdSet": []})],
    ids=["DryRunOperation", "empty-success"],
)
async def test_check_purchase_passes_on_either_documented_answer(answer: httpx.Response) -> None:
    client, fake, _ = make_client(lambda a, b, r: answer)
    async with client:
        await client.check_purchase(check(charge_type=POSTPAID_BY_HOUR))  # returns: it would pass
    [body] = fake.bodies("RunInstances")
    assert body["DryRun"] is True and body["InstanceChargeType"] == POSTPAID_BY_HOUR
    assert body["ClientToken"].startswith("dryrun-") and body["InstanceCount"] == 1


async def test_check_purchase_sends_the_purchase_itself_under_a_fresh_token() -> None:
    client, fake, _ = make_client(lambda a, b, r: reply({"InstanceIdSet": []}))
    request = RunInstancesRequest(**RUN, max_price="0.05")
    async with client:
        await client.check_purchase(request)
        await client.check_purchase(request)
        await client.run_instances(request)
    first, second, bought = fake.bodies("RunInstances")
    assert first["DryRun"] is True and "DryRun" not in bought
    assert first["ClientToken"] != second["ClientToken"] != bought["ClientToken"]
    same = {key: value for key, value in bought.items() if key != "ClientToken"}
    assert {key: value for key, value in first.items() if key not in ("ClientToken", "DryRun")} == same


async def test_check_purchase_raises_the_refusal_the_purchase_would_get() -> None:
    client, _, _ = make_client(lambda a, b, r: error("InvalidImageId.NotFound", "no such image"))
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.check_purchase(check(image_id="img-00000000", max_price="1"))
    assert caught.value.code == "InvalidImageId.NotFound"


async def test_a_dry_run_that_bought_instances_is_an_error_not_a_pass() -> None:
    client, _, _ = make_client(lambda a, b, r: reply({"InstanceIdSet": ["ins-abcd1234"]}))
    async with client:
        with pytest.raises(DryRunBought, match="ins-abcd1234") as caught:
            await client.check_purchase(check(max_price="1"))
    assert isinstance(caught.value, CloudNetworkError)


async def test_a_spot_check_needs_a_bid() -> None:
    client, fake, _ = make_client(lambda a, b, r: reply({}))
    async with client:
        with pytest.raises(ValueError, match="max_price"):
            await client.check_purchase(check())
    assert fake.requests == []


# ----------------------------------------------------------------------- describe_offers


async def test_offers_carry_price_list_price_and_status_category() -> None:
    items = [
        item(),
        item(
            InstanceChargeType=POSTPAID_BY_HOUR,
            Price={
                "UnitPrice": 0.0859,
                "UnitPriceDiscount": 0.0859,
                "Discount": 100.0,
                "ChargeUnit": "HOUR",
            },
            StatusCategory="UnderStock",
        ),
        item(InstanceType="S5.LARGE8", StatusCategory="PlentyStock", Status="SOLD_OUT"),
        item(Zone="ap-guangzhou-9"),  # not asked for: dropped
    ]
    client, fake, _ = make_client(lambda a, b, r: reply({"InstanceTypeQuotaSet": items}))
    async with client:
        offers = await client.describe_offers(
            zones=[ZONE], instance_types=["S5.MEDIUM4", "S5.LARGE8"]
        )
    by_key = {(o.instance_type, o.charge_type): o for o in offers}
    assert set(by_key) == {
        ("S5.MEDIUM4", SPOTPAID),
        ("S5.MEDIUM4", POSTPAID_BY_HOUR),
        ("S5.LARGE8", SPOTPAID),
    }
    spot = by_key[("S5.MEDIUM4", SPOTPAID)]
    assert spot == Offer(
        ZONE,
        "S5.MEDIUM4",
        SPOTPAID,
        Decimal("0.01718"),
        Decimal("0.0859"),
        False,
        ENOUGH_STOCK,
        2,
        4,
    )
    assert spot.stock_rank == 3
    od = by_key[("S5.MEDIUM4", POSTPAID_BY_HOUR)]
    assert od.price == od.list_price == Decimal("0.0859") and od.status_category == UNDER_STOCK
    unknown = by_key[("S5.LARGE8", SPOTPAID)]
    assert unknown.status_category is None and unknown.stock_rank is None and unknown.sold_out
    [body] = fake.bodies("DescribeZoneInstanceConfigInfos")
    assert body == json.loads(
        sdk_body(
            sdk.DescribeZoneInstanceConfigInfosRequest,
            {
                "Filters": [
                    {"Name": "zone", "Values": [ZONE]},
                    {"Name": "instance-type", "Values": ["S5.MEDIUM4", "S5.LARGE8"]},
                    {"Name": "instance-charge-type", "Values": [SPOTPAID, POSTPAID_BY_HOUR]},
                ]
            },
        )
    )


async def test_offers_are_batched_five_values_per_filter_and_by_charge_type() -> None:
    client, fake, _ = make_client(lambda a, b, r: reply({"InstanceTypeQuotaSet": []}))
    zones = [f"ap-guangzhou-{n}" for n in range(1, 8)]
    async with client:
        assert (
            await client.describe_offers(
                zones=zones, instance_types=["S5.MEDIUM4"], charge_types=[POSTPAID_BY_HOUR]
            )
            == []
        )
    bodies = fake.bodies("DescribeZoneInstanceConfigInfos")
    assert [b["Filters"][0]["Values"] for b in bodies] == [zones[:5], zones[5:]]
    assert all(b["Filters"][2]["Values"] == [POSTPAID_BY_HOUR] for b in bodies)
    with pytest.raises(ValueError, match="PREPAID"):
        await client.describe_offers(zones=zones, instance_types=["x"], charge_types=["PREPAID"])


@pytest.mark.parametrize(
    "answer",
    [
        {"InstanceTypeQuotaSet": "lots"},
        {"InstanceTypeQuotaSet": ["x"]},
        {"InstanceTypeQuotaSet": [item(Cpu="2")]},
        {"InstanceTypeQuotaSet": [item(Zone="z" * 500)]},
        {"InstanceTypeQuotaSet": [item(Price=[1])]},
    ],
)
async def test_malformed_offers_are_invalid_responses(answer: dict[str, Any]) -> None:
    client, _, _ = make_client(lambda a, b, r: reply(answer))
    async with client:
        with pytest.raises(CloudError, match="DescribeZoneInstanceConfigInfos failed: InvalidResponse"):
            await client.describe_offers(zones=[ZONE], instance_types=["S5.MEDIUM4"])


# ------------------------------------------------------------------ describe_account_quota


async def test_account_quota_reads_the_documented_example() -> None:
    client, fake, _ = make_client(lambda a, b, r: reply(QUOTA_EXAMPLE))
    async with client:
        quota = await client.describe_account_quota()
    assert quota == AccountQuota(
        region="ap-guangzhou",
        spot={
            ZONE: ZoneQuota(ZONE, 244, 0, 244),
            "ap-guangzhou-4": ZoneQuota("ap-guangzhou-4", 199, 4, 195),
        },
        on_demand={
            ZONE: ZoneQuota(ZONE, 288, 0, 288),
            "ap-guangzhou-4": ZoneQuota("ap-guangzhou-4", 1250, 2, 1248),
        },
        app_id=251007416,
    )
    assert quota.remaining("ap-guangzhou-4", SPOTPAID) == 195
    assert quota.remaining("ap-guangzhou-4", POSTPAID_BY_HOUR) == 1248
    assert quota.remaining("ap-guangzhou-9", SPOTPAID) is None
    [body] = fake.requests
    assert body.content == sdk_body(
        sdk.DescribeAccountQuotaRequest,
        {"Filters": [{"Name": "quota-type", "Values": ["SpotPaidQuotaSet", "PostPaidQuotaSet"]}]},
    )


async def test_account_quota_for_zones_is_batched_and_narrowed() -> None:
    # A server that ignores the zone filter answers every zone: only the asked ones are kept.
    client, fake, _ = make_client(lambda a, b, r: reply(QUOTA_EXAMPLE))
    zones = ["ap-guangzhou-4"] + [f"ap-shanghai-{n}" for n in range(1, 6)]
    async with client:
        quota = await client.describe_account_quota(zones=zones)
    assert set(quota.spot) == set(quota.on_demand) == {"ap-guangzhou-4"}
    bodies = fake.bodies("DescribeAccountQuota")
    assert [b["Filters"][0] for b in bodies] == [
        {"Name": "zone", "Values": zones[:5]},
        {"Name": "zone", "Values": zones[5:]},
    ]


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"AccountQuotaOverview": {"AccountQuota": []}},
        {"AccountQuotaOverview": {"AccountQuota": {"SpotPaidQuotaSet": {}}}},
        {
            "AccountQuotaOverview": {
                "AccountQuota": {
                    "SpotPaidQuotaSet": [{"Zone": ZONE, "TotalQuota": 4, "RemainingQuota": "4"}]
                }
            }
        },
        {
            "AccountQuotaOverview": {
                "AccountQuota": {
                    "PostPaidQuotaSet": [{"Zone": ZONE, "TotalQuota": 4, "RemainingQuota": -1}]
                }
            }
        },
        {
            "AccountQuotaOverview": {
                "AccountQuota": {"PostPaidQuotaSet": [{"Zone": ZONE, "TotalQuota": 4}]}
            }
        },
        {
            "AccountQuotaOverview": {
                "AccountQuota": {"PostPaidQuotaSet": [{"TotalQuota": 4, "RemainingQuota": 4}]}
            }
        },
        {
            "AccountQuotaOverview": {
                "AccountQuota": {
                    "SpotPaidQuotaSet": [{"Zone": ZONE, "TotalQuota": True, "RemainingQuota": 4}]
                }
            }
        },
    ],
)
async def test_malformed_quota_is_an_invalid_response_never_a_number(answer: dict[str, Any]) -> None:
    client, _, _ = make_client(lambda a, b, r: reply(answer))
    async with client:
        with pytest.raises(CloudError, match="DescribeAccountQuota failed: InvalidResponse"):
            await client.describe_account_quota()


async def test_absent_quota_sets_mean_unknown_zones() -> None:
    client, _, _ = make_client(
        lambda a, b, r: reply(
            {
                "AccountQuotaOverview": {
                    "Region": "ap-guangzhou",
                    "AccountQuota": {"PostPaidQuotaSet": None},
                }
            }
        )
    )
    async with client:
        quota = await client.describe_account_quota()
    assert quota.spot == {} and quota.on_demand == {}
    assert quota.remaining(ZONE, SPOTPAID) is None and quota.app_id is None


# ------------------------------------------------------------------------- inquiry_price


async def test_inquiry_price_reads_the_documented_pay_as_you_go_example() -> None:
    # The documented answer for an hourly pay-as-you-go instance (prices as published).
    example = {
        "Price": {
            "InstancePrice": {
                "UnitPrice": 16.09,
                "UnitPriceDiscount": 3.33,
                "Discount": 0,
                "ChargeUnit": "HOUR",
                "UnitPriceSecondStep": 16.09,
            },
            "BandwidthPrice": {"UnitPrice": 0.8, "UnitPriceDiscount": 0.52, "ChargeUnit": "HOUR"},
        }
    }
    client, fake, _ = make_client(lambda a, b, r: reply(example))
    async with client:
        quote = await client.inquiry_price(
            zone="ap-shanghai-2",
            instance_type="S5.16XLARGE256",
            image_id="img-pmqg1cw7",
            charge_type=POSTPAID_BY_HOUR,
        )
    assert (quote.price, quote.list_price, quote.discount_percent) == (
        Decimal("3.33"),
        Decimal("16.09"),
        Decimal("0"),
    )
    assert quote.charge_type == POSTPAID_BY_HOUR and quote.charge_unit == "HOUR"
    assert fake.requests[0].content == sdk_body(
        sdk.InquiryPriceRunInstancesRequest,
        {
            "Placement": {"Zone": "ap-shanghai-2", "ProjectId": 0},
            "ImageId": "img-pmqg1cw7",
            "InstanceChargeType": POSTPAID_BY_HOUR,
            "InstanceType": "S5.16XLARGE256",
            "InstanceCount": 1,
        },
    )


async def test_spot_inquiry_sends_the_bid_only_when_given() -> None:
    answer = {
        "Price": {
            "InstancePrice": {
                "UnitPrice": 0.2,
                "UnitPriceDiscount": 0.04,
                "Discount": 20.0,
                "ChargeUnit": "HOUR",
            }
        }
    }
    client, fake, _ = make_client(lambda a, b, r: reply(answer))
    async with client:
        quote = await client.inquiry_price(
            zone=ZONE, instance_type="S5.MEDIUM4", image_id="img-pmqg1cw7", count=2
        )
        await client.inquiry_price(
            zone=ZONE, instance_type="S5.MEDIUM4", image_id="img-pmqg1cw7", max_price="0.5"
        )
    assert quote.price == Decimal("0.04") and quote.discount_percent == Decimal("20.0")
    first, second = fake.bodies("InquiryPriceRunInstances")
    assert first["InstanceMarketOptions"] == {
        "SpotOptions": {"SpotInstanceType": "one-time"},
        "MarketType": "spot",
    }
    assert first["InstanceCount"] == 2
    assert second["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] == "0.5"


@pytest.mark.parametrize(
    "answer", [{}, {"Price": {}}, {"Price": {"InstancePrice": {"Price": 1, "ChargeUnit": 7}}}]
)
async def test_malformed_price_is_an_invalid_response(answer: dict[str, Any]) -> None:
    client, _, _ = make_client(lambda a, b, r: reply(answer))
    async with client:
        with pytest.raises(CloudError, match="InquiryPriceRunInstances failed: InvalidResponse"):
            await client.inquiry_price(
                zone=ZONE, instance_type="S5.MEDIUM4", image_id="img-pmqg1cw7"
            )


async def test_inquiry_refusals_are_cloud_errors() -> None:
    client, _, _ = make_client(
        lambda a, b, r: error("ResourcesSoldOut.SpecifiedInstanceType", "sold out")
    )
    async with client:
        with pytest.raises(CloudError) as caught:
            await client.inquiry_price(
                zone=ZONE, instance_type="S5.MEDIUM4", image_id="img-pmqg1cw7"
            )
    assert caught.value.code == "ResourcesSoldOut.SpecifiedInstanceType"


# --------------------------------------------------------- termination of mixed charge types


async def test_a_batch_refused_for_mixing_charge_types_is_split_by_charge_type() -> None:
    charge = {
        "ins-spot0001": SPOTPAID,
        "ins-spot0002": SPOTPAID,
        "ins-odod0001": POSTPAID_BY_HOUR,
        "ins-gone0001": SPOTPAID,  # described as nothing: already gone
    }

    def handler(action: str, body: dict[str, Any], _: httpx.Request) -> httpx.Response:
        if action == "DescribeInstances":
            found = [
                {"InstanceId": i, "InstanceState": "RUNNING", "InstanceChargeType": charge[i]}
                for i in body["InstanceIds"]
                if i != "ins-gone0001"
            ]
            return reply({"TotalCount": len(found), "InstanceSet": found})
        kinds = {charge[i] for i in body["InstanceIds"]}
        if len(kinds) > 1:
            return error("UnsupportedOperation.InstanceMixedPricingModel", "one charge type")
        return reply({})

    client, fake, _ = make_client(handler)
    async with client:
        await client.terminate_instances(list(charge))
    batches = [b["InstanceIds"] for b in fake.bodies("TerminateInstances")]
    assert batches == [
        list(charge),
        ["ins-spot0001", "ins-spot0002"],
        ["ins-odod0001"],
    ]


async def test_a_server_refusing_one_charge_type_as_mixed_still_gets_every_id_ended() -> None:
    def handler(action: str, body: dict[str, Any], _: httpx.Request) -> httpx.Response:
        if action == "DescribeInstances":
            found = [
                {"InstanceId": i, "InstanceState": "RUNNING", "InstanceChargeType": SPOTPAID}
                for i in body["InstanceIds"]
            ]
            return reply({"TotalCount": len(found), "InstanceSet": found})
        if len(body["InstanceIds"]) > 1:
            return error("UnsupportedOperation.InstanceMixedPricingModel", "one charge type")
        return reply({})

    client, fake, _ = make_client(handler)
    async with client:
        await client.terminate_instances(["ins-aaaa0001", "ins-aaaa0002"])
    batches = [b["InstanceIds"] for b in fake.bodies("TerminateInstances")]
    assert batches[1:] == [["ins-aaaa0001"], ["ins-aaaa0002"]]
