"""One pass over one environment, in one direction: resolve → observe → plan → act → report.

- resolve (`context.resolve`): spec, credentials, the account they act in, the journal.
- check (`launchcheck.LaunchChecker`): a new or changed launch spec is tried with RunInstances
  DryRun; a configuration the cloud refuses buys nothing (Degraded/InvalidConfig).
- observe: this environment's slice of its account's shared sweep (`observer.Observer`), the
  market, and an `InstanceIds` lookup of journal ids the sweep lacks.
- plan (`planner.plan`): called once; every decision about money is made there.
- act: purchases (`purchasing.Purchasing`: journal, replay, buy), then releases.
- report (`reporting.Reporting` with `planner.build_status`): status, events, metrics.

The reconciler itself keeps only the order and the per-object state, which lives in kopf's
per-object memo (`PoolMemory`), not in dicts on a global.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from spotpool.api.names import DRAINING_TAG, LAUNCH_TAG, OWNER_UID_TAG
from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.errors import CloudError
from spotpool.cloud.models import PENDING, TERMINATING, AccountQuota, Instance
from spotpool.cloud.wire import MAX_TAG_RESOURCES, PAGE_LIMIT, instance_resource
from spotpool.controller.cloudaccess import CloudAccess, Market
from spotpool.controller.config import OperatorConfig
from spotpool.controller.context import Blocked, ObjectRef, PassContext, Preflight, resolve
from spotpool.controller.credentials import SecretGuard
from spotpool.controller.events import Reason
from spotpool.controller.failpoints import failpoint
from spotpool.controller.fencing import Fence, Leadership, NotLeader
from spotpool.controller.identity import Identities
from spotpool.controller.kube import Conflict, KubeApi
from spotpool.controller.launchcheck import LaunchChecker
from spotpool.controller.observer import Observer
from spotpool.controller.policy import Policy, PoolView
from spotpool.controller.purchasing import PurchaseResult, Purchasing, describe
from spotpool.controller.reporting import EventSink, PoolMemory, Reporting, ids_text
from spotpool.controller.statusstore import StatusStore
from spotpool.metrics import Metrics
from spotpool.planner import (
    Census,
    ErrorRecord,
    InflightLaunch,
    Observation,
    Plan,
    ReleaseReason,
    StatusReport,
    build_status,
    plan,
)
from spotpool.planner.degraded import REASON_BY_CATEGORY, DegradedReason
from spotpool.planner.formatting import format_time
from spotpool.planner.model import UNANSWERED_SETTLED, PurchaseSignals, Purpose
from spotpool.planner.persistence import PersistedStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the caller (a kopf daemon or the delete handler) needs to schedule the next pass."""

    progressing: bool
    deletion_complete: bool = False
    problem: str | None = None
    awaiting_spot: bool = False  # fallback on-demand instances wait for spot to come back

    waiting: str | None = None  # what a deletion waits for, in a sentence (Events, the handler's error)

    def next_delay(self, config: OperatorConfig) -> float:
        """Seconds until the next pass unless something wakes the pool sooner: the progress
        interval while buying or releasing; the observe interval after a problem, or while
        fallback instances wait to return to spot (only the market says when, and a market change
        wakes nobody); otherwise the settled pools' heartbeat."""
        if self.progressing:
            return config.progress_interval
        if self.problem is not None or self.awaiting_spot:
            return config.observe_interval
        return config.heartbeat_interval


