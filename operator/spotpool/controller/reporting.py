"""Reporting: the status write, the activity log (Events) and the metrics of a pass.

The status itself is decided by `planner.build_status`; this room only writes it (skipping a
write that would change nothing a user sees, except for a heartbeat) and turns what happened into
Events and metrics. Events are bounded: a pass's losses are one event naming the ids.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from spotpool.api.names import DRAINING_TAG
from spotpool.api.spec import DisruptionReason
from spotpool.cloud.errors import code_label
from spotpool.cloud.models import PENDING, RUNNING, Instance
from spotpool.controller.events import Reason
from spotpool.controller.failpoints import failpoint
from spotpool.controller.fencing import Fence
from spotpool.controller.statusstore import StatusMemory, StatusStore, merge_patch
from spotpool.metrics import DISRUPTION_REASONS, Metrics
from spotpool.planner import Census, DroppedRecord, LaunchBatch, PoolBackoff, PoolKey, ReleaseReason, StatusReport
from spotpool.planner.conditions import ConditionState, states
from spotpool.planner.formatting import format_price, format_time, parse_time
from spotpool.planner.losses import find_losses
from spotpool.planner.model import Purpose, Rollout

if TYPE_CHECKING:
    from spotpool.controller.context import ObjectRef, PassContext

log = logging.getLogger(__name__)

STATUS_HEARTBEAT = timedelta(minutes=30)
"""How often an unchanged status is rewritten anyway (to refresh lastReconcileTime). A status is
written when anything a user sees changes; the heartbeat only proves the operator is alive, so it
must stay cheap at scale: 500 settled pools cost 500 / 1800 s = 0.28 writes per second."""

MAX_IDS_IN_EVENT = 10

RECLAIM_WINDOW = timedelta(hours=1)
MAX_RECLAIMS_KEPT = 1000
"""Reclaims remembered per environment (the newest): enough to rank pools, bounded whatever the
cloud reclaims. Lost on restart, like all of PoolMemory: the ranking then starts from price and
stock alone."""


class EventSink(Protocol):
    def __call__(self, body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None: ...


@dataclass
class PoolMemory:
    """What this process remembers about one environment between passes (kept in kopf's memo).

    Lost on restart, which costs precision in events and metrics, never correctness: every
    decision is made from the cloud and the persisted status.
    """

    store: StatusMemory = field(default_factory=StatusMemory)  # the status as this process last wrote it
    alive: dict[str, Instance] | None = None
    released: dict[str, datetime] = field(default_factory=dict)
    shortfall_since: float | None = None
    on_demand_backoff: dict[PoolKey, PoolBackoff] = field(default_factory=dict)
    deletion_wait: str | None = None  # what the delete handler last said it waits for (said once)
    reclaims: deque[tuple[datetime, PoolKey]] = field(default_factory=lambda: deque(maxlen=MAX_RECLAIMS_KEPT))
    rollout_said: dict[str, str] = field(default_factory=dict)  # DisruptionBlocked: what it last said
    rollout_ids: dict[str, frozenset[str]] = field(default_factory=dict)  # Drifted, Expired: the ids said

    def recent_reclaims(self, now: datetime) -> dict[PoolKey, int]:
        """Instances lost per pool within `RECLAIM_WINDOW` (CapacityOptimized weighs them)."""
        while self.reclaims and self.reclaims[0][0] <= now - RECLAIM_WINDOW:
            self.reclaims.popleft()
        return dict(Counter(pool for _, pool in self.reclaims))


class Reporting:
    def __init__(self, *, statuses: StatusStore, metrics: Metrics, post_event: EventSink) -> None:
        self._statuses = statuses
        self._metrics = metrics
        self._post_event = post_event

    # -- status ------------------------------------------------------------------------------------
    async def write(self, ref: ObjectRef, body: Mapping[str, Any], memory: PoolMemory, report: StatusReport,
                    now: datetime, fence: Fence | None = None) -> None:
        """Write the pass's status over the picture it planned from (`statusstore`), unless it
        changes nothing a user sees and the heartbeat is not due."""
        previous = dict(memory.store.status or {})
        status = dict(report.body)
        merged = merge_patch(previous, status)
        last = previous.get("lastReconcileTime")
        stale = not isinstance(last, str) or _parse(last) < now - STATUS_HEARTBEAT
        unchanged = {k: v for k, v in merged.items() if k != "lastReconcileTime"} == {
            k: v for k, v in previous.items() if k != "lastReconcileTime"}
        if unchanged and not stale:
            return
        status["lastReconcileTime"] = format_time(now)
        failpoint("status-write")
        await self._statuses.write_status(ref.namespace, ref.name, memory.store, status, fence)
        self.announce_transitions(body, states(previous.get("conditions")), report.conditions)

    def announce_transitions(self, body: Mapping[str, Any], before: Mapping[str, ConditionState],
                             after: Mapping[str, ConditionState]) -> None:
        """An Event for each condition that changed in a way a user acts on: Degraded with its
        reason (a Warning), its end (`Recovered`), and Ready."""
        for kind, cond in after.items():
            old = before.get(kind)
            if old is not None and old.status == cond.status and old.reason == cond.reason:
                continue
            if kind == "Degraded" and cond.status == "True":
                self._post(body, "Warning", cond.reason, cond.message)
            elif kind == "Degraded" and old is not None and old.status == "True":
                self._post(body, Reason.RECOVERED.type, Reason.RECOVERED,
                           "the cloud no longer refuses this environment")
            elif kind == "Ready" and cond.status == "True":
                self._post(body, Reason.READY.type, Reason.READY, cond.message)

    # -- events ------------------------------------------------------------------------------------
    def event(self, ctx: PassContext, reason: Reason, message: str) -> None:
        """Post one Event about the pool (`controller.events` says what each reason means)."""
        self._post(ctx.body, reason.type, reason, message)

    def _post(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body.get("metadata") or {}
        log.info("%s/%s %s: %s", meta.get("namespace"), meta.get("name"), reason, message)
        self._post_event(body, type=type_, reason=reason, message=message)

    def launched(self, ctx: PassContext, batch: LaunchBatch, ids: list[str]) -> None:
        self._metrics.launches.labels(ctx.ref.namespace, ctx.ref.name, *batch.pool).inc(len(ids))
        if batch.purpose is Purpose.FALLBACK:
            self._metrics.fallbacks.labels(ctx.ref.namespace, ctx.ref.name).inc(len(ids))

    def bought(self, ctx: PassContext, launched: list[tuple[LaunchBatch, list[str]]]) -> None:
        """One Event for a pass's purchases, however many batches: per pool the count and the price,
        then the ids (bounded). A deficit of 10,000 is 100 calls, not 100 Events."""
        if not launched:
            return
        per_pool: dict[tuple[str, str, Purpose], tuple[int, LaunchBatch]] = {}
        for batch, ids in launched:
            count, _ = per_pool.get((*batch.pool, batch.purpose), (0, batch))
            per_pool[(*batch.pool, batch.purpose)] = (count + len(ids), batch)
        parts = []
        for (zone, kind, purpose), (count, batch) in per_pool.items():
            price = f" at {format_price(batch.market_price)} USD/h" if batch.market_price is not None else ""
            parts.append(f"{count} {kind} in {zone}{price} ({PURPOSE_WORDS[purpose]})")
        ids = [i for _, batch_ids in launched for i in batch_ids]
        max_price = launched[0][0].max_price
        self.event(ctx, Reason.LAUNCHED, f"Bought {'; '.join(parts)} (maxPrice {max_price}): {ids_text(ids)}")
        fallback = sum(len(ids) for batch, ids in launched if batch.purpose is Purpose.FALLBACK)
        if fallback:
            fallback_spec = ctx.spec.on_demand.fallback if ctx.spec.on_demand else None
            after = fallback_spec.after_seconds if fallback_spec else 0
            self.event(ctx, Reason.FALLBACK_TO_ON_DEMAND,
                       f"Bought {fallback} on-demand instances: spot could not fill the pool for {after} s "
                       f"(spec.onDemand.fallback.after); they return to spot when it can be had again")

    def refused(self, ctx: PassContext, pool: PoolKey, code: str) -> None:
        self._metrics.refusals.labels(ctx.ref.namespace, ctx.ref.name, *pool, code_label(code)).inc()

    def record_dropped(self, ctx: PassContext, dropped: DroppedRecord) -> None:
        token = f" {dropped.client_token}" if dropped.client_token else ""
        self.event(ctx, Reason.LAUNCH_RECORD_DROPPED, f"launch record{token} dropped ({dropped.reason}): "
                                                          f"{dropped.detail}")

    def released(self, ctx: PassContext, memory: PoolMemory, ids: list[str], label: str, why: str) -> None:
        for instance_id in ids:
            memory.released[instance_id] = ctx.now
        self._metrics.releases.labels(ctx.ref.namespace, ctx.ref.name, label).inc(len(ids))
        if label in DISRUPTION_REASONS:
            self._metrics.disruptions.labels(ctx.ref.namespace, ctx.ref.name, label).inc(len(ids))
        if label == ReleaseReason.RETURN_TO_SPOT:
            self._metrics.returns.labels(ctx.ref.namespace, ctx.ref.name).inc(len(ids))
            self.event(ctx, Reason.RETURNED_TO_SPOT, f"Released {len(ids)} fallback on-demand instances: "
                                                        f"spot replacements run in their place: {ids_text(ids)}")
            return
        self.event(ctx, Reason.RELEASED, f"Released {len(ids)} instances ({label}: {why}): {ids_text(ids)}")

    def notice_losses(self, ctx: PassContext, memory: PoolMemory, census: Census) -> None:
        """Instances that were alive and are now gone, reclaimed or failed, without spotpool
        releasing them: one event for the pass naming them, and the interruptions metric."""
        current = {i.instance_id: i for i in census.owned}
        if memory.alive is None:  # first look since start: what status last said was alive
            memory.alive = {
                known.instance_id: Instance(known.instance_id, known.zone, known.instance_type, known.state,
                                            "SPOTPAID", None, {})
                for known in ctx.persisted.instances if known.state in (PENDING, RUNNING)
            }
        losses = find_losses(memory.alive, census, memory.released)
        for kind, instances in (("lost", losses.lost), ("launch_failed", losses.failed)):
            for before in instances:
                if kind == "lost" and before.zone and before.instance_type:
                    memory.reclaims.append((ctx.now, (before.zone, before.instance_type)))
                self._metrics.interruptions.labels(ctx.ref.namespace, ctx.ref.name, before.zone,
                                                   before.instance_type, kind).inc()
        replacing = "" if ctx.deleting else "; replacements are being bought"
        if losses.lost:
            ids = [i.instance_id for i in losses.lost]
            self.event(ctx, Reason.INSTANCE_LOST,
                       f"{len(ids)} instances were lost (reclaimed by the cloud or released outside "
                       f"spotpool){replacing}: {ids_text(ids)}")
        if losses.failed:
            ids = [i.instance_id for i in losses.failed]
            self.event(ctx, Reason.INSTANCES_FAILED_TO_LAUNCH,
                       f"{len(ids)} instances failed to launch (LAUNCH_FAILED){replacing}: {ids_text(ids)}")
        memory.alive = {i: inst for i, inst in current.items() if inst.state in (PENDING, RUNNING)}
        cutoff = ctx.now - timedelta(hours=1)
        memory.released = {i: t for i, t in memory.released.items() if t > cutoff and i in current}

    def draining(self, ctx: PassContext, ids: list[str]) -> None:
        grace = ctx.spec.disruption.drain_grace_seconds
        self.event(ctx, Reason.DRAINING, f"Marked {len(ids)} instances {DRAINING_TAG}: released in {grace} s "
                                              f"(spec.disruption.drainGrace), their replacements run: {ids_text(ids)}")

    def rollout(self, ctx: PassContext, memory: PoolMemory, rollout: Rollout) -> None:
        """`Drifted`, `Expired` and `DisruptionBlocked`, each said when what it says changes (a
        pool whose image changed says so once, not every pass)."""
        assessment = rollout.assessment
        drifted = sorted(i for i, d in assessment.per_instance.items() if d.drifted)
        why = sorted({r.value for d in assessment.per_instance.values() for r in d.drifted})
        budget = f"; replaced under {rollout.limit}" if rollout.limit else ""
        self._said_of(ctx, memory, Reason.DRIFTED, drifted, f"{len(drifted)} instances differ from the spec "
                      f"({', '.join(why)}){budget}: {ids_text(drifted)}")
        expired = sorted(c.instance.instance_id for c in (*assessment.candidates, *assessment.waiting)
                         if c.reason is DisruptionReason.EXPIRED)
        self._said_of(ctx, memory, Reason.EXPIRED, expired, f"{len(expired)} instances are older than "
                      f"spec.disruption.expireAfter{budget}: {ids_text(expired)}")
        blocked = rollout.blocked
        if blocked is None:
            memory.rollout_said.pop(Reason.DISRUPTION_BLOCKED, None)
        elif memory.rollout_said.get(Reason.DISRUPTION_BLOCKED) != blocked:
            memory.rollout_said[Reason.DISRUPTION_BLOCKED] = blocked
            self.event(ctx, Reason.DISRUPTION_BLOCKED, blocked)

    def _said_of(self, ctx: PassContext, memory: PoolMemory, reason: Reason, ids: list[str], message: str) -> None:
        """Said when instances not said before join the set, not as the set shrinks while they are
        replaced (the set is the pool's alive instances at most: bounded by expectedCount)."""
        said = memory.rollout_ids.get(reason, frozenset())
        now = frozenset(ids)
        if now - said:
            self.event(ctx, reason, message)
        memory.rollout_ids[reason] = now

    # -- metrics -----------------------------------------------------------------------------------
    def observe(self, ctx: PassContext, memory: PoolMemory, report: StatusReport) -> None:
        figures = report.figures
        assert figures is not None, "a pass that observed reports its figures"
        expected = 0 if ctx.deleting else ctx.spec.expected_count
        if figures.running < expected and memory.shortfall_since is None:
            memory.shortfall_since = time.monotonic()
        elif figures.running >= expected and memory.shortfall_since is not None:
            self._metrics.time_to_fulfil.labels(ctx.ref.namespace, ctx.ref.name).observe(
                time.monotonic() - memory.shortfall_since)
            memory.shortfall_since = None
        self._metrics.observe_environment(
            ctx.ref.namespace, ctx.ref.name,
            expected=ctx.spec.expected_count, current=figures.current, running=figures.running,
            pending=figures.pending, hourly_cost=float(figures.hourly_cost),
            ready=report.ready, degraded=report.degraded,
            pools=[(zone, kind, running, pending, float(price) if price is not None else None)
                   for zone, kind, running, pending, price in figures.pools],
            max_price=float(ctx.spec.max_price),
            capacity=(figures.spot, figures.on_demand_base, figures.on_demand_fallback),
            max_hourly_cost=float(ctx.spec.max_hourly_cost) if ctx.spec.max_hourly_cost is not None else None,
            spot_short=figures.spot_short,
            drifted=figures.current - figures.updated,
            updated=figures.updated,
        )

    def observe_blocked(self, ref: ObjectRef) -> None:
        self._metrics.degraded.labels(ref.namespace, ref.name).set(1)
        self._metrics.ready.labels(ref.namespace, ref.name).set(0)


PURPOSE_WORDS = {
    Purpose.SPOT: "spot",
    Purpose.BASE: "on-demand base",
    Purpose.FALLBACK: "on-demand fallback",
    Purpose.RETURN: "spot, replacing on-demand fallback",
    Purpose.REPLACE: "spot, replacing drifted or expired instances",
}


def ids_text(ids: list[str], limit: int = MAX_IDS_IN_EVENT) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _parse(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
