"""The simulator's configuration: the market it simulates and how its API behaves.

Loaded from YAML so a demo or a test can describe a whole market (regions, zones, instance types,
prices, stock, quota, lifecycle timings, rate limits, faults) in one file. Every field has a
default close to the real cloud, so an empty file is a usable market; `SimulatorConfig.default()`
loads the packaged `default_market.yaml`, which adds a realistic catalogue.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spotpool.simulator.faults import FaultSpec

DEMO_SECRET_ID = "AKIDSPOTPOOLDEMO00000000000000000000"
DEMO_SECRET_KEY = "spotpoolDemoSecretKey0000000000000"

#: Published per-action limits (requests per second per action and sub-account), reference §9.
DEFAULT_RATE_LIMITS: dict[str, float] = {
    "RunInstances": 10,
    "TerminateInstances": 10,
    "DescribeInstances": 40,
    "DescribeInstancesStatus": 40,
    "DescribeZoneInstanceConfigInfos": 40,
    "InquiryPriceRunInstances": 10,
    "DescribeZones": 20,
    "DescribeAccountQuota": 20,  # not published (reference §9); the common 20/s
}


DEFAULT_ACCOUNT_ID = "100000000001"


class _Strict(BaseModel):
    """Unknown keys are refused so a typo in a market file fails loudly instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Credential(_Strict):
    """One API key pair the simulator accepts (a CAM sub-account: rate limits, visibility)."""

    secret_id: str = Field(min_length=1)
    secret_key: str = Field(min_length=1, repr=False)
    # The root account (UIN) the key pair acts in, as STS GetCallerIdentity reports it. Key pairs
    # of one account share it (key rotation); another account's pairs name another.
    account_id: str = Field(default=DEFAULT_ACCOUNT_ID, pattern=r"^[0-9]{1,20}$")
    visible_tags: dict[str, str] | None = Field(
        default=None,
        min_length=1,
        description="a CAM policy with tag conditions: DescribeInstances and "
        "DescribeInstancesStatus show this key pair only instances carrying every one of these "
        "tags (TotalCount counts only those), and TerminateInstances of any other instance is "
        "refused whole with UnauthorizedOperation; RunInstances is not restricted. "
        "None: the key pair sees and operates on every instance of the account",
    )


class InstanceTypeSpec(_Strict):
    """One instance type of the catalogue; `on_demand_price` is the pay-as-you-go list price."""

    cpu: int = Field(gt=0)
    memory_gib: int = Field(gt=0)
    on_demand_price: float = Field(gt=0, description="USD per instance-hour")
    type_name: str | None = Field(default=None, description="human name; defaults from the family")


class PoolSpec(_Strict):
    """Overrides for one zone x instance type; unset fields fall back to the market defaults."""

    zone: str
    instance_type: str
    stock: int | None = Field(default=None, ge=0)
    discount_percent: float | None = Field(default=None, gt=0, le=100)
    on_demand_price: float | None = Field(default=None, gt=0)
    sold_out: bool = False
    reclaim_rate_per_hour: float | None = Field(default=None, ge=0)
    offered: bool = Field(default=True, description="False: the type is not sold in this zone")
    on_demand_stock: int | None = Field(default=None, ge=0)
    on_demand_sold_out: bool = False


class StockStatusSpec(_Strict):
    """Where DescribeZoneInstanceConfigInfos' StatusCategory changes, in instances left for sale.

    Tencent documents the four words (EnoughStock, NormalStock, UnderStock, WithoutStock) but not
    the thresholds behind them; these are the simulator's, so a test can move a pool between
    categories by setting its stock.
    """

    enough_from: int = Field(default=100, ge=1, description="stock >= this: EnoughStock")
    normal_from: int = Field(default=10, ge=1, description="stock >= this: NormalStock")

    @model_validator(mode="after")
    def _ordered(self) -> StockStatusSpec:
        if self.normal_from > self.enough_from:
            raise ValueError("stock_status.normal_from must not exceed enough_from")
        return self

    def category(self, stock: int, sold_out: bool) -> str:
        """The StatusCategory word for `stock` instances left (WithoutStock when sold out)."""
        if sold_out or stock <= 0:
            return "WithoutStock"
        if stock >= self.enough_from:
            return "EnoughStock"
        if stock >= self.normal_from:
            return "NormalStock"
        return "UnderStock"


