"""A hypothesis state machine over the executor: whatever users, the cloud, crashes and replicas do,
in any order, no pass buys more than was missing, no pool ever holds more than its count plus the
return's surge, a deletion that completed leaves nothing running, and every settle ends with
exactly the expected instances alive.

Interleaved: scale up, down and to zero; candidate pools added and removed; pause; an on-demand
base, a fallback and the return to spot switched on and off; spot selling out and coming back;
reclaims; cloud faults (errors, and RunInstances calls that buy but whose answer is lost);
terminations that CVM accepts and then fails; listing pages that skip an instance (offset paging
under churn); a tag index that lags (0, 30 or 600 s, chosen per run); crashes at every failpoint;
failures the process survives (a failpoint raising, a status write that fails before or after it
landed), followed at once by a scale or a reclaim; spec changes that drift instances (a new image,
zones and types dropped); expiry switched on and hours passing (instances expire, CVM timers
fire); deletion.

Around the pool under test (`team/pool`): up to two more pools of its key pair (one sweep for
all), a pool of another team's key pair of the same account that may see only its own
instances, and (in some runs) 100 instances of a filler pool so the sweep spans pages and a
skewed page matters. The operator runs as one replica, as two replicas under a leader election
(the lease handed over, lost, taken back; a pass's write held on the wire across a handover and
landing after the new leader acted), or as two installations without an election acting on the
same pools, in turn or concurrently in one step.

The only purchases beyond a deficit are replacements: the return's (at most `maxInFlight` a pass,
and, each time the return is switched on, never more than the on-demand instances bought) and
those of drifted and expired instances (within the disruption budget, each instance once).
`SPOTPOOL_STATEFUL_EXAMPLES` (default 200) and `SPOTPOOL_STATEFUL_STEPS` (rules per example, default
25) deepen the search for long runs.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from spotpool.api.names import OWNER_UID_TAG
from spotpool.controller import failpoints
from spotpool.simulator import run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from spotpool.simulator.faults import FaultSpec
from tests.support.inprocess import (
    TYPES,
    ZONES,
    Crash,
    FakeClock,
    FakeKube,
    Switch,
    World,
    pool_spec,
    simulator_config,
)

NS, NAME = "team", "pool"
TEAM_B_NS = "team-b"
TEAM_B = ("AKIDTEAMBKEY000000000000000000000000", "teamBSecretKey00000000000000000000")
EXAMPLES = int(os.environ.get("SPOTPOOL_STATEFUL_EXAMPLES", "200"))
STEPS = int(os.environ.get("SPOTPOOL_STATEFUL_STEPS", "25"))
IMAGES = ("img-pmqg1cw7", "img-8toqc6s3")
POOL = st.integers(0, 3)  # which pool a rule acts on (modulo the pools of the run; 0 is team/pool)


def write_kind(status: dict[str, Any]) -> str:
    """`journal`: the launch records written before money is spent; `report`: a pass's status."""
    if "conditions" in status:
        return "report"
    return "journal" if "inflightLaunches" in status else "other"


