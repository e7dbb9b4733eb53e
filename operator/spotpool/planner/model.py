"""The planner's inputs and outputs: plain frozen values, so a plan can be compared and replayed.

Nothing here knows about Kubernetes or HTTP. The executor persists `InflightLaunch` records (in the
object's status) before it calls RunInstances; the planner only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from spotpool.cloud.errors import ErrorCategory

PoolKey = tuple[str, str]
"""A spot pool: (zone, instance_type)."""

OWNER_UID_TAG = "spotpool.io/environment-uid"
"""The tag naming the owning object's UID: the single source of ownership (DESIGN.md)."""

MAX_LAUNCH_COUNT = 100
"""Instances per RunInstances call. The China SDK allows 500, the international API 100: the
smaller limit is valid everywhere, and a refused batch then costs less of the deficit."""

MAX_RELEASE_IDS = 100
"""Instance ids per TerminateInstances call (CVM limit)."""

INFLIGHT_VISIBILITY_GRACE = timedelta(minutes=10)
"""How long a launch may stay invisible before the planner stops counting it.

Instances are observed by their ownership tag, so anything a launch created shows up in the
observation within seconds. A launch whose instances are still unseen this long after it was
requested created nothing (or what it created is gone): counting it longer would only delay the
replacement. Deletion waits this long for unresolved launches before it declares itself done.
"""


class ReleaseReason(StrEnum):
    """Why instances are released; the executor puts it in events and the releases metric."""

    SCALE_IN = "ScaleIn"  # more alive than expectedCount
    DELETE = "Delete"  # the object is being deleted
    UNWANTED = "Unwanted"  # dead instances (launch failed, shut down) that still exist


@dataclass(frozen=True)
class PoolBackoff:
    """A pool's recent refusals. `retry_after` in the future keeps the planner away from the pool.

    `market_price` and `max_price` record the prices a PRICE refusal was made under: when either
    moves, the refusal no longer says anything about the pool and the backoff is lifted early.
    """

    failures: int
    retry_after: datetime | None
    last_code: str | None
    last_message: str | None
    last_time: datetime | None
    category: ErrorCategory | None
    market_price: Decimal | None = None
    max_price: Decimal | None = None


@dataclass(frozen=True)
class InflightLaunch:
    """A RunInstances call the executor has started (recorded BEFORE the call, for crash safety).

    `instance_ids` is empty until the call returns. Replaying the same `client_token` after a crash
    returns the same instances instead of buying new ones.
    """

    client_token: str
    zone: str
    instance_type: str
    count: int
    requested_at: datetime
    instance_ids: tuple[str, ...] = ()

    @property
    def pool(self) -> PoolKey:
        return (self.zone, self.instance_type)


@dataclass(frozen=True)
class LaunchBatch:
    """One RunInstances call to make: `count` (1..MAX_LAUNCH_COUNT) spot instances in one pool.

    `max_price` is the spec's bid; `market_price` is the price the plan was made at (for events).
    """

    zone: str
    instance_type: str
    count: int
    max_price: Decimal
    market_price: Decimal | None

    @property
    def pool(self) -> PoolKey:
        return (self.zone, self.instance_type)


@dataclass(frozen=True)
class ErrorRecord:
    """An environment-wide cloud failure the caller saw this reconcile (observing, releasing...).

    Pool refusals go to `PoolBackoff` instead; this is for failures that are not about one pool.
    """

    code: str
    message: str
    category: ErrorCategory
    time: datetime


@dataclass(frozen=True)
class Plan:
    """What to do now. Launch batches first, then releases; an empty plan means "nothing to do".

    - `releases`: id batches (each 1..MAX_RELEASE_IDS, in policy order) released for
      `release_reason` (ScaleIn or Delete; None when there are none).
    - `cleanup`: batches of dead-but-existing instances to release for `ReleaseReason.UNWANTED`.
    - `resolved_inflight`: tokens of in-flight launches that observation now fully accounts for;
      the executor drops them from its records (they no longer count toward anything).
    - `deletion_complete`: when deleting, True once nothing owned remains to release or to wait
      for; the finalizer may then go.
    - `notes`: why the plan is what it is (no buyable pool, paused...), for logs and events.
    """

    launches: list[LaunchBatch]
    releases: list[list[str]]
    release_reason: ReleaseReason | None
    deficit: int
    surplus: int
    alive: int
    inflight_unseen: int
    cleanup: list[list[str]] = field(default_factory=list)
    resolved_inflight: tuple[str, ...] = ()
    deletion_complete: bool = False
    notes: tuple[str, ...] = ()