class MarketSpec(_Strict):
    """The spot market (a fixed discount off the list price, finite stock, a vCPU quota per zone)
    and the pay-as-you-go one beside it (list price, its own plentiful stock and vCPU quota)."""

    spot_discount_percent: float = Field(
        default=20.0,
        gt=0,
        le=100,
        description="percent of the on-demand price a spot instance costs (Tencent's Discount)",
    )
    default_stock: int = Field(default=500, ge=0, description="instances per zone x type")
    spot_quota_vcpus: int = Field(default=20000, ge=0, description="per zone, all spot types")
    zone_quota_vcpus: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="per-zone overrides of spot_quota_vcpus"
    )
    default_on_demand_stock: int = Field(
        default=10000, ge=0, description="pay-as-you-go instances per zone x type"
    )
    on_demand_quota_vcpus: int = Field(
        default=20000, ge=0, description="per zone, all pay-as-you-go types (PostPaidQuotaSet)"
    )
    zone_on_demand_quota_vcpus: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="per-zone overrides of on_demand_quota_vcpus"
    )
    stock_status: StockStatusSpec = Field(default_factory=StockStatusSpec)
    images: list[str] | None = Field(
        default=None,
        description="the image ids that exist (others are InvalidImageId.NotFound); "
        "None: every well-formed img-xxxxxxxx exists",
    )
    subnets: dict[str, str] | None = Field(
        default=None,
        description="the subnet ids that exist, each with its zone (others are "
        "InvalidParameterValue.SubnetNotExist, one of another zone SubnetIdZoneIdNotMatch); "
        "None: every well-formed subnet-xxxxxxxx exists in every zone",
    )
    reclaim_rate_per_hour: float = Field(
        default=0.0, ge=0, description="random reclaims per running instance-hour"
    )
    pools: list[PoolSpec] = Field(default_factory=list)


class LifecycleSpec(_Strict):
    """How long instances take to boot and to go away, and how often a launch fails."""

    boot_delay_seconds: float = Field(default=2.0, ge=0)
    launch_failure_rate: float = Field(default=0.0, ge=0, le=1)
    terminate_delay_seconds: float = Field(default=1.0, ge=0)
    terminating_state: Literal["TERMINATING", "SHUTDOWN"] = Field(
        default="TERMINATING",
        description="the state shown between termination (or reclaim) and disappearance",
    )
    refuse_terminate_pending: bool = Field(
        default=False,
        description="answer UnsupportedOperation.InstanceStatePending instead of terminating",
    )
    terminate_failure_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="share of accepted TerminateInstances (per instance, drawn at the call) "
        "that fail asynchronously: the instance shows the terminating state for "
        "terminate_delay_seconds, then returns to RUNNING (or PENDING, still booting) with "
        "LatestOperation TerminateInstances and LatestOperationState FAILED, keeping its "
        "capacity and its bill; CVM reports failed operations this way, not in the call's answer",
    )


