"""The simulator's configuration: the market it simulates and how its API behaves.

Loaded from YAML so a demo or a test can describe a whole market (regions, zones, instance types,
prices, stock, quota, lifecycle timings, rate limits, faults) in one file. Every field has a
default close to the real cloud, so an empty file is a usable market; `SimulatorConfig.default()`
loads the packaged `default_market.yaml`, which adds a realistic catalogue.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spotpool.simulator.faults import FaultSpec

DEMO_SECRET_ID = "AKIDSPOTPOOLDEMO00000000000000000000"
DEMO_SECRET_KEY = "spotpoolDemoSecretKey0000000000000"

#: Published per-action limits (requests per second per action and sub-account); docs/cvm-api.md.
DEFAULT_RATE_LIMITS: dict[str, float] = {
    "RunInstances": 10,
    "TerminateInstances": 10,
    "DescribeInstances": 40,
    "DescribeInstancesStatus": 40,
    "DescribeZoneInstanceConfigInfos": 40,
    "InquiryPriceRunInstances": 10,
    "DescribeZones": 20,
    "DescribeAccountQuota": 20,  # no published limit: the common 20/s
    "TagResources": 20,  # the tag service's API pages
    "UnTagResources": 20,
}


DEFAULT_ACCOUNT_ID = "100000000001"


class _Strict(BaseModel):
    """Unknown keys are refused so a typo in a market file fails loudly instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_UIN = r"^[0-9]{1,20}$"
# CAM role names and session names: letters, digits and +=,.@_- (the SDK's RoleSessionName rule).
_CAM_NAME = r"^[A-Za-z0-9_+=,.@-]{1,128}$"


class Credential(_Strict):
    """One API key pair the simulator accepts (a CAM sub-account: rate limits, visibility)."""

    secret_id: str = Field(min_length=1)
    secret_key: str = Field(min_length=1, repr=False)
    # The root account (UIN) the key pair acts in, as STS GetCallerIdentity reports it. Key pairs
    # of one account share it (key rotation); another account's pairs name another. Instances,
    # quotas and ClientTokens are the account's: a key of another account never sees them.
    account_id: str = Field(default=DEFAULT_ACCOUNT_ID, pattern=_UIN)
    uin: str | None = Field(
        default=None,
        pattern=_UIN,
        description="the CAM user (sub-account UIN) owning the key pair, for GetCallerIdentity "
        "and role trust (qcs::cam::uin/<account>:uin/<uin>); None: the account's root user",
    )
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
    action_timer_min_lead_seconds: float = Field(
        default=300, ge=0,
        description="how far ahead of the simulator's clock a RunInstances ActionTimer's "
        "ActionTime must be (CVM documents 5 minutes); nearer, past or malformed times are "
        "refused with InvalidParameterValue.InvalidTimeFormat and nothing is bought",
    )
    tag_unknown_resources: Literal["ignore", "fail"] = Field(
        default="ignore",
        description="what TagResources / UnTagResources do with a well-formed name of the "
        "caller's account that names no instance (never bought, or gone): 'ignore' answers "
        "success and changes nothing, as users of the real tag service report it does; 'fail' "
        "lists it in FailedResources with ResourceNotFound.RecordNotFound",
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


class WebIdentityTrust(_Strict):
    """One statement of a role's trust policy for AssumeRoleWithWebIdentity: tokens of this
    provider whose `sub` matches one of `subjects` (shell-style globs, e.g.
    `system:serviceaccount:spotpool:*`) and whose `aud` holds one of `audiences` (None: the
    provider's audiences) may assume the role. CAM writes this as a `federated` principal with
    `oidc:sub` / `oidc:aud` conditions; the simulator keeps only what it checks."""

    provider_id: str = Field(min_length=1)
    subjects: list[str] = Field(min_length=1)
    audiences: list[str] | None = Field(default=None, min_length=1)


class RoleTrust(_Strict):
    """Who may assume a role (its trust policy, the CAM "role carrier").

    `principals`, for AssumeRole: `qcs::cam::uin/<account>:root` (or the bare account id) for any
    key pair or role session of that account, `qcs::cam::uin/<account>:uin/<uin>` for one CAM
    user's key pairs, `qcs::cam::uin/<account>:roleName/<name>` for sessions of another role
    (role chaining). `external_id`: AssumeRole must then carry this ExternalId (the confused-
    deputy guard of cross-account roles). `web_identity`: who may AssumeRoleWithWebIdentity.
    """

    principals: list[str] = Field(default_factory=list)
    external_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_+=,.@:/-]{2,128}$")
    web_identity: list[WebIdentityTrust] = Field(default_factory=list)

    @field_validator("principals")
    @classmethod
    def _principal_shapes(cls, value: list[str]) -> list[str]:
        for principal in value:
            if not _TRUSTED_PRINCIPAL.fullmatch(principal):
                raise ValueError(
                    f"principal {principal!r} is not an account id, qcs::cam::uin/<account>:root, "
                    ":uin/<uin> or :roleName/<name>"
                )
        return value


