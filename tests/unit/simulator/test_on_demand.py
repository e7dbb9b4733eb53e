"""Pay-as-you-go beside spot: purchases, stock, quotas, StatusCategory, DryRun and price inquiry.

The market and the action handlers are driven directly (no HTTP) with a fake clock, so each rule
is checked exactly; tests/integration checks the same actions over the wire and with Tencent's
SDK.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from spotpool.cloud.models import RUNNING, TERMINATING
from spotpool.simulator.actions import ACTIONS, CallContext
from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.config import SimulatorConfig, StockStatusSpec
from spotpool.simulator.market import Market
from spotpool.simulator.params import parse_json
from tests.unit.simulator.test_market import (
    REGION,
    TYPE,
    ZONE,
    FakeClock,
    launch,
    refusal,
    small_config,
)

OD = "POSTPAID_BY_HOUR"
SPOT = "SPOTPAID"


@pytest.fixture
def market(clock: FakeClock) -> Market:
    return Market(
        small_config(market={"default_on_demand_stock": 8, "on_demand_quota_vcpus": 100}),
        clock,
    )


def call(market: Market, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one action handler as the server would after authentication; the Response object."""
    handler = ACTIONS[action]
    parsed = parse_json(handler.params, json.dumps(params).encode())
    body = handler.handle(CallContext(market, REGION, "req-test"), parsed)
    response: dict[str, Any] = json.loads(body)["Response"]
    return response


def call_error(market: Market, action: str, params: dict[str, Any]) -> str:
    return refusal(lambda: call(market, action, params))


def purchase(**changes: Any) -> dict[str, Any]:
    return {
        "InstanceChargeType": OD,
        "Placement": {"Zone": ZONE},
        "InstanceType": TYPE,
        "ImageId": "img-pmqg1cw7",
        "InstanceCount": 1,
        **changes,
    }


def spot_purchase(**changes: Any) -> dict[str, Any]:
    spot = {
        "InstanceChargeType": SPOT,
        "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"MaxPrice": "1"}},
    }
    return purchase(**{**spot, **changes})


# ------------------------------------------------------------------------------ purchases


def test_on_demand_purchase_takes_on_demand_stock_and_quota_only(market: Market) -> None:
    pool = market.pool(ZONE, TYPE)
    assert pool is not None
    ids = launch(market, 3, charge_type=OD)
    assert len(ids) == 3
    assert (pool.stock, pool.on_demand_stock) == (10, 5)
    assert market.quota_used(ZONE, OD) == 6 and market.quota_used(ZONE, SPOT) == 0
    inst = market.get(ids[0])
    assert inst is not None and inst.charge_type == OD and inst.spot_price == 0.1  # list price


def test_on_demand_capacity_comes_back_when_the_instance_is_gone(
    market: Market, clock: FakeClock
) -> None:
    [iid] = launch(market, charge_type=OD)
    clock.advance(2)
    market.terminate_instances(REGION, [iid], "r")
    assert market.quota_used(ZONE, OD) == 2  # held while TERMINATING
    clock.advance(1)
    assert market.get(iid) is None
    pool = market.pool(ZONE, TYPE)
    assert pool is not None and pool.on_demand_stock == 8 and market.quota_used(ZONE, OD) == 0


def test_spot_and_on_demand_sell_out_apart(market: Market) -> None:
    market.update_pool(ZONE, TYPE, sold_out=True)
    assert refusal(lambda: launch(market)) == "ResourcesSoldOut.SpecifiedInstanceType"
    assert len(launch(market, charge_type=OD)) == 1
    market.update_pool(ZONE, TYPE, sold_out=False, on_demand_sold_out=True)
    assert len(launch(market)) == 1
    assert (
        refusal(lambda: launch(market, charge_type=OD)) == "ResourcesSoldOut.SpecifiedInstanceType"
    )
    market.update_pool(ZONE, TYPE, on_demand_sold_out=False, on_demand_stock=0)
    assert (
        refusal(lambda: launch(market, charge_type=OD)) == "ResourcesSoldOut.SpecifiedInstanceType"
    )


def test_on_demand_refusals_use_the_pay_as_you_go_codes(market: Market) -> None:
    assert (
        refusal(lambda: launch(market, 9, charge_type=OD))
        == "ResourceInsufficient.SpecifiedInstanceType"
    )
    market.set_zone_quota(ZONE, 4, OD)
    launch(market, 2, charge_type=OD)
    assert refusal(lambda: launch(market, charge_type=OD)) == "LimitExceeded.InstanceQuota"
    assert len(launch(market)) == 1  # the spot quota is another budget
    market.set_zone_quota(ZONE, 0)
    assert refusal(lambda: launch(market)) == "LimitExceeded.UserSpotQuota"


