"""The `SpotComputeEnvironment` spec as a typed, immutable Python value.

The API server validates objects first (OpenAPI schema plus CEL rules in
crds/spotpool.io_spotcomputeenvironments.yaml), so this model exists for typing and defaults. It
still re-checks the same rules, because an object can reach the operator without that validation
(an older CRD still installed, a CRD edited by hand, a test): a bad value must stop the reconcile
with a message that names the field, never reach RunInstances. The rules mirror the CRD's exactly:
stricter here would refuse objects the API server accepted, looser would let through what it
refuses.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any

from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

MAX_EXPECTED_COUNT = 10000
MAX_CANDIDATES = 20  # zones, and instance types: the CRD's maxItems
# spotpool's own tags live under this prefix; a user tag there could forge or break ownership.
RESERVED_TAG_PREFIX = "spotpool.io/"
# What CEL's trim() strips in the CRD's rule (Go's unicode.IsSpace: Unicode White_Space). Python's
# str.strip() would strip U+001C..U+001F too, and refuse keys the API server accepted.
_TAG_KEY_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
MAX_TAGS = 20
# CVM takes UserData base64-encoded and refuses more than 16 KiB of it: 12288 bytes before encoding.
MAX_USER_DATA_BYTES = 12288
# CVM accepts at most 5 security groups per instance.
MAX_SECURITY_GROUPS = 5
MAX_KEY_IDS = 10
# CVM's safe InstanceName limit is 60 bytes; the executor appends a sequence suffix.
MAX_INSTANCE_NAME_PREFIX = 40


class AllocationStrategy(StrEnum):
    """Where new instances are bought among the buyable candidate pools."""

    LOWEST_PRICE = "LowestPrice"
    DIVERSIFIED = "Diversified"
    PRIORITIZED = "Prioritized"
    CAPACITY_OPTIMIZED = "CapacityOptimized"  # price weighed with stock and the reclaims observed


class FallbackReason(StrEnum):
    """Why spot cannot fill a deficit; `spec.onDemand.fallback.reasons` picks which ones fall back."""

    SOLD_OUT = "SoldOut"  # every pool sold out or without stock (market, or a capacity refusal)
    QUOTA_EXCEEDED = "QuotaExceeded"  # no spot vCPU quota left (DescribeAccountQuota, or a refusal)
    PRICE_ABOVE_MAX = "PriceAboveMax"  # the market is above spec.maxPrice


class ScaleInPolicy(StrEnum):
    """Which alive instances go first when the pool is too big (not-yet-running always first)."""

    NEWEST_FIRST = "NewestFirst"
    OLDEST_FIRST = "OldestFirst"
    MOST_EXPENSIVE_FIRST = "MostExpensiveFirst"


class DiskType(StrEnum):
    """CVM system disk types (RunInstances `SystemDisk.DiskType`)."""

    LOCAL_BASIC = "LOCAL_BASIC"
    LOCAL_SSD = "LOCAL_SSD"
    CLOUD_BASIC = "CLOUD_BASIC"
    CLOUD_SSD = "CLOUD_SSD"
    CLOUD_PREMIUM = "CLOUD_PREMIUM"
    CLOUD_BSSD = "CLOUD_BSSD"
    CLOUD_HSSD = "CLOUD_HSSD"
    CLOUD_TSSD = "CLOUD_TSSD"


def _resource_id(prefix: str) -> Any:
    """A Tencent resource id: a fixed prefix and 8 lower-case alphanumerics (`img-pmqg1cw7`)."""
    return Annotated[str, StringConstraints(strict=True, pattern=rf"^{prefix}-[a-z0-9]{{8}}$")]


def _parse_max_price(value: object) -> Decimal:
    """`maxPrice` is a decimal string (the CRD says string; CVM's SpotOptions.MaxPrice is one too).

    Accepting floats would silently turn "0.1" into 0.1000000000000000055...; accepting Decimal
    keeps programmatic construction easy. NaN, infinities, exponents and signs are refused, and as
    in the CRD at most 6 digits stand on either side of the point.
    """
    if isinstance(value, Decimal):
        text = format(value, "f") if value.is_finite() else str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError('must be a decimal string such as "0.0923"')
    if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6})?", text):
        raise ValueError(f'must be a decimal string with at most 6 decimals such as "0.0923", got {text!r}')
    try:
        price = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern above admits only decimals
        raise ValueError(f"is not a decimal: {text!r}") from exc
    if price <= 0:
        raise ValueError("must be greater than 0")
    return price


def _check_user_data(value: str) -> str:
    size = len(value.encode("utf-8"))
    if size > MAX_USER_DATA_BYTES:
        raise ValueError(
            f"is {size} bytes; at most {MAX_USER_DATA_BYTES} fit CVM's 16 KiB once base64-encoded"
        )
    return value


def reserved_tag_key(key: str) -> bool:
    """Whether a tag key is under spotpool's prefix in any letter case, Unicode compatibility form
    and whatever whitespace surrounds it (`SPOTPOOL.IO/x`, ` spotpool.io/x`, a fullwidth
    `ｓpotpool.io/x`): whether the tag service folds case, normalizes or trims a key is not
    documented, and to a reader such a key is an ownership tag all the same. The CRD's rule is
    `k.trim().matches(<reserved_prefix_regex()>)`; the two agree (tests/unit/test_spec.py)."""
    return _fold(key.strip(_TAG_KEY_SPACE)).startswith(RESERVED_TAG_PREFIX)


def _fold(text: str) -> str:
    """NFKC, case-folded, and NFKC again (case folding can un-normalize): the Unicode standard's
    identifier caseless match, so compatibility forms and every letter case compare equal."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def reserved_prefix_regex() -> str:
    """The RE2 pattern the CRD's CEL rule matches a trimmed tag key against: one character class
    per character of the prefix, holding every code point that `_fold` maps to that character (no
    code point folds to more than one character of it, checked by the test that compares this with
    the CRD). Computed over all of Unicode (about a second): for the generator and tests only."""
    classes: dict[str, list[int]] = {char: [] for char in RESERVED_TAG_PREFIX}
    for point in range(0x110000):
        if 0xD800 <= point <= 0xDFFF:
            continue
        folded = _fold(chr(point))
        if folded in classes:
            classes[folded].append(point)

    def one(point: int) -> str:
        char = chr(point)
        return char if char.isascii() and char.isalnum() else f"\\x{{{point:X}}}"

    return "^" + "".join("[" + "".join(one(p) for p in classes[char]) + "]" for char in RESERVED_TAG_PREFIX)


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    for key in tags:
        if not 1 <= len(key) <= 127:
            raise ValueError(f"tag key {key!r} must be 1 to 127 characters")
        if reserved_tag_key(key):
            raise ValueError(f"tag key {key!r} uses the reserved prefix {RESERVED_TAG_PREFIX!r} (in any letter "
                             f"case or Unicode compatibility form, with or without surrounding spaces): spotpool's "
                             f"ownership tags live there")
    return tags


def _check_endpoint(value: str) -> str:
    """The client signs requests to `/`, so an endpoint is a host (and port), never a path."""
    if not re.fullmatch(r"https?://[^/?#@\s]+/?", value):
        raise ValueError(
            "must be an http(s) URL of a host with no path, user info, query or fragment "
            f"(https://cvm.tencentcloudapi.com), got {value[:100]!r}"
        )
    return value


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"must not repeat entries: {', '.join(duplicates)}")
    return values


