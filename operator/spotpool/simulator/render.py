"""The JSON the API answers with: the envelope and the real field names of CVM's models.

Field names and shapes follow the official SDK's models (tencentcloud-sdk-python-cvm) so the SDK
deserialises every answer and the operator's client sees what production would send. Instances
are rendered once per state change and the fragments spliced into DescribeInstances pages.
"""

from __future__ import annotations

import json
import time
from typing import Any

from spotpool.simulator.config import StockStatusSpec
from spotpool.simulator.state import SPOTPAID, Pool, SimInstance

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode

#: LatestOperationErrorMsg of an instance whose latest operation failed, by that operation.
_FAILURE_MESSAGES = {
    "RunInstances": "The instance failed to launch.",
    "TerminateInstances": "The instance failed to terminate; terminate it again.",
}


def iso_time(timestamp: float) -> str:
    """CVM's timestamp format: ISO-8601 UTC with a Z suffix, whole seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def success_body(fields: dict[str, Any], request_id: str) -> bytes:
    return _dumps({"Response": {**fields, "RequestId": request_id}}).encode()


def error_body(code: str, message: str, request_id: str) -> bytes:
    return _dumps(
        {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id}}
    ).encode()


def describe_instances_body(total: int, instances: list[SimInstance], request_id: str) -> bytes:
    items = ",".join(instance_json(inst) for inst in instances)
    return (
        f'{{"Response":{{"TotalCount":{total},"InstanceSet":[{items}],'
        f'"RequestId":"{request_id}"}}}}'
    ).encode()


def instance_json(inst: SimInstance) -> str:
    if inst.rendered is None:
        inst.rendered = _dumps(_instance_fields(inst))
    return inst.rendered


def _instance_fields(inst: SimInstance) -> dict[str, Any]:
    ip_parts = inst.private_ip.split(".")
    failed = inst.latest_operation_state == "FAILED"
    return {
        "Placement": {"Zone": inst.zone, "ProjectId": inst.project_id, "HostId": None},
        "InstanceId": inst.instance_id,
        "InstanceType": inst.instance_type,
        "CPU": inst.cpu,
        "Memory": inst.memory_gib,
        "RestrictState": "NORMAL",
        "InstanceName": inst.name,
        "InstanceChargeType": inst.charge_type,
        "SystemDisk": {
            "DiskType": inst.system_disk_type,
            "DiskId": "disk-" + inst.uuid[:8],
            "DiskSize": inst.system_disk_size,
        },
        "DataDisks": None,
        "PrivateIpAddresses": [inst.private_ip],
        "PublicIpAddresses": None,
        "InternetAccessible": {
            "InternetChargeType": "TRAFFIC_POSTPAID_BY_HOUR",
            "InternetMaxBandwidthOut": 0,
            "PublicIpAssigned": False,
        },
        "VirtualPrivateCloud": {
            "VpcId": inst.vpc_id,
            "SubnetId": inst.subnet_id,
            "AsVpcGateway": False,
        },
        "ImageId": inst.image_id,
        "RenewFlag": None,
        "CreatedTime": iso_time(inst.created_at),
        "ExpiredTime": None,
        "OsName": "TencentOS Server 3.1 (TK4)",
        "SecurityGroupIds": list(inst.security_group_ids),
        "LoginSettings": {"KeyIds": list(inst.key_ids) or None},
        "InstanceState": inst.state,
        "Tags": [{"Key": key, "Value": value} for key, value in inst.tags.items()],
        # Spot instances cannot stop charging when shut down; pay-as-you-go ones
        # keep charging unless asked otherwise at stop time.
        "StopChargingMode": "NOT_APPLICABLE" if inst.spot else "KEEP_CHARGING",
        "Uuid": inst.uuid,
        "LatestOperation": inst.latest_operation,
        "LatestOperationState": inst.latest_operation_state,
        "LatestOperationRequestId": inst.latest_operation_request_id,
        "LatestOperationErrorMsg": _FAILURE_MESSAGES.get(inst.latest_operation) if failed else None,
        "DisasterRecoverGroupId": "",
        "IPv6Addresses": None,
        "CamRoleName": "",
        "HpcClusterId": "",
        "RdmaIpAddresses": None,
        "DedicatedClusterId": "",
        "IsolatedSource": "NOTISOLATED",
        "GPUInfo": None,
        "LicenseType": "TencentCloud",
        "DisableApiTermination": False,
        "HostName": f"VM-{ip_parts[2]}-{ip_parts[3]}-tencentos",
        "DefaultLoginUser": "root",
        "DefaultLoginPort": 22,
    }


def stock_category(
    pool: Pool, charge_type: str = SPOTPAID, thresholds: StockStatusSpec | None = None
) -> str:
    """StatusCategory as DescribeZoneInstanceConfigInfos words it, from the stock left for sale
    under that charge type (thresholds: the market's `stock_status`)."""
    spec = thresholds or StockStatusSpec()
    return spec.category(pool.stock_of(charge_type), pool.sold_out_for(charge_type))


def config_item(
    pool: Pool, charge_type: str, type_name: str, thresholds: StockStatusSpec | None = None
) -> dict[str, Any]:
    """One InstanceTypeQuotaItem: SPOTPAID items carry list price, spot price and discount;
    POSTPAID_BY_HOUR items the list price twice at Discount 100. Status and StatusCategory
    follow the stock of the item's own charge type."""
    spot = charge_type == SPOTPAID
    sold_out = pool.sold_out_for(charge_type)
    discount = pool.discount_percent if spot else 100.0
    reason = "Spot stock is exhausted." if spot else "Pay-as-you-go stock is exhausted."
    return {
        "Zone": pool.zone,
        "InstanceType": pool.instance_type,
        "InstanceChargeType": charge_type,
        "NetworkCard": 0,
        "Externals": {},
        "Cpu": pool.cpu,
        "Memory": pool.memory_gib,
        "InstanceFamily": pool.instance_type.split(".", 1)[0],
        "TypeName": type_name,
        "LocalDiskTypeList": [],
        "Status": "SOLD_OUT" if sold_out else "SELL",
        "Price": {
            "UnitPrice": pool.on_demand_price,
            "UnitPriceDiscount": pool.spot_price if spot else pool.on_demand_price,
            "Discount": discount,
            "ChargeUnit": "HOUR",
        },
        "SoldOutReason": reason if sold_out else "",
        "InstanceBandwidth": 1.5,
        "InstancePps": 30,
        "StorageBlockAmount": 0,
        "CpuType": "Intel Xeon Cascade Lake 8255C(2.5 GHz/3.1 GHz)",
        "Gpu": 0,
        "Fpga": 0,
        "Remark": "",
        "GpuCount": 0.0,
        "Frequency": "2.5/3.1GHz",
        "StatusCategory": stock_category(pool, charge_type, thresholds),
    }