def test_on_demand_ignores_the_spot_bid_and_price(market: Market) -> None:
    market.update_pool(ZONE, TYPE, discount_percent=100)
    assert len(launch(market, charge_type=OD, max_price="0.0001")) == 1


def test_on_demand_instances_are_never_reclaimed(clock: FakeClock) -> None:
    market = Market(small_config(market={"reclaim_rate_per_hour": 3600.0}), clock)
    spot = launch(market, 3)
    od = launch(market, 3, charge_type=OD)
    clock.advance(2)
    assert [market.get(i).state for i in od] == [RUNNING] * 3  # type: ignore[union-attr]
    reclaimed, skipped = market.reclaim(od + spot[:1])
    assert reclaimed == spot[:1]
    assert set(skipped) == set(od) and all("not a spot instance" in w for w in skipped.values())
    assert sorted(market.reclaim_pool(ZONE, TYPE, 10)) == sorted(spot[1:])
    clock.advance(3600)  # one reclaim per instance-second: every spot instance would be gone
    assert [market.get(i).state for i in od] == [RUNNING] * 3  # type: ignore[union-attr]


def test_changing_the_reclaim_rate_leaves_on_demand_alone(market: Market, clock: FakeClock) -> None:
    [iid] = launch(market, charge_type=OD)
    clock.advance(2)
    market.update_pool(ZONE, TYPE, reclaim_rate_per_hour=3600.0)
    clock.advance(600)
    inst = market.get(iid)
    assert inst is not None and inst.state == RUNNING and inst.terminated_by is None


def test_on_demand_dry_run_checks_stock_but_buys_nothing(market: Market) -> None:
    assert launch(market, 8, charge_type=OD, dry_run=True) == []
    assert market.instances() == []
    assert (
        refusal(lambda: launch(market, 9, charge_type=OD, dry_run=True))
        == "ResourceInsufficient.SpecifiedInstanceType"
    )


def test_a_dry_run_neither_replays_nor_records_a_client_token(market: Market) -> None:
    ids = launch(market, token="tok")
    assert launch(market, token="tok", dry_run=True) == []
    assert launch(market, token="tok") == ids
    assert launch(market, token="fresh", dry_run=True) == []
    assert len(launch(market, token="fresh")) == 1


# ---------------------------------------------------------------------- StatusCategory


@pytest.mark.parametrize(
    ("stock", "sold_out", "category"),
    [
        (0, False, "WithoutStock"),
        (500, True, "WithoutStock"),
        (1, False, "UnderStock"),
        (9, False, "UnderStock"),
        (10, False, "NormalStock"),
        (99, False, "NormalStock"),
        (100, False, "EnoughStock"),
    ],
)
def test_status_category_thresholds(stock: int, sold_out: bool, category: str) -> None:
    assert StockStatusSpec().category(stock, sold_out) == category


def test_status_category_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="normal_from"):
        StockStatusSpec(enough_from=5, normal_from=6)


def config_items(market: Market, **filters: list[str]) -> list[dict[str, Any]]:
    response = call(
        market,
        "DescribeZoneInstanceConfigInfos",
        {"Filters": [{"Name": n.replace("_", "-"), "Values": v} for n, v in filters.items()]},
    )
    items: list[dict[str, Any]] = response["InstanceTypeQuotaSet"]
    return items


def test_config_infos_derive_status_category_per_charge_type(market: Market) -> None:
    market.update_pool(ZONE, TYPE, stock=3)
    items = {
        i["InstanceChargeType"]: i for i in config_items(market, zone=[ZONE], instance_type=[TYPE])
    }
    assert items[SPOT]["StatusCategory"] == "UnderStock" and items[SPOT]["Status"] == "SELL"
    assert items[OD]["StatusCategory"] == "UnderStock"  # 8 on-demand left, below 10
    assert items[OD]["Price"] == {
        "UnitPrice": 0.1,
        "UnitPriceDiscount": 0.1,
        "Discount": 100.0,
        "ChargeUnit": "HOUR",
    }
    market.update_pool(ZONE, TYPE, stock=50, on_demand_sold_out=True)
    items = {
        i["InstanceChargeType"]: i for i in config_items(market, zone=[ZONE], instance_type=[TYPE])
    }
    assert items[SPOT]["StatusCategory"] == "NormalStock"
    assert items[OD]["StatusCategory"] == "WithoutStock" and items[OD]["Status"] == "SOLD_OUT"
    assert items[OD]["SoldOutReason"]


