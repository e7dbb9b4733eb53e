"""The executor, in one process: a Kubernetes fake, the simulator, a fixed clock, failpoints.

Like Karpenter's controller suites: the real `Reconciler`, `CloudAccess` and `CvmClient` run
against the real simulator (served on loopback in the test's event loop) and a Kubernetes fake
whose status writes follow RFC 7386 merge-patch and whose writes honour resourceVersion
preconditions and finalizers, as the API server does. Time is a `FakeClock` shared by the
simulator (boot, reclaim, signatures), the client and the reconciler, so a test advances minutes
in microseconds.

A crash is `World.crash()`: the reconciler, its per-object memory and its caches are thrown away
and a new operator is built from what was persisted (the fake's objects and the cloud), which is
exactly what a restarted process has.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from spotpool.api.names import OWNER_UID_TAG
from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.client import CvmClient
from spotpool.cloud.ratelimit import RateLimiterRegistry
from spotpool.controller import failpoints
from spotpool.controller.cloudaccess import CloudAccess
from spotpool.controller.collector import OrphanCollector
from spotpool.controller.fencing import Fence
from spotpool.controller.identity import Identities
from spotpool.controller.kube import Conflict
from spotpool.controller.launchcheck import STATUS_FIELD, launch_digest
from spotpool.controller.policy import Policy, PoolClaim, pool_claim
from spotpool.controller.reconciler import Outcome, Reconciler
from spotpool.controller.reporting import PoolMemory
from spotpool.metrics import Metrics
from spotpool.simulator import RunningSimulator, SimulatorConfig, run_simulator
from spotpool.simulator.config import DEFAULT_RATE_LIMITS, DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.support import specs
from tests.support.specs import TYPES, ZONES

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
OTHER_ACCOUNT = ("AKIDOTHERACCOUNT000000000000000000000", "otherAccountSecretKey0000000000000", "200000000002")
DEMO_ACCOUNT = "100000000001"  # the account of the simulator's demo key pair


class Crash(Exception):
    """Raised at a failpoint in in-process tests: the process dies there."""


ROTATED_KEY = ("AKIDROTATEDKEY00000000000000000000000", "rotatedSecretKey000000000000000000", "100000000001")


class Switch:
    """A leadership a test hands from replica to replica (the `Leadership` the reconciler consults):
    `term` goes up at each acquisition, as a real elector's does."""

    def __init__(self, leading: bool = True) -> None:
        self.term = 1
        self.leading = leading

    def is_leader(self, term: int | None = None) -> bool:
        return self.leading and (term is None or term == self.term)

    def remaining(self) -> float:
        return 10.0 if self.leading else 0.0

    def lose(self) -> None:
        self.leading = False

    def regain(self) -> None:
        self.leading = True
        self.term += 1