@dataclass
class _Acted:
    purchases: PurchaseResult
    released: list[str]
    last_error: ErrorRecord | None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    def __init__(
        self,
        *,
        kube: KubeApi,
        cloud: CloudAccess,
        metrics: Metrics,
        post_event: EventSink,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        leadership: Leadership | None = None,
        policy: Policy | None = None,
        pools: PoolView | None = None,
        identities: Identities | None = None,
    ) -> None:
        """Without `leadership` the reconciler always acts (one replica, or tests). `policy`: the
        administrator's endpoints and spend guards; the default, `Policy()`, is the safe one
        (Tencent's endpoints only): tests and the demo on the loopback simulator pass
        `Policy.development()`. `pools`: every pool's claim, for the total limits."""
        self._leadership = leadership
        self._policy = policy or Policy()
        self._pools = pools
        self._identities = identities or Identities()
        self._kube = kube
        self._cloud = cloud
        self._metrics = metrics
        self._clock = clock
        self._guard = SecretGuard(kube)
        self._statuses = StatusStore(kube)
        self._reporting = Reporting(statuses=self._statuses, metrics=metrics, post_event=post_event)
        self._purchasing = Purchasing(statuses=self._statuses, reporting=self._reporting,
                                      cluster_id=cloud.cluster_id, rng=rng or random.Random())
        self._launch_checks = LaunchChecker(self._purchasing.request)

    async def reconcile(self, body: Mapping[str, Any], memory: PoolMemory, lock: asyncio.Lock, *,
                        deleting: bool = False) -> Outcome:
        """One pass; serialised per object (the daemon and the delete handler may overlap)."""
        started = time.monotonic()
        async with lock:
            ref = ObjectRef.of(body)
            # The term the pass began in: every write and every spending call checks it, the CVM
            # client again right before it signs (after any wait in its rate limiter or backoff).
            fence = Fence(self._leadership)
            try:
                fence()
                return await self._pass(body, memory, deleting, fence)
            except Conflict as exc:
                memory.store.drop()
                log.info("%s: %s; acting next pass on the newer object", ref, exc)
                return Outcome(progressing=True, problem=str(exc))
            except NotLeader as exc:
                memory.store.drop()  # a later term plans from the body, never from this term's memory
                return Outcome(progressing=False, problem=str(exc))
            except Exception:
                memory.store.drop()
                self._metrics.reconcile_errors.labels(ref.namespace, ref.name).inc()
                raise
            finally:
                self._metrics.reconcile_duration.observe(time.monotonic() - started)

    async def _pass(self, body: Mapping[str, Any], memory: PoolMemory, deleting: bool, fence: Fence) -> Outcome:
        now = self._clock()
        # One picture of the status per pass, typed: this process's memory only when provably as
        # new as the body (controller/statusstore.py), and every write conditional on it.
        picture = self._statuses.read(body, memory.store, fence.term)
        persisted = picture.persisted
        resolved = await resolve(body=body, persisted=persisted, kube=self._kube, cloud=self._cloud,
                                 guard=self._guard, deleting=deleting, now=now, fence=fence,
                                 policy=self._policy, pools=self._pools, identities=self._identities,
                                 early=self._start_reads)
        if isinstance(resolved, Blocked):
            return await self._blocked(body, memory, persisted, resolved, now, deleting, fence)
        ctx = resolved
        # A new or changed launch spec is tried with RunInstances DryRun before anything is bought:
        # a refusal buys nothing this pass (releases go on, as under a spend guard) and names the
        # spec field. The check runs beside the observation, so it costs a pool's first purchase
        # no round trip of its own; both end before the plan is made. For a key pair whose account
        # was just looked up, both were started beside the look-up (`_start_reads`) and are joined.
        checking, observing = await asyncio.gather(self._launch_checks.check(ctx), self._observe(ctx, memory),
                                                   return_exceptions=True)
        if isinstance(checking, BaseException):
            raise checking
        checked = checking
        if checked is not None:
            for note in checked.notes:
                self._reporting.event(ctx, Reason.LAUNCH_CHECK, note)
            if checked.refused is not None:
                ctx = replace(ctx, purchases_refused=(DegradedReason.INVALID_CONFIG, checked.refused))
        if isinstance(observing, CloudError):
            return await self._blocked(body, memory, persisted, Blocked(
                REASON_BY_CATEGORY[observing.category], describe(observing), ctx.spec), now, deleting, fence)
        if isinstance(observing, BaseException):
            raise observing
        observation, market, quota = observing
        signals = PurchaseSignals(on_demand=market.on_demand, on_demand_backoff=memory.on_demand_backoff,
                                  quota=quota, reclaims=memory.recent_reclaims(now),
                                  spot_short_since=persisted.spot_short_since,
                                  price_ceiling=self._policy.guards.max_price, held_ceiling=ctx.held_ceiling,
                                  on_demand_refused=ctx.on_demand_refused)
        decided = plan(spec=ctx.spec, observation=observation, journal=ctx.journal, offers=market.spot,
                       backoff=ctx.backoff, now=now, owner_uid=ctx.ref.uid, deleting=deleting,
                       purchases_refused=ctx.purchases_refused[1] if ctx.purchases_refused else None,
                       signals=signals, held_since=persisted.held_since)
        if decided.notes:
            log.debug("%s: %s", ctx.ref, "; ".join(decided.notes))
        acted = await self._act(ctx, decided, memory)
        memory.on_demand_backoff = acted.purchases.on_demand_backoff
        if acted.purchases.price_refused:
            self._cloud.forget_offers(ctx.key)  # the market moved above the bid: read it again next pass
        if acted.purchases.bought:
            self._cloud.spend_quota(ctx.key, _vcpus_bought(acted.purchases.bought, market))
        census = decided.census.after(journal=acted.purchases.journal, bought=acted.purchases.bought,
                                      released=acted.released, owner_uid=ctx.ref.uid)
        self._reporting.notice_losses(ctx, memory, census)
        report = build_status(
            spec=ctx.spec, generation=ctx.ref.generation, environment_label=ctx.ref.name, now=now,
            previous_conditions=[dict(c) for c in persisted.conditions], census=census,
            journal=acted.purchases.journal, sequence=acted.purchases.sequence, account=ctx.account,
            offers=market.spot, backoff=acted.purchases.backoff, last_error=acted.last_error or ctx.credentials_error,
            deleting=deleting, unlisted_overdue=decided.unlisted_overdue,
            purchases_refused=ctx.purchases_refused, signals=signals, outcome=decided.verdict,
            rollout=None if deleting else decided.rollout,
            validated_launch_spec=checked.record if checked is not None else None, credentials=ctx.credentials,
        )
        fence()
        await self._reporting.write(ctx.ref, body, memory, report, now, ctx.fence)
        self._reporting.observe(ctx, memory, report)
        if decided.rollout is not None and not deleting:
            self._reporting.rollout(ctx, memory, decided.rollout)
        complete = deleting and decided.deletion_complete and not acted.purchases.journal
        # The Secret this pool signed with before, if it now signs otherwise (a move from keys to a
        # role): its finalizer goes once no pool names it. On completion, every Secret it named.
        left = persisted.credentials_secret
        if left is not None and left != ctx.spec.secret_name:
            await self._let_go(ctx.ref.namespace, left, ctx.ref.uid)
        if complete and ctx.spec.secret_name is not None:
            await self._let_go(ctx.ref.namespace, ctx.spec.secret_name, ctx.ref.uid)
        waiting = None if not deleting or complete else _deletion_wait(census, acted.purchases.journal)
        return Outcome(progressing=report.progressing or decided.acts or (deleting and not complete),
                       deletion_complete=complete, awaiting_spot=not deleting and _awaits_spot(ctx.spec, report),
                       waiting=waiting)

    async def _observe(self, ctx: PassContext, memory: PoolMemory) -> tuple[Observation, Market, AccountQuota | None]:
        """The listing's slice, the market and the account's quota (one round trip, each shared
        with the account's other pools), then every id the pool knew that the listing lacks.

        An absence is never taken on the listing's word: offset pages skip an instance when
        another goes between two page reads, the tag index lags, and a sweep sees only what its
        key may see. Every id the pool knew (status, journal, this process's memory) that the
        sweep does not show is looked up by id with the pool's own key before anything is
        bought for it or a deletion lets it go."""
        zones, kinds = _priced_pools(ctx)
        listed, market, quota = await asyncio.gather(
            self._observer(ctx).slice(ctx.ref.uid),
            self._cloud.offers(ctx.key, ctx.client, zones, kinds),
            self._cloud.quota(ctx.key, ctx.client),
        )
        seen = {i.instance_id for i in listed}
        known = set(ctx.persisted.known_ids) | set(memory.alive or ()) | set(memory.released)
        missing = sorted(known - seen)
        confirmed = dict(await self._cloud.look_up(ctx.client, missing + _returning_replacements(ctx, listed)))
        found, unbought = await self._settle_unanswered(ctx, listed)
        confirmed.update({i.instance_id: i for i in found if i.instance_id not in seen})
        return (Observation(listed=tuple(listed), confirmed=confirmed, unbought=unbought,
                            released=frozenset(memory.released)),
                market, quota)

    async def _settle_unanswered(self, ctx: PassContext,
                                 listed: list[Instance]) -> tuple[list[Instance], frozenset[str]]:
        """What launch records whose RunInstances never answered bought, once their calls have
        landed or never will (`UNANSWERED_SETTLED`): a listing of the record's zone since a day
        before it was made, which does not go through the tag index (it may lag by minutes or
        hours), shows the instances carrying its token, or proves it bought nothing. Read twice
        when it spans pages (offset paging may skip one while instances come and go): both must
        show nothing. (`instance-type` is no DescribeInstances filter; the token tag is read from
        each instance's own tags.)"""
        tagged = {i.tags.get(LAUNCH_TAG) for i in listed}
        settled = [r for r in ctx.journal if not r.instance_ids and r.client_token not in tagged
                   and ctx.now - r.requested_at >= UNANSWERED_SETTLED]
        by_zone: dict[str, list[InflightLaunch]] = {}
        for record in settled:
            by_zone.setdefault(record.zone, []).append(record)
        found: list[Instance] = []
        unbought: set[str] = set()
        for zone, records in list(by_zone.items())[:MAX_SETTLING_LISTINGS]:
            tokens = {r.client_token for r in records}
            # The documented format names no time zone: a day's margin keeps any reading a superset.
            since = min(r.requested_at for r in records) - timedelta(days=1)
            filters = {"zone": [zone], "creation-start-time": [since.strftime("%Y-%m-%d %H:%M:%S")]}
            reads = [await ctx.client.describe_instances(filters=filters)]
            if len(reads[0]) >= PAGE_LIMIT:
                reads.append(await ctx.client.describe_instances(filters=filters))
            mine = [i for read in reads for i in read
                    if i.tags.get(LAUNCH_TAG) in tokens and i.tags.get(OWNER_UID_TAG) == ctx.ref.uid]
            found += mine
            unbought |= tokens - {i.tags.get(LAUNCH_TAG) for i in mine}
        return found, frozenset(unbought)

    def _start_reads(self, early: Preflight) -> None:
        """The reads of a pass's first round trip, started while `resolve` looks up the account of
        a key pair it has not asked about (a new team's first pool): the sweep, the market, the
        quota and the launch check's DryRun go out together with GetCallerIdentity, and the pass
        joins them (each is a shared flight) once the account is known and checked. Without this
        a new pool's first purchase waited two round trips. None of these reads spends."""
        self._cloud.start_first_reads(early.key, early.client, early.ref.uid, *_priced_pools(early))
        self._launch_checks.start(early)

    def _observer(self, ctx: PassContext) -> Observer:
        return self._cloud.observer(ctx.key, ctx.account["id"], ctx.client, ctx.ref.uid)

    async def _act(self, ctx: PassContext, decided: Plan, memory: PoolMemory) -> _Acted:
        """Voluntary releases first (returns to spot, drifted and expired instances whose
        replacements run), then drain marks, then purchases, then the other releases. An instance
        whose replacement runs goes before the next replacements are bought, so the pool never
        holds more than its budget beyond expectedCount; if that release fails, no new replacement
        is bought this pass."""
        released, last_error = await self._release(ctx, memory, decided.returns, ReleaseReason.RETURN_TO_SPOT)
        for why, batch in decided.voluntary:
            if last_error is None:
                done, last_error = await self._release(ctx, memory, (batch,), why)
                released += done
        if last_error is not None:
            decided = replace(decided, launches=tuple(b for b in decided.launches
                                                      if b.purpose not in (Purpose.RETURN, Purpose.REPLACE)))
        if decided.drains:
            last_error = await self._mark_draining(ctx, decided.drains) or last_error
        purchases = await self._purchasing.execute(ctx, decided, memory.store, memory.on_demand_backoff)
        last_error = last_error or purchases.last_error
        for batches, reason in ((decided.releases, decided.release_reason), (decided.cleanup, ReleaseReason.UNWANTED)):
            if reason is None:
                continue
            ids, error = await self._release(ctx, memory, batches, reason)
            released += ids
            last_error = error or last_error
        return _Acted(purchases, released, last_error)

    async def _release(self, ctx: PassContext, memory: PoolMemory, batches: tuple[tuple[str, ...], ...],
                       reason: ReleaseReason) -> tuple[list[str], ErrorRecord | None]:
        """TerminateInstances batch by batch; the first failure stops the rest (next pass retries)."""
        released: list[str] = []
        for ids in batches:
            ctx.fence()
            try:
                await ctx.client.terminate_instances(ids, guard=ctx.fence)
                failpoint("after-terminate-instances")
            except CloudError as exc:
                self._reporting.event(ctx, Reason.RELEASE_FAILED,
                                      f"TerminateInstances of {len(ids)} instances failed: {describe(exc)}")
                return released, ErrorRecord(exc.code, exc.message, exc.category, ctx.now)
            released += ids
            self._observer(ctx).released(ids)
            self._reporting.released(ctx, memory, list(ids), *_release_words(ctx, reason))
        return released, None

    async def _mark_draining(self, ctx: PassContext, ids: tuple[str, ...]) -> ErrorRecord | None:
        """Tag instances chosen for a voluntary release `spotpool.io/draining=<now>` (the Tag
        service's TagResources): they are released once `spec.disruption.drainGrace` has passed
        since, as the tag says. A refused mark releases nothing: the next pass marks again."""
        assert ctx.tagger is not None
        tagger = ctx.tagger()
        marked = format_time(ctx.now)
        for start in range(0, len(ids), MAX_TAG_RESOURCES):
            batch = ids[start:start + MAX_TAG_RESOURCES]
            ctx.fence()
            try:
                await tagger.tag_resources([instance_resource(ctx.spec.region, ctx.account["id"], i) for i in batch],
                                           {DRAINING_TAG: marked}, guard=ctx.fence)
            except CloudError as exc:
                self._reporting.event(ctx, Reason.DRAIN_MARK_FAILED,
                                      f"TagResources of {len(batch)} instances failed: {describe(exc)}; they are "
                                      f"released only once marked {DRAINING_TAG} for spec.disruption.drainGrace")
                return ErrorRecord(exc.code, exc.message, exc.category, ctx.now)
            self._observer(ctx).tagged(batch, {DRAINING_TAG: marked})
            self._reporting.draining(ctx, list(batch))
        return None

    async def _let_go(self, namespace: str, secret: str, uid: str) -> None:
        """The Secret's finalizer goes once no pool names it. With Secrets switched off
        (`--no-secret-credentials`) the operator has no access to Secrets and added no finalizer."""
        if self._policy.credentials.secrets:
            await self._guard.release(namespace, secret, leaving_uid=uid)

    async def _blocked(self, body: Mapping[str, Any], memory: PoolMemory, persisted: PersistedStatus,
                       blocked: Blocked, now: datetime, deleting: bool, fence: Fence) -> Outcome:
        """No plan can be made: report why, from the same builder as every other status."""
        ref = ObjectRef.of(body)
        if deleting and blocked.nothing_to_release and blocked.spec is not None:
            # Never bought (refused before its account was known): nothing to wait for but the
            # Secret's finalizer, in case an earlier pass had added it.
            fence()
            if blocked.spec.secret_name is not None:
                await self._let_go(ref.namespace, blocked.spec.secret_name, ref.uid)
            return Outcome(progressing=False, deletion_complete=True)
        if deleting and persisted.deleted_already:
            return Outcome(progressing=False, deletion_complete=True)
        report = build_status(spec=blocked.spec, generation=ref.generation, environment_label=ref.name, now=now,
                              previous_conditions=[dict(c) for c in persisted.conditions],
                              blocked=(blocked.reason, blocked.message), deleting=deleting)
        fence()
        await self._reporting.write(ref, body, memory, report, now, fence)
        self._reporting.observe_blocked(ref)
        return Outcome(progressing=False, problem=blocked.message)


