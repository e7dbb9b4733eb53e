"""Translation between typed arguments / models and the CVM API's JSON parameters and responses.

Kept apart from the transport so the API's limits and field layout can be tested without HTTP.
Both directions live here: the request side (parameters, in the SDK's order and within the API's
bounds) and the response side (the envelope's Response / Error / RequestId, error codes checked
and messages cleaned, then each action's answer checked against its documented shape). Nothing
here holds state or does I/O: what needs the client's state (the secrets to redact, the bytes
read so far) hands it in.
Request dicts are built in the official Python SDK's model order (the order of the attributes in
`tencentcloud.cvm.v20170312.models`, which its `_serialize` follows) so that, serialised with
`json.dumps` defaults, our bodies are byte-identical to the SDK's for the same request.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from .errors import (
    INVALID_RESPONSE,
    SERVER_NETWORK_ERROR,
    CloudError,
    CloudNetworkError,
    ErrorCategory,
    clean_message,
    valid_code,
    valid_request_id,
)
from .models import (  # issue 11: on-demand, stock, quota and price
    CHARGE_TYPES,
    POSTPAID_BY_HOUR,
    STOCK_CATEGORIES,
    AccountQuota,
    CallerIdentity,
    Instance,
    Offer,
    PriceQuote,
    RunInstancesRequest,
    ZoneQuota,
)

# API limits: the bounds CVM puts on one call (the id and count bounds: docs/cvm-api.md).
MAX_IDS_PER_CALL = 100          # DescribeInstances InstanceIds, TerminateInstances batch
PAGE_LIMIT = 100                # DescribeInstances Limit maximum
MAX_FILTERS = 10
MAX_FILTER_VALUES = 5           # DescribeInstances; also the older DescribeZoneInstanceConfigInfos
MAX_INSTANCE_COUNT = 100        # the lower of the CN (500) and intl (100) RunInstances ranges
MAX_CLIENT_TOKEN_LENGTH = 64
MAX_USER_DATA_BYTES = 16 * 1024  # after base64 encoding
SPOTPAID = "SPOTPAID"
# RunInstances ActionTimer: the only TimerAction CVM knows, and how far ahead of CVM's clock its
# ActionTime must be ("must be 5 minutes later than the current time", the ActionTimer model).
TIMER_ACTION = "TerminateInstances"
ACTION_TIMER_MIN_LEAD_SECONDS = 300
ACTION_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # "YYYY-MM-DDThh:mm:ssZ", UTC

# Tag service (API 2018-08-13) TagResources / UnTagResources: "Value range of N: 0-9" for
# ResourceList, Tags and TagKeys, i.e. at most 10 of each per call; keys of 1-127 and values of
# 1-255 characters (the tag service's "Use Limits").
MAX_TAG_RESOURCES = 10
MAX_TAGS_PER_CALL = 10
MAX_TAG_KEY_LENGTH = 127
MAX_TAG_VALUE_LENGTH = 255
MAX_RESOURCE_NAME = 256
_REGION = re.compile(r"[a-z]{2,8}(-[a-z0-9]{1,24}){1,4}")
_ACCOUNT_ID = re.compile(r"[0-9]{1,20}")
_RESOURCE_NAME = re.compile(r"qcs::[a-z0-9]{1,32}:[a-z0-9-]{0,64}:uin/[0-9]{1,20}:[A-Za-z0-9_-]{1,64}/[!-~]{1,128}")

# Bounds on what one instance of a listing may carry. CVM allows 50 tags per resource, keys of
# 127 and values of 255 characters, names of 60; anything beyond is a lie, and the listing that
# carries it is refused (ValueError) rather than held in memory or shown to anyone.
MAX_TAGS = 64
MAX_TAG_KEY = 255
MAX_TAG_VALUE = 255
MAX_NAME = 256
MAX_FIELD = 64  # zone, instance type, state, charge type, timestamps
MAX_COUNT = 1_000_000  # CPU cores, GiB of memory
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def unique(items: Sequence[str]) -> list[str]:
    """The items without repeats, first occurrence order kept."""
    return list(dict.fromkeys(items))


def price_string(value: Decimal | str) -> str:
    """A MaxPrice as the API wants it: a plain positive decimal string, never `1E+3`."""
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"max_price is not a decimal number: {value!r}") from None
    if not price.is_finite() or price <= 0:
        raise ValueError(f"max_price must be a finite decimal > 0, got {value!r}")
    return format(price, "f")


def encode_user_data(text: str) -> str:
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    if len(encoded) > MAX_USER_DATA_BYTES:
        raise ValueError(
            f"user_data is {len(encoded)} bytes once base64-encoded; the API accepts at most "
            f"{MAX_USER_DATA_BYTES}"
        )
    return encoded


def run_instances_params(request: RunInstancesRequest) -> dict[str, Any]:
    """RunInstances parameters for a one-time spot purchase (with its bid) or a pay-as-you-go one
    (POSTPAID_BY_HOUR, no bid and no InstanceMarketOptions); raises ValueError before any call.
    A spot purchase's bytes do not depend on whether charge_type was given."""
    _check_charge(request.charge_type, request.max_price, require_bid=True)
    if not 1 <= request.count <= MAX_INSTANCE_COUNT:
        raise ValueError(f"count must be within 1..{MAX_INSTANCE_COUNT}, got {request.count}")
    token = request.client_token
    if not (token.isascii() and 1 <= len(token) <= MAX_CLIENT_TOKEN_LENGTH):
        raise ValueError(
            f"client_token must be 1..{MAX_CLIENT_TOKEN_LENGTH} ASCII characters, got "
            f"{request.client_token!r}"
        )
    if (request.vpc_id is None) != (request.subnet_id is None):
        raise ValueError("vpc_id and subnet_id must be given together")
    params: dict[str, Any] = {
        "InstanceChargeType": request.charge_type,
        "Placement": {"Zone": request.zone, "ProjectId": 0},
        "InstanceType": request.instance_type,
        "ImageId": request.image_id,
    }
    system_disk = {
        key: value
        for key, value in (("DiskType", request.system_disk_type), ("DiskSize", request.system_disk_size_gib))
        if value is not None
    }
    if system_disk:
        params["SystemDisk"] = system_disk
    if request.vpc_id is not None:
        params["VirtualPrivateCloud"] = {"VpcId": request.vpc_id, "SubnetId": request.subnet_id}
    params["InstanceCount"] = request.count
    if request.instance_name:
        params["InstanceName"] = request.instance_name
    if request.key_ids:
        params["LoginSettings"] = {"KeyIds": list(request.key_ids)}
    if request.security_group_ids:
        params["SecurityGroupIds"] = list(request.security_group_ids)
    params["ClientToken"] = request.client_token
    if request.terminate_at is not None:
        params["ActionTimer"] = {"TimerAction": TIMER_ACTION, "ActionTime": action_time(request.terminate_at)}
    if request.tags:
        # Sorted, so a replay of the same purchase sends the same bytes whatever the dict order.
        params["TagSpecification"] = [{
            "ResourceType": "instance",
            "Tags": [{"Key": key, "Value": request.tags[key]} for key in sorted(request.tags)],
        }]
    if request.charge_type == SPOTPAID and request.max_price is not None:
        params["InstanceMarketOptions"] = {
            "SpotOptions": {"MaxPrice": price_string(request.max_price), "SpotInstanceType": "one-time"},
            "MarketType": "spot",
        }
    if request.user_data:
        params["UserData"] = encode_user_data(request.user_data)
    if request.dry_run:
        params["DryRun"] = True
    return params