_DURATION = re.compile(r"^(?:([0-9]{1,4})h)?(?:([0-9]{1,4})m)?(?:([0-9]{1,5})s)?$")
MAX_FALLBACK_WAIT_SECONDS = 24 * 3600


def _seconds(value: object, *, most: int, example: str) -> int:
    """A Go-style duration of hours, minutes and seconds (`90s`, `5m`, `1h30m`) as seconds, at most
    `most`. The CRD checks the same pattern; seconds are enough precision for waits measured in passes."""
    if isinstance(value, bool) or not isinstance(value, str) or not value:
        raise ValueError(f"must be a duration such as {example}")
    match = _DURATION.fullmatch(value)
    if match is None or not any(match.groups()):
        raise ValueError(f"must be a duration such as {example}, got {value[:40]!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total > most:
        raise ValueError(f"must be at most {most // 3600}h, got {value!r}")
    return total


def _parse_duration(value: object) -> int:
    """A wait of at most a day (`spec.onDemand.fallback.after`)."""
    return _seconds(value, most=MAX_FALLBACK_WAIT_SECONDS, example='"5m", "90s" or "1h30m"')


MIN_EXPIRE_AFTER_SECONDS = 3600
MAX_LONG_DURATION_SECONDS = 8760 * 3600


def _parse_long_duration(value: object) -> int:
    """A duration up to a year (8760h): lifetimes, holds, schedules' windows."""
    return _seconds(value, most=MAX_LONG_DURATION_SECONDS, example='"720h", "30m" or "1h30m"')


def _parse_expire_after(value: object) -> int:
    total = _parse_long_duration(value)
    if total < MIN_EXPIRE_AFTER_SECONDS:
        raise ValueError(f"must be at least 1h, got {value!r}")
    return total


def _parse_count_or_percent(value: object) -> int | str:
    """A disruption budget: an instance count (>= 0) or a percentage of expectedCount ("0%" to "100%")."""
    if isinstance(value, bool):
        raise ValueError('must be a count such as 2 or a percentage such as "10%"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must be at least 0")
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,3}%", value) and int(value[:-1]) <= 100:
        return value
    raise ValueError(f'must be a count such as 2 or a percentage from "0%" to "100%", got {str(value)[:40]!r}')


def _check_schedule(value: str) -> str:
    """Five cron fields (or a @daily-style nickname), evaluated in UTC by croniter."""
    if not croniter.is_valid(value) or len(value.split()) not in (1, 5):
        raise ValueError(f'must be a cron schedule of five fields such as "0 9 * * 1-5", got {value[:60]!r}')
    return value


def _parse_int_or_percent(value: object) -> int | str:
    """An instance count (>= 1) or a percentage of expectedCount ("25%", 1 to 100)."""
    if isinstance(value, bool):
        raise ValueError('must be a count such as 2 or a percentage such as "25%"')
    if isinstance(value, int):
        if value < 1:
            raise ValueError("must be at least 1")
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,3}%", value) and 1 <= int(value[:-1]) <= 100:
        return value
    raise ValueError(f'must be a count such as 2 or a percentage from "1%" to "100%", got {str(value)[:40]!r}')


