"""The records the market keeps: one per pool (zone x instance type) and one per instance."""

from __future__ import annotations

from dataclasses import dataclass, field

from spotpool.cloud.models import PENDING, RUNNING

SPOTPAID = "SPOTPAID"
POSTPAID_BY_HOUR = "POSTPAID_BY_HOUR"


@dataclass(slots=True)
class Pool:
    """One zone x instance type: its prices, the instances still for sale, and its reclaim rate.

    Spot and on-demand (pay-as-you-go) capacity are counted apart: `stock`/`sold_out` are the
    spot market, `on_demand_stock`/`on_demand_sold_out` the pay-as-you-go one. CVM reports them
    apart too (one DescribeZoneInstanceConfigInfos item per charge type), and a test that sells
    out spot to force a fallback must still find on-demand for sale.
    """

    region: str
    zone: str
    instance_type: str
    cpu: int
    memory_gib: int
    on_demand_price: float
    discount_percent: float
    stock: int
    sold_out: bool
    offered: bool
    reclaim_rate_per_hour: float
    on_demand_stock: int = 0
    on_demand_sold_out: bool = False

    @property
    def spot_price(self) -> float:
        """The documented fixed-discount model: round(list x discount / 100, 5)."""
        return round(self.on_demand_price * self.discount_percent / 100, 5)

    @property
    def for_sale(self) -> bool:
        return self.offered and not self.sold_out and self.stock > 0

    def stock_of(self, charge_type: str) -> int:
        """Instances still for sale under a charge type (SPOTPAID or POSTPAID_BY_HOUR)."""
        return self.stock if charge_type == SPOTPAID else self.on_demand_stock

    def sold_out_for(self, charge_type: str) -> bool:
        """Whether nothing can be bought under a charge type (not offered, sold out, no stock)."""
        flag = self.sold_out if charge_type == SPOTPAID else self.on_demand_sold_out
        return not self.offered or flag or self.stock_of(charge_type) <= 0

    def price_of(self, charge_type: str) -> float:
        """USD per instance-hour: the spot price, or the list price for pay-as-you-go."""
        return self.spot_price if charge_type == SPOTPAID else self.on_demand_price


@dataclass(slots=True, eq=False)
class SimInstance:
    """One simulated instance. Identity and placement never change; the state does, and the tags
    do through the tag service (`tags` is then replaced, never changed in place).

    `rendered` caches the instance's DescribeInstances JSON: describes of thousands of instances
    are the hot path, and an instance's JSON only changes when its state or its tags do
    (`set_state`, `Market._retag`).
    """

    instance_id: str
    uuid: str
    seq: int
    region: str
    zone: str
    instance_type: str
    cpu: int
    memory_gib: int
    image_id: str
    name: str
    tags: dict[str, str]
    created_at: float
    spot_price: float  # the price it was bought at: spot price, or list price for on-demand
    max_price: str | None
    private_ip: str
    project_id: int
    vpc_id: str
    subnet_id: str
    security_group_ids: tuple[str, ...]
    key_ids: tuple[str, ...]
    system_disk_type: str
    system_disk_size: int
    launch_request_id: str
    will_fail: bool
    state: str = PENDING
    holds_capacity: bool = True
    latest_operation: str = "RunInstances"
    latest_operation_state: str = "OPERATING"
    latest_operation_request_id: str = ""
    terminated_by: str | None = None
    terminated_at: float | None = None
    # When it became RUNNING: the boot's scheduled time, or the end of a failed termination
    # that ran over it.
    running_at: float | None = None
    reclaim_epoch: int = 0
    charge_type: str = SPOTPAID
    # Set while a termination that will fail runs: the state the instance returns to.
    returns_to: str | None = None
    # (when, TerminateInstances RequestId) of each termination that failed, oldest first.
    failed_terminations: list[tuple[float, str]] = field(default_factory=list)
    # The account (UIN) that bought it: only that account's credentials see or terminate it.
    account_id: str = ""
    # When its RunInstances ActionTimer terminates it (epoch seconds); None: no timer.
    terminate_at: float | None = None
    # The tags the region's tag index holds for it, while a TagResources / UnTagResources change
    # is not indexed yet (`api.tag_index_delay_seconds`); None: the index holds `tags`.
    index_tags: dict[str, str] | None = None
    # Tag changes still to reach the index: (when, the tags from then on), oldest first.
    tag_updates: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    rendered: str | None = field(default=None, repr=False)

    @property
    def indexed_tags(self) -> dict[str, str]:
        """The tags tag filters see: `tags`, or the older ones while a change is not indexed."""
        return self.tags if self.index_tags is None else self.index_tags

    @property
    def alive(self) -> bool:
        return self.state in (PENDING, RUNNING)

    @property
    def spot(self) -> bool:
        """Spot instances are reclaimed at random; pay-as-you-go ones never are."""
        return self.charge_type == SPOTPAID

    def set_state(self, state: str, operation_state: str) -> None:
        self.state = state
        self.latest_operation_state = operation_state
        self.rendered = None
