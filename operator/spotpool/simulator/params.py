"""Request parameters: the wire models of each action and their parsing into typed objects.

The fields are exactly those of the official SDK's request models (3.1.178), so anything the SDK
can send is accepted and anything else is refused with `UnknownParameter`: a typo in a client's
hand-written request fails loudly here instead of being silently ignored as it might be in
production. JSON bodies are validated strictly (an integer sent as a string is
`InvalidParameter`); GET and form bodies carry only strings, so they are coerced.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_pascal

from spotpool.simulator.api_errors import ApiError


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_pascal, extra="forbid", frozen=True)


class Filter(_Wire):
    name: str
    values: list[str]


class Tag(_Wire):
    key: str
    value: str


class TagSpecification(_Wire):
    resource_type: str
    tags: list[Tag]


class Placement(_Wire):
    zone: str
    project_id: int = 0
    host_ids: list[str] | None = None
    host_id: str | None = None
    rack_id: int | None = None
    dedicated_resource_pack_ids: list[str] | None = None
    dedicated_resource_pack_tenancy: str | None = None


class SpotMarketOptions(_Wire):
    max_price: str | None = None
    spot_instance_type: str | None = None


class InstanceMarketOptions(_Wire):
    market_type: str | None = None
    spot_options: SpotMarketOptions | None = None


class VirtualPrivateCloud(_Wire):
    vpc_id: str
    subnet_id: str
    as_vpc_gateway: bool | None = None
    private_ip_addresses: list[str] | None = None
    ipv6_address_count: int | None = None


class LoginSettings(_Wire):
    password: str | None = None
    key_ids: list[str] | None = None
    keep_image_login: str | None = None


class SystemDisk(_Wire):
    disk_type: str | None = None
    disk_id: str | None = None
    disk_size: int | None = None
    cdc_id: str | None = None
    disk_name: str | None = None
    encrypt: bool | None = None
    kms_key_id: str | None = None


class ActionTimer(_Wire):
    """RunInstances' ActionTimer. Externals, ActionTimerId, Status and InstanceId are output-only
    in the SDK model; the SDK can still send them, so they are accepted (and ignored)."""

    timer_action: str | None = None
    action_time: str | None = None
    externals: dict[str, Any] | None = None
    action_timer_id: str | None = None
    status: str | None = None
    instance_id: str | None = None


class _LaunchParams(_Wire):
    """Fields shared by RunInstances and InquiryPriceRunInstances."""

    placement: Placement | None = None
    image_id: str | None = None
    instance_charge_type: str | None = None
    instance_charge_prepaid: dict[str, Any] | None = None
    instance_type: str | None = None
    system_disk: SystemDisk | None = None
    data_disks: list[dict[str, Any]] | None = None
    virtual_private_cloud: VirtualPrivateCloud | None = None
    internet_accessible: dict[str, Any] | None = None
    instance_count: int = 1
    instance_name: str | None = None
    login_settings: LoginSettings | None = None
    security_group_ids: list[str] | None = None
    enhanced_service: dict[str, Any] | None = None
    client_token: str | None = None
    host_name: str | None = None
    tag_specification: list[TagSpecification] | None = None
    instance_market_options: InstanceMarketOptions | None = None
    hpc_cluster_id: str | None = None
    cpu_topology: dict[str, Any] | None = None
    launch_template: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    network_interfaces: list[dict[str, Any]] | None = None


class RunInstancesParams(_LaunchParams):
    action_timer: ActionTimer | None = None
    disaster_recover_group_ids: list[str] | None = None
    user_data: str | None = None
    dry_run: bool = False
    cam_role_name: str | None = None
    dedicated_cluster_id: str | None = None
    chc_ids: list[str] | None = None
    disable_api_termination: bool | None = None
    enable_jumbo_frame: bool | None = None
    min_count: int | None = None
    partition_number: int | None = None


class InquiryPriceRunInstancesParams(_LaunchParams):
    pass


class DescribeInstancesParams(_Wire):
    instance_ids: list[str] | None = None
    filters: list[Filter] | None = None
    offset: int = 0
    limit: int = 20


class DescribeInstancesStatusParams(_Wire):
    instance_ids: list[str] | None = None
    offset: int = 0
    limit: int = 20


class TerminateInstancesParams(_Wire):
    instance_ids: list[str] | None = None
    release_address: bool | None = None
    release_prepaid_data_disks: bool | None = None


class DescribeZoneInstanceConfigInfosParams(_Wire):
    filters: list[Filter] | None = None


class DescribeZonesParams(_Wire):
    pass


class DescribeAccountQuotaParams(_Wire):
    filters: list[Filter] | None = None


Params = TypeVar("Params", bound=BaseModel)


def parse_json(model: type[Params], body: bytes) -> Params:
    """Strict validation straight from the received bytes (fast, and no type coercion)."""
    try:
        return model.model_validate_json(body or b"{}", strict=True)
    except ValidationError as exc:
        raise _api_error(exc) from None


def parse_form(model: type[Params], flat: dict[str, str]) -> Params:
    """Validation of GET/form parameters (`Filters.0.Values.1=...`), coercing the strings."""
    try:
        return model.model_validate(unflatten(flat))
    except ValidationError as exc:
        raise _api_error(exc) from None


def unflatten(flat: dict[str, str]) -> dict[str, Any]:
    """`{"Filters.0.Name": "zone"}` -> `{"Filters": [{"Name": "zone"}]}` (0-based, contiguous)."""
    root: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        if any(not part for part in parts):
            raise ApiError("InvalidParameter", f"The parameter name {dotted!r} is malformed.")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ApiError(
                    "InvalidParameter", f"The parameter {dotted!r} conflicts with {part!r}."
                )
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ApiError("InvalidParameter", f"The parameter {dotted!r} conflicts with another.")
        node[parts[-1]] = value
    result: dict[str, Any] = _lists_from_indexes(root, "")
    return result


_INDEX = re.compile(r"0|[1-9][0-9]{0,5}")


def _lists_from_indexes(node: Any, path: str) -> Any:
    if not isinstance(node, dict):
        return node
    # Canonical decimal indexes only ("0", "12"; not "00", "²" or 5000 digits, which str.isdigit
    # takes and int() refuses or folds onto another index): other keys are plain names.
    if node and all(_INDEX.fullmatch(key) for key in node):
        indexes = sorted(int(key) for key in node)
        if indexes != list(range(len(indexes))):
            raise ApiError(
                "InvalidParameter",
                f"The indexes of {path or 'the parameters'} must be 0, 1, 2... without gaps.",
            )
        return [_lists_from_indexes(node[str(i)], f"{path}.{i}") for i in indexes]
    return {
        key: _lists_from_indexes(value, f"{path}.{key}".lstrip(".")) for key, value in node.items()
    }


def _api_error(exc: ValidationError) -> ApiError:
    """The first validation problem, as the Tencent error code a client would get for it."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "json_invalid":
        return ApiError("InvalidParameter", f"The request body is not valid JSON: {error['msg']}.")
    if kind == "missing":
        return ApiError(
            "MissingParameter", f"The request is missing the required parameter {where}."
        )
    if kind == "extra_forbidden":
        return ApiError("UnknownParameter", f"The parameter {where} is not recognized.")
    if not where:
        return ApiError("InvalidParameter", "The request parameters must be a JSON object.")
    return ApiError("InvalidParameter", f"The parameter {where} is invalid: {error['msg']}.")