_StrictStr = Annotated[str, StringConstraints(strict=True)]
_DnsSubdomain = Annotated[
    str,
    StringConstraints(
        strict=True,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]
_Region = Annotated[
    str, StringConstraints(strict=True, max_length=32, pattern=r"^[a-z]{2,3}-[a-z]+(-[a-z]+)?$")
]
_Zone = Annotated[
    str, StringConstraints(strict=True, max_length=40, pattern=r"^[a-z]{2,3}-[a-z]+(-[a-z]+)?-[0-9]+$")
]
_InstanceType = Annotated[
    str, StringConstraints(strict=True, max_length=32, pattern=r"^[A-Z][A-Z0-9]*\.[A-Z0-9]+$")
]
_MaxPrice = Annotated[Decimal, BeforeValidator(_parse_max_price)]


class _SpecModel(BaseModel):
    """camelCase on the wire (as the CRD spells it), snake_case in Python; immutable; no extras."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class SecretRef(_SpecModel):
    """A Secret in the environment's namespace holding `secretId`, `secretKey`, optional `token`."""

    name: _DnsSubdomain


class CredentialSource(StrEnum):
    """Where a pool's CVM credentials come from (`spec.credentials.source`)."""

    SECRET = "Secret"  # a key pair in a Secret of the pool's namespace (spec.credentialsSecretRef)
    OPERATOR_IDENTITY = "OperatorIdentity"  # the operator's own: TKE pod identity, or its CVM role
    ROLE = "Role"  # a CAM role assumed from the operator's identity (spec.credentials.roleArn)


ROLE_ARN_PATTERN = r"^qcs::cam::uin/[0-9]{1,20}:(roleName/[A-Za-z0-9+=,.@_-]{1,128}|role/[0-9]{1,20})$"
"""A CAM role ARN as AssumeRole takes it: by name, or by role id."""


class CredentialsSpec(_SpecModel):
    """`spec.credentials`: which source signs this pool's calls. Absent: `Secret`."""

    source: CredentialSource
    role_arn: Annotated[str, StringConstraints(strict=True, pattern=ROLE_ARN_PATTERN)] | None = None
    external_id: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9+=,.@:/_-]{2,128}$")] | None = None

    @model_validator(mode="after")
    def _role_fields_only_for_a_role(self) -> CredentialsSpec:
        if self.source is CredentialSource.ROLE and self.role_arn is None:
            raise ValueError("source Role needs roleArn (the CAM role to assume)")
        if self.source is not CredentialSource.ROLE and (self.role_arn is not None or self.external_id is not None):
            raise ValueError(f"roleArn and externalId are for source Role, not {self.source.value}")
        return self