def _priced_pools(ctx: Preflight) -> tuple[list[str], list[str]]:
    """The zones and the instance types whose market a pass reads: the spec's, and those the status
    last listed an instance in. An instance of a type or zone removed from the spec still bills,
    and the spend cap and status.hourlyCost must price it (unpriced, it counted at spec.maxPrice,
    no bound for on-demand, or at nothing)."""
    spec, held = ctx.spec, ctx.persisted.instances
    zones = [*spec.zones, *sorted({i.zone for i in held if i.zone.startswith(f"{spec.region}-")}
                                  - set(spec.zones))[:MAX_EXTRA_POOLS]]
    kinds = [*spec.instance_types, *sorted({i.instance_type for i in held if i.instance_type}
                                           - set(spec.instance_types))[:MAX_EXTRA_POOLS]]
    return zones, kinds


def _release_words(ctx: PassContext, reason: ReleaseReason) -> tuple[str, str]:
    label = "Cleanup" if reason is ReleaseReason.UNWANTED else reason.value
    why = {
        ReleaseReason.SCALE_IN: f"expectedCount is {ctx.spec.expected_count} "
                                f"(scaleInPolicy {ctx.spec.scale_in_policy})",
        ReleaseReason.DELETE: "the SpotComputeEnvironment is being deleted",
        ReleaseReason.UNWANTED: "they failed to launch or were shut down",
        ReleaseReason.RETURN_TO_SPOT: "fallback on-demand instances whose spot replacements run",
        ReleaseReason.DRIFTED: "they differ from the spec (status.instances[].drifted) and their replacements run",
        ReleaseReason.EXPIRED: f"older than spec.disruption.expireAfter ({ctx.spec.disruption.expire_after_seconds} s) "
                               f"and their replacements run",
    }[reason]
    return label, why