def test_status_category_thresholds_are_configurable(clock: FakeClock) -> None:
    market = Market(
        small_config(market={"stock_status": {"enough_from": 5, "normal_from": 2}}), clock
    )
    [item] = config_items(market, zone=[ZONE], instance_type=[TYPE], instance_charge_type=[SPOT])
    assert item["StatusCategory"] == "EnoughStock"  # 10 left
    market.update_pool(ZONE, TYPE, stock=4)
    [item] = config_items(market, zone=[ZONE], instance_type=[TYPE], instance_charge_type=[SPOT])
    assert item["StatusCategory"] == "NormalStock"


# ------------------------------------------------------------------------ RunInstances


def test_run_instances_defaults_to_pay_as_you_go(market: Market) -> None:
    params = purchase()
    del params["InstanceChargeType"]
    [iid] = call(market, "RunInstances", params)["InstanceIdSet"]
    inst = market.get(iid)
    assert inst is not None and inst.charge_type == OD


@pytest.mark.parametrize(
    ("params", "code"),
    [
        (purchase(InstanceChargeType="PREPAID"), "UnsupportedOperation"),
        (purchase(InstanceChargeType="FREE"), "InvalidParameterValue"),
        (
            purchase(InstanceMarketOptions={"MarketType": "spot"}),
            "InvalidParameterCombination",
        ),
        (
            purchase(InstanceCount=2, MinCount=1),
            "UnsupportedOperation.MinCountUnsupportedChargeType",
        ),
    ],
)
def test_run_instances_charge_type_refusals(
    market: Market, params: dict[str, Any], code: str
) -> None:
    assert call_error(market, "RunInstances", params) == code
    assert market.instances() == []


def test_a_passing_dry_run_answers_dry_run_operation(market: Market) -> None:
    for params in (purchase(DryRun=True), spot_purchase(DryRun=True)):
        assert call_error(market, "RunInstances", params) == "DryRunOperation"
    assert market.instances() == []


def test_a_failing_dry_run_answers_the_real_refusal(market: Market) -> None:
    market.update_pool(ZONE, TYPE, on_demand_sold_out=True)
    assert (
        call_error(market, "RunInstances", purchase(DryRun=True))
        == "ResourcesSoldOut.SpecifiedInstanceType"
    )
    assert (
        call_error(market, "RunInstances", purchase(DryRun=True, ImageId="img-BAD"))
        == "InvalidImageId.Malformed"
    )
    assert (
        call_error(
            market,
            "RunInstances",
            spot_purchase(
                DryRun=True,
                InstanceMarketOptions={"SpotOptions": {"MaxPrice": "0.0001"}},
            ),
        )
        == "InvalidParameterValue.InsufficientPrice"
    )
    assert market.instances() == []


def test_dry_run_can_answer_a_plain_success(clock: FakeClock) -> None:
    market = Market(small_config(api={"dry_run_answer": "RequestId"}), clock)
    response = call(market, "RunInstances", purchase(DryRun=True))
    assert response["InstanceIdSet"] == [] and response["RequestId"] == "req-test"
    assert market.instances() == []


# ------------------------------------------------------------------ InquiryPriceRunInstances


def test_inquiry_price_for_on_demand_is_the_list_price(market: Market) -> None:
    price = call(market, "InquiryPriceRunInstances", purchase(InstanceCount=3))["Price"]
    assert price["InstancePrice"] == {
        "UnitPrice": 0.3,
        "UnitPriceDiscount": 0.3,
        "Discount": 100.0,
        "ChargeUnit": "HOUR",
    }
    assert price["BandwidthPrice"]["ChargeUnit"] == "GB"
    assert market.instances() == []


def test_inquiry_price_for_spot_is_the_discounted_price(market: Market) -> None:
    price = call(market, "InquiryPriceRunInstances", spot_purchase(InstanceCount=2))["Price"]
    assert price["InstancePrice"]["UnitPrice"] == 0.2
    assert price["InstancePrice"]["UnitPriceDiscount"] == 0.04
    assert price["InstancePrice"]["Discount"] == 20.0