class Network(_SpecModel):
    """VPC placement. Without `vpcId`, CVM uses the default VPC and subnet of each zone."""

    vpc_id: _resource_id("vpc") | None = None  # type: ignore[valid-type]
    subnet_ids: Annotated[
        dict[_StrictStr, _resource_id("subnet")],  # type: ignore[valid-type]
        Field(max_length=MAX_CANDIDATES),
    ] = Field(default_factory=dict)
    security_group_ids: Annotated[
        tuple[_resource_id("sg"), ...],  # type: ignore[valid-type]
        Field(max_length=MAX_SECURITY_GROUPS),
        AfterValidator(_unique),
    ] = ()

    @model_validator(mode="after")
    def _subnets_need_a_vpc(self) -> Network:
        if self.subnet_ids and self.vpc_id is None:
            raise ValueError("subnetIds needs vpcId: a subnet only exists inside a VPC")
        return self


class SystemDisk(_SpecModel):
    """The system disk of every instance (defaults as in the CRD)."""

    type: DiskType = DiskType.CLOUD_PREMIUM
    size_gib: Annotated[int, Field(strict=True, ge=20, le=1024)] = Field(default=50, alias="sizeGiB")


class LoginSettings(_SpecModel):
    """SSH key pairs to install (CVM `LoginSettings.KeyIds`); none means CVM's generated password."""

    key_ids: Annotated[
        tuple[_resource_id("skey"), ...],  # type: ignore[valid-type]
        Field(max_length=MAX_KEY_IDS),
        AfterValidator(_unique),
    ] = ()


class Fallback(_SpecModel):
    """Buy on-demand for the spot shortfall once spot has been short for `after`."""

    after_seconds: Annotated[int, BeforeValidator(_parse_duration)] = Field(alias="after")
    reasons: Annotated[
        tuple[FallbackReason, ...], Field(min_length=1, max_length=3), AfterValidator(_unique)
    ] = tuple(FallbackReason)
    max_count: Annotated[int, Field(strict=True, ge=0, le=MAX_EXPECTED_COUNT)] | None = None


