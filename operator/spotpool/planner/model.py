"""The planner's inputs and outputs: plain frozen values, so a plan can be compared and replayed.

Nothing here knows about Kubernetes or HTTP. The executor persists `InflightLaunch` records (in the
object's status) before it calls RunInstances; the planner only reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from spotpool.api.names import OWNER_UID_TAG
from spotpool.cloud.errors import ErrorCategory
from spotpool.cloud.models import POSTPAID_BY_HOUR, SPOTPAID, AccountQuota, Instance, Offer

if TYPE_CHECKING:
    from spotpool.planner.census import Census
    from spotpool.planner.disruption import Assessment

PoolKey = tuple[str, str]
"""A spot pool: (zone, instance_type)."""

__all__ = ["OWNER_UID_TAG"]  # re-exported: the planner's tests and callers name it from here

MAX_LAUNCH_COUNT = 100
"""Instances per RunInstances call. The China SDK allows 500, the international API 100: the
smaller limit is valid everywhere, and a refused batch then costs less of the deficit."""

MAX_RELEASE_IDS = 100
"""Instance ids per TerminateInstances call (CVM limit)."""

INFLIGHT_VISIBILITY_GRACE = timedelta(minutes=10)
"""How long a launch record whose outcome is unknown (RunInstances never answered with ids) may
be replayed, and is held when it may not be (pool removed, deficit shrunk).

CVM does not document how long it remembers a ClientToken: past this age a replay might buy anew
instead of answering, so no record older than this is ever replayed. Most unanswered records are
resolved long before (`UNANSWERED_SETTLED`); one held this long is dropped. Whatever it may have
bought carries the installation's tags, so the listing shows it once the tag index has it, and the
orphan collector releases it when its pool is gone. Records whose ids are known never expire:
their ids are looked up by `InstanceIds` until they are listed or proven gone.
"""

UNANSWERED_SETTLED = timedelta(seconds=60)
"""Age after which an unanswered record's call has landed or never will: every spending call is
sent only within its sender's leadership term and bounded by the time that term has left (the
CVM client's guard), and a record is written in the term that sends it. A term ends at most a
renew deadline (10 s by default) after its last renewal; a minute covers that, the call's own
timeout and the margin before a new leader acts. From then on an unanswered record is resolved
from a listing of its zone and instance type that does not go through the tag index
(`Observation.unbought`)."""

NOT_VISIBLE_HOLD = timedelta(hours=24)
"""How long an id RunInstances returned that no listing or look-up has ever shown, and that a
look-up by id does not find, stays counted as bought (see `planner.census`).