def test_inquiry_price_is_refused_like_the_purchase(market: Market) -> None:
    market.update_pool(ZONE, TYPE, on_demand_sold_out=True)
    assert (
        call_error(market, "InquiryPriceRunInstances", purchase())
        == "ResourcesSoldOut.SpecifiedInstanceType"
    )
    assert call(market, "InquiryPriceRunInstances", spot_purchase())["Price"]


# ------------------------------------------------------------------- DescribeAccountQuota


def test_account_quota_reports_what_the_market_enforces(market: Market) -> None:
    market.set_zone_quota(ZONE, 30)
    launch(market, 2)  # 4 spot vCPUs
    launch(market, 3, charge_type=OD)  # 6 on-demand vCPUs
    response = call(market, "DescribeAccountQuota", {})
    assert response["AppId"] == 1250000000
    overview = response["AccountQuotaOverview"]
    assert overview["Region"] == REGION
    quota = overview["AccountQuota"]
    assert {
        "PostPaidQuotaSet",
        "PrePaidQuotaSet",
        "SpotPaidQuotaSet",
        "ImageQuotaSet",
        "DisasterRecoverGroupQuotaSet",
    } == set(quota)
    spot = {row["Zone"]: row for row in quota["SpotPaidQuotaSet"]}
    od = {row["Zone"]: row for row in quota["PostPaidQuotaSet"]}
    assert set(spot) == set(od) == {"ap-guangzhou-3", "ap-guangzhou-4"}
    assert spot[ZONE] == {"UsedQuota": 4, "RemainingQuota": 26, "TotalQuota": 30, "Zone": ZONE}
    assert od[ZONE] == {"UsedQuota": 6, "RemainingQuota": 94, "TotalQuota": 100, "Zone": ZONE}
    assert spot["ap-guangzhou-4"]["RemainingQuota"] == 1000


def test_remaining_quota_is_exactly_what_can_still_be_bought(market: Market) -> None:
    market.set_zone_quota(ZONE, 7, OD)
    while True:
        [row] = call(
            market,
            "DescribeAccountQuota",
            {
                "Filters": [
                    {"Name": "zone", "Values": [ZONE]},
                    {"Name": "quota-type", "Values": ["PostPaidQuotaSet"]},
                ]
            },
        )["AccountQuotaOverview"]["AccountQuota"]["PostPaidQuotaSet"]
        try:
            launch(market, charge_type=OD)  # 2 vCPUs each
        except ApiError as exc:
            assert exc.code == "LimitExceeded.InstanceQuota"
            assert row["RemainingQuota"] < 2
            break
        assert row["RemainingQuota"] >= 2
    assert row == {"UsedQuota": 6, "RemainingQuota": 1, "TotalQuota": 7, "Zone": ZONE}


def test_a_lowered_quota_reports_nothing_remaining_not_a_negative(market: Market) -> None:
    launch(market, 3)
    market.set_zone_quota(ZONE, 2)
    [row] = call(market, "DescribeAccountQuota", {"Filters": [{"Name": "zone", "Values": [ZONE]}]})[
        "AccountQuotaOverview"
    ]["AccountQuota"]["SpotPaidQuotaSet"]
    assert row == {"UsedQuota": 6, "RemainingQuota": 0, "TotalQuota": 2, "Zone": ZONE}


def test_account_quota_filters(market: Market) -> None:
    quota = call(
        market,
        "DescribeAccountQuota",
        {"Filters": [{"Name": "quota-type", "Values": ["SpotPaidQuotaSet"]}]},
    )["AccountQuotaOverview"]["AccountQuota"]
    assert len(quota["SpotPaidQuotaSet"]) == 2 and quota["PostPaidQuotaSet"] == []


@pytest.mark.parametrize(
    ("filters", "code"),
    [
        ([{"Name": "color", "Values": ["red"]}], "InvalidFilter"),
        ([{"Name": "zone", "Values": ["ap-shanghai-2"]}], "InvalidZone.MismatchRegion"),
        ([{"Name": "quota-type", "Values": ["GpuQuotaSet"]}], "InvalidParameterValue"),
        ([{"Name": "zone", "Values": []}], "InvalidParameterValue"),
    ],
)
def test_account_quota_refusals(market: Market, filters: list[Any], code: str) -> None:
    assert call_error(market, "DescribeAccountQuota", {"Filters": filters}) == code


