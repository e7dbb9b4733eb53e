"""Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics plus fencing.

Why: two reconcilers on one cluster and one cloud account overwrite each other's purchase journal
and buy twice. Only one replica (one installation, even) may observe, buy and release at a time.

How it decides (as client-go's `leaderelection` package does):

- The Lease record names a holder, a lease duration, an acquire and a renew time, and a count of
  leadership transitions. A candidate takes the Lease when it does not exist, when its holder is
  empty (released), or when the candidate's own clock has seen the record unchanged for the
  record's lease duration. Remote timestamps are written for people, never trusted: clocks of two
  nodes disagree, and the local monotonic clock only has to run at about the right *rate*.
- Every write carries the `resourceVersion` that was read (or last written) as a precondition, so
  two candidates that both saw an expired lease cannot both win: the API server answers 409 to the
  slower one.
- The leader renews every retry period and steps down when it has not renewed for the renew
  deadline. It releases the Lease on a clean stop (empty holder, `leaseDurationSeconds: 1`) so a
  follower takes over within a retry period instead of a lease duration.

What it adds (fencing): `is_leader()` is computed from the clock on every call, not from what the
renew loop last managed to record. A leader whose event loop was paused (SIGSTOP, a VM frozen, a
long GC or a blocked thread) or cut off from the API server answers False the moment
`renew_deadline` has passed since the *sending* of its last successful renewal, without talking to
anyone. A follower can only have taken over after observing that same record unchanged for
`lease_duration`, which it began no earlier than that renewal was sent; since
`renew_deadline < lease_duration`, the old leader has stopped acting before the new one starts,
with `lease_duration - renew_deadline` seconds of margin for clock-rate differences and for an
action already under way. The clock is CLOCK_BOOTTIME, which, unlike CLOCK_MONOTONIC, keeps
counting while a machine is suspended: a laptop or VM that wakes up knows how long it slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import inspect
import logging
import math
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, Self

from spotpool.controller.config import DEFAULT_LEASE_NAMESPACE

if TYPE_CHECKING:
    from spotpool.controller.config import OperatorConfig

log = logging.getLogger(__name__)

LEASE_LABELS = {"app.kubernetes.io/part-of": "spotpool", "app.kubernetes.io/component": "leader-election"}


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# Seconds on a clock that never goes back and, on Linux, keeps counting through a suspend.
boottime: Callable[[], float] = _boottime if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Timing:
    """Lease duration, renew deadline and retry period, in seconds (client-go's defaults).

    `lease_duration` is what followers wait, from their own observation of the last change, before
    taking over; it is an integer because the Lease stores whole seconds. `renew_deadline` is how
    long after the sending of its last successful renewal a leader still acts. `retry_period` is the
    pause between attempts; a follower's pause is stretched by up to `jitter` times itself so that
    candidates do not hit the API server in lockstep.
    """

    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    jitter: float = 1.2

    def __post_init__(self) -> None:
        if isinstance(self.lease_duration, bool) or not isinstance(self.lease_duration, int):
            raise TypeError(f"lease duration must be a whole number of seconds, not {self.lease_duration!r}")
        if self.retry_period <= 0 or self.jitter < 0:
            raise ValueError("retry period must be positive and jitter not negative")
        # The same two rules as client-go's NewLeaderElector, for the same reasons: the leader must give
        # up before a follower can take over, and must get more than one try at renewing.
        if not self.lease_duration > self.renew_deadline:
            raise ValueError(f"lease duration ({self.lease_duration} s) must be greater than the renew "
                             f"deadline ({self.renew_deadline} s)")
        if not self.renew_deadline > self.jitter * self.retry_period:
            raise ValueError(f"renew deadline ({self.renew_deadline} s) must be greater than jitter x retry "
                             f"period ({self.jitter} x {self.retry_period} s)")


@dataclass(frozen=True)
class LeaseRecord:
    """The part of a Lease's spec that leader election reads and writes."""

    holder: str  # "" when released
    lease_duration: int
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


class Action(enum.Enum):
    CREATE = "create"  # no Lease: create it, naming ourselves
    ACQUIRE = "acquire"  # free, released or expired: take it over (a transition)
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # someone else's and not expired by our clock


def expires_at(record: LeaseRecord, observed_at: float) -> float:
    """Local time at which a record first observed unchanged at `observed_at` counts as expired.

    The holder's own lease duration counts, not ours: it is the holder that promised to stop acting
    before then (its renew deadline is shorter), and installations may be configured differently.
    """
    return observed_at + record.lease_duration


def decide(
    record: LeaseRecord | None,
    identity: str,
    now: float,
    observed_at: float | None,
    last_seen: LeaseRecord | None = None,
) -> Action:
    """What a candidate does with the record it just read (None: no Lease).

    `observed_at` is when (by the local clock) the current record was first seen; `last_seen` is the
    last record seen before it, used when the Lease has vanished: a Lease deleted by hand while its
    holder is alive must not hand out a second leadership at once, so the last holder seen is still
    waited out.
    """
    seen = record if record is not None else last_seen
    live = observed_at is None or (seen is not None and now < expires_at(seen, observed_at))
    if seen is not None and seen.holder and seen.holder != identity and live:
        return Action.WAIT
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    return Action.ACQUIRE


def claim(record: LeaseRecord | None, identity: str, lease_duration: int, wall_now: datetime) -> LeaseRecord:
    """The record that makes (or keeps) `identity` the holder; a change of holder is a transition."""
    if record is not None and record.holder == identity:
        return replace(record, lease_duration=lease_duration, renew_time=wall_now,
                       acquire_time=record.acquire_time or wall_now)
    transitions = 0 if record is None else record.transitions + 1
    return LeaseRecord(identity, lease_duration, wall_now, wall_now, transitions)


def released(record: LeaseRecord, wall_now: datetime) -> LeaseRecord:
    """What a stepping-down leader writes: no holder, so any candidate may take it at once (client-go
    writes the same, with a 1 s duration for candidates that only look at the duration)."""
    return LeaseRecord("", 1, wall_now, wall_now, record.transitions)


LEASE_PREFIX = "spotpool-leader"


def lease_name(cluster_id: str | None = None, namespaces: Iterable[str] = ()) -> str:
    """The Lease's name: the same for every installation that could act on the same pools, whatever its
    release name or the namespace it runs in, and different for installations that cannot.

    - `cluster_id`: the id the installation tags instances with when one is configured (--cluster-id,
      $SPOTPOOL_CLUSTER_ID); None for the default id, the kube-system namespace's UID. That UID is
      one value per cluster and the Lease lives in that same cluster, so it would tell no two
      candidates apart: the name leaves it out, which lets the chart name the Lease in its RBAC rule
      (`resourceNames`) without reading the cluster. A configured id goes in as a readable slug plus
      a hash of the exact id: ids that differ only in case or punctuation get different Leases.
    - `namespaces`: the namespace patterns watched (--namespace); empty for a cluster-wide
      installation. Otherwise a hash of the sorted, deduplicated patterns is appended, so that
      installations watching disjoint namespaces (a team with its own operator) each have a leader,
      while installations with the same scope share one. Installations whose scopes differ but
      overlap get different Leases: see docs/high-availability.md.

    Every name is a valid object name of at most 63 characters (the chart's
    `spotpool.leaseName` computes the same): `spotpool-leader`, `spotpool-leader-<slug>-<hash>`,
    `spotpool-leader-ns-<hash>`, `spotpool-leader-<slug>-<hash>-ns-<hash>`.
    """
    scope = sorted(set(namespaces))
    parts = [LEASE_PREFIX]
    if cluster_id is not None:
        # 15 + 1 + 36 + 1 + 10 = 63: a UUID (36) fits whole in a cluster-wide name; with the scope's
        # "-ns-" and hash (14) the slug keeps 22 characters.
        room = 22 if scope else 36
        slug = re.sub(r"[^a-z0-9]+", "-", cluster_id.lower()).strip("-")[:room].strip("-")
        parts += [slug] if slug else []
        parts.append(hashlib.sha256(cluster_id.encode()).hexdigest()[:10])
    if scope:
        # The "namespaces" line keeps this hash apart from a cluster id's: a scope of one namespace
        # "ns" must not give the name of the cluster id "ns".
        parts += ["ns", hashlib.sha256("\n".join(["namespaces", *scope]).encode()).hexdigest()[:10]]
    return "-".join(parts)


def default_identity() -> str:
    """Pod name (or host name) plus a random suffix: a restarted process is a new candidate, and two
    processes sharing a host name (host network, a developer's machine) never pass for one another."""
    host = os.environ.get("POD_NAME") or socket.gethostname() or "spotpool"
    return f"{host}_{uuid.uuid4().hex[:10]}"


# -- storage -----------------------------------------------------------------------------------------

class LeaseConflict(Exception):
    """The write's precondition failed: someone else wrote (or created, or deleted) the Lease first."""


class LeaseStore(Protocol):
    """Where the record lives; every write is conditional on the resourceVersion given."""

    async def get(self, name: str) -> tuple[LeaseRecord, str] | None: ...

    async def create(self, name: str, record: LeaseRecord) -> str: ...

    async def update(self, name: str, record: LeaseRecord, resource_version: str) -> str: ...


def _micro_time(value: datetime | None) -> datetime | None:
    # The API server parses MicroTime with exactly six fractional digits; Python's isoformat() drops
    # them when they are all zero. One microsecond later is the same instant for every purpose here.
    if value is not None and value.microsecond == 0:
        return value.replace(microsecond=1)
    return value


class KubeLeaseStore:
    """Leases in one namespace, through the official (synchronous) client run in worker threads.

    Writes are PUTs carrying `metadata.resourceVersion`, which the API server enforces (409 on a
    stale one): `update` is the only verb needed besides `get` and `create`.
    """

    def __init__(self, namespace: str, api_client: Any = None, *, request_timeout: float = 10.0) -> None:
        import kubernetes

        if api_client is None:
            kubernetes.config.load_config()  # type: ignore[no-untyped-call]
            api_client = kubernetes.client.ApiClient()
        self.namespace = namespace
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self._timeout = request_timeout
        self._meta: dict[str, dict[str, Any]] = {}  # labels and annotations seen, kept across PUTs

    async def get(self, name: str) -> tuple[LeaseRecord, str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = await asyncio.to_thread(self._api.read_namespaced_lease, name, self.namespace,
                                            _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        assert lease.metadata is not None and lease.spec is not None  # the API server always sends both
        self._meta[name] = {"labels": lease.metadata.labels, "annotations": lease.metadata.annotations}
        spec = lease.spec
        record = LeaseRecord(
            holder=spec.holder_identity or "",
            lease_duration=int(spec.lease_duration_seconds or 0),
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=int(spec.lease_transitions or 0),
        )
        return record, str(lease.metadata.resource_version)

    async def create(self, name: str, record: LeaseRecord) -> str:
        return await self._write(name, record, None)

    async def update(self, name: str, record: LeaseRecord, resource_version: str) -> str:
        return await self._write(name, record, resource_version)

    async def _write(self, name: str, record: LeaseRecord, resource_version: str | None) -> str:
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta
        from kubernetes.client.exceptions import ApiException

        meta = self._meta.get(name) or {"labels": LEASE_LABELS, "annotations": None}
        body = V1Lease(
            metadata=V1ObjectMeta(name=name, namespace=self.namespace, resource_version=resource_version,
                                  labels=meta["labels"], annotations=meta["annotations"]),
            spec=V1LeaseSpec(holder_identity=record.holder, lease_duration_seconds=record.lease_duration,
                             acquire_time=_micro_time(record.acquire_time),
                             renew_time=_micro_time(record.renew_time), lease_transitions=record.transitions),
        )
        try:
            if resource_version is None:
                lease = await asyncio.to_thread(self._api.create_namespaced_lease, self.namespace, body,
                                                _request_timeout=self._timeout)
            else:
                lease = await asyncio.to_thread(self._api.replace_namespaced_lease, name, self.namespace, body,
                                                _request_timeout=self._timeout)
        except ApiException as exc:
            # 409: stale resourceVersion or already created; 404: deleted since we read it.
            if exc.status in (404, 409):
                raise LeaseConflict(f"Lease {self.namespace}/{name}: {exc.reason}") from None
            raise
        assert lease.metadata is not None
        return str(lease.metadata.resource_version)


class InMemoryLeaseStore:
    """A LeaseStore with the API server's precondition semantics, for tests of code that leads."""

    def __init__(self) -> None:
        self.leases: dict[str, tuple[LeaseRecord, str]] = {}
        self._version = 0

    async def get(self, name: str) -> tuple[LeaseRecord, str] | None:
        return self.leases.get(name)

    async def create(self, name: str, record: LeaseRecord) -> str:
        if name in self.leases:
            raise LeaseConflict(f"{name} already exists")
        return self._put(name, record)

    async def update(self, name: str, record: LeaseRecord, resource_version: str) -> str:
        current = self.leases.get(name)
        if current is None or current[1] != resource_version:
            raise LeaseConflict(f"{name}: resourceVersion {resource_version} is stale")
        return self._put(name, record)

    def _put(self, name: str, record: LeaseRecord) -> str:
        self._version += 1
        self.leases[name] = (record, str(self._version))
        return str(self._version)


# -- the elector -------------------------------------------------------------------------------------

StartedCallback = Callable[[int], None]
StoppedCallback = Callable[[int, str], Awaitable[None] | None]


class LeaderElector:
    """One candidate for one Lease. Run it with `start()` (or `async with`), ask `is_leader()` before
    every action that writes, and stop it with `stop()`, which releases the Lease.

    Leadership comes in terms: each acquisition starts a new `term` (counted locally from 1). Work
    begun in one term should check `is_leader(term)`, so that it does not carry on into a later term
    after a loss and re-acquisition in between, with knowledge from before the loss.

    Callbacks: `on_started_leading(term)` runs in the elector's loop when a term starts; it must not
    block (start tasks, set flags). `on_stopped_leading(term, reason)` runs when a term ends (renew
    deadline passed, or stop); it may be a coroutine function, which is awaited before the elector
    goes on (and, on stop, before the Lease is released), so it can wait for in-flight work to end.
    The `leading` / `following` events mirror the same transitions for code that prefers waiting.
    Neither callbacks nor events can fire while the event loop is paused: `is_leader()` is the
    authority, the rest is notification.
    """

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        identity: str | None = None,
        timing: Timing | None = None,
        *,
        clock: Callable[[], float] = boottime,
        wall_clock: Callable[[], datetime] = utcnow,
        rng: Callable[[], float] = random.random,
        on_started_leading: StartedCallback | None = None,
        on_stopped_leading: StoppedCallback | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.identity = identity or default_identity()
        self.timing = timing or Timing()
        self.term = 0
        self.leading = asyncio.Event()
        self.following = asyncio.Event()
        self.following.set()
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._is_leading = False
        self._fence = -math.inf  # local time until which this replica may act
        self._observed: LeaseRecord | None = None  # the last record read or written
        self._observed_at: float | None = None  # local time it was first seen (or sent, if ours)
        self._last_seen: LeaseRecord | None = None  # the record before a Lease vanished
        self._version: str | None = None  # resourceVersion of `_observed`
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- what the operator asks ------------------------------------------------------------------
    def is_leader(self, term: int | None = None) -> bool:
        """True while this replica leads (in `term`, if given): it holds the Lease and its renew
        deadline has not passed since its last successful renewal was sent. Safe from any thread."""
        if not self._is_leading or (term is not None and term != self.term):
            return False
        return self._clock() < self._fence

    def remaining(self) -> float:
        """Seconds this replica may still act without another renewal (0 when not leading): a bound
        for the timeout of an action that must finish while it leads."""
        return max(0.0, self._fence - self._clock()) if self._is_leading else 0.0

    @property
    def holder(self) -> str | None:
        """The holder in the last record seen ("" released, None nothing seen yet), for logs."""
        return None if self._observed is None else self._observed.holder

    async def wait_leading(self) -> int:
        """Wait until this replica leads; returns the term."""
        await self.leading.wait()
        return self.term

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name=f"leader-election {self.name}")
        return self._task

    async def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; end the term (awaiting `on_stopped_leading`), then release the Lease so a
        follower takes over within its retry period. The attempt in flight, if any, finishes first
        (it is bounded by the renew deadline): cancelling it could leave a renewal landing unseen,
        and the release would then fail its precondition."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._step_down("stopping")
        if release:
            await self._release()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Campaign until `stop()`: acquire, renew, step down on a missed deadline, campaign again."""
        while not self._stopping.is_set():
            delay = await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    # -- one attempt -----------------------------------------------------------------------------
    async def step(self) -> float:
        """One attempt to acquire or renew; returns the seconds to wait before the next one."""
        if self._is_leading and self._clock() >= self._fence:
            await self._step_down(f"renew deadline ({self.timing.renew_deadline} s) passed")
        # A leader's attempt may take only until its fence (a late success would not help); a
        # follower's, the renew deadline, so a hung connection does not stall the campaign.
        budget = self._fence - self._clock() if self._is_leading else self.timing.renew_deadline
        try:
            await asyncio.wait_for(self._try_acquire_or_renew(), timeout=max(budget, 0.001))
        except TimeoutError:
            log.warning("Lease %s: no answer within %.1f s", self.name, budget)
        except LeaseConflict as exc:
            log.info("Lease %s: lost a race: %s", self.name, exc)
        except Exception as exc:  # any API or network error is one failed attempt
            log.warning("Lease %s: attempt failed: %s", self.name, exc)
        now = self._clock()
        if self._is_leading:
            if self._fence == -math.inf:
                await self._step_down(f"the Lease is held by {self.holder!r}")
            elif now >= self._fence:
                await self._step_down(f"renew deadline ({self.timing.renew_deadline} s) passed")
            else:
                return min(self.timing.retry_period, self._fence - now)
        delay = self.timing.retry_period * (1 + self._rng() * self.timing.jitter)
        if self._observed is not None and self._observed_at is not None and self._observed.holder \
                and self._observed.holder != self.identity:
            # Wake up right when the holder's lease runs out rather than up to a jittered period later.
            until_expiry = expires_at(self._observed, self._observed_at) - now
            if until_expiry > 0:
                delay = min(delay, until_expiry)
        return delay

    async def _try_acquire_or_renew(self) -> None:
        if (self._is_leading and self._version is not None and self._observed is not None
                and self._observed.holder == self.identity):
            # The leader's fast path: renew the record it wrote last, without reading it first.
            sent = self._clock()
            record = claim(self._observed, self.identity, self.timing.lease_duration, self._wall())
            try:
                version = await self.store.update(self.name, record, self._version)
            except LeaseConflict:
                self._version = None  # someone wrote it: read before trying again
                raise
            self._renewed(record, version, sent)
            return

        got = await self.store.get(self.name)
        now = self._clock()
        current: LeaseRecord | None = None
        if got is None:
            if self._observed is not None:
                self._last_seen = self._observed
            self._version = None
        else:
            current, self._version = got
            if current != self._observed:
                self._observed, self._observed_at = current, now
            self._last_seen = None
        if self._is_leading and (current is None or current.holder != self.identity):
            # Someone else wrote the Lease (a person, or an installation with other timings): whatever
            # our deadline says, we are not the holder any more. Stop acting now; step() ends the term.
            self._fence = -math.inf
            return
        action = decide(current, self.identity, now, self._observed_at, self._last_seen)
        if action is Action.WAIT:
            return
        record = claim(current, self.identity, self.timing.lease_duration, self._wall())
        sent = self._clock()
        if action is Action.CREATE:
            version = await self.store.create(self.name, record)
        else:
            assert self._version is not None
            version = await self.store.update(self.name, record, self._version)
        self._renewed(record, version, sent)

    def _renewed(self, record: LeaseRecord, version: str, sent: float) -> None:
        # Followers start their wait no earlier than they saw this record, which was after `sent`.
        self._observed, self._observed_at, self._version, self._last_seen = record, sent, version, None
        fence = sent + self.timing.renew_deadline
        if self._clock() >= fence:
            log.warning("Lease %s: the write took past the renew deadline; not acting on it", self.name)
            return
        self._fence = fence
        if not self._is_leading:
            self._is_leading = True
            self.term += 1
            log.info("Lease %s: %s leads (term %d, transitions %d)", self.name, self.identity, self.term,
                     record.transitions)
            self.following.clear()
            self.leading.set()
            if self._on_started is not None:
                try:
                    self._on_started(self.term)
                except Exception:
                    log.exception("Lease %s: on_started_leading failed", self.name)

    async def _step_down(self, reason: str) -> None:
        if not self._is_leading:
            return
        self._is_leading = False
        self._fence = -math.inf
        log.warning("Lease %s: %s stops leading (term %d): %s", self.name, self.identity, self.term, reason)
        self.leading.clear()
        self.following.set()
        if self._on_stopped is not None:
            try:
                result = self._on_stopped(self.term, reason)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("Lease %s: on_stopped_leading failed", self.name)

    async def _release(self) -> None:
        if self._observed is None or self._observed.holder != self.identity or self._version is None:
            return
        record = released(self._observed, self._wall())
        try:
            version = await asyncio.wait_for(self.store.update(self.name, record, self._version),
                                             timeout=self.timing.renew_deadline)
        except Exception as exc:  # best effort: the lease then expires on its own
            log.warning("Lease %s: could not release (followers wait for it to expire): %s", self.name, exc)
            return
        self._observed, self._observed_at, self._version = record, self._clock(), version
        log.info("Lease %s: released by %s", self.name, self.identity)


# -- wiring --------------------------------------------------------------------------------------

class Standalone:
    """What the operator consults without --leader-elect: always leading, in one endless term. The
    same interface as LeaderElector, so the code that acts asks the same questions either way."""

    term = 1
    identity = "standalone"
    holder: str | None = "standalone"

    def __init__(self) -> None:
        self.leading = asyncio.Event()
        self.leading.set()
        self.following = asyncio.Event()

    def is_leader(self, term: int | None = None) -> bool:
        return term is None or term == self.term

    def remaining(self) -> float:
        return math.inf

    async def wait_leading(self) -> int:
        return self.term

    def start(self) -> None:
        return None

    async def stop(self, *, release: bool = True) -> None:
        return None


def from_config(
    config: OperatorConfig,
    cluster_id: str,
    api_client: Any = None,
    *,
    on_started_leading: StartedCallback | None = None,
    on_stopped_leading: StoppedCallback | None = None,
) -> LeaderElector | Standalone:
    """The elector the operator's flags ask for; Standalone without --leader-elect. Flags were
    validated by the CLI.

    The Lease lives in --leader-election-namespace (kube-system by default, whatever namespace the
    operator runs in) and is named by `lease_name` from the cluster id and the watched namespaces.
    `cluster_id` is the resolved id the instances are tagged with; it enters the name only when it
    was configured (`config.cluster_id`: --cluster-id, or $SPOTPOOL_CLUSTER_ID, its default), not when it
    is the default kube-system UID, which every installation in the cluster shares anyway.
    """
    if not config.leader_elect:
        return Standalone()
    configured = bool(config.cluster_id)
    name = lease_name(cluster_id if configured else None, config.namespaces)
    namespace = config.leader_election_namespace or DEFAULT_LEASE_NAMESPACE
    timing = Timing(config.lease_duration, config.renew_deadline, config.retry_period)
    store = KubeLeaseStore(namespace, api_client, request_timeout=config.renew_deadline)
    log.info("leader election on Lease %s/%s", namespace, name)
    return LeaderElector(store, name, default_identity(), timing,
                         on_started_leading=on_started_leading, on_stopped_leading=on_stopped_leading)
