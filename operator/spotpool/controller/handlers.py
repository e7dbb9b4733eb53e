"""kopf glue: which events reconcile what. All decisions live in the planner, all actions in the
reconciler; this module only schedules them.

One daemon per SpotComputeEnvironment observes and reconciles it in a loop (every observe interval
when settled, every progress interval while buying or releasing); create, update and resume events
wake it at once. Deletion releases every owned instance and keeps the finalizer until the cloud
confirms none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import kopf

from spotpool.api.names import FINALIZER, PREFIX
from spotpool.controller import GROUP, PLURAL, VERSION, eventfence
from spotpool.controller.config import OperatorConfig
from spotpool.controller.credentials import credentials_entry
from spotpool.controller.events import Reason
from spotpool.controller.redaction import DELETION_WAITS, tracebacks_off_events
from spotpool.controller.reporting import PoolMemory
from spotpool.controller.runtime import Runtime, of

ANNOTATION_PREFIX = PREFIX
log = logging.getLogger(__name__)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    runtime = of(memo)
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX, v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration", v1=False)
    settings.posting.reporting_component = "spotpool"
    settings.posting.reporting_instance = socket.gethostname()
    # Warnings and errors of the per-object loggers become Events too (a pool author sees why a pass
    # failed), as their message alone: never a traceback (`tracebacks_off_events`), never a secret
    # (the redactor scrubs every record where it is made).
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    if not tracebacks_off_events(only_while=lambda: runtime.leadership.is_leader()):
        raise kopf.PermanentError("kopf's Event poster was not found: refusing to post log records unformatted")
    # Queued Events are sent only while this replica leads, checked when sent (controller/eventfence.py).
    if not eventfence.install(lambda: runtime.leadership.is_leader()):
        raise kopf.PermanentError("kopf's Event post function was not found: refusing to post Events unfenced")
    settings.posting.event_name_prefix = "spotpool-"
    # A stopping daemon finishes its current reconcile (bounded by the API timeouts) before it goes.
    settings.background.cancellation_polling = 0.5
    await runtime.start()


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    await of(memo).stop()


def register(config: OperatorConfig) -> None:
    """Handlers that depend on the configuration. Secrets are watched only while pools may sign with
    key pairs from them (`--secret-credentials`, the default): with them switched off the operator
    needs, and the chart grants, no access to Secrets at all."""
    if config.secret_credentials:
        kopf.index("", "v1", "secrets")(credential_secrets)
        kopf.on.event("", "v1", "secrets")(credentials_changed)


def credential_secrets(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    """The Secrets that hold a key pair, kept current by a watch (see `credentials_entry`)."""
    return credentials_entry(namespace, name, body)


def credentials_changed(namespace: str, name: str, body: kopf.Body, type: str | None, memo: kopf.Memo,
                        **_: Any) -> None:
    """A key-pair Secret changed (rotated, created, deleted): its namespace's pools look again now."""
    if type is not None and (type == "DELETED" or credentials_entry(namespace, name, body) is not None):
        of(memo).wake_namespace(namespace)