def action_time(when: datetime) -> str:
    """An ActionTimer's ActionTime: `YYYY-MM-DDThh:mm:ssZ` in UTC, as the ActionTimer model
    documents it. Fractions of a second are dropped (the field has none), so the timer fires at
    most a second before `when`. A naive datetime is refused: its zone would be a guess, and a
    guess of the host's zone is hours off on a machine set to UTC+8."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"terminate_at must be timezone-aware, got {when!r}")
    return when.astimezone(UTC).strftime(ACTION_TIME_FORMAT)


def instance_resource(region: str, account_id: str, instance_id: str) -> str:
    """The tag service's six-segment name of a CVM instance:
    `qcs::cvm:<region>:uin/<account>:instance/<id>` (service, region, account, prefix/id).

    `account_id` is the root account (STS GetCallerIdentity's AccountId), not a sub-account's
    UIN; a name is checked here because the tag service answers a malformed one with a generic
    error and, for some, silently does nothing.
    """
    if not _REGION.fullmatch(region):
        raise ValueError(f"region is not a Tencent region name: {region!r}")
    if not _ACCOUNT_ID.fullmatch(account_id):
        raise ValueError(f"account_id must be the account's numeric UIN, got {account_id!r}")
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise ValueError(f"instance_id is not an instance id: {instance_id!r}")
    return f"qcs::cvm:{region}:uin/{account_id}:instance/{instance_id}"


def _tag_resource_list(resources: Sequence[str]) -> list[str]:
    if isinstance(resources, str):
        raise ValueError("resources must be a list of six-segment names, not a string")
    names = unique(resources)
    if not 1 <= len(names) <= MAX_TAG_RESOURCES:
        raise ValueError(f"1..{MAX_TAG_RESOURCES} resources per tag call, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or len(name) > MAX_RESOURCE_NAME or not _RESOURCE_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a six-segment resource name "
                "(qcs::<service>:<region>:uin/<account>:<prefix>/<id>)"
            )
    return names


def _tag_key(key: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_TAG_KEY_LENGTH or key != key.strip():
        raise ValueError(
            f"tag key {key!r} must have 1..{MAX_TAG_KEY_LENGTH} characters, without leading or "
            "trailing blanks"
        )
    return key


def tag_resources_params(resources: Sequence[str], tags: Mapping[str, str]) -> dict[str, Any]:
    """TagResources parameters (SDK model order: ResourceList, Tags [{TagKey, TagValue}]).

    Within the documented bounds or ValueError before any call: 1..10 resources, 1..10 tags, keys
    of 1..127 and values of 1..255 characters. Tags are sent sorted, so the same change is the
    same bytes whatever the mapping's order.
    """
    names = _tag_resource_list(resources)
    if not 1 <= len(tags) <= MAX_TAGS_PER_CALL:
        raise ValueError(f"1..{MAX_TAGS_PER_CALL} tags per tag call, got {len(tags)}")
    pairs = []
    for key in sorted(tags):
        value = tags[key]
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_TAG_VALUE_LENGTH or value != value.strip():
            raise ValueError(
                f"the value of tag {key!r} must have 1..{MAX_TAG_VALUE_LENGTH} characters, "
                "without leading or trailing blanks"
            )
        pairs.append({"TagKey": _tag_key(key), "TagValue": value})
    return {"ResourceList": names, "Tags": pairs}


def untag_resources_params(resources: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """UnTagResources parameters (ResourceList, TagKeys), bounded like `tag_resources_params`."""
    names = _tag_resource_list(resources)
    if isinstance(keys, str):
        raise ValueError("keys must be a list of tag keys, not a string")
    wanted = unique(keys)
    if not 1 <= len(wanted) <= MAX_TAGS_PER_CALL:
        raise ValueError(f"1..{MAX_TAGS_PER_CALL} tag keys per untag call, got {len(wanted)}")
    return {"ResourceList": names, "TagKeys": [_tag_key(key) for key in wanted]}


def parse_failed_resources(response: Mapping[str, Any], asked: Sequence[str]) -> dict[str, tuple[str, str]]:
    """TagResources / UnTagResources' `FailedResources`: {resource: (code, message)}, empty when
    every resource was changed (the field absent, null or empty).

    The tag service reports a partial failure here, in a successful answer, not as an error: a
    caller that ignored it would believe resources tagged that are not. Entries must name a
    resource that was asked about, with a code of the documented shape; anything else is
    ValueError (the message quotes no server data). Messages are returned raw for the caller to
    clean.
    """
    raw = response.get("FailedResources")
    if raw is None:
        return {}
    if not isinstance(raw, list) or len(raw) > len(asked):
        raise ValueError(f"FailedResources is not a list of at most {len(asked)} entries")
    failed: dict[str, tuple[str, str]] = {}
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise ValueError("a FailedResources entry is not a JSON object")
        resource, code, message = entry.get("Resource"), entry.get("Code"), entry.get("Message")
        if not isinstance(resource, str) or resource not in asked:
            raise ValueError("a FailedResources entry names a resource that was not asked about")
        if not isinstance(code, str) or not valid_code(code):
            raise ValueError("a FailedResources entry has no error code of the documented shape")
        failed[resource] = (code, message if isinstance(message, str) else "")
    return failed


def filters_param(
    filters: Mapping[str, Sequence[str]], *, max_values: int = MAX_FILTER_VALUES
) -> list[dict[str, Any]]:
    """`Filters` in API form; raises ValueError where the API would refuse the request."""
    if len(filters) > MAX_FILTERS:
        raise ValueError(f"at most {MAX_FILTERS} filters per call, got {len(filters)}")
    result = []
    for name, values in filters.items():
        if isinstance(values, str):
            raise ValueError(f"filter {name!r}: values must be a list of strings, not a string")
        if not 1 <= len(values) <= max_values:
            raise ValueError(
                f"filter {name!r}: 1..{max_values} values per filter, got {len(values)}"
            )
        result.append({"Name": name, "Values": list(values)})
    return result


def parse_time(value: Any) -> datetime | None:
    """An API timestamp (ISO-8601, UTC, `Z`) as an aware datetime; None when absent or garbled."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def valid_instance_id(value: str) -> bool:
    """Whether a server-sent instance id is short and plain (it is stored and sent back)."""
    return _INSTANCE_ID.fullmatch(value) is not None


def _text(value: Any, limit: int, what: str) -> str:
    """A string field: absent is "", anything but a string of at most `limit` is ValueError."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{what} is not a string of at most {limit} characters")
    return value


def _count(value: Any, what: str) -> int:
    """A small non-negative integer field (absent is 0); a JSON integer, never a bool or text."""
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{what} is not an integer within 0..{MAX_COUNT}")
    return value


def parse_instance(raw: Any) -> Instance:
    """A DescribeInstances item as an Instance; ValueError when it breaks the documented shape.

    Absent fields are tolerated (empty), wrong types and oversized values are not: the server may
    be hostile, and whatever is kept here is held for every instance of a listing.
    """
    if not isinstance(raw, Mapping):
        raise ValueError("an instance is not a JSON object")
    instance_id = raw.get("InstanceId")
    if not isinstance(instance_id, str) or not _INSTANCE_ID.fullmatch(instance_id):
        raise ValueError("an instance has no valid InstanceId")
    placement = raw.get("Placement") or {}
    if not isinstance(placement, Mapping):
        raise ValueError("Placement is not a JSON object")
    raw_tags = raw.get("Tags") or []
    if not isinstance(raw_tags, list) or len(raw_tags) > MAX_TAGS:
        raise ValueError(f"Tags is not a list of at most {MAX_TAGS}")
    tags: dict[str, str] = {}
    for tag in raw_tags:
        if not isinstance(tag, Mapping):
            raise ValueError("a tag is not a JSON object")
        key = _text(tag.get("Key"), MAX_TAG_KEY, "a tag key")
        if key:
            value = _text(tag.get("Value"), MAX_TAG_VALUE, "a tag value")
            # Interned: tags are mostly shared (cluster, owner, launch batch and spec), and each
            # page's JSON would otherwise give every instance copies of its own.
            tags[sys.intern(key)] = sys.intern(value)
    created = raw.get("CreatedTime")
    return Instance(
        instance_id=instance_id,
        zone=sys.intern(_text(placement.get("Zone"), MAX_FIELD, "Zone")),
        instance_type=sys.intern(_text(raw.get("InstanceType"), MAX_FIELD, "InstanceType")),
        state=sys.intern(_text(raw.get("InstanceState"), MAX_FIELD, "InstanceState")),
        charge_type=sys.intern(_text(raw.get("InstanceChargeType"), MAX_FIELD, "InstanceChargeType")),
        created_time=parse_time(created if isinstance(created, str) and len(created) <= MAX_FIELD
                                else None),
        tags=tags,
        name=_text(raw.get("InstanceName"), MAX_NAME, "InstanceName"),
        cpu=_count(raw.get("CPU"), "CPU"),
        memory_gib=_count(raw.get("Memory"), "Memory"),
    )


def retained_size(instance: Instance) -> int:
    """Characters an Instance holds in its strings: what a listing's memory budget counts."""
    return (
        len(instance.instance_id) + len(instance.zone) + len(instance.instance_type)
        + len(instance.state) + len(instance.charge_type) + len(instance.name)
        + sum(len(key) + len(value) for key, value in instance.tags.items())
    )


def parse_listing_page(response: Mapping[str, Any], max_instances: int) -> tuple[list[Instance], int]:
    """One DescribeInstances page, checked: TotalCount a count within the listing's bound,
    InstanceSet a list of at most PAGE_LIMIT well-formed instances. ValueError (in wire's own
    words, quoting no server data) otherwise."""
    total = response.get("TotalCount")
    if total is None:
        total = 0
    if type(total) is not int or total < 0:
        raise ValueError("TotalCount is not a non-negative integer")
    if total > max_instances:
        raise ValueError(f"TotalCount exceeds {max_instances}, the most one listing may hold")
    raw_page = response.get("InstanceSet")
    if raw_page is None:
        raw_page = []
    if not isinstance(raw_page, list) or len(raw_page) > PAGE_LIMIT:
        raise ValueError(f"InstanceSet is not a list of at most {PAGE_LIMIT} instances")
    try:
        return [parse_instance(raw) for raw in raw_page], total
    except ValueError as exc:
        raise ValueError(f"malformed instance: {exc}") from None


def _decimal(value: Any) -> Decimal | None:
    """A JSON number as an exact Decimal (via its shortest repr), None when absent or invalid."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    text = str(value)
    if len(text) > MAX_FIELD:  # a price of a million digits is no price
        return None
    try:
        result = Decimal(text)
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


# ------------------------------------------------ on-demand, stock, quota and price (issue 11)

_QUOTA_SETS = {SPOTPAID: "SpotPaidQuotaSet", POSTPAID_BY_HOUR: "PostPaidQuotaSet"}
_MAX_TEXT = 64  # zone, instance type, charge type, status words
_MAX_QUOTA = 10**9  # vCPU cores; anything larger is not a quota
MAX_QUOTA_ROWS = 200  # zones of one region in one quota set


def _short_text(value: Any, what: str) -> str:
    """A short string field: absent is "", anything else but a string of <= 64 is ValueError."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError(f"{what} is not a string of at most {_MAX_TEXT} characters")
    return value


def _small_int(value: Any, what: str, *, required: bool = False) -> int:
    """A non-negative JSON integer (never a bool or a string); absent is 0 unless required."""
    if value is None and not required:
        return 0
    if type(value) is not int or not 0 <= value <= _MAX_QUOTA:
        raise ValueError(f"{what} is not an integer within 0..{_MAX_QUOTA}")
    return value


def _item_price(
    raw: Mapping[str, Any],
) -> tuple[Decimal | None, Decimal | None, Mapping[str, Any]]:
    """(price paid, list price, the ItemPrice) of an object carrying an ItemPrice as `Price`.

    The paid price is UnitPriceDiscount, or UnitPrice when that is absent or not positive (a zero
    "discount price" would make a pool look free). Tencent's documentation does not say which
    ItemPrice field carries the spot price; the discounted price is the natural reading.
    """
    price = raw.get("Price") or {}
    if not isinstance(price, Mapping):
        raise ValueError("Price is not a JSON object")
    list_price = _decimal(price.get("UnitPrice"))
    paid = _decimal(price.get("UnitPriceDiscount"))
    if paid is None or paid <= 0:
        paid = list_price
    return paid, list_price, price


def parse_config_item(raw: Any) -> Offer:
    """A DescribeZoneInstanceConfigInfos item (any charge type) as an Offer.

    A StatusCategory that is none of the four documented words becomes None (unknown), not an
    error: it is advice about stock, and a new word should not stop the operator from buying.
    """
    if not isinstance(raw, Mapping):
        raise ValueError("an InstanceTypeQuotaSet item is not a JSON object")
    paid, list_price, _ = _item_price(raw)
    category = raw.get("StatusCategory")
    return Offer(
        zone=_short_text(raw.get("Zone"), "Zone"),
        instance_type=_short_text(raw.get("InstanceType"), "InstanceType"),
        charge_type=_short_text(raw.get("InstanceChargeType"), "InstanceChargeType"),
        price=paid,
        list_price=list_price,
        sold_out=raw.get("Status") == "SOLD_OUT",
        status_category=category if category in STOCK_CATEGORIES else None,
        cpu=_small_int(raw.get("Cpu"), "Cpu"),
        memory_gib=_small_int(raw.get("Memory"), "Memory"),
    )


def account_quota_filters(zones: Sequence[str]) -> list[dict[str, Any]]:
    """DescribeAccountQuota Filters asking for the spot and pay-as-you-go sets of `zones` (all
    zones of the region when empty)."""
    filters: dict[str, Sequence[str]] = {"quota-type": list(_QUOTA_SETS.values())}
    if zones:
        filters = {"zone": zones, **filters}
    return filters_param(filters)


def parse_account_quota(response: Mapping[str, Any]) -> AccountQuota:
    """A DescribeAccountQuota response as an AccountQuota (ValueError when it breaks the shape).

    Sets the API left out or null are empty: the caller then knows nothing of those zones, which
    it must treat as "unknown", never as "no quota".
    """
    overview = response.get("AccountQuotaOverview")
    if not isinstance(overview, Mapping):
        raise ValueError("AccountQuotaOverview is not a JSON object")
    quota = overview.get("AccountQuota")
    quota = {} if quota is None else quota
    if not isinstance(quota, Mapping):
        raise ValueError("AccountQuota is not a JSON object")
    sets: dict[str, dict[str, ZoneQuota]] = {}
    for charge, name in _QUOTA_SETS.items():
        rows = quota.get(name)
        rows = [] if rows is None else rows
        if not isinstance(rows, list) or len(rows) > MAX_QUOTA_ROWS:
            raise ValueError(f"{name} is not a list of at most {MAX_QUOTA_ROWS} rows")
        by_zone: dict[str, ZoneQuota] = {}
        for row in rows:
            if not isinstance(row, Mapping):
                raise ValueError(f"a {name} row is not a JSON object")
            zone = _short_text(row.get("Zone"), f"{name} Zone")
            if not zone:
                raise ValueError(f"a {name} row has no Zone")
            by_zone[zone] = ZoneQuota(
                zone=zone,
                total=_small_int(row.get("TotalQuota"), f"{name} TotalQuota", required=True),
                used=_small_int(row.get("UsedQuota"), f"{name} UsedQuota"),
                remaining=_small_int(
                    row.get("RemainingQuota"), f"{name} RemainingQuota", required=True
                ),
            )
        sets[charge] = by_zone
    app_id = response.get("AppId")
    return AccountQuota(
        region=_short_text(overview.get("Region"), "Region"),
        spot=sets[SPOTPAID],
        on_demand=sets[POSTPAID_BY_HOUR],
        app_id=app_id if type(app_id) is int else None,
    )


def inquiry_price_params(
    *,
    zone: str,
    instance_type: str,
    image_id: str,
    count: int,
    charge_type: str,
    max_price: Decimal | str | None,
) -> dict[str, Any]:
    """InquiryPriceRunInstances parameters (SDK model order), checked like a purchase's."""
    if not 1 <= count <= MAX_INSTANCE_COUNT:
        raise ValueError(f"count must be within 1..{MAX_INSTANCE_COUNT}, got {count}")
    _check_charge(charge_type, max_price, require_bid=False)
    params: dict[str, Any] = {
        "Placement": {"Zone": zone, "ProjectId": 0},
        "ImageId": image_id,
        "InstanceChargeType": charge_type,
        "InstanceType": instance_type,
        "InstanceCount": count,
    }
    if charge_type == SPOTPAID:
        spot: dict[str, Any] = {"SpotInstanceType": "one-time"}
        if max_price is not None:
            spot = {"MaxPrice": price_string(max_price), **spot}
        params["InstanceMarketOptions"] = {"SpotOptions": spot, "MarketType": "spot"}
    return params


def parse_price_quote(response: Mapping[str, Any], charge_type: str) -> PriceQuote:
    """An InquiryPriceRunInstances response's InstancePrice as a PriceQuote."""
    price = response.get("Price")
    if not isinstance(price, Mapping):
        raise ValueError("Price is not a JSON object")
    instance = price.get("InstancePrice")
    if not isinstance(instance, Mapping):
        raise ValueError("Price.InstancePrice is not a JSON object")
    paid, list_price, item = _item_price({"Price": instance})
    return PriceQuote(
        charge_type=charge_type,
        price=paid,
        list_price=list_price,
        discount_percent=_decimal(item.get("Discount")),
        charge_unit=_short_text(item.get("ChargeUnit"), "ChargeUnit"),
    )


def _check_charge(
    charge_type: str, max_price: Decimal | str | None, *, require_bid: bool
) -> None:
    """A charge type the client buys, with a bid only where one means something (spot)."""
    if charge_type not in CHARGE_TYPES:
        raise ValueError(
            f"charge_type must be one of {', '.join(CHARGE_TYPES)}, got {charge_type!r}"
        )
    if charge_type == SPOTPAID:
        if require_bid and max_price is None:
            raise ValueError("a spot purchase needs max_price (its bid)")
    elif max_price is not None:
        raise ValueError(f"max_price is a spot bid; a {charge_type} purchase takes none")


# ------------------------------------------------ the response: the envelope and each answer


def invalid_response(action: str, message: str) -> CloudError:
    """InvalidResponse: the server's answer breaks the documented shape or the client's bounds.
    `message` is the client's own words; it never quotes the server."""
    return CloudError(INVALID_RESPONSE, message, action=action, category=ErrorCategory.UNKNOWN)


def parse_envelope(
    action: str,
    status: int,
    content_type: str,
    data: bytes | None,
    secrets: Iterable[str | None] = (),
) -> dict[str, Any]:
    """The `Response` object of a CVM envelope, or the CloudError it carries or amounts to.

    `data` is the body of a 200 reply of a parsed media type, None for any other reply (which is
    never read). Nothing of a non-CVM reply is quoted (its body may be an internal service's
    answer): the message names the HTTP status and the media type only. A CVM error's code must
    have the documented shape, its message is cleaned and clipped (`errors.clean_message`, with
    `secrets` redacted: the keys and tokens the caller signed with lately), its RequestId checked.
    """
    if data is None:
        what = "redirect, not followed" if 300 <= status < 400 else "not a CVM reply"
        raise CloudNetworkError(
            SERVER_NETWORK_ERROR,
            f"HTTP {status} with Content-Type {content_type} ({what})",
            action=action,
            http_status=status,
        )
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
        payload = None
    envelope = payload.get("Response") if isinstance(payload, dict) else None
    if not isinstance(envelope, dict):
        raise CloudNetworkError(
            SERVER_NETWORK_ERROR,
            f"HTTP 200 with Content-Type {content_type}, but not a CVM reply "
            "(no JSON Response object)",
            action=action,
            http_status=200,
        )
    request_id = valid_request_id(envelope.get("RequestId"))
    error = envelope.get("Error")
    if error is None:
        return envelope
    if not isinstance(error, dict) or not error.get("Code"):
        raise CloudNetworkError(
            SERVER_NETWORK_ERROR,
            "HTTP 200 with a malformed Error object (no Code); not a CVM reply",
            action=action,
            request_id=request_id,
            http_status=200,
        )
    code = error["Code"]
    if not valid_code(code):
        raise CloudError(
            INVALID_RESPONSE,
            "the server answered with an error code that is not of the documented shape",
            action=action,
            request_id=request_id,
            category=ErrorCategory.UNKNOWN,
        )
    message = error.get("Message")
    raise CloudError(
        code,
        clean_message(message if isinstance(message, str) else "", secrets),
        action=action,
        request_id=request_id,
    )


def parse_instance_ids(response: Mapping[str, Any], count: int) -> list[str]:
    """RunInstances' InstanceIdSet: at most `count` ids of the documented shape (ValueError
    otherwise): anything else would be stored and acted on."""
    ids = response.get("InstanceIdSet") or []
    if not isinstance(ids, list) or len(ids) > count or not all(
        isinstance(instance_id, str) and valid_instance_id(instance_id) for instance_id in ids
    ):
        raise ValueError(f"InstanceIdSet is not a list of at most {count} instance ids")
    return list(ids)


def parse_offers(response: Mapping[str, Any]) -> list[Offer]:
    """DescribeZoneInstanceConfigInfos' InstanceTypeQuotaSet as Offers (ValueError when it is
    not a list of well-formed items)."""
    items = response.get("InstanceTypeQuotaSet") or []
    if not isinstance(items, list):
        raise ValueError("InstanceTypeQuotaSet is not a list")
    return [parse_config_item(raw) for raw in items]


def _identity_text(value: Any, limit: int) -> str:
    """A server-sent identity field shown to users: a string, printable, at most `limit`; else ""."""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        return ""
    return value


def parse_caller_identity(response: Mapping[str, Any]) -> CallerIdentity:
    """STS GetCallerIdentity's answer; ValueError without an AccountId of ASCII digits (at most
    20). The other fields are shown to users only, so a bad one is dropped (""), not refused."""
    account = response.get("AccountId")
    # ASCII digits only: str.isdigit() alone also takes "²" and other scripts' digits.
    if not isinstance(account, str) or not account.isascii() or not account.isdigit() or len(account) > 20:
        raise ValueError("GetCallerIdentity answered without a valid AccountId")
    return CallerIdentity(
        account_id=account,
        arn=_identity_text(response.get("Arn"), 256),
        user_id=_identity_text(response.get("UserId"), 256),
        principal_id=_identity_text(response.get("PrincipalId"), 64),
        type=_identity_text(response.get("Type"), 64),
    )