class ApiSpec(_Strict):
    """Protocol behaviour: limits, idempotency window, clock skew, control-API exposure."""

    rate_limits: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    client_token_validity_seconds: float = Field(default=24 * 3600, gt=0)
    max_clock_skew_seconds: float = Field(default=300, ge=0)
    max_instance_count: int = Field(
        default=100, ge=1, le=500, description="RunInstances InstanceCount upper bound"
    )
    insufficient_stock_code: Literal[
        "ResourceInsufficient.SpecifiedInstanceType", "InvalidParameterValue.InsufficientOffering"
    ] = "ResourceInsufficient.SpecifiedInstanceType"
    tag_index_delay_seconds: float = Field(
        default=0.0, ge=0,
        description="tag filters of DescribeInstances miss instances younger than this "
        "(Tencent's tag service is eventually consistent); lookups by InstanceIds see them at once",
    )
    listing_skew_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="chance that a listing page asked with Offset > 0 (DescribeInstances or "
        "DescribeInstancesStatus without InstanceIds) starts one position later, TotalCount "
        "unchanged: what offset paging shows when an instance listed before the offset went "
        "away and another was launched between two page reads (the real cloud promises no "
        "stable order), so a client paging by offset misses the instance at the page boundary",
    )
    allow_remote_control: bool = False
    ledger_size: int = Field(default=10000, ge=0)
    dry_run_answer: Literal["DryRunOperation", "RequestId"] = Field(
        default="DryRunOperation",
        description="how a RunInstances DryRun that passes answers: the DryRunOperation error, "
        "or a success with an empty InstanceIdSet (the API page says 'returns RequestId')",
    )
    app_id: int = Field(default=1250000000, ge=0, description="DescribeAccountQuota AppId")

    @field_validator("rate_limits")
    @classmethod
    def _merge_rate_limits(cls, value: dict[str, float]) -> dict[str, float]:
        """A file that raises one limit keeps the published limits of the other actions."""
        if any(rate <= 0 for rate in value.values()):
            raise ValueError("rate limits must be positive requests per second")
        return {**DEFAULT_RATE_LIMITS, **value}


class SimulatorConfig(_Strict):
    """The whole simulator configuration (see `default_market.yaml` for a complete example)."""

    seed: int | None = Field(default=None, description="None: a different market every run")
    credentials: list[Credential] = Field(
        default_factory=lambda: [Credential(secret_id=DEMO_SECRET_ID, secret_key=DEMO_SECRET_KEY)],
        min_length=1,
    )
    regions: dict[str, list[str]] = Field(min_length=1, description="region -> its zones")
    instance_types: dict[str, InstanceTypeSpec] = Field(min_length=1)
    market: MarketSpec = Field(default_factory=MarketSpec)
    lifecycle: LifecycleSpec = Field(default_factory=LifecycleSpec)
    api: ApiSpec = Field(default_factory=ApiSpec)
    faults: dict[str, FaultSpec] = Field(
        default_factory=dict, description="action (or *) -> fault injected from the start"
    )

    @model_validator(mode="after")
    def _check_references(self) -> SimulatorConfig:
        """Zones must belong to their region and overrides must name known zones and types."""
        for region, zones in self.regions.items():
            for zone in zones:
                if not zone.startswith(region + "-"):
                    raise ValueError(f"zone {zone!r} is not in region {region!r}")
        known_zones = self.zones()
        for pool in self.market.pools:
            if pool.zone not in known_zones:
                raise ValueError(f"market.pools: unknown zone {pool.zone!r}")
            if pool.instance_type not in self.instance_types:
                raise ValueError(f"market.pools: unknown instance type {pool.instance_type!r}")
        for subnet, zone in (self.market.subnets or {}).items():
            if zone not in known_zones:
                raise ValueError(f"market.subnets: {subnet}: unknown zone {zone!r}")
        for field in ("zone_quota_vcpus", "zone_on_demand_quota_vcpus"):
            for zone in getattr(self.market, field):
                if zone not in known_zones:
                    raise ValueError(f"market.{field}: unknown zone {zone!r}")
        return self

    def zones(self) -> dict[str, str]:
        """zone -> region."""
        return {zone: region for region, zones in self.regions.items() for zone in zones}

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimulatorConfig:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        return cls.model_validate(data)

    @classmethod
    def default(cls) -> SimulatorConfig:
        """The packaged realistic market (3+ regions, 8+ instance types, generous stock)."""
        text = (
            resources.files("spotpool.simulator")
            .joinpath("default_market.yaml")
            .read_text(encoding="utf-8")
        )
        return cls.model_validate(yaml.safe_load(text))

    def with_overrides(self, changes: dict[str, Any]) -> SimulatorConfig:
        """A copy with `changes` deep-merged in and validated again.

        Tests mostly change one nested knob (`{"lifecycle": {"boot_delay_seconds": 0}}`);
        pydantic's `model_copy(update=...)` would replace the whole section and skip validation.
        """
        return type(self).model_validate(_deep_merge(self.model_dump(), changes))


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
