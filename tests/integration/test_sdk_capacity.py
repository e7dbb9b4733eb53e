"""Tencent's official Python SDK against the simulator's on-demand, DryRun, StatusCategory,
DescribeAccountQuota and InquiryPriceRunInstances answers.

The SDK deserialises every answer into its own models; a field the simulator names or nests
differently from Tencent's shapes would come back None here, so each test reads the fields
through the SDK's models, never through raw JSON.
"""

from __future__ import annotations

from tencentcloud.cvm.v20170312 import models

from spotpool.simulator import RunningSimulator
from tests.integration.test_sdk_against_simulator import (
    GUIDE_PURCHASE,
    in_thread,
    request,
    sdk_client,
    sdk_error,
)

ZONE = "ap-guangzhou-3"
ON_DEMAND = {
    "Placement": {"Zone": ZONE},
    "InstanceChargeType": "POSTPAID_BY_HOUR",
    "ImageId": "img-pmqg1cw7",
    "InstanceType": "S2.MEDIUM4",
    "InstanceCount": 2,
}


async def test_on_demand_purchase_is_described_with_its_charge_type(
    simulator: RunningSimulator,
) -> None:
    client = sdk_client(simulator)
    bought = await in_thread(
        lambda: client.RunInstances(request(models.RunInstancesRequest, ON_DEMAND))
    )
    assert len(bought.InstanceIdSet) == 2
    described = await in_thread(
        lambda: client.DescribeInstances(
            request(
                models.DescribeInstancesRequest,
                {"Filters": [{"Name": "instance-charge-type", "Values": ["POSTPAID_BY_HOUR"]}]},
            )
        )
    )
    assert sorted(i.InstanceId for i in described.InstanceSet) == sorted(bought.InstanceIdSet)
    assert {i.InstanceChargeType for i in described.InstanceSet} == {"POSTPAID_BY_HOUR"}


async def test_dry_run_is_dry_run_operation_or_the_real_refusal(
    simulator: RunningSimulator,
) -> None:
    client = sdk_client(simulator)
    passed = await sdk_error(
        lambda: client.RunInstances(
            request(models.RunInstancesRequest, {**GUIDE_PURCHASE, "DryRun": True})
        )
    )
    assert passed.code == "DryRunOperation" and passed.requestId
    refused = await sdk_error(
        lambda: client.RunInstances(
            request(
                models.RunInstancesRequest,
                {**ON_DEMAND, "DryRun": True, "InstanceType": "Z9.MEDIUM4"},
            )
        )
    )
    assert refused.code == "InvalidParameterValue.InstanceTypeNotFound"
    assert simulator.market.instances() == []


async def test_status_category_and_on_demand_price_parse_into_sdk_models(
    simulator: RunningSimulator,
) -> None:
    simulator.market.update_pool(ZONE, "S2.MEDIUM4", stock=5, on_demand_sold_out=True)
    client = sdk_client(simulator)
    configs = await in_thread(
        lambda: client.DescribeZoneInstanceConfigInfos(
            request(
                models.DescribeZoneInstanceConfigInfosRequest,
                {
                    "Filters": [
                        {"Name": "zone", "Values": [ZONE]},
                        {"Name": "instance-type", "Values": ["S2.MEDIUM4"]},
                    ]
                },
            )
        )
    )
    items = {i.InstanceChargeType: i for i in configs.InstanceTypeQuotaSet}
    spot, on_demand = items["SPOTPAID"], items["POSTPAID_BY_HOUR"]
    assert spot.StatusCategory == "UnderStock" and spot.Status == "SELL"
    assert on_demand.StatusCategory == "WithoutStock" and on_demand.Status == "SOLD_OUT"
    assert on_demand.Price.UnitPrice == on_demand.Price.UnitPriceDiscount == 0.0896
    assert on_demand.Price.Discount == 100.0


async def test_account_quota_parses_into_sdk_models(simulator: RunningSimulator) -> None:
    client = sdk_client(simulator)
    await in_thread(lambda: client.RunInstances(request(models.RunInstancesRequest, ON_DEMAND)))
    await in_thread(
        lambda: client.RunInstances(request(models.RunInstancesRequest, GUIDE_PURCHASE))
    )
    answer = await in_thread(
        lambda: client.DescribeAccountQuota(
            request(
                models.DescribeAccountQuotaRequest,
                {"Filters": [{"Name": "zone", "Values": [ZONE]}]},
            )
        )
    )
    assert answer.AppId == 1250000000 and answer.RequestId
    overview = answer.AccountQuotaOverview
    assert overview.Region == "ap-guangzhou"
    [post] = overview.AccountQuota.PostPaidQuotaSet
    [spot] = overview.AccountQuota.SpotPaidQuotaSet
    assert (post.Zone, post.UsedQuota, post.TotalQuota, post.RemainingQuota) == (
        ZONE,
        4,
        20000,
        19996,
    )
    assert (spot.Zone, spot.UsedQuota, spot.RemainingQuota) == (ZONE, 2, 19998)
    [prepaid] = overview.AccountQuota.PrePaidQuotaSet
    assert prepaid.OnceQuota > 0 and prepaid.Zone == ZONE
    assert overview.AccountQuota.ImageQuotaSet[0].TotalQuota > 0
    assert overview.AccountQuota.DisasterRecoverGroupQuotaSet[0].GroupQuota > 0


async def test_inquiry_price_for_on_demand_parses_into_sdk_models(
    simulator: RunningSimulator,
) -> None:
    client = sdk_client(simulator)
    answer = await in_thread(
        lambda: client.InquiryPriceRunInstances(
            request(models.InquiryPriceRunInstancesRequest, ON_DEMAND)
        )
    )
    price = answer.Price.InstancePrice
    assert price.UnitPrice == price.UnitPriceDiscount == round(0.0896 * 2, 5)
    assert price.ChargeUnit == "HOUR" and answer.Price.BandwidthPrice.ChargeUnit == "GB"
    simulator.market.update_pool(ZONE, "S2.MEDIUM4", on_demand_sold_out=True)
    error = await sdk_error(
        lambda: client.InquiryPriceRunInstances(
            request(models.InquiryPriceRunInstancesRequest, ON_DEMAND)
        )
    )
    assert error.code == "ResourcesSoldOut.SpecifiedInstanceType"
