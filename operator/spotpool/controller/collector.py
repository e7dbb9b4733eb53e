"""The orphan collector: instances of this installation that no pool owns any more are released.

Why: every other rule keeps a pool's instances counted while the pool exists, and a deletion lets
its finalizer go only once the cloud confirms every id it knew is gone. Some routes still end with
an instance nobody counts: a finalizer removed by hand, an instance a deleted pool never learned
of (an unanswered RunInstances whose record expired, an instance the tag index showed only after
the pool was gone). Without a backstop such an instance bills forever. This is the backstop.

What counts as an orphan: an instance in a sweep (the installation's cluster tag, seen with one of
its key pairs) whose `spotpool.io/environment-uid` names no SpotComputeEnvironment that exists in
the namespaces this installation watches, and that is not already terminating. Instances of
namespaces outside the watched scope are never touched: another installation's pools live there.

What happens: the first sweep that shows it reports it (a Warning Event, a log line, the
`spotpool_orphan_instances` gauge); once it has stayed an orphan for the grace (`--orphan-grace`,
and at least two sweeps), it is released with the key pair that saw it, by the leader only, fenced
like any other release. The grace is there because the list of pools comes from a watch: a pool
created a moment ago may buy before the watch reaches this replica; minutes are far longer than
that lag, and a released orphan cost at most the grace. With `--no-orphan-release` orphans are
only reported.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from spotpool.api.names import ENVIRONMENT_TAG, NAMESPACE_TAG
from spotpool.cloud.client import CallGuard, CvmClient
from spotpool.cloud.errors import CloudError
from spotpool.cloud.models import TERMINATING, Instance
from spotpool.controller.config import DEFAULT_ORPHAN_GRACE
from spotpool.controller.events import Reason
from spotpool.controller.observer import ObserverKey

log = logging.getLogger(__name__)


MAX_TRACKED = 100_000
"""Orphans remembered at once: bounded whatever a sweep shows (a sweep holds at most 100,000)."""


@dataclass
class _Orphan:
    first_seen: float
    sweeps: int
    namespace: str
    environment: str


Report = Callable[[str, str], None]
"""(reason, message): a Warning the operator posts (an Event where it can) and logs."""


def _log_only(reason: str, message: str) -> None:
    log.warning("%s: %s", reason, message)


class OrphanCollector:
    def __init__(
        self,
        *,
        live_uids: Callable[[], Iterable[str] | None],
        namespaces: tuple[str, ...] = (),
        grace: float = DEFAULT_ORPHAN_GRACE,
        release: bool = True,
        report: Report | None = None,
        guard: Callable[[], CallGuard | None] = lambda: None,
        acting: Callable[[], bool] = lambda: True,
        on_count: Callable[[ObserverKey, int], None] | None = None,
        on_released: Callable[[ObserverKey, int], None] | None = None,
    ) -> None:
        """`live_uids`: the uids of every pool that exists (None while not known: nothing is an
        orphan then); `namespaces`: the watched scope (kopf's patterns; empty: every namespace);
        `guard`: a fence for the release (the term it is decided in); `acting`: whether this
        replica leads; `on_count`: the orphans each key pair's sweep shows (the metric)."""
        self._live_uids = live_uids
        self._namespaces = namespaces
        self.grace = grace
        self._release = release
        self._report = report if report is not None else _log_only
        self._guard = guard
        self._acting = acting
        self._on_count = on_count
        self._on_released = on_released
        self._orphans: dict[ObserverKey, dict[str, _Orphan]] = {}  # per key pair: what its sweeps show
        self._releasing: set[asyncio.Task[None]] = set()
        self.released: list[str] = []  # every id this collector released (tests, metrics)

    def in_scope(self, namespace: str) -> bool:
        """Whether this installation watches `namespace` (kopf's globs; `!pattern` excludes)."""
        if not self._namespaces:
            return True
        included = [p for p in self._namespaces if not p.startswith("!")]
        excluded = [p[1:] for p in self._namespaces if p.startswith("!")]
        if included and not any(fnmatch.fnmatchcase(namespace, p) for p in included):
            return False
        return not any(fnmatch.fnmatchcase(namespace, p) for p in excluded)

    def swept(self, key: ObserverKey, by_owner: dict[str, dict[str, Instance]], client: CvmClient,
              taken_at: float) -> None:
        """One sweep of one key pair: track its orphans, report new ones, release those due."""
        live = self._live_uids()
        if live is None:
            return  # the pools are not known yet: nothing can be called an orphan
        alive = set(live)
        seen: dict[str, Instance] = {}
        for owner, instances in by_owner.items():
            if owner in alive:
                continue
            for instance_id, instance in instances.items():
                if instance.state != TERMINATING and self.in_scope(instance.tags.get(NAMESPACE_TAG, "")):
                    seen[instance_id] = instance
        before = self._orphans.get(key, {})
        tracked: dict[str, _Orphan] = {}  # gone, terminating, or owned after all: no longer tracked
        new = []
        for instance_id, instance in list(seen.items())[:MAX_TRACKED]:
            orphan = before.get(instance_id)
            if orphan is None:
                orphan = _Orphan(taken_at, 0, instance.tags.get(NAMESPACE_TAG, ""),
                                 instance.tags.get(ENVIRONMENT_TAG, ""))
                new.append(instance_id)
            orphan.sweeps += 1
            tracked[instance_id] = orphan
        self._orphans[key] = tracked
        if self._on_count is not None:
            self._on_count(key, len(tracked))
        if new:
            self._report(Reason.ORPHAN_INSTANCES, self._words(new, key, tracked) + (
                f"; releasing them after {self.grace:.0f} s unless their pool reappears" if self._release
                else "; not releasing them (--no-orphan-release): release them by hand"))
        due = sorted(i for i, orphan in tracked.items()
                     if orphan.sweeps >= 2 and taken_at - orphan.first_seen >= self.grace)
        if due and self._release and self._acting():
            task = asyncio.ensure_future(self._terminate(client, due, key))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    def forget(self, key: ObserverKey) -> None:
        """The key pair's observer is gone: its orphans are no longer tracked."""
        self._orphans.pop(key, None)
        if self._on_count is not None:
            self._on_count(key, 0)

    async def _terminate(self, client: CvmClient, ids: list[str], key: ObserverKey) -> None:
        guard = self._guard()
        try:
            if guard is not None:
                guard.check()
            await client.terminate_instances(ids, guard=guard)
        except CloudError as exc:
            log.warning("releasing %d orphan instances in %s failed: %s: %s", len(ids), key.region, exc.code,
                        exc.message[:300])
            return
        except Exception as exc:  # NotLeader (the term ended), or anything else: the next sweep tries again
            log.info("orphan instances in %s not released: %s", key.region, exc)
            return
        tracked = self._orphans.get(key, {})
        for instance_id in ids:
            tracked.pop(instance_id, None)
        self.released += ids
        if self._on_released is not None:
            self._on_released(key, len(ids))
        self._report(Reason.ORPHAN_INSTANCES_RELEASED, f"released {len(ids)} orphan instances in {key.region}: "
                                                f"{', '.join(ids[:10])}" + (f" and {len(ids) - 10} more"
                                                                              if len(ids) > 10 else ""))

    @staticmethod
    def _words(ids: list[str], key: ObserverKey, tracked: dict[str, _Orphan]) -> str:
        where = sorted({f"{tracked[i].namespace}/{tracked[i].environment}" for i in ids})
        return (f"{len(ids)} instances of this installation in {key.region} (account {key.account_id}) belong "
                f"to no existing SpotComputeEnvironment (was: {', '.join(where[:5])}"
                f"{' and more' if len(where) > 5 else ''}): {', '.join(ids[:10])}"
                + (f" and {len(ids) - 10} more" if len(ids) > 10 else ""))

    async def close(self) -> None:
        for task in list(self._releasing):
            task.cancel()
        await asyncio.gather(*self._releasing, return_exceptions=True)
