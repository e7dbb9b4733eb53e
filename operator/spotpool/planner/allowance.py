"""How many more instances a plan may buy in a pool: the account's vCPU quota and the spend cap.

Both are budgets shared by every batch of one plan, so they are tracked in one place as the plan
takes from them: two batches in one zone cannot both count on the same remaining quota, and the
base, spot, fallback and return purchases of one pass cannot together pass `spec.maxHourlyCost`.
A limit that is not known (no quota row for the zone, no cap) does not limit: the cloud's refusal
then says so, as before quota-aware planning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from spotpool.cloud.models import AccountQuota
from spotpool.planner.model import PoolKey


@dataclass
class Allowance:
    """Quota (vCPU per zone and charge type) and spend cap (USD/h) left for this plan.

    `cost` is what the pool already costs per hour, in-flight purchases included; `cpu` the vCPUs
    of one instance per pool (0 when unknown: the quota then cannot be checked for it).
    """

    quota: AccountQuota | None
    cpu: Mapping[PoolKey, int]
    cap: Decimal | None
    cost: Decimal
    _taken_cpu: dict[tuple[str, str], int] = field(default_factory=dict)
    capped: bool = False  # a purchase was cut short by the cap
    quota_bound: bool = False  # a purchase was cut short by the quota

    def room(self, pool: PoolKey, charge_type: str, price: Decimal | None) -> int | None:
        """Instances of `pool` that still fit; None when nothing known limits them."""
        limits = [limit for limit in (self._quota_room(pool, charge_type), self._cap_room(price)) if limit is not None]
        return min(limits) if limits else None

    def take(self, pool: PoolKey, charge_type: str, price: Decimal | None, count: int) -> None:
        """Record a purchase of `count` instances of `pool`."""
        if count <= 0:
            return
        key = (pool[0], charge_type)
        self._taken_cpu[key] = self._taken_cpu.get(key, 0) + self.cpu.get(pool, 0) * count
        if price is not None:
            self.cost += price * count

    def note_full(self, pool: PoolKey, charge_type: str, price: Decimal | None) -> None:
        """A purchase wanted more of `pool` than fits: remember which limit stopped it."""
        if self._quota_room(pool, charge_type) == 0:
            self.quota_bound = True
        if self._cap_room(price) == 0:
            self.capped = True

    def _quota_room(self, pool: PoolKey, charge_type: str) -> int | None:
        cpu = self.cpu.get(pool, 0)
        if self.quota is None or cpu <= 0:
            return None
        remaining = self.quota.remaining(pool[0], charge_type)
        if remaining is None:
            return None
        return max(0, remaining - self._taken_cpu.get((pool[0], charge_type), 0)) // cpu

    def _cap_room(self, price: Decimal | None) -> int | None:
        if self.cap is None:
            return None
        if price is None or price <= 0:
            return 0  # a price the cap cannot be checked against is not bought under a cap
        return max(0, int((self.cap - self.cost) // price))