class ReturnToSpot(_SpecModel):
    """Replace fallback on-demand instances by spot ones when spot can be had again."""

    enabled: Annotated[bool, Field(strict=True)] = True
    max_in_flight: Annotated[int | str, BeforeValidator(_parse_int_or_percent)] = "25%"

    def budget(self, expected_count: int) -> int:
        """Replacements at a time: the count, or the percentage of expectedCount rounded up (>= 1)."""
        if isinstance(self.max_in_flight, int):
            return self.max_in_flight
        percent = int(self.max_in_flight[:-1])
        return max(1, -(-expected_count * percent // 100))


class DriftReason(StrEnum):
    """A way an instance can differ from what the spec now buys (`spec.disruption.drift`)."""

    IMAGE = "Image"  # spec.imageId
    USER_DATA = "UserData"  # spec.userData
    NETWORK = "Network"  # spec.network: the VPC, the subnet of the instance's zone, security groups
    SYSTEM_DISK = "SystemDisk"  # spec.systemDisk
    LOGIN = "LoginSettings"  # spec.loginSettings
    NAME = "InstanceNamePrefix"  # spec.instanceNamePrefix
    ZONE = "Zone"  # its zone is no longer in spec.zones
    INSTANCE_TYPE = "InstanceType"  # its type is no longer in spec.instanceTypes
    CHARGE_TYPE = "ChargeType"  # on-demand in a pool whose spec buys no on-demand any more


class DriftAction(StrEnum):
    REPLACE = "Replace"
    IGNORE = "Ignore"


DRIFT_DEFAULTS: dict[DriftReason, DriftAction] = {reason: DriftAction.REPLACE for reason in DriftReason} | {
    DriftReason.NAME: DriftAction.IGNORE,
}
"""What each drift does when `spec.disruption.drift` does not say: every change that alters what
runs replaces; a new name prefix (cosmetic) does not."""


class DisruptionReason(StrEnum):
    """Why an instance is voluntarily replaced (budgets' `reasons`, Events, metrics)."""

    DRIFTED = "Drifted"
    EXPIRED = "Expired"
    RETURN_TO_SPOT = "ReturnToSpot"


class Budget(_SpecModel):
    """At most `instances` voluntary replacements at a time (a count, or a percentage of
    expectedCount rounded up), for `reasons` (all when absent), while `schedule` (cron, UTC) last
    fired less than `duration` ago (always when absent)."""

    instances: Annotated[int | str, BeforeValidator(_parse_count_or_percent)]
    reasons: Annotated[
        tuple[DisruptionReason, ...], Field(min_length=1, max_length=3), AfterValidator(_unique)
    ] | None = None
    schedule: Annotated[_StrictStr, StringConstraints(max_length=100), AfterValidator(_check_schedule)] | None = None
    duration_seconds: Annotated[int, BeforeValidator(_parse_long_duration)] | None = Field(
        default=None, alias="duration")

    @model_validator(mode="after")
    def _schedule_needs_a_duration(self) -> Budget:
        if (self.schedule is None) != (self.duration_seconds is None):
            raise ValueError("schedule and duration go together: a window opens when the schedule fires and "
                             "lasts for the duration")
        return self

    def allowed(self, expected_count: int) -> int:
        if isinstance(self.instances, int):
            return self.instances
        percent = int(self.instances[:-1])
        return -(-expected_count * percent // 100)

    def applies_to(self, reason: DisruptionReason) -> bool:
        return self.reasons is None or reason in self.reasons


DEFAULT_BUDGETS = (Budget(instances="10%", reasons=(DisruptionReason.DRIFTED, DisruptionReason.EXPIRED)),)
"""Without `spec.disruption.budgets`: a tenth of the pool replaced for drift or expiry at a time;
the return to spot keeps its own `maxInFlight`."""

MAX_BUDGETS = 10


class Disruption(_SpecModel):
    """`spec.disruption`: voluntary replacement of running instances (docs/day2.md)."""

    drift: dict[DriftReason, DriftAction] = Field(default_factory=dict)
    expire_after_seconds: Annotated[int, BeforeValidator(_parse_expire_after)] | None = Field(
        default=None, alias="expireAfter")
    budgets: Annotated[tuple[Budget, ...], Field(max_length=MAX_BUDGETS)] = DEFAULT_BUDGETS
    do_not_disrupt_max_hold_seconds: Annotated[int, BeforeValidator(_parse_long_duration)] | None = Field(
        default=None, alias="doNotDisruptMaxHold")
    drain_grace_seconds: Annotated[int, BeforeValidator(_parse_long_duration)] | None = Field(
        default=None, alias="drainGrace")

    def replaces(self, reason: DriftReason) -> bool:
        return self.drift.get(reason, DRIFT_DEFAULTS[reason]) is DriftAction.REPLACE


class OnDemand(_SpecModel):
    """Pay-as-you-go (POSTPAID_BY_HOUR) instances: a base always bought so, and a fallback."""

    base_count: Annotated[int, Field(strict=True, ge=0, le=MAX_EXPECTED_COUNT)] = 0
    fallback: Fallback | None = None
    return_to_spot: ReturnToSpot = Field(default_factory=ReturnToSpot)


class EnvironmentSpec(_SpecModel):
    """`spec` of a SpotComputeEnvironment (see docs/contract.md)."""

    expected_count: Annotated[int, Field(strict=True, ge=0, le=MAX_EXPECTED_COUNT)]
    max_price: _MaxPrice
    region: _Region
    zones: Annotated[
        tuple[_Zone, ...], Field(min_length=1, max_length=MAX_CANDIDATES), AfterValidator(_unique)
    ]
    instance_types: Annotated[
        tuple[_InstanceType, ...], Field(min_length=1, max_length=MAX_CANDIDATES), AfterValidator(_unique)
    ]
    allocation_strategy: AllocationStrategy = AllocationStrategy.LOWEST_PRICE
    image_id: _resource_id("img")  # type: ignore[valid-type]
    credentials: CredentialsSpec | None = None
    credentials_secret_ref: SecretRef | None = Field(default=None, validate_default=True)
    endpoint: Annotated[_StrictStr, AfterValidator(_check_endpoint)] | None = None
    instance_name_prefix: (
        Annotated[
            str,
            StringConstraints(
                strict=True, max_length=MAX_INSTANCE_NAME_PREFIX, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
            ),
        ]
        | None
    ) = None
    network: Network | None = None
    system_disk: SystemDisk | None = None
    login_settings: LoginSettings | None = None
    user_data: Annotated[_StrictStr, AfterValidator(_check_user_data)] | None = None
    tags: Annotated[
        dict[_StrictStr, Annotated[str, StringConstraints(strict=True, max_length=255)]],
        Field(max_length=MAX_TAGS),
        AfterValidator(_check_tags),
    ] = Field(default_factory=dict)
    scale_in_policy: ScaleInPolicy = ScaleInPolicy.NEWEST_FIRST
    paused: Annotated[bool, Field(strict=True)] = False
    on_demand: OnDemand | None = None
    max_hourly_cost: _MaxPrice | None = None
    disruption: Disruption = Field(default_factory=Disruption)

    @property
    def base_count(self) -> int:
        """On-demand instances always kept (at most expectedCount)."""
        base = self.on_demand.base_count if self.on_demand is not None else 0
        return min(base, self.expected_count)

    @property
    def credential_source(self) -> CredentialSource:
        return self.credentials.source if self.credentials is not None else CredentialSource.SECRET

    @property
    def secret_name(self) -> str | None:
        """The credentials Secret's name, for the Secret source only."""
        return self.credentials_secret_ref.name if self.credentials_secret_ref is not None else None

    @field_validator("credentials_secret_ref")
    @classmethod
    def _one_source(cls, secret: SecretRef | None, info: ValidationInfo) -> SecretRef | None:
        """A Secret names the key pair only for the Secret source (the default); the other sources
        need none, and one named beside them would read as if it were used."""
        if "credentials" not in info.data:  # spec.credentials itself is invalid and already reported
            return secret
        credentials = info.data["credentials"]
        source = credentials.source if credentials is not None else CredentialSource.SECRET
        if source is CredentialSource.SECRET and secret is None:
            raise ValueError("is required unless spec.credentials.source is OperatorIdentity or Role")
        if source is not CredentialSource.SECRET and secret is not None:
            raise ValueError(f"must not be set with spec.credentials.source {source.value}")
        return secret

    @field_validator("zones")
    @classmethod
    def _zones_belong_to_region(cls, zones: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """A zone is `<region>-<n>`; a zone of another region fails every RunInstances call."""
        region = info.data.get("region")
        if region is None:  # the region itself is invalid and already reported
            return zones
        strays = [zone for zone in zones if not zone.startswith(f"{region}-")]
        if strays:
            raise ValueError(f"{', '.join(strays)} not zones of region {region} (expected {region}-<n>)")
        return zones

    @field_validator("network")
    @classmethod
    def _every_zone_has_a_subnet(cls, network: Network | None, info: ValidationInfo) -> Network | None:
        """Subnets are keyed by candidate zones, and with a VPC every zone needs one: RunInstances
        in a zone without a subnet of the VPC fails every time."""
        zones = info.data.get("zones")
        if network is None or zones is None:  # zones invalid: already reported
            return network
        strays = [zone for zone in network.subnet_ids if zone not in zones]
        if strays:
            raise ValueError(f"subnetIds names zones not in spec.zones: {', '.join(strays)}")
        missing = [zone for zone in zones if zone not in network.subnet_ids]
        if network.vpc_id is not None and missing:
            raise ValueError(f"subnetIds has no subnet for zones {', '.join(missing)}")
        return network

    @classmethod
    def from_k8s(cls, spec: Mapping[str, Any]) -> EnvironmentSpec:
        """Build from the object's `spec` (camelCase, as kopf hands it over).

        Raises `SpecError` (a `ValueError`) whose message names every offending field as
        `spec.<path>`, ready for a Degraded/InvalidConfig condition.
        """
        try:
            return cls.model_validate(_plain(spec))
        except ValidationError as exc:
            raise SpecError(_describe(exc)) from None


class SpecError(ValueError):
    """The spec is invalid; the message names each field (`spec.maxPrice: must be ...`)."""


def _plain(value: Any) -> Any:
    """kopf hands over mapping views, not dicts; pydantic validates plain containers."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _spec_fields() -> frozenset[str]:
    """EnvironmentSpec's fields by their Python names."""
    return frozenset(EnvironmentSpec.model_fields)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        # A default's validator reports the field's Python name: spell it as the CRD does.
        loc = list(error["loc"])
        if loc and isinstance(loc[0], str) and loc[0] in _spec_fields():
            loc[0] = to_camel(loc[0])
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"spec{path}: {message}")
    return "; ".join(problems)
