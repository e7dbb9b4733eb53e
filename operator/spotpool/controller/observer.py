"""Observation per key pair and region: one sweep of the installation's instances, shared by the pools
that use that key pair.

Why per key pair and not per account: key pairs of one account share its AccountId, but CAM may
restrict what each of them sees (a team's sub-account lists only its own instances). A sweep made
with one team's key is no picture of another team's pools: an instance it cannot see would look
gone, and be bought again. So each key pair sweeps for its own pools, and a pool's absences are
confirmed with its own key (`reconciler._observe`).

Each interval, one paginated DescribeInstances by the cluster tag (`sweep`) replaces the snapshot;
every pool of that account and region reads its slice from it (`slice`), so N pools cost
ceil(instances/100) pages per interval, not N listings. Nothing invalidates the snapshot:

- purchases are not merged into it at all. A pool's journal holds the ids RunInstances returned, and
  the executor confirms those by `InstanceIds` until a sweep lists them, so a sweep that started
  before a purchase can never make it look missing;
- releases are: a TerminateInstances answer marks its ids TERMINATING at once (`released`), and a
  sweep that started before the release does not undo the mark.

After a sweep, the pools whose slice changed are woken (`on_change`); the others sleep on. A pass
that finds the snapshot older than the interval starts a sweep in the background and goes on with
what it has (at most one sweep in flight); only a pool's very first pass waits for one. Memory is
one `Instance` per instance of the account and region, plus the release marks of one interval.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from spotpool.api.names import CLUSTER_TAG, OWNER_UID_TAG
from spotpool.cloud.client import CvmClient
from spotpool.cloud.models import TERMINATING, Instance

log = logging.getLogger(__name__)

STALE_AFTER = 4
"""Intervals a snapshot may age while sweeps fail before passes stop acting on it (Degraded)."""


@dataclass(frozen=True)
class ObserverKey:
    """One key pair of one account in one region through one endpoint: what one sweep can see.
    The key pair is named by its SecretId and a digest of its secret (never the secret). A key
    pair belongs to one account for life, so the account adds nothing to which sweep it is: it
    is there to be named (the orphan collector's metric and Events), and is "" until known."""

    endpoint: str
    region: str
    account_id: str
    secret_id: str = ""
    secret_digest: str = ""


Swept = Callable[["ObserverKey", dict[str, dict[str, Instance]], CvmClient, float], None]
"""Told after each sweep: the key, the instances by owner uid, the client that swept, and when the
sweep began (the orphan collector, controller/collector.py)."""


Change = Callable[[Instance], Instance]
"""What the cloud accepted for one instance, as the snapshot shows it (`Observer._carry`)."""


@dataclass
class _Snapshot:
    taken_at: float  # clock when the sweep that made it started
    by_owner: dict[str, dict[str, Instance]] = field(default_factory=dict)


class Observer:
    def __init__(
        self,
        key: ObserverKey,
        *,
        cluster_id: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[set[str]], None] | None = None,
        wait_for_fresh: bool = False,
        acting: Callable[[], bool] = lambda: True,
        on_sweep: Swept | None = None,
    ) -> None:
        """`wait_for_fresh`: a pass waits for the sweep it starts (deterministic tests), instead
        of going on with the previous snapshot. `acting`: whether this replica leads; the timer
        sweeps only then (a standby makes no cloud calls). `on_sweep`: see `Swept`."""
        self.key = key
        self._cluster_id = cluster_id
        self._interval = interval
        self._clock = clock
        self._on_change = on_change
        self._wait_for_fresh = wait_for_fresh
        self._acting = acting
        self._on_sweep = on_sweep
        self.users: set[str] = set()  # uids of the pools that use this key pair (CloudAccess keeps it)
        self._client: CvmClient | None = None
        self._snapshot: _Snapshot | None = None
        # id -> what this process did to it (TerminateInstances, TagResources) and when it answered:
        # carried over every sweep that began before it (`_carry`).
        self._done: dict[str, list[tuple[float, Change]]] = {}
        self._sweep: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._timer: asyncio.Task[None] | None = None
        self._last_start: float | None = None  # clock when the latest sweep began (the timer's beat)
        self.sweeps = 0

    def use(self, client: CvmClient) -> None:
        """The client of the pool that last asked: a rotated key pair takes over the sweeps."""
        self._client = client

    def identify(self, account_id: str) -> None:
        """The account the key pair belongs to, once its look-up answered. A key pair's first sweep
        starts beside that look-up (a new pool's first round trip): until it is known, sweeps
        are not reported to `on_sweep` (the orphan collector names the account; it counts
        orphans over two sweeps anyway)."""
        if self.key.account_id != account_id:
            self.key = replace(self.key, account_id=account_id)

    @property
    def swept_once(self) -> bool:
        """Whether a snapshot exists (a pass can read its slice without waiting for a sweep)."""
        return self._snapshot is not None

    async def slice(self, owner_uid: str) -> list[Instance]:
        """The owner's instances in the latest snapshot (starting a sweep when it is stale)."""
        snapshot = self._snapshot
        if snapshot is None or self._clock() - snapshot.taken_at >= self._interval:
            task = self.start_sweep()
            if snapshot is None or self._wait_for_fresh:
                await asyncio.shield(task)
        snapshot = self._snapshot
        assert snapshot is not None
        if self._failure is not None and self._clock() - snapshot.taken_at >= STALE_AFTER * self._interval:
            raise self._failure  # sweeps keep failing: say so rather than act on an old view
        return list(snapshot.by_owner.get(owner_uid, {}).values())

    def start_sweep(self) -> asyncio.Task[None]:
        """Start a sweep unless one is in flight; the running one otherwise."""
        if self._sweep is None or self._sweep.done():
            self._sweep = asyncio.ensure_future(self._run_sweep())
            self._sweep.add_done_callback(self._finished)
        return self._sweep

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self._failure = task.exception()
        if self._failure is not None:
            log.warning("sweep of %s/%s failed: %s", self.key.region, self.key.account_id or "(account not known yet)",
                        self._failure)

    def released(self, instance_ids: Iterable[str]) -> None:
        """TerminateInstances accepted these ids: they are TERMINATING from now on."""
        self._carry(instance_ids, _terminating)

    def tagged(self, instance_ids: Iterable[str], tags: dict[str, str]) -> None:
        """TagResources accepted these tags on these ids: they carry them from now on (a drain
        mark). The tag index the sweep reads by may lag, and a sweep that began before the call
        cannot show them; without this a pass seconds later marked the instance again, starting
        its drain grace over and telling the pool's author again, until a sweep listed the tag."""
        self._carry(instance_ids, functools.partial(_with_tags, tags=tags))

    def _carry(self, instance_ids: Iterable[str], change: Change) -> None:
        """Apply what the cloud accepted to the snapshot now, and to every sweep that began before
        it: such a sweep may list the instance as it was. A sweep begun after it is the cloud's word."""
        now = self._clock()
        snapshot = self._snapshot
        for instance_id in instance_ids:
            self._done.setdefault(instance_id, []).append((now, change))
            if snapshot is None:
                continue
            for instances in snapshot.by_owner.values():
                if instance_id in instances:
                    instances[instance_id] = change(instances[instance_id])

    async def _run_sweep(self) -> None:
        client = self._client
        if client is None:
            raise RuntimeError("no client to sweep with")
        started = self._last_start = self._clock()
        instances = await client.describe_by_tag(CLUSTER_TAG, self._cluster_id)
        self.sweeps += 1
        by_owner: dict[str, dict[str, Instance]] = {}
        before = self._snapshot.by_owner if self._snapshot is not None else {}
        for instance in instances:
            owner = instance.tags.get(OWNER_UID_TAG)
            if owner is None:
                continue
            for at, change in self._done.get(instance.instance_id, ()):
                if at >= started:  # done after this sweep began
                    instance = change(instance)
            known = before.get(owner, {}).get(instance.instance_id)
            if known == instance:
                # The previous sweep's object, not this one's copy: then nothing made from this
                # sweep's pages outlives it, and the allocator can hand their memory back whole
                # (a copy kept per instance would pin every page's arenas: fragmentation).
                instance = known
            by_owner.setdefault(owner, {})[instance.instance_id] = instance
        self._done = {i: kept for i, changes in self._done.items()
                      if (kept := [(at, change) for at, change in changes if at >= started])}
        previous, self._snapshot = self._snapshot, _Snapshot(started, by_owner)
        if self._on_sweep is not None and self.key.account_id:
            self._on_sweep(self.key, by_owner, client, started)
        if self._on_change is not None and previous is not None:
            changed = {
                owner for owner in previous.by_owner.keys() | by_owner.keys()
                if _fingerprint(previous.by_owner.get(owner)) != _fingerprint(by_owner.get(owner))
            }
            if changed:
                self._on_change(changed)

    def start_timer(self) -> None:
        """Sweep every interval by itself (the operator), not only when a pass finds it stale."""
        if self._timer is None:
            self._timer = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        """One sweep per interval, counted from one sweep's start to the next. At 1,000 pools a
        sweep is 200 pages, five seconds at DescribeInstances' 40/s: sleeping a whole interval after
        each sweep ended would make the period interval + 5 s, and a reclaim would be seen that much
        later than `--observe-interval` promises. A sweep that outlasts the interval is followed by
        the next at once (never two in flight); a failed one is retried an interval after it began."""
        next_at = self._clock() + self._interval
        while True:
            await asyncio.sleep(max(next_at - self._clock(), 0.0))
            last = self._last_start
            if last is not None and last + self._interval > self._clock():
                next_at = last + self._interval  # a pass started a sweep meanwhile: count from it
                continue
            if self._client is None or not self._acting() or not self.key.account_id:
                # Not leading, or a key pair whose account was never confirmed (its first pool is
                # blocked on the look-up): no sweep on the timer, only at a pass's request.
                next_at = self._clock() + self._interval
                continue
            try:
                await asyncio.shield(self.start_sweep())
            except Exception:  # logged by _finished; the next tick tries again
                pass
            next_at = (self._last_start or self._clock()) + self._interval

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        if self._sweep is not None and not self._sweep.done():
            self._sweep.cancel()
            await asyncio.gather(self._sweep, return_exceptions=True)


def _terminating(instance: Instance) -> Instance:
    return instance if instance.state == TERMINATING else replace(instance, state=TERMINATING)


def _with_tags(instance: Instance, tags: dict[str, str]) -> Instance:
    if all(instance.tags.get(k) == v for k, v in tags.items()):
        return instance
    return replace(instance, tags={**instance.tags, **tags})


def _fingerprint(instances: dict[str, Instance] | None) -> frozenset[tuple[str, str]]:
    return frozenset((i, inst.state) for i, inst in (instances or {}).items())