MAX_EXTRA_POOLS = 10
"""Zones, and types, beyond the spec's whose prices a pass reads for instances it still holds."""

MAX_SETTLING_LISTINGS = 4
"""Zone listings a pass makes to settle unanswered launch records (`_settle_unanswered`);
any others wait for the next pass. Unanswered records are rare: a lost answer, a crash."""

MAX_REPLACEMENTS_LOOKED_UP = 1000
"""Pending spot replacements looked up by id per pass: at most 10 DescribeInstances calls, and only
while replacements boot (a couple of passes a round). Beyond it, the sweep sees the rest."""


def _returning_replacements(ctx: PassContext, listed: list[Instance]) -> list[str]:
    """Pending instances of a pool that holds more than expectedCount or is rolling out:
    replacements (a return to spot, drifted or expired instances), which surge beyond the count
    while they boot.

    An instance is released only once its replacement runs, and the shared sweep that lists them
    runs once an interval: looked up by id every pass (at most a budget's worth of them), a
    replacement that boots is seen at once, not up to an interval later. Other pending instances
    wait for the sweep, as before.
    """
    if ctx.deleting:
        return []
    alive = [i for i in listed if i.alive and i.tags.get(OWNER_UID_TAG) == ctx.ref.uid]
    # While a rollout goes on, the sweep may show the count exactly (a round released, the next
    # bought) while the next round's replacements boot: they are looked up all the same.
    if len(alive) <= ctx.spec.expected_count and not ctx.persisted.rolling_out:
        return []
    pending = sorted(i.instance_id for i in alive if i.state == PENDING)
    return pending[:MAX_REPLACEMENTS_LOOKED_UP]


