"""CvmClient's on-demand, DryRun, offer, quota and price calls against the simulator over HTTP.

These are the calls issue 11's planner builds on: a spot sell-out must leave on-demand for sale,
StatusCategory must follow the stock, the quota the client reads must be exactly what purchases
are held to, and a DryRun must check everything a purchase would while buying nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from spotpool.cloud import CloudError, CvmClient, ErrorCategory
from spotpool.cloud.models import (
    ENOUGH_STOCK,
    NORMAL_STOCK,
    POSTPAID_BY_HOUR,
    SPOTPAID,
    UNDER_STOCK,
    WITHOUT_STOCK,
    Credentials,
    RunInstancesRequest,
)
from spotpool.simulator import RunningSimulator

DEMO = Credentials("AKIDSPOTPOOLDEMO00000000000000000000", "spotpoolDemoSecretKey0000000000000")
REGION = "ap-guangzhou"
ZONE = "ap-guangzhou-3"
TYPE = "S5.MEDIUM4"  # 2 vCPUs, list price 0.0859
IMAGE = "img-pmqg1cw7"


@pytest.fixture
async def client(simulator: RunningSimulator) -> AsyncIterator[CvmClient]:
    async with CvmClient(DEMO, REGION, simulator.url, backoff_base=0.05) as cvm:
        yield cvm


async def market(simulator: RunningSimulator, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        response = await http.post("/_sim/market", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def buy(client: CvmClient, count: int, token: str, **kwargs: Any) -> list[str]:
    args: dict[str, Any] = {
        "zone": ZONE,
        "instance_type": TYPE,
        "image_id": IMAGE,
        "count": count,
        "client_token": token,
        "tags": {"suite": "capacity"},
    }
    return await client.run_instances(RunInstancesRequest(**{**args, **kwargs}))


def check(**changes: Any) -> RunInstancesRequest:
    """One instance to check with DryRun (check_purchase sends its own ClientToken)."""
    args: dict[str, Any] = {"zone": ZONE, "instance_type": TYPE, "image_id": IMAGE, "count": 1,
                            "client_token": "unused"}
    return RunInstancesRequest(**{**args, **changes})


async def test_on_demand_instances_are_bought_and_described_as_such(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    od = await buy(client, 2, "od-1", charge_type=POSTPAID_BY_HOUR)
    spot = await buy(client, 1, "spot-1", max_price="0.05")
    described = {
        i.instance_id: i.charge_type for i in await client.describe_by_tag("suite", "capacity")
    }
    assert described == {od[0]: POSTPAID_BY_HOUR, od[1]: POSTPAID_BY_HOUR, spot[0]: SPOTPAID}
    assert await buy(client, 2, "od-1", charge_type=POSTPAID_BY_HOUR) == od  # token replay
    assert simulator.market.quota_used(ZONE, POSTPAID_BY_HOUR) == 4
    assert simulator.market.quota_used(ZONE, SPOTPAID) == 2


async def test_a_spot_sell_out_leaves_on_demand_for_sale_until_it_too_sells_out(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    await market(simulator, {"zone": ZONE, "instanceType": TYPE, "soldOut": True})
    with pytest.raises(CloudError) as caught:
        await buy(client, 1, "spot-x", max_price="0.05")
    assert caught.value.category is ErrorCategory.CAPACITY
    assert len(await buy(client, 1, "od-x", charge_type=POSTPAID_BY_HOUR)) == 1
    await market(simulator, {"zone": ZONE, "instanceType": TYPE, "onDemandSoldOut": True})
    with pytest.raises(CloudError) as caught:
        await buy(client, 1, "od-y", charge_type=POSTPAID_BY_HOUR)
    assert caught.value.code == "ResourcesSoldOut.SpecifiedInstanceType"
    await market(simulator, {"zone": ZONE, "instanceType": TYPE, "soldOut": False})
    assert len(await buy(client, 1, "spot-y", max_price="0.05")) == 1  # restocked


async def test_on_demand_quota_refusal_is_a_quota_error(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    await market(simulator, {"onDemandZoneQuotas": {ZONE: 3}})
    with pytest.raises(CloudError) as caught:
        await buy(client, 2, "od-q", charge_type=POSTPAID_BY_HOUR)
    assert caught.value.code == "LimitExceeded.InstanceQuota"
    assert caught.value.category is ErrorCategory.QUOTA


async def test_check_purchase_passes_or_raises_and_never_buys(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    await client.check_purchase(check(max_price="0.05"))
    await client.check_purchase(check(count=3, charge_type=POSTPAID_BY_HOUR))
    refusals = {}
    for name, kwargs in {
        "image": {"image_id": "img-BAD"},
        "type": {"instance_type": "Z9.MEDIUM4"},
        "subnet": {"vpc_id": "vpc-12345678", "subnet_id": "subnet-x"},
        "bid": {"max_price": "0.0001"},
    }.items():
        args: dict[str, Any] = {
            "zone": ZONE,
            "instance_type": TYPE,
            "image_id": IMAGE,
            "max_price": "0.05",
            **kwargs,
        }
        with pytest.raises(CloudError) as caught:
            await client.check_purchase(check(**args))
        refusals[name] = (caught.value.code, caught.value.category)
    assert refusals == {
        "image": ("InvalidImageId.Malformed", ErrorCategory.INVALID_REQUEST),
        "type": ("InvalidParameterValue.InstanceTypeNotFound", ErrorCategory.INVALID_REQUEST),
        "subnet": ("InvalidParameterValue.SubnetIdMalformed", ErrorCategory.INVALID_REQUEST),
        "bid": ("InvalidParameterValue.InsufficientPrice", ErrorCategory.PRICE),
    }
    assert simulator.market.instances() == []


async def test_offers_follow_stock_per_charge_type(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    async def categories() -> dict[str, str | None]:
        offers = await client.describe_offers(zones=[ZONE], instance_types=[TYPE])
        return {o.charge_type: o.status_category for o in offers}

    assert await categories() == {SPOTPAID: ENOUGH_STOCK, POSTPAID_BY_HOUR: ENOUGH_STOCK}
    await market(simulator, {"zone": ZONE, "instanceType": TYPE, "stock": 50, "onDemandStock": 5})
    assert await categories() == {SPOTPAID: NORMAL_STOCK, POSTPAID_BY_HOUR: UNDER_STOCK}
    await market(simulator, {"zone": ZONE, "instanceType": TYPE, "soldOut": True})
    offers = {
        o.charge_type: o for o in await client.describe_offers(zones=[ZONE], instance_types=[TYPE])
    }
    assert offers[SPOTPAID].status_category == WITHOUT_STOCK and offers[SPOTPAID].sold_out
    on_demand = offers[POSTPAID_BY_HOUR]
    assert not on_demand.sold_out
    assert on_demand.price == on_demand.list_price == offers[SPOTPAID].list_price
    spot_price, list_price = offers[SPOTPAID].price, on_demand.price
    assert spot_price is not None and list_price is not None and spot_price < list_price


async def test_account_quota_is_what_purchases_are_held_to(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    await market(simulator, {"zoneQuotas": {ZONE: 10}, "onDemandZoneQuotas": {ZONE: 7}})
    await buy(client, 2, "q-spot", max_price="0.05")
    await buy(client, 1, "q-od", charge_type=POSTPAID_BY_HOUR)
    quota = await client.describe_account_quota(zones=[ZONE, "ap-guangzhou-4"])
    assert quota.region == REGION and set(quota.spot) == {ZONE, "ap-guangzhou-4"}
    assert (quota.spot[ZONE].total, quota.spot[ZONE].used, quota.spot[ZONE].remaining) == (10, 4, 6)
    assert quota.remaining(ZONE, POSTPAID_BY_HOUR) == 5
    # Exactly the remaining vCPUs can still be bought, not one instance more.
    assert len(await buy(client, 2, "q-od-2", charge_type=POSTPAID_BY_HOUR)) == 2
    with pytest.raises(CloudError) as caught:
        await buy(client, 1, "q-od-3", charge_type=POSTPAID_BY_HOUR)
    assert caught.value.code == "LimitExceeded.InstanceQuota"
    everywhere = await client.describe_account_quota()
    assert set(everywhere.spot) == set(simulator.market.zones_of(REGION))
    assert everywhere.remaining(ZONE, POSTPAID_BY_HOUR) == 1


async def test_inquiry_prices_spot_and_on_demand(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    spot = await client.inquiry_price(zone=ZONE, instance_type=TYPE, image_id=IMAGE, count=2)
    od = await client.inquiry_price(
        zone=ZONE, instance_type=TYPE, image_id=IMAGE, count=2, charge_type=POSTPAID_BY_HOUR
    )
    pool = simulator.market.pool(ZONE, TYPE)
    assert pool is not None
    assert spot.price == Decimal(str(round(pool.spot_price * 2, 5)))
    assert (
        od.price
        == od.list_price
        == spot.list_price
        == Decimal(str(round(pool.on_demand_price * 2, 5)))
    )
    assert od.discount_percent == Decimal("100.0") and od.charge_unit == "HOUR"
    await market(simulator, {"zone": ZONE, "instanceType": TYPE, "onDemandSoldOut": True})
    with pytest.raises(CloudError) as caught:
        await client.inquiry_price(
            zone=ZONE, instance_type=TYPE, image_id=IMAGE, charge_type=POSTPAID_BY_HOUR
        )
    assert caught.value.code == "ResourcesSoldOut.SpecifiedInstanceType"
    assert simulator.market.instances() == []


async def test_an_image_that_disappeared_fails_the_check_as_not_found(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    result = await market(simulator, {"images": [IMAGE]})
    assert result["pools"] == []
    await client.check_purchase(check(max_price="0.05"))
    with pytest.raises(CloudError) as caught:
        await client.check_purchase(check(image_id="img-00000000", charge_type=POSTPAID_BY_HOUR))
    assert caught.value.code == "InvalidImageId.NotFound"
    assert caught.value.category is ErrorCategory.INVALID_REQUEST
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        assert (await http.get("/_sim/market")).json()["images"] == [IMAGE]


async def test_a_subnet_that_does_not_exist_or_lies_elsewhere_fails_the_check(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    await market(simulator, {"subnets": {"subnet-ahv6swf2": ZONE}})
    vpc: dict[str, Any] = {"vpc_id": "vpc-2ari9m7h", "max_price": "0.05"}
    await client.check_purchase(check(subnet_id="subnet-ahv6swf2", **vpc))
    codes = []
    for subnet, zone in (("subnet-00000000", ZONE), ("subnet-ahv6swf2", "ap-guangzhou-4")):
        with pytest.raises(CloudError) as caught:
            await client.check_purchase(check(subnet_id=subnet, zone=zone, **vpc))
        assert caught.value.category is ErrorCategory.INVALID_REQUEST
        codes.append(caught.value.code)
    assert codes == ["InvalidParameterValue.SubnetNotExist", "InvalidParameterValue.SubnetIdZoneIdNotMatch"]
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        assert (await http.get("/_sim/market")).json()["subnets"] == {"subnet-ahv6swf2": ZONE}
        refused = await http.post("/_sim/market", json={"subnets": {"subnet-ahv6swf2": "ap-nowhere-1"}})
        assert refused.status_code == 400
    assert simulator.market.instances() == []


async def test_terminating_spot_and_on_demand_together_ends_both(
    client: CvmClient, simulator: RunningSimulator
) -> None:
    ids = await buy(client, 2, "mix-spot", max_price="0.05")
    ids += await buy(client, 2, "mix-od", charge_type=POSTPAID_BY_HOUR)
    await client.terminate_instances(ids)
    for instance_id in ids:
        instance = simulator.market.get(instance_id)
        assert instance is None or instance.terminated_by == "user", instance_id
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        calls = (await http.get("/_sim/calls?action=TerminateInstances")).json()["calls"]
    assert [c["errorCode"] for c in calls] == [
        "UnsupportedOperation.InstanceMixedPricingModel",
        None,
        None,
    ]
