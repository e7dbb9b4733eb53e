"""The executor: observe the cloud, ask the planner, act, report. One reconcile of one environment.

Crash safety rests on two rules kept here:
1. Every RunInstances request is written to `status.inflightLaunches` (with its client token)
   before it is sent. A restarted operator replays recorded requests with the same tokens, and CVM
   answers a replay with the instances the first call bought instead of buying more.
2. Ownership is the `spotpool.io/environment-uid` tag. Whatever the operator forgot, it finds every
   instance it owns by listing that tag, and the planner releases what is not wanted.
So the process can be killed at any instant: it never ends with more alive instances than expected,
and a deleted environment's instances are all released before its finalizer goes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Protocol

from spotpool.api.spec import EnvironmentSpec, SpecError
from spotpool.cloud.client import CvmClient
from spotpool.cloud.errors import CloudError, ErrorCategory
from spotpool.cloud.models import (
    LAUNCH_FAILED,
    PENDING,
    RUNNING,
    Credentials,
    Instance,
    SpotOffer,
)
from spotpool.controller.cloudaccess import (
    CLUSTER_TAG,
    ENVIRONMENT_TAG,
    OWNER_UID_TAG,
    AccountKey,
    CloudAccess,
    price_as_float,
)
from spotpool.controller.credentials import CredentialsError, load_credentials
from spotpool.controller.failpoints import failpoint
from spotpool.controller.kube import KubeApi
from spotpool.metrics import Metrics
from spotpool.planner import conditions
from spotpool.planner.backoff import record_refusal, record_success
from spotpool.planner.degraded import REASON_BY_CATEGORY, Problem
from spotpool.planner.formatting import format_price, format_time
from spotpool.planner.model import (
    ErrorRecord,
    InflightLaunch,
    LaunchBatch,
    Plan,
    PoolBackoff,
    PoolKey,
    ReleaseReason,
)
from spotpool.planner.persistence import backoff_from_status, inflight_from_status, inflight_to_status
from spotpool.planner.plan import plan as make_plan
from spotpool.planner.status import build_status
from spotpool.planner.tokens import client_token

log = logging.getLogger(__name__)

REFUSALS = (ErrorCategory.CAPACITY, ErrorCategory.PRICE, ErrorCategory.QUOTA)
"""Refusals that concern one pool: back off that pool and try the next one in the same reconcile."""

STATUS_HEARTBEAT = timedelta(seconds=60)
"""How often an unchanged status is rewritten anyway (to refresh lastReconcileTime); writing it on
every observation would churn etcd and watchers for nothing."""


class EventSink(Protocol):
    def __call__(self, body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None: ...


@dataclass
class _Memory:
    """What the process remembers about one environment between reconciles (lost on restart,
    which only costs precision in events and metrics, never correctness)."""

    alive: dict[str, Instance] | None = None
    status: dict[str, Any] | None = None  # the status as last written by this process
    credentials: Credentials | None = None  # the last key pair that loaded, for deletion (below)
    released: dict[str, datetime] = field(default_factory=dict)
    shortfall_since: float | None = None


@dataclass(frozen=True)
class Outcome:
    """What the caller (a kopf daemon or the delete handler) needs to schedule the next reconcile."""

    progressing: bool
    deletion_complete: bool = False
    problem: str | None = None


@dataclass
class _Run:
    """The state of one reconcile as it goes, so the steps below read as a sequence."""

    body: Mapping[str, Any]
    namespace: str
    name: str
    uid: str
    generation: int
    status: dict[str, Any]
    deleting: bool
    now: datetime
    spec: EnvironmentSpec | None = None
    key: AccountKey | None = None
    client: CvmClient | None = None
    instances: list[Instance] = field(default_factory=list)
    offers: dict[PoolKey, SpotOffer] = field(default_factory=dict)
    inflight: list[InflightLaunch] = field(default_factory=list)
    backoff: dict[PoolKey, PoolBackoff] = field(default_factory=dict)
    sequence: int = 0
    last_error: ErrorRecord | None = None
    released: set[str] = field(default_factory=set)
    acted: bool = False
    price_refused: bool = False


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
    ) -> None:
        self._kube = kube
        self._cloud = cloud
        self._metrics = metrics
        self._post_event = post_event
        self._clock = clock
        self._rng = rng or random.Random()
        self._locks: dict[str, asyncio.Lock] = {}
        self._memory: dict[str, _Memory] = {}

    def forget(self, uid: str) -> None:
        self._locks.pop(uid, None)
        self._memory.pop(uid, None)

    async def reconcile(self, body: Mapping[str, Any], *, deleting: bool = False) -> Outcome:
        """Reconcile one environment; serialised per object (the daemon and handlers may overlap)."""
        meta = body["metadata"]
        lock = self._locks.setdefault(meta["uid"], asyncio.Lock())
        started = time.monotonic()
        async with lock:
            memory = self._memory.setdefault(meta["uid"], _Memory())
            run = _Run(
                body=body,
                namespace=meta["namespace"],
                name=meta["name"],
                uid=meta["uid"],
                generation=int(meta.get("generation") or 0),
                # This process is the only writer of status, so what it wrote last is never older
                # than the body, whose watch event may still be on its way.
                status=dict(memory.status if memory.status is not None else body.get("status") or {}),
                deleting=deleting,
                now=self._clock(),
            )
            try:
                return await self._reconcile(run)
            except Exception:
                self._metrics.reconcile_errors.labels(run.namespace, run.name).inc()
                raise
            finally:
                self._metrics.reconcile_duration.observe(time.monotonic() - started)

    # -- the sequence --------------------------------------------------------------------------------
    async def _reconcile(self, run: _Run) -> Outcome:
        try:
            run.spec = EnvironmentSpec.from_k8s(run.body.get("spec") or {})
        except SpecError as exc:
            return await self._blocked(run, "InvalidConfig", str(exc))
        memory = self._memory.setdefault(run.uid, _Memory())
        try:
            credentials = await load_credentials(
                self._kube, run.namespace, run.spec.credentials_secret_ref.name
            )
        except CredentialsError as exc:
            # Deleting a namespace deletes the Secret alongside the pool: release the pool's
            # instances with the key pair that last worked rather than leak them.
            if not (run.deleting and memory.credentials is not None):
                return await self._blocked(run, "InvalidConfig", str(exc))
            log.info("%s/%s: %s; releasing with the last known credentials", run.namespace, run.name, exc)
            credentials = memory.credentials
        memory.credentials = credentials

        run.key = AccountKey.of(run.spec.endpoint, run.spec.region, credentials)
        run.client = self._cloud.client(run.key, credentials)
        run.inflight = inflight_from_status(run.status)
        run.backoff = backoff_from_status(run.status)
        run.sequence = int(run.status.get("launchSequence") or 0)

        await self._replay_unresolved_launches(run)
        try:
            await self._observe(run)
        except CloudError as exc:
            return await self._blocked(run, REASON_BY_CATEGORY[exc.category], _describe(exc), code=exc.code)

        plan = await self._launch_until_placed(run)
        await self._release(run, plan.releases, plan.release_reason)
        await self._release(run, plan.cleanup, ReleaseReason.UNWANTED)
        if run.acted:
            self._cloud.changed(run.key)
            try:
                await self._observe(run, offers=False)
            except CloudError as exc:
                run.last_error = _record(exc, run.now)
        self._notice_losses(run)
        final = make_plan(
            spec=run.spec, instances=run.instances, offers=run.offers, inflight=run.inflight,
            backoff=run.backoff, now=run.now, owner_uid=run.uid, deleting=run.deleting,
        )
        run.inflight = [i for i in run.inflight if i.client_token not in final.resolved_inflight]
        status = await self._report(run)
        progressing = _condition_true(status, "Progressing")
        return Outcome(progressing=progressing, deletion_complete=run.deleting and final.deletion_complete)

    # -- crash recovery --------------------------------------------------------------------------------
    async def _replay_unresolved_launches(self, run: _Run) -> None:
        """Send again every recorded launch that never reported its ids.

        Either the first call bought instances (CVM answers the replay with the same ids) or it never
        reached the cloud (the replay buys them now, as was intended). A refusal means nothing was
        bought under the token, so the record goes. A parameter mismatch means the spec changed
        since the record was made; whatever the first call bought carries the ownership tag and is
        counted (or released) through observation like any other instance.
        """
        assert run.spec is not None and run.client is not None
        if run.spec.paused and not run.deleting:
            return  # a replay may buy; the records wait (observation or the grace period resolves them)
        kept: list[InflightLaunch] = []
        for launch in run.inflight:
            if launch.instance_ids:
                kept.append(launch)
                continue
            try:
                ids = await self._run_instances(run, launch.zone, launch.instance_type, launch.count,
                                                launch.client_token)
            except CloudError as exc:
                if exc.retryable:
                    kept.append(launch)  # outcome still unknown: replay next time
                else:
                    log.info("replay of launch %s refused (%s): dropping its record", launch.client_token, exc.code)
                continue
            kept.append(replace(launch, instance_ids=tuple(ids)))
            run.acted = True
            log.info("replayed launch %s: %s", launch.client_token, ", ".join(ids))
        run.inflight = kept

    # -- observe ----------------------------------------------------------------------------------------
    async def _observe(self, run: _Run, *, offers: bool = True) -> None:
        assert run.spec is not None and run.key is not None and run.client is not None
        if not offers:
            run.instances = await self._cloud.owned_instances(run.key, run.client, run.uid)
            return
        # Two independent reads: one round trip instead of two before the first purchase.
        run.instances, run.offers = await asyncio.gather(
            self._cloud.owned_instances(run.key, run.client, run.uid),
            self._cloud.offers(run.key, run.client, run.spec.zones, run.spec.instance_types),
        )

    # -- act: buy ---------------------------------------------------------------------------------------
    async def _launch_until_placed(self, run: _Run) -> Plan:
        """Plan, record, buy; when a pool refuses, back it off and plan again, so the remainder moves
        to the next pool in this same reconcile. Bounded by the number of candidate pools."""
        assert run.spec is not None
        for _ in range(len(run.spec.zones) * len(run.spec.instance_types) + 1):
            plan = make_plan(
                spec=run.spec, instances=run.instances, offers=run.offers, inflight=run.inflight,
                backoff=run.backoff, now=run.now, owner_uid=run.uid, deleting=run.deleting,
            )
            run.inflight = [i for i in run.inflight if i.client_token not in plan.resolved_inflight]
            if not plan.launches or run.last_error is not None:
                return plan
            launches = self._record_intent(run, plan.launches)
            await self._patch_status(run, {
                "inflightLaunches": [inflight_to_status(i) for i in run.inflight],
                "launchSequence": run.sequence,
            })
            results = await asyncio.gather(
                *(self._buy(run, launch, batch) for launch, batch in zip(launches, plan.launches, strict=True))
            )
            run.acted = True
            if not any(refused for refused in results):
                return plan
            if run.price_refused:
                # The market moved above the bid under us: read prices again before replanning.
                run.price_refused = False
                self._cloud.forget_offers(run.key)  # type: ignore[arg-type]
                try:
                    await self._observe(run)
                except CloudError as exc:
                    run.last_error = _record(exc, run.now)
                    return plan
        return plan

    def _record_intent(self, run: _Run, batches: list[LaunchBatch]) -> list[InflightLaunch]:
        launches = []
        for batch in batches:
            token = client_token(run.uid, run.sequence, batch.zone, batch.instance_type, batch.count)
            run.sequence += 1
            launches.append(InflightLaunch(token, batch.zone, batch.instance_type, batch.count, run.now))
        run.inflight = [*run.inflight, *launches]
        return launches

    async def _buy(self, run: _Run, launch: InflightLaunch, batch: LaunchBatch) -> bool:
        """One RunInstances call; True when the pool refused (so the caller replans)."""
        pool = (batch.zone, batch.instance_type)
        where = f"{batch.count} {batch.instance_type} in {batch.zone}"
        try:
            failpoint("before-run-instances")
            failpoint("run-instances-in-flight")
            ids = await self._run_instances(run, batch.zone, batch.instance_type, batch.count, launch.client_token)
            failpoint("after-run-instances")
        except CloudError as exc:
            if exc.retryable:
                # Unknown outcome (the call may have bought): keep the record and replay it later.
                self._event(run, "Warning", "LaunchPending",
                            f"RunInstances for {where} did not answer ({exc.code}); it will be replayed "
                            f"with the same client token, which cannot buy twice")
                return False
            run.inflight = [i for i in run.inflight if i.client_token != launch.client_token]
            self._metrics.refusals.labels(run.namespace, run.name, *pool, exc.code).inc()
            if exc.category in REFUSALS:
                run.backoff = record_refusal(
                    run.backoff, pool, code=exc.code, message=exc.message, category=exc.category,
                    now=run.now, rng=self._rng,
                    market_price=batch.market_price, max_price=batch.max_price,
                )
                run.price_refused = run.price_refused or exc.category is ErrorCategory.PRICE
                retry = run.backoff[pool].retry_after
                self._event(run, "Warning", "LaunchRefused",
                            f"RunInstances refused {where}: {exc.code}: {exc.message}"
                            + (f"; retrying that pool after {format_time(retry)}" if retry else ""))
                return True
            run.last_error = _record(exc, run.now)
            self._event(run, "Warning", "LaunchFailed", f"RunInstances for {where} failed: {_describe(exc)}")
            return False
        index = next(i for i, item in enumerate(run.inflight) if item.client_token == launch.client_token)
        run.inflight[index] = replace(launch, instance_ids=tuple(ids))
        run.backoff = record_success(run.backoff, pool, run.now)
        self._metrics.launches.labels(run.namespace, run.name, *pool).inc(len(ids))
        price = f" at {format_price(batch.market_price)} USD/h" if batch.market_price is not None else ""
        self._event(run, "Normal", "Launched",
                    f"Bought {len(ids)} {batch.instance_type} in {batch.zone}{price} "
                    f"(maxPrice {batch.max_price}): {_ids(ids)}")
        return False

    async def _run_instances(self, run: _Run, zone: str, instance_type: str, count: int, token: str) -> list[str]:
        spec = run.spec
        assert spec is not None and run.client is not None
        network = spec.network
        tags = {
            **spec.tags,
            OWNER_UID_TAG: run.uid,
            ENVIRONMENT_TAG: f"{run.namespace}/{run.name}",
            CLUSTER_TAG: self._cloud.cluster_id,
        }
        return await run.client.run_instances(
            zone=zone,
            instance_type=instance_type,
            image_id=spec.image_id,
            count=count,
            max_price=spec.max_price,
            client_token=token,
            tags=tags,
            instance_name=spec.instance_name_prefix,
            vpc_id=network.vpc_id if network else None,
            subnet_id=(network.subnet_ids or {}).get(zone) if network else None,
            security_group_ids=list(network.security_group_ids) if network and network.security_group_ids else None,
            system_disk_type=spec.system_disk.type if spec.system_disk else None,
            system_disk_size_gib=spec.system_disk.size_gib if spec.system_disk else None,
            key_ids=list(spec.login_settings.key_ids) if spec.login_settings else None,
            user_data=spec.user_data,
        )

    # -- act: release ---------------------------------------------------------------------------------
    async def _release(self, run: _Run, batches: list[list[str]], reason: ReleaseReason | None) -> None:
        if not batches or reason is None:
            return
        assert run.client is not None and run.spec is not None
        memory = self._memory.setdefault(run.uid, _Memory())
        label = {ReleaseReason.UNWANTED: "Cleanup"}.get(reason, reason.value)
        for ids in batches:
            try:
                await run.client.terminate_instances(ids)
                failpoint("after-terminate-instances")
            except CloudError as exc:
                run.last_error = _record(exc, run.now)
                self._event(run, "Warning", "ReleaseFailed",
                            f"TerminateInstances of {len(ids)} instances failed: {_describe(exc)}")
                return
            run.acted = True
            run.released.update(ids)
            for instance_id in ids:
                memory.released[instance_id] = run.now
            self._metrics.releases.labels(run.namespace, run.name, label).inc(len(ids))
            why = {
                ReleaseReason.SCALE_IN: f"expectedCount is {run.spec.expected_count} "
                                        f"(scaleInPolicy {run.spec.scale_in_policy})",
                ReleaseReason.DELETE: "the SpotComputeEnvironment is being deleted",
                ReleaseReason.UNWANTED: "they failed to launch or were shut down",
            }[reason]
            self._event(run, "Normal", "Released", f"Released {len(ids)} instances ({label}: {why}): {_ids(ids)}")

    # -- report -----------------------------------------------------------------------------------------
    def _notice_losses(self, run: _Run) -> None:
        """Instances that were alive and are now gone, reclaimed or failed, without spotpool
        releasing them: an event per loss (the activity log) and the interruptions metric."""
        memory = self._memory.setdefault(run.uid, _Memory())
        current = {i.instance_id: i for i in run.instances}
        if memory.alive is None:  # first look since start: what status last said was alive
            memory.alive = {
                item["id"]: Instance(item["id"], item.get("zone", ""), item.get("instanceType", ""),
                                     item.get("state", ""), "SPOTPAID", None, {})
                for item in run.status.get("instances") or []
                if item.get("state") in (PENDING, RUNNING)
            }
        for instance_id, before in memory.alive.items():
            if instance_id in run.released or instance_id in memory.released:
                continue
            now = current.get(instance_id)
            if now is not None and now.state in (PENDING, RUNNING):
                continue
            pool = (before.zone, before.instance_type)
            if now is not None and now.state == LAUNCH_FAILED:
                kind, text = "launch_failed", "failed to launch (LAUNCH_FAILED)"
            else:
                kind = "lost"
                state = "gone" if now is None else now.state
                text = f"was lost ({state}): reclaimed by the cloud or released outside spotpool"
            self._metrics.interruptions.labels(run.namespace, run.name, *pool, kind).inc()
            replacing = "" if run.deleting else "; a replacement is being bought"
            self._event(run, "Warning", "InstanceLost" if kind == "lost" else "LaunchFailed",
                        f"{instance_id} ({before.zone}/{before.instance_type}) {text}{replacing}")
        memory.alive = {i: inst for i, inst in current.items() if inst.state in (PENDING, RUNNING)}
        cutoff = run.now - timedelta(hours=1)
        memory.released = {i: t for i, t in memory.released.items() if t > cutoff and i in current}

    async def _report(self, run: _Run) -> dict[str, Any]:
        assert run.spec is not None
        status = build_status(
            spec=run.spec, generation=run.generation, instances=run.instances, offers=run.offers,
            inflight=run.inflight, backoff=run.backoff, now=run.now,
            previous_conditions=run.status.get("conditions") or [], environment_label=run.name,
            owner_uid=run.uid, last_error=run.last_error, deleting=run.deleting,
        )
        status["launchSequence"] = run.sequence
        status.setdefault("instancesOmitted", None)  # merge-patch null removes a stale count
        await self._write_status(run, status)
        self._announce_transitions(run, status)
        self._observe_metrics(run, status)
        return status

    async def _blocked(self, run: _Run, reason: str, message: str, *, code: str | None = None) -> Outcome:
        """Before any plan can be made (bad spec, missing Secret, auth refused): report why and keep
        the rest of the status as it was, since nothing new is known about the instances."""
        if code and code not in message:
            message = f"{code}: {message}"
        previous = run.status.get("conditions") or []
        status = {
            "observedGeneration": run.generation,
            "selector": f"spotpool.io/environment={run.name}",
            "conditions": [
                conditions.condition("Ready", (False, reason, message), generation=run.generation,
                                     now=run.now, previous=previous),
                conditions.condition("Progressing", (False, reason, "blocked: " + message),
                                     generation=run.generation, now=run.now, previous=previous),
                conditions.condition("Degraded", conditions.degraded([Problem(reason, message)]),
                                     generation=run.generation, now=run.now, previous=previous),
            ],
        }
        await self._write_status(run, status)
        self._announce_transitions(run, status)
        self._metrics.degraded.labels(run.namespace, run.name).set(1)
        self._metrics.ready.labels(run.namespace, run.name).set(0)
        return Outcome(progressing=False, problem=message)

    async def _write_status(self, run: _Run, status: dict[str, Any]) -> None:
        previous = {k: v for k, v in run.status.items() if k != "lastReconcileTime"}
        merged = {k: v for k, v in {**previous, **status}.items() if v is not None}
        last = run.status.get("lastReconcileTime")
        stale = last is None or _parse(last) < run.now - STATUS_HEARTBEAT
        if merged == previous and not stale:
            return
        status["lastReconcileTime"] = format_time(run.now)
        failpoint("status-write")
        await self._patch_status(run, status)

    async def _patch_status(self, run: _Run, patch: dict[str, Any]) -> None:
        await self._kube.patch_status(run.namespace, run.name, patch)
        memory = self._memory.setdefault(run.uid, _Memory())
        merged = {**(memory.status if memory.status is not None else run.status), **patch}
        memory.status = {k: v for k, v in merged.items() if v is not None}  # null deletes, as in merge-patch

    def _announce_transitions(self, run: _Run, status: dict[str, Any]) -> None:
        before = {c.get("type"): c for c in run.status.get("conditions") or []}
        for cond in status["conditions"]:
            old = before.get(cond["type"], {})
            changed = old.get("status") != cond["status"] or old.get("reason") != cond["reason"]
            if not changed:
                continue
            if cond["type"] == "Degraded" and cond["status"] == "True":
                self._event(run, "Warning", cond["reason"], cond["message"])
            elif cond["type"] == "Degraded" and old.get("status") == "True":
                self._event(run, "Normal", "Recovered", "the cloud no longer refuses this environment")
            elif cond["type"] == "Ready" and cond["status"] == "True":
                self._event(run, "Normal", "Ready", cond["message"])

    def _observe_metrics(self, run: _Run, status: dict[str, Any]) -> None:
        assert run.spec is not None
        memory = self._memory.setdefault(run.uid, _Memory())
        expected = 0 if run.deleting else run.spec.expected_count
        running = status["runningCount"]
        shortfall = running < expected
        if shortfall and memory.shortfall_since is None:
            memory.shortfall_since = time.monotonic()
        elif not shortfall and memory.shortfall_since is not None:
            self._metrics.time_to_fulfil.labels(run.namespace, run.name).observe(
                time.monotonic() - memory.shortfall_since)
            memory.shortfall_since = None
        self._metrics.observe_environment(
            run.namespace, run.name,
            expected=run.spec.expected_count, current=status["currentCount"], running=running,
            pending=status["pendingCount"], hourly_cost=float(Decimal(status["hourlyCost"])),
            ready=_condition_true(status, "Ready"), degraded=_condition_true(status, "Degraded"),
            pools=[(p["zone"], p["instanceType"], p["running"], p["pending"],
                    price_as_float(Decimal(p["marketPrice"])) if "marketPrice" in p else None)
                   for p in status["pools"]],
            max_price=float(run.spec.max_price),
        )

    def _event(self, run: _Run, type_: str, reason: str, message: str) -> None:
        log.info("%s/%s %s: %s", run.namespace, run.name, reason, message)
        self._post_event(run.body, type=type_, reason=reason, message=message)


def _record(exc: CloudError, now: datetime) -> ErrorRecord:
    return ErrorRecord(exc.code, exc.message, exc.category, now)


def _describe(exc: CloudError) -> str:
    return f"{exc.code}: {exc.message}" + (f" (RequestId {exc.request_id})" if exc.request_id else "")


def _ids(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _condition_true(status: Mapping[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or [])


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))