def _vcpus_bought(bought: list[InflightLaunch], market: Market) -> dict[tuple[str, str], int]:
    """vCPUs the pass's purchases took, by (zone, charge type), from the pools' offers."""
    spent: dict[tuple[str, str], int] = {}
    for launch in bought:
        offer = (market.on_demand if launch.on_demand else market.spot).get(launch.pool)
        if offer is not None and offer.cpu > 0:
            key = (launch.zone, launch.charge_type)
            spent[key] = spent.get(key, 0) + offer.cpu * len(launch.instance_ids)
    return spent


def _awaits_spot(spec: EnvironmentSpec, report: StatusReport) -> bool:
    """The pool holds fallback on-demand instances that are to return to spot."""
    returning = spec.on_demand is not None and spec.on_demand.return_to_spot.enabled and not spec.paused
    return returning and report.figures is not None and report.figures.on_demand_fallback > 0


def _deletion_wait(census: Census, journal: list[InflightLaunch]) -> str | None:
    """What a deletion still waits for, named: the Event and the delete handler say it once."""
    parts = []
    releasing = [i.instance_id for i in census.owned if i.state != TERMINATING]
    terminating = [i.instance_id for i in census.owned if i.state == TERMINATING]
    if releasing:
        parts.append(f"releasing {len(releasing)} instances ({ids_text(sorted(releasing))})")
    if terminating:
        parts.append(f"waiting for the cloud to confirm {len(terminating)} terminating instances are gone "
                     f"({ids_text(sorted(terminating))})")
    if census.hidden:
        hidden = ids_text(sorted(census.hidden))
        parts.append(f"waiting for {len(census.hidden)} instances RunInstances returned ({hidden}) to show: this "
                     f"pool's key cannot find them by id and has never seen any of its instances. Does a CAM policy "
                     f"let it see only instances with tags the pool does not set? Once the policy lets the key see "
                     f"them they are released; nothing is released that the key cannot prove is the pool's")
    for launch in journal[:MAX_RECORDS_NAMED]:
        if launch.instance_ids:
            parts.append(f"waiting for the cloud to list or deny the instances of launch record "
                         f"{launch.client_token} ({ids_text(list(launch.instance_ids))})")
        else:
            parts.append(f"waiting for the answer to launch record {launch.client_token} ({launch.count} "
                         f"{launch.instance_type} in {launch.zone}), replayed with its own ClientToken to learn "
                         f"what it bought")
    if len(journal) > MAX_RECORDS_NAMED:
        parts.append(f"and {len(journal) - MAX_RECORDS_NAMED} more launch records")
    return "; ".join(parts) or None


MAX_RECORDS_NAMED = 3
"""Launch records a deletion's waiting sentence names; the rest are counted."""
