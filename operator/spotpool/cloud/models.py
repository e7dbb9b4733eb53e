"""Plain data the CVM client returns and takes; no I/O here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

# Instance states as DescribeInstances reports them.
PENDING = "PENDING"
RUNNING = "RUNNING"
LAUNCH_FAILED = "LAUNCH_FAILED"
SHUTDOWN = "SHUTDOWN"
TERMINATING = "TERMINATING"
STOPPED = "STOPPED"
ALIVE_STATES = frozenset({PENDING, RUNNING})


@dataclass(frozen=True)
class Credentials:
    """A CAM API key pair, or temporary credentials (STS: `token` set, sent as `X-TC-Token`, and
    `expires_at`, Unix seconds, after which Tencent refuses them). The secret key and token are kept
    out of repr and str so they never reach a log."""

    secret_id: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # None: a long-lived key pair

    def __str__(self) -> str:
        return f"Credentials(secret_id={self.secret_id!r})"


@dataclass(frozen=True, slots=True)
class Instance:
    """One CVM instance as DescribeInstances reports it (the fields a pool needs).

    Held once per instance of every swept account (20,000 at 1,000 pools of 20): slotted, and its
    shared strings (zone, type, state, tag keys, the cluster and owner tags) interned by the parser
    (`wire.parse_instance`), so that what one instance costs is mostly its own id (docs/scaling.md).
    """

    instance_id: str
    zone: str
    instance_type: str
    state: str
    charge_type: str
    created_time: datetime | None
    tags: dict[str, str]
    name: str = ""
    cpu: int = 0
    memory_gib: int = 0

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES


@dataclass(frozen=True)
class SpotOffer:
    """The spot market for one zone x instance type (DescribeZoneInstanceConfigInfos, SPOTPAID)."""

    zone: str
    instance_type: str
    spot_price: Decimal | None  # USD per instance-hour; None when the API gave no price
    list_price: Decimal | None
    sold_out: bool
    cpu: int = 0
    memory_gib: int = 0
    status_category: str | None = None  # one of STOCK_CATEGORIES, None when unknown


@dataclass(frozen=True)
class CallerIdentity:
    """STS GetCallerIdentity: which account (root UIN) a key pair acts in, and as whom."""

    account_id: str
    arn: str = ""
    user_id: str = ""
    principal_id: str = ""
    type: str = ""




# Charge types the client buys (InstanceChargeType).
SPOTPAID = "SPOTPAID"
POSTPAID_BY_HOUR = "POSTPAID_BY_HOUR"  # pay-as-you-go, "on-demand"
CHARGE_TYPES = (SPOTPAID, POSTPAID_BY_HOUR)

# DescribeZoneInstanceConfigInfos StatusCategory, from worst to best stock.
WITHOUT_STOCK = "WithoutStock"
UNDER_STOCK = "UnderStock"
NORMAL_STOCK = "NormalStock"
ENOUGH_STOCK = "EnoughStock"
STOCK_CATEGORIES = (WITHOUT_STOCK, UNDER_STOCK, NORMAL_STOCK, ENOUGH_STOCK)


@dataclass(frozen=True)
class Offer:
    """One zone x instance type x charge type as DescribeZoneInstanceConfigInfos reports it.

    `price` is what an instance-hour costs under `charge_type` (the spot price for SPOTPAID, the
    list price for POSTPAID_BY_HOUR); `list_price` is the pay-as-you-go list price either way, so
    the SPOTPAID offer alone already gives the on-demand price of its pool. `status_category` is
    CVM's stock signal (one of STOCK_CATEGORIES), None when the API gave none it documents.
    """

    zone: str
    instance_type: str
    charge_type: str
    price: Decimal | None  # USD per instance-hour; None when the API gave no usable price
    list_price: Decimal | None
    sold_out: bool
    status_category: str | None
    cpu: int = 0
    memory_gib: int = 0

    def as_spot(self) -> SpotOffer:
        """This offer as the planner's spot market entry (meant for a SPOTPAID offer)."""
        return SpotOffer(self.zone, self.instance_type, self.price, self.list_price, self.sold_out,
                         self.cpu, self.memory_gib, self.status_category)

    @property
    def stock_rank(self) -> int | None:
        """0 (WithoutStock) to 3 (EnoughStock), for ordering pools by stock; None if unknown."""
        if self.status_category is None:
            return None
        return STOCK_CATEGORIES.index(self.status_category)


