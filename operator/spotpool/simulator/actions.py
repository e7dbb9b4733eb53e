"""The CVM actions: validate an authenticated request's parameters and answer from the market.

Each handler checks what the real API checks, with the error codes Tencent documents, then
asks the market. Limits chosen where Tencent's documentation leaves a choice are named constants here
(docs/cvm-api.md lists them with the guesses).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import operator
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.index import is_describe_filter
from spotpool.simulator.market import ACTION_TIMER_REFUSED, LaunchRequest, Market
from spotpool.simulator.params import (
    ActionTimer,
    DescribeAccountQuotaParams,
    DescribeInstancesParams,
    DescribeInstancesStatusParams,
    DescribeZoneInstanceConfigInfosParams,
    DescribeZonesParams,
    Filter,
    InquiryPriceRunInstancesParams,
    RunInstancesParams,
    TerminateInstancesParams,
)
from spotpool.simulator.render import config_item, describe_instances_body, success_body
from spotpool.simulator.state import POSTPAID_BY_HOUR, SPOTPAID

MAX_IDS_PER_CALL = 100
MAX_PAGE = 100
MAX_DESCRIBE_FILTERS = 10
MAX_DESCRIBE_FILTER_VALUES = 5
MAX_CONFIG_FILTER_VALUES = 100
MAX_USER_DATA_BYTES = 16 * 1024
MAX_CLIENT_TOKEN = 64
MAX_INSTANCE_NAME_BYTES = 60  # the TooLong error text says 60 bytes; the field doc says 128 chars
MAX_TAGS = 50
MAX_SECURITY_GROUPS = 5
CHARGE_TYPES = ("PREPAID", "POSTPAID_BY_HOUR", "CDHPAID", "SPOTPAID", "CDCPAID")
SOLD_CHARGE_TYPES = (SPOTPAID, POSTPAID_BY_HOUR)  # the ones the simulator sells
QUOTA_TYPES = (
    "PostPaidQuotaSet",
    "PrePaidQuotaSet",
    "SpotPaidQuotaSet",
    "ImageQuotaSet",
    "DisasterRecoverGroupQuotaSet",
)
TAG_RESOURCE_TYPES = ("instance", "host", "image", "keypair", "ps", "hpc")
RESERVED_TAG_PREFIXES = ("qcloud:", "tencent:", "project:")

_INSTANCE_ID = re.compile(r"^ins-[a-z0-9]{8}$")
_IMAGE_ID = re.compile(r"^img-[a-z0-9]{8}$")
_INSTANCE_TYPE = re.compile(r"^[A-Z][A-Z0-9]*\.[A-Z0-9]+$")
_VPC_ID = re.compile(r"^vpc-[a-z0-9]{8}$")
_SUBNET_ID = re.compile(r"^subnet-[a-z0-9]{8}$")
_SG_ID = re.compile(r"^sg-[a-z0-9]{8}$")
_DECIMAL = re.compile(r"^\d+(\.\d+)?$")
_ACTION_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
TIMER_ACTION = "TerminateInstances"
_FAMILY_NAMES = {"S": "Standard", "SA": "Standard AMD", "M": "Memory Optimized", "C": "Compute"}


@dataclass(frozen=True)
class CallContext:
    """What an authenticated call carries besides its parameters.

    `secret_id` is the key pair that signed the call: what it may see and terminate can be
    restricted (`Credential.visible_tags`). None: an internal call, unrestricted. `account` is the
    account (UIN) the caller acts in: only its instances, quota and ClientTokens are involved
    (None: the market's default account). `session_tags` is the restriction of a role session
    (`RoleSpec.visible_tags`), which has no key pair of its own.
    """

    market: Market
    region: str
    request_id: str
    secret_id: str | None = None
    account: str | None = None
    session_tags: Mapping[str, str] | None = None

    @property
    def visible_tags(self) -> Mapping[str, str] | None:
        """The tags the caller's instances must carry to be seen or terminated; None: any."""
        if self.session_tags is not None:
            return self.session_tags
        return self.market.visible_tags(self.secret_id)


@dataclass(frozen=True)
class Action:
    params: type[BaseModel]
    handle: Callable[[CallContext, Any], bytes]


# ----------------------------------------------------------------------------- purchases


def run_instances(ctx: CallContext, params: RunInstancesParams) -> bytes:
    """Buy spot (SPOTPAID) or pay-as-you-go (POSTPAID_BY_HOUR, the documented default) instances.

    DryRun runs every check a purchase would (parameters, sold-out, price, quota, stock) and
    buys nothing; a pass answers as `api.dry_run_answer` says (DryRunOperation by default).
    """
    charge_type = params.instance_charge_type or POSTPAID_BY_HOUR
    if charge_type not in SOLD_CHARGE_TYPES:
        _refuse_charge_type(charge_type, "RunInstances")
    _check_user_data(params.user_data)
    if params.min_count is not None:
        if charge_type != SPOTPAID:
            raise ApiError(
                "UnsupportedOperation.MinCountUnsupportedChargeType",
                f"MinCount is not supported for InstanceChargeType {charge_type}.",
            )
        if not 1 <= params.min_count <= params.instance_count:
            raise ApiError(
                "InvalidParameterValue.InvalidParameterMinCount",
                f"MinCount must be between 1 and InstanceCount ({params.instance_count}).",
            )
    request = _launch_request(
        ctx, params, min_count=params.min_count, dry_run=params.dry_run, charge_type=charge_type,
        terminate_at=_action_timer(params.action_timer),
    )
    ids = ctx.market.run_instances(request, ctx.request_id)
    if params.dry_run and ctx.market.config.api.dry_run_answer == "DryRunOperation":
        raise ApiError(
            "DryRunOperation",
            "The request would have succeeded, but DryRun was set: nothing was bought.",
        )
    return success_body({"InstanceIdSet": ids}, ctx.request_id)


def inquiry_price_run_instances(ctx: CallContext, params: InquiryPriceRunInstancesParams) -> bytes:
    """The price of a purchase, refused as the purchase itself would be (sold out, price, quota).

    SPOTPAID: UnitPrice is the list price, UnitPriceDiscount the spot price, Discount the spot
    percentage; POSTPAID_BY_HOUR (the default): the list price in both, Discount 100. Both are
    per hour for the whole InstanceCount.
    """
    charge_type = params.instance_charge_type or POSTPAID_BY_HOUR
    if charge_type not in SOLD_CHARGE_TYPES:
        _refuse_charge_type(charge_type, "InquiryPriceRunInstances")
    request = _launch_request(ctx, params, min_count=None, dry_run=True, charge_type=charge_type)
    pool = ctx.market.quote(request)
    if charge_type == SPOTPAID:
        unit, discount = pool.spot_price, pool.discount_percent
    else:
        unit, discount = pool.on_demand_price, 100.0
    count = request.count
    price = {
        "InstancePrice": {
            "UnitPrice": round(pool.on_demand_price * count, 5),
            "UnitPriceDiscount": round(unit * count, 5),
            "Discount": discount,
            "ChargeUnit": "HOUR",
        },
        "BandwidthPrice": {
            "UnitPrice": 0.0,
            "UnitPriceDiscount": 0.0,
            "Discount": 100.0,
            "ChargeUnit": "GB",
        },
    }
    return success_body({"Price": price}, ctx.request_id)


def _refuse_charge_type(charge_type: str, action: str) -> None:
    if charge_type not in CHARGE_TYPES:
        raise ApiError(
            "InvalidParameterValue",
            f"InstanceChargeType {charge_type!r} is not one of {', '.join(CHARGE_TYPES)}.",
        )
    raise ApiError(
        "UnsupportedOperation",
        f"The simulator does not simulate InstanceChargeType {charge_type} for {action}; "
        f"it sells {' and '.join(SOLD_CHARGE_TYPES)}.",
    )


def _launch_request(
    ctx: CallContext,
    params: RunInstancesParams | InquiryPriceRunInstancesParams,
    *,
    min_count: int | None,
    dry_run: bool,
    charge_type: str,
    terminate_at: float | None = None,
) -> LaunchRequest:
    """The checks RunInstances and InquiryPriceRunInstances share, in a LaunchRequest."""
    if params.launch_template is not None:
        raise ApiError("UnsupportedOperation", "LaunchTemplate is not simulated; give the fields.")
    if params.placement is None:
        raise ApiError(
            "MissingParameter", "The request is missing the required parameter Placement."
        )
    if params.image_id is None:
        raise ApiError("MissingParameter", "The request is missing the required parameter ImageId.")
    if not _IMAGE_ID.match(params.image_id):
        raise ApiError(
            "InvalidImageId.Malformed", f"ImageId {params.image_id!r} is not like img-xxxxxxxx."
        )
    if not ctx.market.image_exists(params.image_id):
        raise ApiError("InvalidImageId.NotFound", f"The image {params.image_id} does not exist.")
    if params.instance_type is None:
        raise ApiError(
            "MissingParameter", "The request is missing the required parameter InstanceType."
        )
    if not _INSTANCE_TYPE.match(params.instance_type):
        raise ApiError(
            "InvalidInstanceType.Malformed",
            f"InstanceType {params.instance_type!r} is not like S5.MEDIUM4.",
        )
    limit = ctx.market.config.api.max_instance_count
    if not 1 <= params.instance_count <= limit:
        raise ApiError(
            "InvalidParameterValue.Range",
            f"InstanceCount must be between 1 and {limit}, not {params.instance_count}.",
        )
    if params.placement.project_id < 0:
        raise ApiError(
            "InvalidProjectId.NotFound", f"Project {params.placement.project_id} does not exist."
        )
    token = params.client_token or None
    if token is not None and (len(token) > MAX_CLIENT_TOKEN or not token.isascii()):
        raise ApiError(
            "InvalidClientToken.TooLong",
            f"ClientToken must be at most {MAX_CLIENT_TOKEN} ASCII characters.",
        )
    if (
        params.instance_name is not None
        and len(params.instance_name.encode()) > MAX_INSTANCE_NAME_BYTES
    ):
        raise ApiError(
            "InvalidInstanceName.TooLong",
            f"InstanceName must be at most {MAX_INSTANCE_NAME_BYTES} bytes.",
        )
    vpc = params.virtual_private_cloud
    vpc_id = subnet_id = None
    if vpc is not None:
        if vpc.vpc_id != "DEFAULT":
            if not _VPC_ID.match(vpc.vpc_id):
                raise ApiError(
                    "InvalidParameterValue.VpcIdMalformed", f"VpcId {vpc.vpc_id!r} is malformed."
                )
            vpc_id = vpc.vpc_id
        if vpc.subnet_id != "DEFAULT":
            if not _SUBNET_ID.match(vpc.subnet_id):
                raise ApiError(
                    "InvalidParameterValue.SubnetIdMalformed",
                    f"SubnetId {vpc.subnet_id!r} is malformed.",
                )
            ctx.market.check_subnet(vpc.subnet_id, params.placement.zone)
            subnet_id = vpc.subnet_id
    groups = tuple(params.security_group_ids or ())
    if len(groups) > MAX_SECURITY_GROUPS:
        raise ApiError(
            "LimitExceeded.AssociateUSGLimitExceeded",
            f"An instance can have at most {MAX_SECURITY_GROUPS} security groups.",
        )
    for group in groups:
        if not _SG_ID.match(group):
            raise ApiError("InvalidSgId.Malformed", f"SecurityGroupId {group!r} is malformed.")
    disk = params.system_disk
    return LaunchRequest(
        region=ctx.region,
        zone=params.placement.zone,
        instance_type=params.instance_type,
        image_id=params.image_id,
        count=params.instance_count,
        fingerprint=_fingerprint(ctx.region, params),
        min_count=min_count,
        max_price=_max_price(params),
        name=params.instance_name,
        tags=_instance_tags(params),
        client_token=token,
        dry_run=dry_run,
        project_id=params.placement.project_id,
        vpc_id=vpc_id,
        subnet_id=subnet_id,
        security_group_ids=groups,
        key_ids=tuple(params.login_settings.key_ids or ()) if params.login_settings else (),
        system_disk_type=(disk.disk_type if disk and disk.disk_type else "CLOUD_PREMIUM"),
        system_disk_size=(disk.disk_size if disk and disk.disk_size else 50),
        charge_type=charge_type,
        account=ctx.account,
        terminate_at=terminate_at,
    )


def _action_timer(timer: ActionTimer | None) -> float | None:
    """The epoch seconds of an ActionTimer's TerminateInstances, or None without a timer.

    ActionTime must be exactly `YYYY-MM-DDThh:mm:ssZ` (the documented format, UTC): anything
    else is InvalidParameterValue.InvalidTimeFormat, the code CVM documents for RunInstances. How
    far ahead it must be is the market's check (`Market._check_timer`), on the simulator's clock.
    """
    if timer is None:
        return None
    if timer.timer_action is None:
        raise ApiError(
            "MissingParameter", "The request is missing the required parameter ActionTimer.TimerAction."
        )
    if timer.timer_action != TIMER_ACTION:
        raise ApiError(
            "InvalidParameterValue",
            f"ActionTimer.TimerAction {timer.timer_action!r} is not supported; the only timer "
            f"action is {TIMER_ACTION}.",
        )
    if timer.action_time is None:
        raise ApiError(
            "MissingParameter", "The request is missing the required parameter ActionTimer.ActionTime."
        )
    if not _ACTION_TIME.fullmatch(timer.action_time):
        raise ApiError(
            ACTION_TIMER_REFUSED,
            f"ActionTimer.ActionTime {timer.action_time!r} is not like 2018-05-29T11:26:40Z "
            "(ISO 8601, UTC).",
        )
    try:
        return float(calendar.timegm(time.strptime(timer.action_time, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:  # the right shape, no such day or hour (2026-02-30T25:00:00Z)
        raise ApiError(
            ACTION_TIMER_REFUSED, f"ActionTimer.ActionTime {timer.action_time!r} is not a valid time."
        ) from None


def _max_price(params: RunInstancesParams | InquiryPriceRunInstancesParams) -> str | None:
    """The bid; None (omitted) bids the market price, as documented."""
    options = params.instance_market_options
    if options is None:
        return None
    if params.instance_charge_type != SPOTPAID:
        raise ApiError(
            "InvalidParameterCombination",
            "InstanceMarketOptions is only valid with InstanceChargeType=SPOTPAID.",
        )
    if options.market_type not in (None, "spot"):
        raise ApiError(
            "InvalidParameterValue", f"MarketType must be 'spot', not {options.market_type!r}."
        )
    spot = options.spot_options
    if spot is None:
        return None
    if spot.spot_instance_type not in (None, "one-time"):
        raise ApiError(
            "InvalidParameterValue",
            f"SpotInstanceType must be 'one-time', not {spot.spot_instance_type!r}.",
        )
    if spot.max_price is None:
        return None
    if not _DECIMAL.match(spot.max_price) or Decimal(spot.max_price) <= 0:
        raise ApiError(
            "InvalidParameterValue",
            f'MaxPrice must be a positive decimal string such as "0.0923", not {spot.max_price!r}.',
        )
    return spot.max_price


def _instance_tags(
    params: RunInstancesParams | InquiryPriceRunInstancesParams,
) -> tuple[tuple[str, str], ...]:
    tags: dict[str, str] = {}
    for spec in params.tag_specification or ():
        if spec.resource_type not in TAG_RESOURCE_TYPES:
            raise ApiError(
                "InvalidParameterValue",
                f"TagSpecification.ResourceType {spec.resource_type!r} is not one of "
                f"{', '.join(TAG_RESOURCE_TYPES)}.",
            )
        if spec.resource_type != "instance":
            continue
        for tag in spec.tags:
            if not tag.key or len(tag.key) > 127:
                raise ApiError(
                    "FailedOperation.IllegalTagKey",
                    f"Tag key {tag.key!r} must have 1-127 characters.",
                )
            if len(tag.value) > 255:
                raise ApiError(
                    "FailedOperation.IllegalTagValue",
                    f"The value of tag {tag.key!r} exceeds 255 characters.",
                )
            if tag.key.lower().startswith(RESERVED_TAG_PREFIXES):
                raise ApiError(
                    "FailedOperation.TagKeyReserved", f"Tag key {tag.key!r} is reserved."
                )
            if tag.key in tags:
                raise ApiError(
                    "InvalidParameterValue.DuplicateTags", f"Tag key {tag.key!r} appears twice."
                )
            tags[tag.key] = tag.value
    if len(tags) > MAX_TAGS:
        raise ApiError(
            "InvalidParameterValue.TagQuotaLimitExceeded", f"At most {MAX_TAGS} tags per instance."
        )
    return tuple(tags.items())


def _check_user_data(user_data: str | None) -> None:
    if user_data is None:
        return
    if len(user_data) > MAX_USER_DATA_BYTES:
        raise ApiError(
            "InvalidParameterValue.InvalidUserDataFormat",
            f"UserData must be at most {MAX_USER_DATA_BYTES} bytes of base64.",
        )
    try:
        base64.b64decode(user_data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            "InvalidParameterValue.InvalidUserDataFormat", "UserData must be base64-encoded."
        ) from None


def _fingerprint(region: str, params: BaseModel) -> str:
    """The request's parameters other than ClientToken and DryRun, in a canonical form."""
    fields = params.model_dump(
        by_alias=True, exclude_none=True, exclude={"client_token", "dry_run"}
    )
    return json.dumps([region, fields], sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------------------------- termination


def terminate_instances(ctx: CallContext, params: TerminateInstancesParams) -> bytes:
    if not params.instance_ids:
        raise ApiError(
            "MissingParameter", "The request is missing the required parameter InstanceIds."
        )
    _check_instance_ids(params.instance_ids)
    ctx.market.terminate_instances(
        ctx.region,
        params.instance_ids,
        ctx.request_id,
        visible_tags=ctx.visible_tags,
        account=ctx.account,
    )
    return success_body({}, ctx.request_id)


def _check_instance_ids(ids: list[str]) -> None:
    if len(ids) > MAX_IDS_PER_CALL:
        raise ApiError(
            "InvalidParameterValue.LimitExceeded",
            f"At most {MAX_IDS_PER_CALL} InstanceIds per call, got {len(ids)}.",
        )
    for iid in ids:
        if not _INSTANCE_ID.match(iid):
            raise ApiError(
                "InvalidInstanceId.Malformed",
                f"The instance id {iid!r} is malformed; ids look like ins-xxxxxxxx "
                "(8 lower-case letters or digits).",
            )


# ------------------------------------------------------------------------------ queries


def describe_instances(ctx: CallContext, params: DescribeInstancesParams) -> bytes:
    if params.instance_ids is not None and params.filters is not None:
        raise ApiError("InvalidParameter", "InstanceIds and Filters cannot be given together.")
    _check_page(params.offset, params.limit)
    filters = None
    if params.instance_ids is not None:
        _check_instance_ids(params.instance_ids)
    if params.filters is not None:
        filters = _check_filters(params.filters, MAX_DESCRIBE_FILTER_VALUES)
        for name, _ in filters:
            if not is_describe_filter(name):
                raise ApiError(
                    "InvalidFilter", f"The filter {name!r} is not supported by DescribeInstances."
                )
    total, page = ctx.market.describe_instances(
        ctx.region,
        instance_ids=params.instance_ids,
        filters=filters,
        offset=params.offset,
        limit=params.limit,
        visible_tags=ctx.visible_tags,
        account=ctx.account,
    )
    return describe_instances_body(total, page, ctx.request_id)


def describe_instances_status(ctx: CallContext, params: DescribeInstancesStatusParams) -> bytes:
    _check_page(params.offset, params.limit)
    if params.instance_ids is not None:
        _check_instance_ids(params.instance_ids)
    total, page = ctx.market.describe_instances(
        ctx.region,
        instance_ids=params.instance_ids,
        offset=params.offset,
        limit=params.limit,
        visible_tags=ctx.visible_tags,
        account=ctx.account,
    )
    statuses = [{"InstanceId": i.instance_id, "InstanceState": i.state} for i in page]
    return success_body({"TotalCount": total, "InstanceStatusSet": statuses}, ctx.request_id)


def _check_page(offset: int, limit: int) -> None:
    if offset < 0:
        raise ApiError("InvalidParameterValue", f"Offset must not be negative, got {offset}.")
    if not 0 <= limit <= MAX_PAGE:
        raise ApiError(
            "InvalidParameterValue", f"Limit must be between 0 and {MAX_PAGE}, got {limit}."
        )


def _check_filters(filters: list[Filter], max_values: int) -> list[tuple[str, list[str]]]:
    if len(filters) > MAX_DESCRIBE_FILTERS:
        raise ApiError(
            "InvalidParameterValue.LimitExceeded",
            f"At most {MAX_DESCRIBE_FILTERS} Filters per call, got {len(filters)}.",
        )
    checked = []
    for item in filters:
        if not item.values:
            raise ApiError(
                "InvalidParameterValue", f"Filter {item.name!r} needs at least one value."
            )
        if len(item.values) > max_values:
            raise ApiError(
                "InvalidFilterValue.LimitExceeded",
                f"Filter {item.name!r} has {len(item.values)} values; at most {max_values}.",
            )
        checked.append((item.name, item.values))
    return checked


def describe_zone_instance_config_infos(
    ctx: CallContext, params: DescribeZoneInstanceConfigInfosParams
) -> bytes:
    wanted: dict[str, list[str]] = {}
    for name, values in _check_filters(params.filters or [], MAX_CONFIG_FILTER_VALUES):
        if name not in (
            "zone",
            "instance-family",
            "instance-type",
            "instance-charge-type",
            "sort-keys",
        ):
            raise ApiError(
                "InvalidFilter",
                f"The filter {name!r} is not supported by DescribeZoneInstanceConfigInfos.",
            )
        wanted.setdefault(name, []).extend(values)
    for zone in wanted.get("zone", []):
        if ctx.market.region_of_zone(zone) != ctx.region:
            raise ApiError(
                "InvalidZone.MismatchRegion", f"The zone {zone!r} is not in region {ctx.region}."
            )
    charge_types = [
        c
        for c in wanted.get("instance-charge-type", list(SOLD_CHARGE_TYPES))
        if c in SOLD_CHARGE_TYPES
    ]
    ctx.market.advance()
    catalogue = ctx.market.config.instance_types
    thresholds = ctx.market.config.market.stock_status
    items = [
        config_item(
            pool,
            charge,
            catalogue[pool.instance_type].type_name or _type_name(pool.instance_type),
            thresholds,
        )
        for pool in ctx.market.pools(ctx.region)
        if _matches(wanted, "zone", pool.zone)
        and _matches(wanted, "instance-type", pool.instance_type)
        and _matches(wanted, "instance-family", pool.instance_type.split(".", 1)[0])
        and pool.offered
        for charge in charge_types
    ]
    for key in reversed(wanted.get("sort-keys", [])):
        field, _, order = key.partition(":")
        column = {"cpu": "Cpu", "mem": "Memory"}.get(field)
        if column is None or order not in ("asc", "desc"):
            raise ApiError(
                "InvalidParameterValue", f"sort-keys value {key!r} is not like cpu:desc or mem:asc."
            )
        items.sort(key=operator.itemgetter(column), reverse=order == "desc")
    return success_body({"InstanceTypeQuotaSet": items}, ctx.request_id)


def _matches(wanted: dict[str, list[str]], name: str, value: str) -> bool:
    return name not in wanted or value in wanted[name]


def _type_name(instance_type: str) -> str:
    family = instance_type.split(".", 1)[0]
    letters = family.rstrip("0123456789")
    return f"{_FAMILY_NAMES.get(letters, letters)} {family}"


def describe_account_quota(ctx: CallContext, params: DescribeAccountQuotaParams) -> bytes:
    """The account's quotas in the region, in the documented AccountQuotaOverview shape.

    PostPaidQuotaSet and SpotPaidQuotaSet are per zone in vCPU cores (the SDK states the unit for
    spot; the simulator uses it for pay-as-you-go too) and are the very numbers RunInstances
    enforces: UsedQuota counts the vCPUs of instances not yet gone. PrePaid, image and placement
    group quotas are fixed, plausible values: nothing here sells those. Filters: `zone`,
    `quota-type` (values ANDed across filters, ORed within one).
    """
    wanted: dict[str, list[str]] = {}
    for name, values in _check_filters(params.filters or [], MAX_DESCRIBE_FILTER_VALUES):
        if name not in ("zone", "quota-type"):
            raise ApiError(
                "InvalidFilter", f"The filter {name!r} is not supported by DescribeAccountQuota."
            )
        wanted.setdefault(name, []).extend(values)
    for zone in wanted.get("zone", []):
        if ctx.market.region_of_zone(zone) != ctx.region:
            raise ApiError(
                "InvalidZone.MismatchRegion", f"The zone {zone!r} is not in region {ctx.region}."
            )
    for kind in wanted.get("quota-type", []):
        if kind not in QUOTA_TYPES:
            raise ApiError(
                "InvalidParameterValue",
                f"quota-type {kind!r} is not one of {', '.join(QUOTA_TYPES)}.",
            )
    market = ctx.market
    market.advance()
    zones = [z for z in market.zones_of(ctx.region) if _matches(wanted, "zone", z)]

    def per_zone(charge: str) -> list[dict[str, Any]]:
        rows = []
        for zone in zones:
            total = market.zone_quota(zone, charge, ctx.account)
            used = market.quota_used(zone, charge, ctx.account)
            rows.append(
                {
                    "UsedQuota": used,
                    "RemainingQuota": max(total - used, 0),
                    "TotalQuota": total,
                    "Zone": zone,
                }
            )
        return rows

    sets: dict[str, Any] = {
        "PostPaidQuotaSet": per_zone(POSTPAID_BY_HOUR),
        "PrePaidQuotaSet": [
            {"UsedQuota": 0, "OnceQuota": 300, "RemainingQuota": 300, "TotalQuota": 300, "Zone": z}
            for z in zones
        ],
        "SpotPaidQuotaSet": per_zone(SPOTPAID),
        "ImageQuotaSet": [{"UsedQuota": 0, "TotalQuota": 10}],
        "DisasterRecoverGroupQuotaSet": [
            {
                "GroupQuota": 10,
                "CurrentNum": 0,
                "CvmInHostGroupQuota": 50,
                "CvmInSwitchGroupQuota": 20,
                "CvmInRackGroupQuota": 30,
            }
        ],
    }
    account_quota = {
        kind: (rows if _matches(wanted, "quota-type", kind) else []) for kind, rows in sets.items()
    }
    return success_body(
        {
            "AppId": market.config.api.app_id,
            "AccountQuotaOverview": {"Region": ctx.region, "AccountQuota": account_quota},
        },
        ctx.request_id,
    )


def describe_zones(ctx: CallContext, params: DescribeZonesParams) -> bytes:
    zones = [
        {
            "Zone": zone,
            "ZoneName": _zone_name(zone),
            "ZoneId": _zone_id(ctx.market, zone),
            "ZoneState": "AVAILABLE",
        }
        for zone in ctx.market.zones_of(ctx.region)
    ]
    return success_body({"TotalCount": len(zones), "ZoneSet": zones}, ctx.request_id)


_REGION_ZONE_ID_BASE = {
    "ap-guangzhou": 100000,
    "ap-shanghai": 200000,
    "ap-hongkong": 300000,
    "ap-beijing": 800000,
    "ap-singapore": 900000,
    "ap-chengdu": 160000,
    "ap-chongqing": 190000,
    "ap-nanjing": 330000,
}


def _zone_id(market: Market, zone: str) -> str:
    """Numeric-as-string like the real ZoneId (ap-guangzhou-3 -> 100003)."""
    region, _, number = zone.rpartition("-")
    base = _REGION_ZONE_ID_BASE.get(region)
    if base is None:
        base = (list(market.config.regions).index(region) + 1) * 1_000_000
    return str(base + int(number)) if number.isdigit() else str(base)


def _zone_name(zone: str) -> str:
    region, _, number = zone.rpartition("-")
    city = region.split("-", 1)[-1].capitalize()
    return f"{city} Zone {number}"


ACTIONS: dict[str, Action] = {
    "RunInstances": Action(RunInstancesParams, run_instances),
    "InquiryPriceRunInstances": Action(InquiryPriceRunInstancesParams, inquiry_price_run_instances),
    "TerminateInstances": Action(TerminateInstancesParams, terminate_instances),
    "DescribeInstances": Action(DescribeInstancesParams, describe_instances),
    "DescribeInstancesStatus": Action(DescribeInstancesStatusParams, describe_instances_status),
    "DescribeZoneInstanceConfigInfos": Action(
        DescribeZoneInstanceConfigInfosParams, describe_zone_instance_config_infos
    ),
    "DescribeZones": Action(DescribeZonesParams, describe_zones),
    "DescribeAccountQuota": Action(DescribeAccountQuotaParams, describe_account_quota),
}