@kopf.on.event(GROUP, VERSION, PLURAL)
def wake(type: str | None, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """A spec change (kubectl apply, kubectl scale) reconciles now instead of at the next tick.

    From the raw watch events and each replica's own record of the generations it has seen, not
    from kopf's on.update: kopf tells a change from the last configuration it handled, kept in an
    annotation every replica shares, so when a standby's watch saw an edit first (both re-listing
    after an apiserver restart) and recorded it, the leader's kopf saw no change and the pool slept
    until its heartbeat (300 s; the chaos e2e caught a scale-down kept waiting 294 s)."""
    if type != "DELETED":
        of(memo).wake_on_generation(meta["uid"], meta.get("generation"))


def _state(memo: kopf.Memo) -> tuple[PoolMemory, asyncio.Lock]:
    """The object's own memory and lock, in kopf's per-object memo (shared by its daemon and its
    delete handler, gone with the object)."""
    if "pool" not in memo:
        memo["pool"] = PoolMemory()
        memo["lock"] = asyncio.Lock()
    return memo["pool"], memo["lock"]


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=60.0)
async def keep_pool(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                    logger: kopf.Logger, spot_pools: kopf.Index[Any, Any],
                    credential_secrets: kopf.Index[Any, Any] | None = None, **_: Any) -> None:
    # kopf hands indices only to handlers, and starts none before every index is filled.
    runtime = of(memo)
    _watch(runtime, spot_pools, credential_secrets)
    uid = meta["uid"]
    memory, lock = _state(memo)
    wakeup = runtime.wakeup(uid, meta["namespace"])
    config = runtime.config
    first = True
    while not stopped:
        wakeup.clear()
        # A settled pool sleeps until something wakes it: its slice of the sweep changed, its spec
        # or Secret changed, or this replica became the leader; the heartbeat is the safety net.
        # A pool whose fallback instances wait for spot is not settled (`Outcome.next_delay`).
        delay = config.observe_interval
        try:
            # A pool's first pass in this process holds the most (its status read whole, its
            # instances confirmed, its status written whole), and at startup every pool's first
            # pass begins at once: CPython keeps the peak they make for good. So they run a
            # bounded batch at a time (docs/scaling.md), the later ones on the sweep the first made.
            async with runtime.first_passes if first else contextlib.nullcontext():
                first = False
                outcome = await runtime.parts.reconciler.reconcile(body, memory, lock)
            delay = outcome.next_delay(config)
            if not runtime.leadership.is_leader():
                # Through the module's logger, not kopf's: kopf's posts Events, which a follower must not.
                log.debug("%s/%s: pass fenced: not leading", meta["namespace"], meta["name"])
        except Exception as exc:  # one environment's failure must never stop the others
            # The traceback goes to the operator's log only: kopf turns this per-object logger's
            # records into Events, which pool authors read.
            log.exception("%s/%s: reconcile failed", meta["namespace"], meta["name"])
            logger.error("reconcile failed (%s); observing again in %.0f s", type(exc).__name__, delay)
        await _sleep(stopped, wakeup, delay)


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=5.0)
async def release_everything(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, spot_pools: kopf.Index[Any, Any],
                             credential_secrets: kopf.Index[Any, Any] | None = None, **_: Any) -> None:
    runtime = of(memo)
    _watch(runtime, spot_pools, credential_secrets)
    await _await_leading(runtime)
    memory, lock = _state(memo)
    outcome = await runtime.parts.reconciler.reconcile(body, memory, lock, deleting=True)
    if not outcome.deletion_complete:
        why = outcome.waiting or outcome.problem or "waiting for the cloud to confirm every instance is gone"
        if why != memory.deletion_wait and runtime.leadership.is_leader():
            # Once per change of what it waits for, not once per retry (kopf's own retry Events are
            # left to the log: redaction.DELETION_WAITS).
            memory.deletion_wait = why
            runtime.post_event(body, type=Reason.DELETION_WAITING.type, reason=Reason.DELETION_WAITING, message=why)
        raise kopf.TemporaryError(DELETION_WAITS + why, delay=runtime.config.progress_interval)
    runtime.forget(meta["uid"], meta["namespace"], meta["name"])


def _watch(runtime: Runtime, spot_pools: kopf.Index[Any, Any], credential_secrets: kopf.Index[Any, Any] | None) -> None:
    """Hand kopf's indices (given only to handlers) to the runtime: the pools' claims for the spend
    guards, the key-pair Secrets for the credentials."""
    if credential_secrets is not None:
        runtime.watch_secrets(credential_secrets)
    runtime.watch_pools(spot_pools)


STANDBY_RETRY = 60.0
"""Seconds a standby's delete handler waits for this replica to lead before kopf records a retry.
Each retry is a patch of kopf's progress annotation; a standby that retried every progress
interval patched every deleting pool every 2 s, and each patch made the leader's conditional
status write of that pool conflict and read the object again."""


async def _await_leading(runtime: Runtime) -> None:
    """Return at once on the leader. A standby waits (writing nothing) until it leads or
    `STANDBY_RETRY` passes, then asks kopf to call again: either way with the object as it is
    then, not with the body this call was given, which may be a minute old (a deletion must plan
    from the journal the last leader left, not from an older one)."""
    if runtime.leadership.is_leader():
        return
    try:
        await asyncio.wait_for(runtime.leadership.wait_leading(), timeout=STANDBY_RETRY)
    except TimeoutError:
        pass
    raise kopf.TemporaryError(DELETION_WAITS + "this replica did not lead when the deletion came", delay=0)


async def _sleep(stopped: kopf.DaemonStopped, wakeup: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds, or less when the daemon is stopped or the object changed."""
    waiters = {asyncio.ensure_future(stopped.wait()), asyncio.ensure_future(wakeup.wait())}
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@kopf.index(GROUP, VERSION, PLURAL)
def spot_pools(namespace: str, body: kopf.Body, **_: Any) -> Any:
    """Every pool's claim (expectedCount, currentCount) by namespace, kept current by the watch,
    for the spend guards' namespace and installation totals (controller/policy.py)."""
    from spotpool.controller.policy import pool_claim

    return {namespace: pool_claim(body)}