A just-bought instance does not vanish without a trace: CVM shows it by id (PENDING, even
LAUNCH_FAILED) within seconds, and every pass looks it up. An id that is never found is one the
pool's key may not see (a CAM policy that lets it list only instances with tags the pool does not
put on what it buys); taken as gone, it was bought again every pass. Held, the pool buys nothing
more for it, says `Degraded`/`InstancesNotVisible`, and a deletion releases it by id. The hold is
long because its only cost is a pool one short, and only after a double fault (a status write
lost with the process that made it, after the pool released an instance no sweep had listed):
the other way is a purchase per hold for as long as the policy stays."""

MAX_JOURNAL_RECORDS = 200
"""Records read back from status at most, and so the most the planner ever keeps: a pass adds new
batches only while the journal has room (`plan`), so the operator's own records never overflow.
A deficit of 10,000 is 100 batches of 100. Anything beyond is not a record this operator wrote."""


class ReleaseReason(StrEnum):
    """Why instances are released; the executor puts it in events and the releases metric."""

    SCALE_IN = "ScaleIn"  # more alive than expectedCount
    RETURN_TO_SPOT = "ReturnToSpot"  # fallback on-demand instances whose spot replacement runs
    DELETE = "Delete"  # the object is being deleted
    UNWANTED = "Unwanted"  # dead instances (launch failed, shut down) that still exist
    DRIFTED = "Drifted"  # running instances bought with a launch spec that has since changed, replaced
    EXPIRED = "Expired"  # running instances older than spec.disruption.expireAfter, replaced


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
class Observation:
    """What the cloud said about one environment this pass.

    - `listed`: the instances of the installation's listing (by cluster tag), any owner: the
      planner keeps only those carrying this environment's ownership tag.
    - `confirmed`: ids of journal records that the listing lacked, looked up by `InstanceIds`;
      `None` when the cloud does not know the id (the instance is gone). A looked-up instance
      counts as owned only if it carries the ownership tag, so an id forged into status can never
      make the operator count or release an instance it does not own. A looked-up instance that
      is listed too replaces the listed one (the look-up is the newer answer: a return to spot
      looks up its pending replacements to see them run before the next sweep); `None` for a
      listed id changes nothing.
    - `unbought`: tokens of unanswered launch records at least `UNANSWERED_SETTLED` old that a
      listing of their zone and instance type (not through the tag index) shows nothing of:
      they bought nothing. Instances such a listing shows carrying a record's token are in
      `confirmed`.
    - `released`: ids this process's TerminateInstances accepted (or answered as already gone): a
      look-up that does not find one of these proves it gone, seen or not (`NOT_VISIBLE_HOLD`).
    """

    listed: tuple[Instance, ...] = ()
    confirmed: Mapping[str, Instance | None] = field(default_factory=dict)
    unbought: frozenset[str] = frozenset()
    released: frozenset[str] = frozenset()


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
    charge_type: str = SPOTPAID  # a replay must repeat it: POSTPAID_BY_HOUR for on-demand
    seen: tuple[str, ...] = ()  # of instance_ids, those a listing or look-up has shown (NOT_VISIBLE_HOLD)

    @property
    def pool(self) -> PoolKey:
        return (self.zone, self.instance_type)

    @property
    def on_demand(self) -> bool:
        return self.charge_type == POSTPAID_BY_HOUR


class Purpose(StrEnum):
    """Why a launch batch is bought: the events, the metrics and the fallback bookkeeping say so."""

    SPOT = "Spot"  # the spot share of the deficit
    BASE = "OnDemandBase"  # spec.onDemand.baseCount
    FALLBACK = "OnDemandFallback"  # spot was short for spec.onDemand.fallback.after
    RETURN = "ReturnToSpot"  # a spot replacement for a fallback on-demand instance
    REPLACE = "Replacement"  # a spot replacement for a drifted or expired instance


@dataclass(frozen=True)
class LaunchBatch:
    """One RunInstances call to make: `count` (1..MAX_LAUNCH_COUNT) instances in one pool.

    `max_price` is the spec's bid (spot only); `market_price` is the hourly price the plan was
    made at (the spot market, or the on-demand list price), for events and the spend cap.
    """

    zone: str
    instance_type: str
    count: int
    max_price: Decimal
    market_price: Decimal | None
    purpose: Purpose = Purpose.SPOT

    @property
    def pool(self) -> PoolKey:
        return (self.zone, self.instance_type)

    @property
    def charge_type(self) -> str:
        return SPOTPAID if self.purpose in (Purpose.SPOT, Purpose.RETURN, Purpose.REPLACE) else POSTPAID_BY_HOUR


@dataclass(frozen=True)
class ErrorRecord:
    """An environment-wide cloud failure the caller saw this reconcile (observing, releasing...).

    Pool refusals go to `PoolBackoff` instead; this is for failures that are not about one pool.
    """

    code: str
    message: str
    category: ErrorCategory
    time: datetime


class DropReason(StrEnum):
    """Why a launch record leaves the journal without having been accounted for."""

    MALFORMED = "Malformed"  # unreadable, or outside what this operator ever writes
    EXPIRED = "Expired"  # outcome unknown, held past the grace, nothing showed up
    NOT_BOUGHT = "NotBought"  # outcome unknown, and a listing not through the tag index shows nothing of it
    REFUSED = "Refused"  # the cloud refused the (re)play: nothing was bought under its token


@dataclass(frozen=True)
class DroppedRecord:
    """A launch record the planner or the executor dropped, with the reason for a Warning event."""

    client_token: str
    reason: DropReason
    detail: str


@dataclass(frozen=True)
class Plan:
    """What to do now, decided once per pass. The executor carries it out in this order:
    record `journal` plus new intents, replay, buy, release, report.

    - `journal`: the launch records to keep (unresolved ones, `replays` included), in order.
    - `replays`: id-less records to send again with their own ClientToken (outcome unknown).
    - `launches`: new RunInstances batches for the deficit left after alive, unseen and replayed.
    - `releases`: id batches (each 1..MAX_RELEASE_IDS, in policy order) for `release_reason`.
    - `cleanup`: batches of dead-but-existing instances to release as `ReleaseReason.UNWANTED`.
    - `dropped`: records dropped unaccounted, each for a Warning event.
    - `census`: the count the decision was made on (the status starts from it).
    - `unlisted_overdue`: bought instances the tag listing still lacks past the grace (Degraded).
    - `deletion_complete`: when deleting, True once nothing owned remains to release or wait for.
    - `notes`: why the plan is what it is (no buyable pool, paused...), for logs.
    - `returns`: fallback on-demand id batches to release (`ReleaseReason.RETURN_TO_SPOT`): their
      spot replacements run.
    - `verdict`: the fallback timer, the shortage's reasons and the spend cap's verdict.
    """

    journal: tuple[InflightLaunch, ...]
    replays: tuple[InflightLaunch, ...]
    launches: tuple[LaunchBatch, ...]
    releases: tuple[tuple[str, ...], ...]
    release_reason: ReleaseReason | None
    cleanup: tuple[tuple[str, ...], ...]
    dropped: tuple[DroppedRecord, ...]
    census: Census
    unlisted_overdue: int = 0
    deletion_complete: bool = False
    notes: tuple[str, ...] = ()
    returns: tuple[tuple[str, ...], ...] = ()
    verdict: PurchaseVerdict | None = None
    voluntary: tuple[tuple[ReleaseReason, tuple[str, ...]], ...] = ()
    drains: tuple[str, ...] = ()
    rollout: Rollout | None = None

    @property
    def acts(self) -> bool:
        return bool(self.replays or self.launches or self.releases or self.cleanup or self.returns
                    or self.voluntary or self.drains)


@dataclass(frozen=True)
class Rollout:
    """Drift and expiry this pass (`planner.disruption`), for status, Events and metrics.

    - `assessment`: per instance, what differs, when it expires, what holds it.
    - `replacing`: candidates whose replacements are bought or in flight (at most the budget).
    - `remaining`: candidates not yet released (held ones included).
    - `blocked`: why no replacement is under way though candidates remain (a budget, a hold,
      a spend guard), or None.
    - `limit`: the most restrictive active budget's words, when one bounds the rollout.
    """

    assessment: Assessment
    replacing: int
    remaining: int
    blocked: str | None = None
    limit: str | None = None

    @property
    def active(self) -> bool:
        return self.remaining > 0


@dataclass(frozen=True)
class PurchaseVerdict:
    """What the plan decided about capacity types and cost, for the status and the next pass.

    - `spot_short_since`: since when spot has been unable to fill the deficit (carried from pass
      to pass through the status; None once spot fills it or nothing is missing).
    - `spot_short_reasons`: why (FallbackReason values), empty when spot is not short.
    - `fallback_due`: the fallback's wait is over (purchases on-demand may be in `launches`).
    - `capped`: the hourly spend cap kept `capped_count` instances from being bought, with the
      sentence that says so.
    - `price_guarded`: on-demand instances not bought because their list price is over the
      administrator's `--max-price`, in a sentence (a spend guard, like the others).
    - `return_held`: (Degraded reason, sentence) when the return to spot waits for room under a
      spend guard or the cap (the pool has its count, at on-demand prices).
    """

    spot_short_since: datetime | None = None
    spot_short_reasons: tuple[str, ...] = ()
    fallback_due: bool = False
    capped_count: int = 0
    capped: str | None = None
    price_guarded: str | None = None
    return_held: tuple[str, str] | None = None


@dataclass(frozen=True)
class PurchaseSignals:
    """The planner's inputs about capacity beyond the spot market (all optional).

    - `on_demand`: the POSTPAID_BY_HOUR offers per pool (stock and list price).
    - `on_demand_backoff`: on-demand refusals per pool (kept apart from the spot pools' backoff).
    - `quota`: the account's remaining vCPU quota per zone (None: not known, not limiting).
    - `reclaims`: instances reclaimed per pool in the last hour (CapacityOptimized weighs them).
    - `spot_short_since`: the shortage's start as the previous pass recorded it.
    - `price_ceiling`: the administrator's `--max-price`, which bounds every purchase: spot by the
      bid (the spend guard refuses a spec.maxPrice above it), on-demand by the list price.
    - `held_ceiling`: the most instances the administrator's guards let the pool hold at once,
      alive and in flight: a return to spot's surge beyond expectedCount stays under it.
    - `on_demand_refused`: why the administrator lets this pool buy no on-demand at all (its
      namespace), or None.
    """

    on_demand: Mapping[PoolKey, Offer] | None = None
    on_demand_backoff: Mapping[PoolKey, PoolBackoff] | None = None
    quota: AccountQuota | None = None
    reclaims: Mapping[PoolKey, int] | None = None
    spot_short_since: datetime | None = None
    price_ceiling: Decimal | None = None
    held_ceiling: int | None = None
    on_demand_refused: str | None = None