_TRUSTED_PRINCIPAL = re.compile(
    r"[0-9]{1,20}|qcs::cam::uin/[0-9]{1,20}:(root|uin/[0-9]{1,20}|roleName/[A-Za-z0-9_+=,.@-]{1,128})"
)


class RoleSpec(_Strict):
    """A CAM role of an account, which STS hands temporary credentials for.

    Its ARN is `qcs::cam::uin/<account_id>:roleName/<name>` (or `...:role/<role_id>`, the other
    documented form). Credentials of a role session act in the role's account, with the role's
    `visible_tags` restriction (as a key pair's: a CAM policy with tag conditions).
    """

    name: str = Field(pattern=_CAM_NAME)
    account_id: str = Field(default=DEFAULT_ACCOUNT_ID, pattern=_UIN)
    role_id: str | None = Field(
        default=None, pattern=r"^[0-9]{1,20}$", description="None: derived from account and name"
    )
    max_session_duration_seconds: int = Field(
        default=43200, ge=1, le=43200, description="the role's longest session (CAM: 12 hours)"
    )
    visible_tags: dict[str, str] | None = Field(default=None, min_length=1)
    trust: RoleTrust = Field(default_factory=RoleTrust)

    @property
    def arn(self) -> str:
        return f"qcs::cam::uin/{self.account_id}:roleName/{self.name}"

    @property
    def resolved_role_id(self) -> str:
        """The numeric RoleId (GetCallerIdentity's UserId and assumed-role ARN carry it); real
        ones look like 4611686018427397919, so a derived one does too."""
        if self.role_id is not None:
            return self.role_id
        digest = hashlib.sha256(f"{self.account_id}:{self.name}".encode()).digest()
        return str(4611686018427387904 + int.from_bytes(digest[:4], "big"))

    @property
    def id_arn(self) -> str:
        return f"qcs::cam::uin/{self.account_id}:role/{self.resolved_role_id}"


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
DEFAULT_JWT_ALGORITHMS: tuple[JwtAlgorithm, ...] = ("RS256", "ES256")


class OidcProviderSpec(_Strict):
    """An OIDC identity provider registered in an account (CAM "身份提供商"), named by the
    `ProviderId` of AssumeRoleWithWebIdentity (TKE's `TKE_PROVIDER_ID`).

    A token is accepted when its signature verifies with a key of the JWKS (given inline as
    `jwks`, or fetched from `jwks_url`: a Kubernetes apiserver serves it at /openid/v1/jwks) under
    one of `algorithms`, its `iss` is `issuer` exactly, its `aud` holds one of `audiences`, it has
    a `sub`, and `exp`/`nbf`/`iat` hold at the simulator's clock within `leeway_seconds`.
    """

    provider_id: str = Field(pattern=r"^[A-Za-z0-9_+=,.@:/-]{1,128}$")
    account_id: str = Field(default=DEFAULT_ACCOUNT_ID, pattern=_UIN)
    issuer: str = Field(pattern=r"^https?://[^\s]+$")
    audiences: list[str] = Field(default_factory=lambda: ["sts.cloud.tencent.com"], min_length=1)
    jwks: dict[str, Any] | None = Field(default=None, description="a JWK Set: {keys: [...]}")
    jwks_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    jwks_ca_file: str | None = Field(default=None, description="CA bundle for an https jwks_url")
    jwks_bearer_token_file: str | None = Field(
        default=None,
        description="a file whose content is sent as a Bearer token with the JWKS request (an "
        "apiserver that does not serve /openid/v1/jwks to anonymous clients; read at each fetch)",
    )
    jwks_cache_seconds: float = Field(default=300, ge=0)
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=lambda: list(DEFAULT_JWT_ALGORITHMS), min_length=1
    )
    leeway_seconds: float = Field(default=10, ge=0, description="clock skew allowed on exp/nbf/iat")

    @model_validator(mode="after")
    def _one_key_source(self) -> OidcProviderSpec:
        if (self.jwks is None) == (self.jwks_url is None):
            raise ValueError(f"oidc provider {self.provider_id}: give exactly one of jwks, jwks_url")
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
            raise ValueError(f"oidc provider {self.provider_id}: jwks needs a keys list")
        return self


