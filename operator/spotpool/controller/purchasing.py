"""The purchase protocol: journal, replay, buy. It carries out the plan's purchases; it decides none.

Crash safety rests on two rules, kept here:

1. Intent is recorded before money is spent. Every new RunInstances request is written to
   `status.inflightLaunches` (with its ClientToken, and the account it is bought in) before it is
   sent. The write carries the resourceVersion of the status the plan was made from as a
   precondition (`statusstore`): if anyone else wrote since, nothing is bought this pass. A
   restarted operator finds the record; the planner decides whether to replay it, and a replay
   uses the same token, which CVM answers with the instances the first call bought instead of
   buying more.
2. Ownership is the `spotpool.io/environment-uid` tag. Whatever the operator forgot, it finds every
   instance it owns by listing that tag (or, for ids a record holds, by looking them up), and the
   planner releases what is not wanted.

So the process can be killed at any instant: it never ends with more alive instances than
expected, and a deleted environment's instances are all released before its finalizer goes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace

from spotpool.api.names import LAUNCH_SPEC_TAG, LAUNCH_TAG, environment_tags
from spotpool.cloud.errors import CloudError, ErrorCategory
from spotpool.cloud.models import RunInstancesRequest
from spotpool.controller.context import PassContext, Preflight
from spotpool.controller.events import Reason
from spotpool.controller.failpoints import failpoint
from spotpool.controller.reporting import Reporting
from spotpool.controller.statusstore import StatusMemory, StatusStore
from spotpool.planner import (
    DroppedRecord,
    DropReason,
    ErrorRecord,
    InflightLaunch,
    LaunchBatch,
    Plan,
    PoolBackoff,
    PoolKey,
    client_token,
    record_refusal,
    record_success,
)
from spotpool.planner.disruption import fingerprint, terminate_at
from spotpool.planner.formatting import format_time
from spotpool.planner.persistence import inflight_to_status
from spotpool.planner.tokens import first_sequence

log = logging.getLogger(__name__)

REFUSALS = (ErrorCategory.CAPACITY, ErrorCategory.PRICE, ErrorCategory.QUOTA)
"""Refusals that concern one pool: the pool backs off and the next plan buys elsewhere."""

CALLS_IN_FLIGHT = 10
"""RunInstances calls one pool has waiting or on the wire at once. The account's rate-limit bucket
serves callers in arrival order, so a pool with a deficit of 10,000 (100 calls) queues at most this
many ahead of a small pool's one call: the small pool waits about a second, not ten. It matches
the RunInstances budget (10/s), so one pool alone still uses all of it."""


@dataclass
class PurchaseResult:
    """The journal and backoff after the purchases, and what they bought (for the status)."""

    journal: list[InflightLaunch]
    backoff: dict[PoolKey, PoolBackoff]
    sequence: int
    bought: list[InflightLaunch] = field(default_factory=list)
    launched: list[tuple[LaunchBatch, list[str]]] = field(default_factory=list)  # new purchases, for the Event
    last_error: ErrorRecord | None = None
    price_refused: bool = False
    on_demand_backoff: dict[PoolKey, PoolBackoff] = field(default_factory=dict)  # kept in memory only


class Purchasing:
    def __init__(self, *, statuses: StatusStore, reporting: Reporting, cluster_id: str, rng: random.Random) -> None:
        self._statuses = statuses
        self._reporting = reporting
        self._cluster_id = cluster_id
        self._rng = rng

    async def execute(self, ctx: PassContext, plan: Plan, memory: StatusMemory,
                      on_demand_backoff: dict[PoolKey, PoolBackoff] | None = None) -> PurchaseResult:
        """Record intents, then replay and buy concurrently. Raises `kube.Conflict` (nothing was
        bought) when the journal write loses its precondition. On-demand refusals back off in
        `on_demand_backoff` (the process's memory), never the spot pool's persisted backoff."""
        sequence = ctx.sequence if ctx.sequence is not None else first_sequence(ctx.now)
        result = PurchaseResult(list(plan.journal), dict(ctx.backoff), sequence,
                                on_demand_backoff=dict(on_demand_backoff or {}))
        for dropped in (*ctx.malformed, *plan.dropped):
            self._reporting.record_dropped(ctx, dropped)
        intents = self._intents(ctx, plan.launches, result)
        if intents:
            ctx.fence()
            failpoint("journal-write")
            await self._statuses.write_journal(ctx.ref.namespace, ctx.ref.name, memory, {
                "inflightLaunches": [inflight_to_status(i) for i in result.journal],
                "launchSequence": result.sequence,
                "account": ctx.account,
            }, fence=ctx.fence, generation=ctx.ref.generation, latest=ctx.body)
        # A task group, not gather: if one call fails unexpectedly the others are cancelled with
        # it, as a crash would stop them; their records stay and the planner settles them.
        turns = asyncio.Semaphore(CALLS_IN_FLIGHT)

        async def in_turn(call: Awaitable[None]) -> None:
            async with turns:
                await call

        try:
            async with asyncio.TaskGroup() as calls:
                for launch in plan.replays:
                    calls.create_task(in_turn(self._replay(ctx, launch, result)))
                for launch, batch in intents:
                    calls.create_task(in_turn(self._buy(ctx, launch, batch, result)))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the pass fails as the first call did
        finally:
            self._reporting.bought(ctx, result.launched)  # one Event for the pass, crash or not
        return result

    def _intents(
        self, ctx: PassContext, batches: tuple[LaunchBatch, ...], result: PurchaseResult
    ) -> list[tuple[InflightLaunch, LaunchBatch]]:
        intents = []
        for batch in batches:
            token = client_token(ctx.ref.uid, result.sequence, batch.zone, batch.instance_type, batch.count)
            result.sequence += 1
            launch = InflightLaunch(token, batch.zone, batch.instance_type, batch.count, ctx.now,
                                    charge_type=batch.charge_type)
            result.journal.append(launch)
            intents.append((launch, batch))
        return intents

    async def _replay(self, ctx: PassContext, launch: InflightLaunch, result: PurchaseResult) -> None:
        """Send a record again with its own token: CVM answers with what the first call bought, or
        buys it now if the first call never arrived (the planner checked it is still wanted)."""
        try:
            ids = await self._run(ctx, launch)
        except CloudError as exc:
            if exc.retryable:
                return  # outcome still unknown: the record stays
            self._forget(result, launch)
            self._reporting.record_dropped(ctx, DroppedRecord(
                launch.client_token, DropReason.REFUSED, f"the replay was refused ({exc.code}): nothing was bought"))
            return
        # A replay that answers restarts the record's clock: its ids must now show up.
        self._settle(result, replace(launch, instance_ids=tuple(ids), requested_at=ctx.now))
        log.info("%s: replayed launch %s: %s", ctx.ref, launch.client_token, ", ".join(ids))

    async def _buy(self, ctx: PassContext, launch: InflightLaunch, batch: LaunchBatch, result: PurchaseResult) -> None:
        pool = batch.pool
        on_demand = launch.on_demand
        where = f"{batch.count} {'on-demand ' if on_demand else ''}{batch.instance_type} in {batch.zone}"
        try:
            failpoint("before-run-instances")
            failpoint("run-instances-in-flight")
            ids = await self._run(ctx, launch)
            failpoint("after-run-instances")
        except CloudError as exc:
            if exc.retryable:
                self._reporting.event(ctx, Reason.LAUNCH_PENDING,
                                      f"RunInstances for {where} did not answer ({exc.code}); the planner may "
                                      f"replay it with the same client token, which cannot buy twice")
                return
            self._forget(result, launch)
            self._reporting.refused(ctx, pool, exc.code)
            if exc.category in REFUSALS:
                table = result.on_demand_backoff if on_demand else result.backoff
                table = record_refusal(
                    table, pool, code=exc.code, message=exc.message, category=exc.category,
                    now=ctx.now, rng=self._rng, market_price=batch.market_price, max_price=batch.max_price,
                )
                if on_demand:
                    result.on_demand_backoff = table
                else:
                    result.backoff = table
                result.price_refused |= exc.category is ErrorCategory.PRICE
                retry = table[pool].retry_after
                self._reporting.event(ctx, Reason.LAUNCH_REFUSED,
                                      f"RunInstances refused {where}: {exc.code}: {exc.message}"
                                      + (f"; retrying that pool after {format_time(retry)}" if retry else ""))
                return
            result.last_error = ErrorRecord(exc.code, exc.message, exc.category, ctx.now)
            self._reporting.event(ctx, Reason.LAUNCH_CALL_FAILED, f"RunInstances for {where} failed: {describe(exc)}")
            return
        self._settle(result, replace(launch, instance_ids=tuple(ids)))
        if on_demand:
            result.on_demand_backoff = record_success(result.on_demand_backoff, pool, ctx.now)
        else:
            result.backoff = record_success(result.backoff, pool, ctx.now)
        self._reporting.launched(ctx, batch, ids)
        result.launched.append((batch, ids))

    async def _run(self, ctx: PassContext, launch: InflightLaunch) -> list[str]:
        ctx.fence()
        # The client checks the fence again right before it signs each attempt (after its rate
        # limiter and any retry's backoff), and bounds the attempt by the time the term has left.
        return await ctx.client.run_instances(self.request(ctx, launch), guard=ctx.fence)

    def request(self, ctx: Preflight, launch: InflightLaunch) -> RunInstancesRequest:
        """The one RunInstances request a record stands for: a replay must repeat it exactly.

        Every instance carries the fingerprint of the launch spec it is bought with (drift is read
        from it), and with `spec.disruption.expireAfter` set, a CVM ActionTimer that terminates it
        at the record's time + expireAfter + `EXPIRY_TIMER_GRACE`, whatever becomes of the operator.
        """
        spec, network = ctx.spec, ctx.spec.network
        return RunInstancesRequest(
            zone=launch.zone,
            instance_type=launch.instance_type,
            image_id=spec.image_id,
            count=launch.count,
            max_price=None if launch.on_demand else spec.max_price,
            charge_type=launch.charge_type,
            client_token=launch.client_token,
            tags={**spec.tags, **environment_tags(uid=ctx.ref.uid, namespace=ctx.ref.namespace,
                                                  name=ctx.ref.name, cluster_id=self._cluster_id),
                  LAUNCH_TAG: launch.client_token, LAUNCH_SPEC_TAG: fingerprint(spec, launch.zone)},
            instance_name=spec.instance_name_prefix,
            vpc_id=network.vpc_id if network else None,
            subnet_id=(network.subnet_ids or {}).get(launch.zone) if network else None,
            security_group_ids=tuple(network.security_group_ids) if network else (),
            system_disk_type=spec.system_disk.type if spec.system_disk else None,
            system_disk_size_gib=spec.system_disk.size_gib if spec.system_disk else None,
            key_ids=tuple(spec.login_settings.key_ids) if spec.login_settings else (),
            user_data=spec.user_data,
            terminate_at=terminate_at(spec, launch.requested_at),
        )

    @staticmethod
    def _settle(result: PurchaseResult, launch: InflightLaunch) -> None:
        index = next(i for i, item in enumerate(result.journal) if item.client_token == launch.client_token)
        result.journal[index] = launch
        result.bought.append(launch)

    @staticmethod
    def _forget(result: PurchaseResult, launch: InflightLaunch) -> None:
        result.journal = [i for i in result.journal if i.client_token != launch.client_token]


def describe(exc: CloudError) -> str:
    return f"{exc.code}: {exc.message}" + (f" (RequestId {exc.request_id})" if exc.request_id else "")