class FakeClock:
    """Epoch seconds, moved only by `advance`."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class NotFound(Exception):
    pass


@dataclass
class FakeKube:
    """The slice of the API server the executor uses, with the server's write semantics."""

    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    status_writes: int = 0
    write_timeouts: list[float | None] = field(default_factory=list)  # each status write's bound
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _created: itertools.count[int] = field(default_factory=lambda: itertools.count(0))

    def _bump(self, obj: dict[str, Any]) -> str:
        version = str(next(self._versions))
        obj["metadata"]["resourceVersion"] = version
        return version

    # -- what users do -------------------------------------------------------------------------------
    def create(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        created = next(self._created)  # seconds: creation order, as the API server stamps it
        obj = {"metadata": {"namespace": namespace, "name": name, "uid": str(uuid.uuid4()), "generation": 1,
                            "finalizers": ["spotpool.io/finalizer"],
                            "creationTimestamp": f"2026-01-01T{created // 3600:02d}:{created // 60 % 60:02d}:"
                                                 f"{created % 60:02d}Z"},
               "spec": copy.deepcopy(spec), "status": {}}
        self._bump(obj)
        self.objects[(namespace, name)] = obj
        return obj

    def edit_spec(self, namespace: str, name: str, changes: dict[str, Any]) -> None:
        obj = self.objects[(namespace, name)]
        obj["spec"] = merge_patch(obj["spec"], changes)
        obj["metadata"]["generation"] += 1
        self._bump(obj)

    def annotate(self, namespace: str, name: str, key: str, value: str) -> None:
        """A metadata-only write (kopf's own annotation after it handles a change): a new
        resourceVersion, the same generation."""
        obj = self.objects[(namespace, name)]
        obj["metadata"].setdefault("annotations", {})[key] = value
        self._bump(obj)

    def delete(self, namespace: str, name: str) -> None:
        obj = self.objects.get((namespace, name))
        if obj is None:
            return
        if obj["metadata"].get("finalizers"):
            obj["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")
            self._bump(obj)
        else:
            del self.objects[(namespace, name)]

    def remove_finalizer(self, namespace: str, name: str) -> None:
        obj = self.objects[(namespace, name)]
        obj["metadata"]["finalizers"] = []
        self._bump(obj)
        if obj["metadata"].get("deletionTimestamp"):
            del self.objects[(namespace, name)]

    def put_secret(self, namespace: str, name: str, secret_id: str, secret_key: str) -> None:
        existing = self.secrets.get((namespace, name), {"finalizers": []})
        self.secrets[(namespace, name)] = {
            "data": {"secretId": base64.b64encode(secret_id.encode()).decode(),
                     "secretKey": base64.b64encode(secret_key.encode()).decode()},
            "finalizers": existing["finalizers"], "deleting": existing.get("deleting", False),
        }

    def delete_secret(self, namespace: str, name: str) -> None:
        secret = self.secrets.get((namespace, name))
        if secret is None:
            return
        if secret["finalizers"]:
            secret["deleting"] = True
        else:
            del self.secrets[(namespace, name)]

    def delete_namespace(self, namespace: str) -> None:
        for ns, name in list(self.objects):
            if ns == namespace:
                self.delete(ns, name)
        for ns, name in list(self.secrets):
            if ns == namespace:
                self.delete_secret(ns, name)

    def body(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    # -- KubeApi ---------------------------------------------------------------------------------------
    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self.secrets.get((namespace, name))
        return dict(secret["data"]) if secret is not None else None

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                           resource_version: str | None = None, timeout: float | None = None) -> str:
        obj = self.objects.get((namespace, name))
        if obj is None:
            raise NotFound(f"{namespace}/{name}")
        if resource_version is not None and obj["metadata"]["resourceVersion"] != resource_version:
            raise Conflict(f"{namespace}/{name} is at {obj['metadata']['resourceVersion']}, not {resource_version}")
        obj["status"] = merge_patch(obj.get("status") or {}, copy.deepcopy(status))
        self.status_writes += 1
        self.write_timeouts.append(timeout)
        return self._bump(obj)

    async def read_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.body(namespace, name)

    async def add_secret_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        secret = self.secrets.get((namespace, name))
        if secret is None or finalizer in secret["finalizers"]:
            return False
        secret["finalizers"].append(finalizer)
        return True

    async def remove_secret_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        secret = self.secrets.get((namespace, name))
        if secret is None or finalizer not in secret["finalizers"]:
            return False
        secret["finalizers"].remove(finalizer)
        if secret["deleting"] and not secret["finalizers"]:
            del self.secrets[(namespace, name)]
        return True

    async def environments_naming_secret(self, namespace: str, secret: str) -> list[str]:
        return [obj["metadata"]["uid"] for (ns, _), obj in self.objects.items()
                if ns == namespace and (obj["spec"].get("credentialsSecretRef") or {}).get("name") == secret]

    async def namespace_uid(self, name: str) -> str | None:
        return "kube-system-uid"

    # -- PoolView (what kopf's index of pools holds) ---------------------------------------------------
    def claims(self) -> list[PoolClaim]:
        return [pool_claim(obj) for obj in self.objects.values()]


@dataclass
class Event:
    name: str
    type: str
    reason: str
    message: str


def simulator_config(**api: Any) -> SimulatorConfig:
    """The default market, a fixed seed, minute-scale lifecycles, rate limits out of the way (the
    clock does not move by itself, so a bucket would never refill), and a second account."""
    return specs.simulator_config(
        lifecycle={"boot_delay_seconds": 20, "terminate_delay_seconds": 10},
        api={"rate_limits": dict.fromkeys(DEFAULT_RATE_LIMITS, 1e9), "max_clock_skew_seconds": 10**9, **api},
        credentials=[
            {"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
            {"secret_id": ROTATED_KEY[0], "secret_key": ROTATED_KEY[1], "account_id": ROTATED_KEY[2]},
            {"secret_id": OTHER_ACCOUNT[0], "secret_key": OTHER_ACCOUNT[1], "account_id": OTHER_ACCOUNT[2]},
        ],
    )


def pool_spec(sim: RunningSimulator, **changes: Any) -> dict[str, Any]:
    """`specs.pool_spec` for a pool of this harness: 5 instances at up to 1.0, the Secret `creds`
    (`start` writes it), the simulator's endpoint."""
    return specs.pool_spec(**{"expectedCount": 5, "maxPrice": "1.0", "credentialsSecretRef": {"name": "creds"},
                              "endpoint": sim.url, **changes})


class World:
    """One operator (rebuilt on `crash`) over a fake cluster and a simulator."""

    def __init__(self, sim: RunningSimulator, clock: FakeClock, seed: int = 0, *, observe_interval: float = 1.0,
                 limiter: RateLimiterRegistry | None = None, kube: FakeKube | None = None,
                 leadership: Any = None, policy: Policy | None = None, orphan_grace: float = 120.0,
                 identities: Identities | None = None) -> None:
        """`observe_interval`: how often the shared sweep runs (1 s: every pass sees a fresh one);
        `limiter`: the client-side rate limits (default: none in the way); `policy`: the
        administrator's (default: the development one, as the simulator is on loopback http)."""
        self.policy = policy or Policy.development()
        self.sim = sim
        self.clock = clock
        self.observe_interval = observe_interval
        self.limiter = limiter
        self.kube = kube or FakeKube()
        self.leadership = leadership
        self.events: list[Event] = []
        self.seed = seed
        self.crashes = 0
        self.orphan_grace = orphan_grace
        self.identities = identities  # the operator's own identity and the roles assumed from it
        self._build()

    def _build(self) -> None:
        rng = random.Random(self.seed + self.crashes)

        async def no_sleep(_: float) -> None:
            await asyncio.sleep(0)

        limiter = self.limiter or RateLimiterRegistry(clock=self.clock, sleep=no_sleep)
        factory: Callable[..., CvmClient] = partial(
            CvmClient, clock=self.clock, sleep=no_sleep, rng=rng, limiter=limiter, timeout=5.0, max_attempts=3)
        # The orphan collector as the operator wires it (runtime.py), over the fake's pools.
        self.collector = OrphanCollector(
            live_uids=lambda: [claim.uid for claim in self.kube.claims()], grace=self.orphan_grace,
            report=lambda reason, message: self.events.append(Event("", "Warning", reason, message)),
            guard=lambda: Fence(self.leadership) if self.leadership is not None else None,
            acting=lambda: self.leadership is None or self.leadership.is_leader())
        self.cloud = CloudAccess(cluster_id="test-cluster", client_factory=factory, clock=self.clock,
                                 observe_interval=self.observe_interval, wait_for_fresh=True,
                                 on_sweep=self.collector.swept, on_closed=self.collector.forget)
        self.reconciler = Reconciler(kube=self.kube, cloud=self.cloud, metrics=Metrics(registry=_registry()),
                                     post_event=self._event, clock=self.clock.datetime, rng=rng,
                                     leadership=self.leadership, policy=self.policy, pools=self.kube,
                                     identities=self.identities)
        self.memos: dict[str, tuple[PoolMemory, asyncio.Lock]] = {}

    async def close(self) -> None:
        """Stop this operator for good (a second replica or installation a test made)."""
        await self.collector.close()
        await self.cloud.close()

    async def crash(self) -> None:
        """Throw the operator away (memory, caches, clients) and start a new one."""
        await self.collector.close()
        await self.cloud.close()
        self.crashes += 1
        self._build()

    def _event(self, body: Any, *, type: str, reason: str, message: str) -> None:
        self.events.append(Event(body["metadata"]["name"], type, reason, message))

    async def reconcile(self, namespace: str, name: str) -> Outcome | None:
        """What kopf does for the object now: a daemon pass, or the delete handler and, when it
        reports completion, the finalizer's removal. None once the object is gone."""
        body = self.kube.body(namespace, name)
        if body is None:
            return None
        memory, lock = self.memos.setdefault(body["metadata"]["uid"], (PoolMemory(), asyncio.Lock()))
        deleting = bool(body["metadata"].get("deletionTimestamp"))
        outcome = await self.reconciler.reconcile(body, memory, lock, deleting=deleting)
        if deleting and outcome.deletion_complete:
            self.kube.remove_finalizer(namespace, name)
            self.cloud.forget_pool(body["metadata"]["uid"])  # as the delete handler does (RUNTIME.forget)
        return outcome

    async def settle(self, namespace: str, name: str, *, passes: int = 40, step: float = 5.0) -> int:
        """Reconcile, moving the clock `step` seconds between passes, until a pass neither acted
        nor expects progress (settled, or blocked); returns the passes it took."""
        for count in range(1, passes + 1):
            outcome = await self.reconcile(namespace, name)
            if outcome is None:
                return count
            self.clock.advance(step)
            if not outcome.progressing:
                return count
        raise AssertionError(f"{namespace}/{name} did not settle in {passes} passes")

    # -- what the cloud says ------------------------------------------------------------------------
    def owned(self, uid: str, *, alive: bool = True) -> list[Any]:
        market = self.sim.simulator.market
        market.advance()
        return [i for i in market.instances() if i.tags.get(OWNER_UID_TAG) == uid and (i.alive or not alive)]

    def bought(self, uid: str) -> int:
        """Instances ever created for `uid` (any state, gone ones included): the money spent."""
        market = self.sim.simulator.market
        return sum(1 for i in market.all_instances_ever() if i.tags.get(OWNER_UID_TAG) == uid)

    def bought_on_demand(self, uid: str) -> int:
        """Of those, the pay-as-you-go ones."""
        market = self.sim.simulator.market
        return sum(1 for i in market.all_instances_ever() if i.tags.get(OWNER_UID_TAG) == uid and not i.spot)

    # -- the pool under test ---------------------------------------------------------------------------
    async def start_pool(self, namespace: str, name: str, **spec: Any) -> str:
        """The Secret `creds` (the simulator's demo key pair) and a pool naming it; its uid."""
        self.kube.put_secret(namespace, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        return str(self.kube.create(namespace, name, pool_spec(self.sim, **spec))["metadata"]["uid"])

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.kube.objects[(namespace, name)]["status"])

    def condition(self, namespace: str, name: str, kind: str) -> dict[str, Any]:
        return next(c for c in self.status(namespace, name)["conditions"] if c["type"] == kind)

    async def mark_launch_checked(self, namespace: str, name: str) -> None:
        """Record the pool's launch spec as already checked (status.validatedLaunchSpec), so that
        no DryRun check comes before its purchases: for tests about what it buys."""
        spec = EnvironmentSpec.from_k8s(self.kube.objects[(namespace, name)]["spec"])
        await self.kube.patch_status(namespace, name, {STATUS_FIELD: launch_digest(spec, DEMO_ACCOUNT)})

    def sell_out_spot(self, sold_out: bool = True) -> None:
        """Every candidate pool sold out as spot (or restocked); pay-as-you-go stays for sale."""
        for zone in ZONES:
            for kind in TYPES:
                self.sim.simulator.market.update_pool(zone, kind, sold_out=sold_out)


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


@asynccontextmanager
async def world(seed: int = 0, *, observe_interval: float = 1.0, limiter: RateLimiterRegistry | None = None,
                policy: Policy | None = None, **api: Any) -> AsyncIterator[World]:
    clock = FakeClock()
    async with run_simulator(simulator_config(**api), clock=clock) as sim:
        w = World(sim, clock, seed, observe_interval=observe_interval, limiter=limiter, policy=policy)
        try:
            yield w
        finally:
            await w.collector.close()
            await w.cloud.close()


# -- the pool most in-process tests are about ----------------------------------------------------------

NS, NAME = "team", "pool"


async def start(w: World, **spec: Any) -> str:
    """The Secret and the pool `team/pool` with `spec` over `pool_spec`'s defaults; its uid."""
    return await w.start_pool(NS, NAME, **spec)


def status(w: World) -> dict[str, Any]:
    return w.status(NS, NAME)


def condition(w: World, kind: str) -> dict[str, Any]:
    return w.condition(NS, NAME, kind)


async def passes_crashing_at(w: World, point: str, hit: int, passes: int) -> None:
    """`passes` passes over `team/pool`, 5 s apart, with the failpoint armed: each crash throws the
    operator away and the next pass runs on a new one, as a restarted process would."""
    failpoints.arm(point, raise_=Crash(), count=hit)
    for _ in range(passes):
        try:
            await w.reconcile(NS, NAME)
        except Crash:
            await w.crash()
        w.clock.advance(5)
    failpoints.disarm()