def test_config_refuses_an_on_demand_quota_for_an_unknown_zone() -> None:
    with pytest.raises(ValueError, match="zone_on_demand_quota_vcpus"):
        small_config(market={"zone_on_demand_quota_vcpus": {"ap-nowhere-1": 4}})


def test_default_market_sells_on_demand_plentifully() -> None:
    config = SimulatorConfig.default()
    market = Market(config)
    pool = market.pool("ap-guangzhou-3", "S5.MEDIUM4")
    assert pool is not None and pool.on_demand_stock >= pool.stock
    assert market.zone_quota("ap-guangzhou-3", OD) > 0
    assert config.api.rate_limits["DescribeAccountQuota"] > 0


def test_terminating_on_demand_keeps_its_charge_type_in_describe(
    market: Market, clock: FakeClock
) -> None:
    [iid] = launch(market, charge_type=OD)
    [spot] = launch(market)
    clock.advance(2)
    market.terminate_instances(REGION, [iid], "r")
    total, page = market.describe_instances(REGION, filters=[("instance-charge-type", [OD])])
    assert total == 1 and page[0].instance_id == iid and page[0].state == TERMINATING
    total, page = market.describe_instances(REGION, filters=[("instance-charge-type", [SPOT])])
    assert [i.instance_id for i in page] == [spot]


def test_only_the_listed_images_exist_when_images_are_set(clock: FakeClock) -> None:
    market = Market(small_config(market={"images": ["img-pmqg1cw7"]}), clock)
    assert call(market, "RunInstances", purchase())["InstanceIdSet"]
    gone = purchase(ImageId="img-00000000", DryRun=True)
    assert call_error(market, "RunInstances", gone) == "InvalidImageId.NotFound"
    inquiry = purchase(ImageId="img-00000000")
    assert call_error(market, "InquiryPriceRunInstances", inquiry) == "InvalidImageId.NotFound"
    market.set_images(None)  # every well-formed id exists again
    assert call_error(market, "RunInstances", gone) == "DryRunOperation"
    market.set_images([])
    assert market.images() == []
    assert call_error(market, "RunInstances", purchase()) == "InvalidImageId.NotFound"
    market.reset()
    assert market.images() == ["img-pmqg1cw7"]


def test_only_the_listed_subnets_exist_each_in_its_zone_when_subnets_are_set(clock: FakeClock) -> None:
    market = Market(small_config(market={"subnets": {"subnet-ahv6swf2": ZONE}}), clock)

    def in_subnet(subnet: str, zone: str = ZONE, **changes: Any) -> dict[str, Any]:
        return purchase(Placement={"Zone": zone}, VirtualPrivateCloud={"VpcId": "vpc-2ari9m7h", "SubnetId": subnet},
                        **changes)

    assert call(market, "RunInstances", in_subnet("subnet-ahv6swf2"))["InstanceIdSet"]
    missing = in_subnet("subnet-00000000", DryRun=True)
    assert call_error(market, "RunInstances", missing) == "InvalidParameterValue.SubnetNotExist"
    elsewhere = in_subnet("subnet-ahv6swf2", "ap-guangzhou-4", DryRun=True)
    assert call_error(market, "RunInstances", elsewhere) == "InvalidParameterValue.SubnetIdZoneIdNotMatch"
    assert call_error(market, "RunInstances", purchase(DryRun=True)) == "DryRunOperation"  # default subnet
    market.set_subnets(None)  # every well-formed id exists again, anywhere
    assert call_error(market, "RunInstances", missing) == "DryRunOperation"
    assert market.subnets() is None
    market.reset()
    assert market.subnets() == {"subnet-ahv6swf2": ZONE}
    with pytest.raises(ValueError, match="unknown zone"):
        small_config(market={"subnets": {"subnet-ahv6swf2": "ap-nowhere-1"}})


def test_a_batch_mixing_charge_types_is_refused_whole(market: Market, clock: FakeClock) -> None:
    spot = launch(market, 2)
    od = launch(market, 2, charge_type=OD)
    clock.advance(2)
    assert (
        refusal(lambda: market.terminate_instances(REGION, spot + od[:1], "r"))
        == "UnsupportedOperation.InstanceMixedPricingModel"
    )
    assert [market.get(i).state for i in spot + od] == [RUNNING] * 4  # type: ignore[union-attr]
    market.terminate_instances(REGION, spot, "r")
    market.terminate_instances(REGION, od, "r")
    assert {market.get(i).state for i in spot + od} == {TERMINATING}  # type: ignore[union-attr]
