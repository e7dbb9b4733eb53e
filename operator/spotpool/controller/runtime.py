"""The operator's long-lived parts, created once kopf's event loop runs and shared by its handlers.

One `Runtime` per operator process, made by the CLI and handed to every handler through kopf's
operator-level memo (`kopf.operator(memo=...)`, shallow-copied into each object's memo, as kopf's
own daemons receive it): no module-level singleton, so a test or a second operator in one process
builds its own.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from spotpool.cloud.client import warm_up
from spotpool.controller import leadership
from spotpool.controller.cloudaccess import CloudAccess
from spotpool.controller.collector import OrphanCollector
from spotpool.controller.config import OperatorConfig
from spotpool.controller.fencing import Fence
from spotpool.controller.identity import CredentialPolicyError, Identities, identities_from_config
from spotpool.controller.kube import ClusterKubeApi
from spotpool.controller.leadership import LeaderElector, Standalone
from spotpool.controller.policy import IndexedPools, Policy
from spotpool.controller.reconciler import Reconciler
from spotpool.metrics import METRICS, Metrics

log = logging.getLogger(__name__)

_TAG_VALUE = re.compile(r"[^A-Za-z0-9._:/=+@-]")


def settle_heap() -> None:
    """Move everything alive after startup (kopf, the Kubernetes and CVM clients, pydantic's
    models, the modules; the imports alone are 80,000 tracked objects) out of the garbage
    collector's sight (`gc.freeze`).

    None of it ever becomes garbage, yet every full collection walked it all: 53 ms in a started
    operator, at a moment CPython picks by allocation counts, which was the middle of the pass that
    had just parsed a purchase of 1,000 instances (their currentCount showed 53 ms late). After the
    freeze a full collection walks only what the pools hold.
    """
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class Parts:
    """What `Runtime.start` builds once kopf's loop runs (they need it): the Kubernetes access, the
    cloud access, the orphan collector and the reconciler. Made together, so none is ever half
    there: before the start there are no parts at all (`Runtime.parts` raises)."""

    kube: ClusterKubeApi
    cloud: CloudAccess
    collector: OrphanCollector
    reconciler: Reconciler


class Runtime:
    def __init__(self, config: OperatorConfig | None = None) -> None:
        self.config = config or OperatorConfig()
        self.metrics: Metrics = METRICS
        self._parts: Parts | None = None
        self.leadership: LeaderElector | Standalone = Standalone()
        self.identities = Identities()
        self._secret_index: Any = None
        self.pools = IndexedPools()  # every pool's claim, for the spend guards' totals
        self.ready = asyncio.Event()
        # First passes in this process, a bounded batch at a time (`handlers.keep_pool`).
        self.first_passes = asyncio.Semaphore(self.config.first_passes_at_once)
        self._wakeups: dict[str, asyncio.Event] = {}
        self._namespaces: dict[str, str] = {}  # uid -> namespace, to wake a namespace's pools
        self._generations: dict[str, Any] = {}  # uid -> the last metadata.generation this replica saw

    async def start(self) -> None:
        warm_up()  # before any environment waits on its first CVM client and request
        kube = ClusterKubeApi()
        # config.cluster_id is --cluster-id, whose default the CLI reads from $SPOTPOOL_CLUSTER_ID.
        cluster_id = self.config.cluster_id or await kube.namespace_uid("kube-system")
        if not cluster_id:
            # A shared fallback id would let two clusters on one account release each other's
            # instances: refuse to start rather than guess.
            raise kopf.PermanentError(
                "cannot tell this installation's instances from others': the kube-system namespace "
                "is not readable (grant get on namespaces) and no --cluster-id / SPOTPOOL_CLUSTER_ID "
                "is set")
        cluster_id = _TAG_VALUE.sub("-", cluster_id)[:63]
        # The backstop for instances no pool counts any more (controller/collector.py): leader only,
        # fenced like every release, for the namespaces this installation watches.
        collector = OrphanCollector(
            live_uids=self._live_uids, namespaces=self.config.namespaces, grace=self.config.orphan_grace,
            release=self.config.orphan_release, report=self._report_orphans,
            guard=lambda: Fence(self.leadership), acting=lambda: self.leadership.is_leader(),
            on_count=lambda key, n: self.metrics.orphans.labels(key.region, key.account_id).set(n),
            on_released=lambda key, n: self.metrics.orphans_released.labels(key.region, key.account_id).inc(n),
        )
        cloud = CloudAccess(
            cluster_id=cluster_id,
            observer=self.metrics.observe_api_call,
            offers_max_age=self.config.offers_max_age,
            rate_limits=self.config.rate_limits,
            observe_interval=self.config.observe_interval,
            on_change=self.wake_all,
            sweep_on_timer=True,
            # A standby sweeps nothing: only the leader's timers call the cloud.
            acting=lambda: self.leadership.is_leader(),
            on_sweep=collector.swept,
            on_closed=collector.forget,
        )
        # Only the leader observes, buys and releases; followers keep their daemons idle. The Lease
        # is named from the cluster id, so two installations on one cluster elect one leader.
        self.leadership = leadership.from_config(
            self.config, cluster_id, on_started_leading=self._started_leading,
            on_stopped_leading=self._stopped_leading)
        self.metrics.track_leader(self.leadership.is_leader)
        self.leadership.start()
        try:
            self.identities = identities_from_config(self.config)
        except CredentialPolicyError as exc:
            raise kopf.PermanentError(str(exc)) from None
        reconciler = Reconciler(kube=kube, cloud=cloud, metrics=self.metrics, post_event=self.post_event,
                                     leadership=self.leadership, policy=Policy.from_config(self.config),
                                     pools=self.pools, identities=self.identities)
        self._parts = Parts(kube, cloud, collector, reconciler)
        if self._secret_index is not None:
            kube.watch_secrets(self._secret_index)
        log.info("spotpool operator started: cluster id %s, %s", cluster_id,
                 "all namespaces" if self.config.clusterwide else "namespaces " + ", ".join(self.config.namespaces))
        settle_heap()
        self.ready.set()

    @property
    def parts(self) -> Parts:
        """The parts `start` built; handlers run only after it (kopf's startup handler)."""
        if self._parts is None:
            raise RuntimeError("the runtime has not started: kopf runs the handlers only after its startup handler")
        return self._parts

    def post_event(self, body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        """Kubernetes Events are the activity log; kopf posts them asynchronously with retries.

        Only the leader posts: an Event is a write, and a leader that lost its term in the middle
        of a pass (paused with a RunInstances on the wire, say) must not publish what it learned
        late; the new leader owns the object's story from its takeover. The log keeps the line
        either way."""
        if not self.leadership.is_leader():
            log.info("not leading: Event %s not posted (%s)", reason, message[:200])
            return
        kopf.event(cast(kopf.Body, dict(body)), type=type, reason=reason, message=message[:1024])

    def watch_secrets(self, index: Any) -> None:
        """Hand kopf's index of key-pair Secrets to the Kubernetes access (once is enough)."""
        if self._secret_index is None:
            self._secret_index = index
            if self._parts is not None:
                self._parts.kube.watch_secrets(index)

    def watch_pools(self, index: Any) -> None:
        """Hand kopf's index of every pool's claim (handlers.py `spot_pools`) to the spend guards."""
        if self.pools.index is None:
            self.pools.index = index

    def _live_uids(self) -> list[str] | None:
        claims = self.pools.claims()
        return None if claims is None else [claim.uid for claim in claims]

    def _report_orphans(self, reason: str, message: str) -> None:
        """Orphans belong to no object any more: the Warning goes on the operator's own Pod (where
        it runs in one), and to the log either way. Only the leader posts."""
        log.warning("%s: %s", reason, message)
        pod, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if pod and namespace and self.leadership.is_leader():
            kopf.event(cast(kopf.Body, {"apiVersion": "v1", "kind": "Pod",
                                        "metadata": {"name": pod, "namespace": namespace}}),
                       type="Warning", reason=reason, message=message[:1024])

    def _started_leading(self, term: int) -> None:
        log.info("leading (term %d): reconciling every pool now", term)
        for wakeup in self._wakeups.values():
            wakeup.set()

    def _stopped_leading(self, term: int, reason: str) -> None:
        log.warning("stopped leading (term %d): %s; acting no more until elected again", term, reason)

    async def stop(self) -> None:
        self.ready.clear()
        await self.leadership.stop()
        if self._parts is not None:
            await self._parts.collector.close()
            await self._parts.cloud.close()
        await self.identities.aclose()

    def wakeup(self, uid: str, namespace: str | None = None) -> asyncio.Event:
        if namespace is not None:
            self._namespaces[uid] = namespace
        return self._wakeups.setdefault(uid, asyncio.Event())

    def wake_namespace(self, namespace: str) -> None:
        for uid, where in self._namespaces.items():
            if where == namespace and uid in self._wakeups:
                self._wakeups[uid].set()

    def wake(self, uid: str) -> None:
        self.wakeup(uid).set()

    def wake_on_generation(self, uid: str, generation: Any) -> None:
        """Wake the pool when its spec changed since this replica last saw it (status writes,
        which do not move the generation, wake nobody)."""
        if self._generations.get(uid) != generation:
            self._generations[uid] = generation
            self.wake(uid)

    def wake_all(self, uids: set[str]) -> None:
        """A sweep changed these pools' slices: reconcile them now rather than at their next tick."""
        for uid in uids:
            if uid in self._wakeups:
                self._wakeups[uid].set()

    def forget(self, uid: str, namespace: str, name: str) -> None:
        self._wakeups.pop(uid, None)
        self._namespaces.pop(uid, None)
        self._generations.pop(uid, None)
        if self._parts is not None:
            self._parts.cloud.forget_pool(uid)  # its key pair's sweeps stop once no pool uses it
        self.metrics.forget_environment(namespace, name)



def of(memo: Any) -> Runtime:
    """The runtime a handler was handed: kopf's memo (operator-level, or an object's copy of it)."""
    runtime = getattr(memo, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the operator was started without its runtime in kopf's memo (spotpool.controller.cli)")
    return runtime