class Wire(FakeKube):
    """The API server, whose status writes may fail (before or after they landed) or land late."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: tuple[str, str, str, bool] | None = None  # (namespace, name, kind, landed)
        self.holding: tuple[str, str, str] | None = None  # (namespace, name, kind)
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    def hold(self, namespace: str, name: str, kind: str) -> None:
        """The next status write of `kind` to the object waits until `release` is set."""
        self.holding = (namespace, name, kind)
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                           resource_version: str | None = None, timeout: float | None = None) -> str:
        kind = write_kind(status)
        if self.holding == (namespace, name, kind):
            self.holding = None
            self.held.set()
            await self.release.wait()
        if self.failing is not None and self.failing[:3] == (namespace, name, kind):
            landed = self.failing[3]
            self.failing = None
            if landed:
                await super().patch_status(namespace, name, status, resource_version=resource_version, timeout=timeout)
            raise RuntimeError(f"500 from the API server ({kind} write {'applied' if landed else 'not applied'})")
        return await super().patch_status(namespace, name, status, resource_version=resource_version, timeout=timeout)


@dataclass
class Pool:
    """What the machine knows a pool should hold."""

    namespace: str
    name: str
    uid: str
    expected: int
    need: int  # instances the history asked for: every increase of the count, every loss
    top: int  # the most alive it may hold now (expected + surge, or what it held before a scale-in)
    paused: bool = False
    deleted: bool = False
    budget: int = 0  # spot replacements a pass may buy beyond the deficit (returnToSpot)
    returning: bool = False  # the return to spot is on
    returns: int = 0  # times it was switched on: each time may replace every on-demand instance once
    fallback: bool = False  # spec.onDemand.fallback is set: it fills even with spot sold out
    drifts: int = 0  # instances alive when a spec change drifted them: each may be replaced once
    expiring: bool = False  # spec.disruption.expireAfter was set: every instance past it may be replaced once

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def wanted(self) -> int:
        """What a pass may fill it up to: nothing while paused or being deleted."""
        return 0 if self.deleted or self.paused else self.expected

    @property
    def surge(self) -> int:
        """Replacements a pool may hold beyond its count: the return's maxInFlight, or the default
        disruption budget for drift and expiry (10% of expectedCount, rounded up), whichever is
        larger (both count what the pool holds beyond expectedCount as in flight)."""
        return max(self.budget, -(-self.expected // 10))

    @property
    def ceiling(self) -> int:
        """The count plus the surge (nothing once a deletion began)."""
        return 0 if self.deleted else self.expected + self.surge


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.simulator: Any = None
        self.kube = Wire()
        self.replicas: list[World] = []
        self.leases: list[Switch | None] = []
        self.pools: list[Pool] = []
        self.rounds = 0

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    # -- the run -----------------------------------------------------------------------------------------
    @initialize(seed=st.integers(0, 1000), expected=st.integers(0, 12), fallback=st.booleans(),
                sold_out=st.booleans(), lag=st.sampled_from([0, 30, 600]),
                mode=st.sampled_from(["one", "elected", "unelected"]),
                more=st.lists(st.integers(0, 4), max_size=2), team_b=st.none() | st.integers(0, 4),
                filler=st.booleans(), failing=st.sampled_from([0.0, 0.25]), churn=st.sampled_from([0.0, 0.2]))
    def start(self, seed: int, expected: int, fallback: bool, sold_out: bool, lag: int, mode: str,
              more: list[int], team_b: int | None, filler: bool, failing: float, churn: float) -> None:
        """Half the runs start with a fallback and the return to spot, half with spot sold out;
        the tag index lags 0, 30 or 600 s; one replica, two under an election, or two
        installations; more pools of the key pair, another team's pool, a filler. In some runs a
        quarter of all accepted terminations fail, and a fifth of listing pages past the first
        skip an instance (besides the rules that script both)."""
        self.clock = FakeClock()
        base = simulator_config(tag_index_delay_seconds=lag, listing_skew_rate=churn)
        config = base.with_overrides({"lifecycle": {"terminate_failure_rate": failing}, "credentials": [
            *[c.model_dump() for c in base.credentials],
            {"secret_id": TEAM_B[0], "secret_key": TEAM_B[1], "visible_tags": {"team": "b"}},
        ]})
        self.simulator = run_simulator(config, clock=self.clock)
        self.sim = self.run(self.simulator.__aenter__())
        self.mode = mode
        leases: dict[str, list[Switch | None]] = {
            "one": [None], "elected": [Switch(True), Switch(False)], "unelected": [None, None]}
        self.leases = leases[mode]
        self.replicas = [World(self.sim, self.clock, seed + 1000 * n, kube=self.kube, leadership=lease)
                         for n, lease in enumerate(self.leases)]
        self.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        if filler:
            self.fill()
        extra: dict[str, Any] = {}
        if fallback:
            extra["onDemand"] = {"fallback": {"after": "0s"}, "returnToSpot": {"maxInFlight": 2}}
        main = self.add(NS, NAME, expected, **extra)
        if fallback:
            main.budget, main.fallback, main.returning, main.returns = 2, True, True, 1
            main.top = main.ceiling
        for n, count in enumerate(more, start=2):
            self.add(NS, f"{NAME}-{n}", count)
        if team_b is not None:
            self.kube.put_secret(TEAM_B_NS, "creds", *TEAM_B)
            self.add(TEAM_B_NS, NAME, team_b, tags={"team": "b"})
        self.sell_out(sold_out)

    def add(self, namespace: str, name: str, expected: int, **spec: Any) -> Pool:
        uid = self.kube.create(namespace, name, pool_spec(self.sim, expectedCount=expected, **spec))["metadata"]["uid"]
        pool = Pool(namespace, name, str(uid), expected, need=expected, top=expected)
        self.pools.append(pool)
        return pool

    def fill(self) -> None:
        """100 instances of another pool of the key pair, bought first (launch order): the pools'
        instances are on the sweep's second page, where a skewed page skips one. Never edited nor
        reconciled again; old enough for any tag index."""
        self.kube.create(NS, "filler", pool_spec(self.sim, expectedCount=100))
        leader = self.replicas[0]
        for _ in range(80):
            outcome = self.run(leader.reconcile(NS, "filler"))
            self.clock.advance(15)
            if outcome is not None and not outcome.progressing:
                break
        self.clock.advance(601)

    def teardown(self) -> None:
        failpoints.disarm()
        self.kube.release.set()  # a pass a failed step left holding its write
        for replica in self.replicas:
            self.run(replica.close())
        if self.simulator is not None:
            self.run(self.simulator.__aexit__(None, None, None))
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.run(asyncio.wait(pending))
        self.loop.close()

    def pick(self, which: int) -> Pool:
        return self.pools[which % len(self.pools)]

    def sell_out(self, sold_out: bool) -> None:
        """Every candidate pool sold out as spot (or restocked); pay-as-you-go stays for sale."""
        for zone in ZONES:
            for kind in TYPES:
                self.sim.simulator.market.update_pool(zone, kind, sold_out=sold_out)

    # -- what the cloud holds --------------------------------------------------------------------------
    def instances(self, uid: str) -> list[Any]:
        return self.replicas[0].owned(uid, alive=False)

    def alive(self, uid: str) -> int:
        return sum(1 for i in self.instances(uid) if i.alive)

    def bought(self, uid: str) -> int:
        return self.replicas[0].bought(uid)

    def returning(self) -> bool:
        """An instance of a pool is terminating, and its termination will fail: it comes back."""
        return any(i.returns_to is not None for pool in self.pools for i in self.instances(pool.uid))

    # -- users -----------------------------------------------------------------------------------------
    @rule(which=POOL, count=st.integers(0, 12))
    def scale(self, which: int, count: int) -> None:
        pool = self.pick(which)
        if pool.deleted:
            return
        self.check()  # what it holds now bounds it until the scale-in is carried out
        pool.need += max(0, count - pool.expected)
        pool.expected = count
        self.kube.edit_spec(pool.namespace, pool.name, {"expectedCount": count})

    @rule(which=POOL, zones=st.sets(st.sampled_from(ZONES), min_size=1),
          types=st.sets(st.sampled_from(TYPES), min_size=1))
    def change_pools(self, which: int, zones: set[str], types: set[str]) -> None:
        """Instances of zones and types the spec drops have drifted: replaced surge-first."""
        pool = self.pick(which)
        if not pool.deleted:
            pool.drifts += self.held(pool.uid)
            self.kube.edit_spec(pool.namespace, pool.name, {"zones": sorted(zones), "instanceTypes": sorted(types)})
            pool.top = max(pool.top, pool.ceiling)

    @rule(which=POOL, image=st.sampled_from(IMAGES))
    def change_image(self, which: int, image: str) -> None:
        """A new image drifts every instance bought with another: each is replaced once."""
        pool = self.pick(which)
        if not pool.deleted:
            pool.drifts += self.held(pool.uid)
            self.kube.edit_spec(pool.namespace, pool.name, {"imageId": image})
            pool.top = max(pool.top, pool.ceiling)

    @rule(which=POOL)
    def expire(self, which: int) -> None:
        """Instances older than an hour are replaced; each carries a CVM timer 2 h later."""
        pool = self.pick(which)
        if not pool.deleted:
            pool.expiring = True
            self.kube.edit_spec(pool.namespace, pool.name, {"disruption": {"expireAfter": "1h"}})

    @rule(hours=st.integers(1, 3))
    def age(self, hours: int) -> None:
        """Time passes (the operator asleep): instances expire, timers fire; then a round."""
        self.clock.advance(hours * 3600)
        self.round(5)

    def held(self, uid: str) -> int:
        """Instances of the pool that may yet run: alive, or back from a failed termination."""
        return sum(1 for i in self.instances(uid) if i.alive or i.returns_to is not None)

    @rule(which=POOL, paused=st.booleans())
    def pause(self, which: int, paused: bool) -> None:
        pool = self.pick(which)
        if not pool.deleted:
            pool.paused = paused
            self.kube.edit_spec(pool.namespace, pool.name, {"paused": paused})

    @rule(which=POOL, base=st.integers(0, 6), after=st.sampled_from(["0s", "30s"]), returning=st.booleans(),
          budget=st.integers(1, 3))
    def on_demand(self, which: int, base: int, after: str, returning: bool, budget: int) -> None:
        """Part of the pool on-demand, a fallback while spot is short, and (maybe) the return to
        spot, whose replacements are the only purchases beyond a deficit: at most `budget` a pass,
        one per on-demand instance ever bought each time the return is switched on."""
        pool = self.pick(which)
        if pool.deleted:
            return
        self.kube.edit_spec(pool.namespace, pool.name, {"onDemand": {
            "baseCount": base, "fallback": {"after": after},
            "returnToSpot": {"enabled": returning, "maxInFlight": budget}}})
        pool.budget = max(pool.budget, budget) if returning else pool.budget
        pool.returns += returning and not pool.returning
        pool.returning = returning
        pool.fallback = True
        pool.top = max(pool.top, pool.ceiling)

    @rule(sold_out=st.booleans())
    def spot_market(self, sold_out: bool) -> None:
        """Every spot pool sells out (only a fallback buys then), or comes back."""
        self.sell_out(sold_out)

    @rule(which=POOL, passes=st.integers(0, 2))
    def delete(self, which: int, passes: int = 0) -> None:
        """The user deletes the pool; maybe passes follow at once."""
        pool = self.pick(which)
        self.check()  # what it holds now bounds it until the deletion is carried out
        pool.deleted = True
        self.kube.delete(pool.namespace, pool.name)
        for _ in range(passes):
            self.round(5)

    # -- the cloud --------------------------------------------------------------------------------------
    @rule(which=POOL, count=st.integers(1, 4))
    def reclaim(self, which: int, count: int) -> None:
        pool = self.pick(which)
        ids = [i.instance_id for i in self.instances(pool.uid) if i.alive][:count]
        reclaimed, _ = self.sim.simulator.market.reclaim(ids)  # on-demand ones are skipped
        pool.need += len(reclaimed)

    @rule(action=st.sampled_from(["RunInstances", "DescribeInstances", "TerminateInstances"]),
          lost_answer=st.booleans(), times=st.integers(1, 4))
    def fault(self, action: str, lost_answer: bool, times: int) -> None:
        spec = (FaultSpec(drop_rate=1.0, drop_phase="after", times=times) if lost_answer
                else FaultSpec(error_rate=1.0, error_codes=["InternalError"], times=times))
        self.sim.simulator.faults.set(action, spec)

    @rule(which=POOL, count=st.integers(1, 4), then=st.sampled_from(["nothing", "scale-in", "delete"]))
    def fail_terminations(self, which: int, count: int, then: str) -> None:
        """CVM accepts the next TerminateInstances of some of the pool's instances, then fails
        it: they come back running (LatestOperationState FAILED). Maybe the user releases them at
        once (a scale-in, a deletion), and passes follow faster than the termination fails."""
        pool = self.pick(which)
        ids = [i.instance_id for i in self.instances(pool.uid) if i.alive][:count]
        self.sim.simulator.market.fail_next_termination(ids)
        if then == "scale-in":
            self.scale(which, max(0, pool.expected - count))
        elif then == "delete":
            self.delete(which)
        if then != "nothing":
            for _ in range(3):
                self.round(1)

    @rule(pages=st.integers(1, 3))
    def skew_pages(self, pages: int) -> None:
        """The next listing pages asked with an offset start one late: the instance at the page
        boundary is in none of them (another went and came between the page reads)."""
        self.sim.simulator.market.skew_next_pages(pages)

    # -- the operator ------------------------------------------------------------------------------------
    @rule(point=st.sampled_from(failpoints.POINTS), hit=st.integers(1, 2))
    def crash_at(self, point: str, hit: int) -> None:
        """Passes until the failpoint kills the process (at most three), and no further: what
        the crash left behind meets whatever the next rules do."""
        failpoints.arm(point, raise_=Crash(), count=hit)
        for _ in range(3):
            if self.round(1)[0]:
                break
        failpoints.disarm()

    @rule(point=st.sampled_from(failpoints.POINTS), hit=st.integers(1, 2), which=POOL,
          then=st.sampled_from(["scale", "reclaim", "nothing"]), count=st.integers(0, 12))
    def survive_at(self, point: str, hit: int, which: int, then: str, count: int) -> None:
        """The failpoint raises (a 5xx, a 429 from the API server) and the process lives on with
        its memory; right after, a second scale or a reclaim, then a pass."""
        failpoints.arm(point, raise_=RuntimeError(f"failed at {point}"), count=hit)
        for _ in range(3):
            if self.round(1)[1]:
                break
        failpoints.disarm()
        self.then(which, then, count)

    @rule(which=POOL, kind=st.sampled_from(["journal", "report"]), landed=st.booleans(),
          then=st.sampled_from(["scale", "reclaim", "nothing"]), count=st.integers(0, 12))
    def write_fails(self, which: int, kind: str, landed: bool, then: str, count: int) -> None:
        """The pool's next journal or status write fails, having landed or not (the answer is all
        that is lost); the process lives on; right after, a second scale or a reclaim."""
        pool = self.pick(which)
        self.kube.failing = (pool.namespace, pool.name, kind, landed)
        for _ in range(3):
            self.round(1)
            if self.kube.failing is None:
                break
        self.kube.failing = None
        self.then(which, then, count)

    def then(self, which: int, then: str, count: int) -> None:
        if then == "scale":
            self.scale(which, count)
        elif then == "reclaim":
            self.reclaim(which, max(1, count // 3))
        self.round(1)

    @rule(count=st.integers(1, 3), seconds=st.sampled_from([1, 5, 30, 120]))
    def passes(self, count: int, seconds: float) -> None:
        for _ in range(count):
            self.round(seconds)

    # -- leadership and replicas -----------------------------------------------------------------------
    def leader(self) -> World:
        """The replica that acts first: the leader (or the first replica)."""
        for replica, lease in zip(self.replicas, self.leases, strict=True):
            if lease is not None and lease.leading:
                return replica
        return self.replicas[0]

    def hand_to(self, replica: World) -> None:
        """The lease goes to `replica` (a new term, even if it led before)."""
        for lease in self.leases:
            if lease is not None:
                lease.lose()
        lease = self.leases[self.replicas.index(replica)]
        if lease is not None:
            lease.regain()

    @precondition(lambda self: self.mode == "elected")
    @rule(to=st.integers(0, 1))
    def handover(self, to: int) -> None:
        """The leader loses the lease without dying; `to` (maybe the same replica) takes it."""
        self.hand_to(self.replicas[to])

    @precondition(lambda self: self.mode == "elected")
    @rule()
    def lose_lease(self) -> None:
        """Nobody leads until the next handover (or the settle)."""
        for lease in self.leases:
            if lease is not None:
                lease.lose()

    @precondition(lambda self: len(self.replicas) == 2)
    @rule(which=POOL, ticks=st.integers(0, 40), flip=st.booleans())
    def together(self, which: int, ticks: int, flip: bool) -> None:
        """Both replicas pass over one pool in the same step, the second starting `ticks` loop
        turns after the first (under an election the lease may pass to the second meanwhile)."""
        pool = self.pick(which)
        first = self.leader()
        second = self.replicas[1 - self.replicas.index(first)]

        async def both() -> list[Any]:
            one = asyncio.ensure_future(first.reconcile(*pool.key))
            for _ in range(ticks):
                await asyncio.sleep(0)
            if flip and self.mode == "elected":
                self.hand_to(second)
            two = asyncio.ensure_future(second.reconcile(*pool.key))
            return list(await asyncio.gather(one, two, return_exceptions=True))

        room, before = self.room(pool), self.bought(pool.uid)
        for replica, result in zip((first, second), self.run(both()), strict=True):
            if isinstance(result, Crash):
                self.run(replica.crash())
        self.check_purchases(pool, room, before)
        self.check()
        self.clock.advance(1)

    @precondition(lambda self: len(self.replicas) == 2)
    @rule(which=POOL, grow=st.integers(0, 6), kind=st.sampled_from(["journal", "report"]), flip=st.booleans(),
          then=st.sampled_from(["scale", "delete", "nothing"]), count=st.integers(0, 12), rounds=st.integers(1, 2))
    def late_write(self, which: int, grow: int, kind: str, flip: bool, then: str, count: int, rounds: int) -> None:
        """The pool grows by `grow`; a pass's journal or status write is on the wire (a paused
        process, a slow network); the lease may pass to the other replica, the user scales or
        deletes, the other replica acts; then the write lands, with the API server's
        preconditions."""
        pool = self.pick(which)
        if grow:
            self.scale(which, pool.expected + grow)
        old = self.leader()
        other = self.replicas[1 - self.replicas.index(old)]
        self.kube.hold(pool.namespace, pool.name, kind)
        room, before = self.room(pool), self.bought(pool.uid)
        late = self.loop.create_task(old.reconcile(*pool.key))

        async def held_or_done() -> None:
            waiting = asyncio.ensure_future(self.kube.held.wait())
            await asyncio.wait({late, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()

        self.run(held_or_done())
        self.check_purchases(pool, room, before)  # what it bought before its write went on the wire
        if self.kube.held.is_set():
            if flip and self.mode == "elected":
                self.hand_to(other)
            if then == "scale":
                self.scale(which, count)
            elif then == "delete":
                self.delete(which)
            for _ in range(rounds):
                self.round(5, replicas=[other])  # `old` holds the pool's lock until its write lands
            room, before = self.room(pool), self.bought(pool.uid)
            self.kube.release.set()
        self.kube.holding = None
        try:
            self.run(late)
        except Crash:
            self.run(old.crash())
        except Exception:  # a conflict, the object gone, a cloud fault: the pass ends, the process lives
            pass
        self.check_purchases(pool, room, before)
        self.check()
        self.clock.advance(1)

    # -- passes, checked ---------------------------------------------------------------------------------
    def room(self, pool: Pool) -> int:
        """What a pass may buy for the pool: what is missing (expected, or nothing when paused or
        deleting, minus what is alive)."""
        return max(0, pool.wanted - self.alive(pool.uid))

    def check_purchases(self, pool: Pool, room: int, before: int) -> None:
        created = self.bought(pool.uid) - before
        assert created <= room + pool.surge, (
            f"{pool.namespace}/{pool.name}: bought {created} with only {room} missing")

    def acting(self) -> list[World]:
        """The replicas whose daemons pass in a round: the leader (a follower's pass is fenced at
        once, and whether it runs between two terms is a matter of timing: `together` runs it),
        or every replica when none leads or there is no election."""
        leading = [replica for replica, lease in zip(self.replicas, self.leases, strict=True)
                   if lease is not None and lease.leading]
        return leading or self.replicas

    def round(self, seconds: float, replicas: list[World] | None = None) -> tuple[bool, bool]:
        """One pass of the acting replicas over every pool (whichever comes first after the
        interval makes its key pair's sweep: the order rotates), each checked; then the clock
        moves. (crashed, failed)."""
        crashed = failed = False
        live = [pool for pool in self.pools if pool.key in self.kube.objects]
        shift = self.rounds % len(live) if live else 0
        self.rounds += 1
        for pool in live[shift:] + live[:shift]:
            for replica in replicas or self.acting():
                room, before = self.room(pool), self.bought(pool.uid)
                try:
                    self.run(replica.reconcile(*pool.key))
                except Crash:
                    self.run(replica.crash())
                    crashed = True
                except Exception:  # a fault mid-pass: kopf logs it and the daemon goes on
                    failed = True
                self.check_purchases(pool, room, before)
        self.check()
        self.clock.advance(seconds)
        return crashed, failed

    @rule()
    def settle(self) -> None:
        """Faults clear, crashes stop, someone leads (spot comes back, unless every pool has a
        fallback to fill it without); then every pool holds exactly its count, and every deleted
        one nothing, its finalizer gone."""
        failpoints.disarm()
        self.sim.simulator.faults.clear()
        self.sim.simulator.market.skew_next_pages(0)
        self.kube.failing = None
        if self.mode == "elected" and not any(lease is not None and lease.leading for lease in self.leases):
            self.hand_to(self.replicas[0])
        if any(not pool.fallback and not pool.deleted for pool in self.pools):
            self.sell_out(False)  # without a fallback only spot can fill a pool
        quiet = 0  # rounds in a row that neither acted nor expect progress; the second sees a fresh sweep
        for _ in range(100):
            progressing = False
            for pool in [pool for pool in self.pools if pool.key in self.kube.objects]:
                for replica in self.replicas:
                    room, before = self.room(pool), self.bought(pool.uid)
                    outcome = self.run(replica.reconcile(*pool.key))
                    progressing |= outcome is not None and outcome.progressing
                    self.check_purchases(pool, room, before)
            self.check()
            self.clock.advance(15)
            quiet = 0 if progressing or self.returning() else quiet + 1
            if quiet == 2:
                break
        else:
            raise AssertionError("the pools did not settle in 100 passes")
        for pool in self.pools:
            alive = self.alive(pool.uid)
            where = f"{pool.namespace}/{pool.name}"
            if pool.deleted:
                assert pool.key not in self.kube.objects, f"{where}: the finalizer stayed"
                assert alive == 0, f"{where}: {alive} instances left running after delete"
            elif not pool.paused:
                assert alive == pool.expected, f"{where}: {alive} alive, {pool.expected} expected"

    # -- invariants ------------------------------------------------------------------------------------
    def check(self) -> None:
        """After every pass and every step: no pool bought more than its history needed; none
        holds more than its count plus the surge, unless it held that much before (a scale-in
        not yet carried out: an excess never grows); a completed deletion left nothing that runs
        or will run again (the collector's releases included)."""
        for pool in self.pools:
            where = f"{pool.namespace}/{pool.name}"
            bought = self.bought(pool.uid)
            # Spot replacements replace on-demand instances, one each at most each time the return
            # is switched on (switched off, the replacements still booting are released as surplus).
            replaceable = self.replicas[0].bought_on_demand(pool.uid) * pool.returns
            # Drifted instances are replaced once each; so are expired ones (or the timer ends them).
            replaceable += pool.drifts + (self.expired_ever(pool.uid) if pool.expiring else 0)
            assert bought <= pool.need + replaceable, f"{where}: bought {bought}, the history needed {pool.need}"
            instances = self.instances(pool.uid)
            if pool.deleted and pool.key not in self.kube.objects:
                staying = [i.instance_id for i in instances if i.alive or i.returns_to is not None]
                assert not staying, f"{where}: its deletion completed with {staying} running"
            # An instance back from a failed termination is the cloud's doing, not a purchase: the
            # per-pass check and the settle count it, this bound does not.
            held = sum(1 for i in instances if i.alive and not i.failed_terminations)
            assert held <= max(pool.ceiling, pool.top), (
                f"{where}: {held} alive for expectedCount {pool.expected} (surge {pool.budget})")
            pool.top = max(pool.ceiling, held)

    def expired_ever(self, uid: str) -> int:
        """Instances of the pool that lived an hour (expireAfter), gone or not."""
        now = self.clock.now
        return sum(1 for i in self.sim.simulator.market.all_instances_ever()
                   if i.tags.get(OWNER_UID_TAG) == uid and (i.terminated_at or now) - i.created_at >= 3600)

    @invariant()
    def money(self) -> None:
        if self.pools:
            self.check()


PoolMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPoolMachine = PoolMachine.TestCase