class StsSpec(_Strict):
    """Bounds of a temporary credential's lifetime (DurationSeconds of AssumeRole and
    AssumeRoleWithWebIdentity). Tencent documents the default (7200) and the maximum (43200); the
    minimum is not documented (900 is a guess, AWS's); tests lower it to see renewal in seconds."""

    default_duration_seconds: int = Field(default=7200, ge=1)
    min_duration_seconds: int = Field(default=900, ge=1)
    max_duration_seconds: int = Field(default=43200, ge=1)
    expired_sessions_kept_seconds: float = Field(
        default=3600,
        ge=0,
        description="how long an expired session is remembered, so its use is refused as an "
        "expired token (AuthFailure.TokenFailure) rather than an unknown key",
    )

    @model_validator(mode="after")
    def _ordered(self) -> StsSpec:
        if not self.min_duration_seconds <= self.default_duration_seconds <= self.max_duration_seconds:
            raise ValueError("sts: need min_duration_seconds <= default <= max_duration_seconds")
        return self


class MetadataSpec(_Strict):
    """The simulated CVM's metadata service: `GET /latest/meta-data/cam/security-credentials/`
    answers the bound role's name, `.../<role>` its temporary credentials (the shape the official
    SDK's CVMRoleCredential reads). The credentials are renewed when less than
    `rotate_before_seconds` (at most half the duration) is left, as the real service renews
    them ahead of expiry."""

    role: str | None = Field(
        default=None, description="the role bound to the CVM: a role name or ARN; None: no role"
    )
    duration_seconds: int = Field(default=7200, ge=1, description="lifetime of handed-out keys")
    rotate_before_seconds: float = Field(default=900, ge=0)
    allow_remote: bool = Field(
        default=False,
        description="answer non-loopback clients too (the real service answers the instance only)",
    )


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
    roles: list[RoleSpec] = Field(
        default_factory=list, description="CAM roles STS may hand temporary credentials for"
    )
    oidc_providers: list[OidcProviderSpec] = Field(
        default_factory=list,
        description="OIDC identity providers AssumeRoleWithWebIdentity accepts tokens of",
    )
    sts: StsSpec = Field(default_factory=lambda: StsSpec())
    metadata: MetadataSpec = Field(default_factory=lambda: MetadataSpec())

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
        self._check_identities()
        return self

    def _check_identities(self) -> None:
        """Names are unique where STS looks them up, and every reference resolves: a trust naming
        a provider of another account (CAM registers an IdP in one account) is refused."""
        secret_ids = [c.secret_id for c in self.credentials]
        if len(set(secret_ids)) != len(secret_ids):
            raise ValueError("credentials: a secret_id appears twice")
        providers = {p.provider_id: p for p in self.oidc_providers}
        if len(providers) != len(self.oidc_providers):
            raise ValueError("oidc_providers: a provider_id appears twice")
        seen: set[tuple[str, str]] = set()
        for role in self.roles:
            key = (role.account_id, role.name)
            if key in seen:
                raise ValueError(f"roles: {role.name!r} appears twice in account {role.account_id}")
            seen.add(key)
            for trust in role.trust.web_identity:
                provider = providers.get(trust.provider_id)
                if provider is None:
                    raise ValueError(
                        f"roles.{role.name}.trust.web_identity: unknown provider_id "
                        f"{trust.provider_id!r}"
                    )
                if provider.account_id != role.account_id:
                    raise ValueError(
                        f"roles.{role.name}: provider {trust.provider_id!r} is registered in "
                        f"account {provider.account_id}, the role in {role.account_id}"
                    )
        ids = [role.resolved_role_id for role in self.roles]
        if len(set(ids)) != len(ids):
            raise ValueError("roles: a role_id appears twice")
        if self.metadata.role is not None and self.metadata_role() is None:
            raise ValueError(f"metadata.role: no role {self.metadata.role!r} in roles")

    @property
    def default_account(self) -> str:
        """The account of the first key pair: where calls that name no account act (the control
        API, tests driving the market directly). With one account, that is every call."""
        return self.credentials[0].account_id

    def metadata_role(self) -> RoleSpec | None:
        """The role the simulated CVM's metadata service hands credentials of (`metadata.role`,
        a role name of the default account, or a role ARN)."""
        wanted = self.metadata.role
        if wanted is None:
            return None
        for role in self.roles:
            if wanted in (role.arn, role.id_arn) or (
                wanted == role.name and role.account_id == self.default_account
            ):
                return role
        return None

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