@dataclass(frozen=True)
class ZoneQuota:
    """One zone's row of a DescribeAccountQuota set, in vCPU cores (UsedQuota, RemainingQuota,
    TotalQuota). `remaining` is what a purchase may still take; it is what the API says, which
    can be less than total - used."""

    zone: str
    total: int
    used: int
    remaining: int


@dataclass(frozen=True)
class AccountQuota:
    """The account's spot (SpotPaidQuotaSet) and pay-as-you-go (PostPaidQuotaSet) vCPU quotas of
    one region, by zone. A zone absent from a mapping is one the API reported nothing for."""

    region: str
    spot: dict[str, ZoneQuota]
    on_demand: dict[str, ZoneQuota]
    app_id: int | None = None

    def remaining(self, zone: str, charge_type: str) -> int | None:
        """vCPUs a purchase of that charge type may still take in `zone`; None when unknown."""
        rows = self.spot if charge_type == SPOTPAID else self.on_demand
        row = rows.get(zone)
        return None if row is None else row.remaining

    def minus(self, spent: Mapping[tuple[str, str], int]) -> AccountQuota:
        """This quota once `spent` vCPUs, by (zone, charge type), are used (never below zero)."""

        def rows(charge_type: str, current: dict[str, ZoneQuota]) -> dict[str, ZoneQuota]:
            out = dict(current)
            for (zone, charge), vcpus in spent.items():
                row = out.get(zone)
                if charge == charge_type and row is not None:
                    out[zone] = ZoneQuota(zone, row.total, row.used + vcpus, max(0, row.remaining - vcpus))
            return out

        return AccountQuota(self.region, rows(SPOTPAID, self.spot), rows(POSTPAID_BY_HOUR, self.on_demand),
                            self.app_id)


@dataclass(frozen=True)
class PriceQuote:
    """InquiryPriceRunInstances' InstancePrice: per `charge_unit` (HOUR) for the whole count.

    `price` is what would be paid (UnitPriceDiscount, or UnitPrice when that is absent or not
    positive), `list_price` the undiscounted UnitPrice, `discount_percent` the share of the list
    price paid (Tencent's Discount: 20 means 80 % off)."""

    charge_type: str
    price: Decimal | None
    list_price: Decimal | None
    discount_percent: Decimal | None
    charge_unit: str


@dataclass(frozen=True)
class RunInstancesRequest:
    """One RunInstances request, as a value: built once (from the spec and a launch record in the
    operator), so a replay repeats the original request exactly (CVM refuses a ClientToken reused
    with other parameters), and turned into API parameters in one place (`wire.run_instances_params`).

    Spot (`SPOTPAID`, one-time) needs `max_price`, the bid; pay-as-you-go (`POSTPAID_BY_HOUR`)
    takes none. `dry_run` only validates: nothing is bought.
    """

    zone: str
    instance_type: str
    image_id: str
    count: int
    client_token: str
    tags: Mapping[str, str] = field(default_factory=dict)
    max_price: Decimal | str | None = None
    charge_type: str = SPOTPAID
    instance_name: str | None = None
    vpc_id: str | None = None
    subnet_id: str | None = None
    security_group_ids: Sequence[str] = ()
    system_disk_type: str | None = None
    system_disk_size_gib: int | None = None
    key_ids: Sequence[str] = ()
    user_data: str | None = None
    dry_run: bool = False
    terminate_at: datetime | None = None
    """When CVM itself terminates the instances (`ActionTimer`, TerminateInstances): a lifetime
    that holds even when spotpool is gone. Timezone-aware; sent in UTC to the second. CVM refuses
    a time less than 5 minutes ahead of its own clock (`wire.ACTION_TIMER_MIN_LEAD_SECONDS`), and
    since the time is part of the request, a replay of the same ClientToken must repeat it."""
