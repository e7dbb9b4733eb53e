"""A hypothesis state machine over the executor: whatever users, the cloud and crashes do, in any
order, every settle ends with exactly the expected instances alive, nothing bought that the
history did not need, and a deletion that leaves nothing running.

Interleaved: scale up, down and to zero; candidate pools added and removed; pause; an on-demand
base, a fallback and the return to spot switched on and off; spot selling out and coming back;
reclaims; cloud faults (errors, and RunInstances calls that buy but whose answer is lost); crashes
at every failpoint; deletion. The only purchases beyond a deficit are the return's spot
replacements: at most `maxInFlight` a pass, and never more than the on-demand instances bought.
`SPOTPOOL_STATEFUL_EXAMPLES` (default 40) deepens the search for long runs.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from spotpool.controller import failpoints
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from spotpool.simulator.faults import FaultSpec
from tests.support.inprocess import TYPES, ZONES, Crash, World, pool_spec, world

NS, NAME = "team", "pool"
EXAMPLES = int(os.environ.get("SPOTPOOL_STATEFUL_EXAMPLES", "40"))


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.context: Any = None
        self.w: World | None = None
        self.expected = 0
        self.need = 0  # instances the history asked for: every increase of the count, every loss
        self.paused = False
        self.deleted = False
        self.uid = ""
        self.budget = 0  # spot replacements a pass may buy beyond the deficit (returnToSpot)
        self.fallback = False  # spec.onDemand.fallback is set: a pool fills even with spot sold out

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    @initialize(seed=st.integers(0, 1000), expected=st.integers(0, 12), fallback=st.booleans(),
                sold_out=st.booleans())
    def start(self, seed: int, expected: int, fallback: bool, sold_out: bool) -> None:
        """Half the runs start with a fallback and the return to spot, half with spot sold out."""
        self.context = world(seed)
        self.w = self.run(self.context.__aenter__())
        self.w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        extra: dict[str, Any] = {}
        if fallback:
            extra["onDemand"] = {"fallback": {"after": "0s"}, "returnToSpot": {"maxInFlight": 2}}
            self.budget, self.fallback = 2, True
        self.uid = self.w.kube.create(NS, NAME, pool_spec(self.w.sim, expectedCount=expected, **extra))[
            "metadata"]["uid"]
        self.w.sell_out_spot(sold_out)
        self.expected = self.need = expected

    def teardown(self) -> None:
        failpoints.disarm()
        if self.context is not None:
            self.run(self.context.__aexit__(None, None, None))
        self.loop.close()

    @property
    def world(self) -> World:
        assert self.w is not None
        return self.w

    # -- users -----------------------------------------------------------------------------------------
    @precondition(lambda self: not self.deleted)
    @rule(count=st.integers(0, 12))
    def scale(self, count: int) -> None:
        self.need += max(0, count - self.expected)
        self.expected = count
        self.world.kube.edit_spec(NS, NAME, {"expectedCount": count})

    @precondition(lambda self: not self.deleted)
    @rule(zones=st.sets(st.sampled_from(ZONES), min_size=1), types=st.sets(st.sampled_from(TYPES), min_size=1))
    def change_pools(self, zones: set[str], types: set[str]) -> None:
        self.world.kube.edit_spec(NS, NAME, {"zones": sorted(zones), "instanceTypes": sorted(types)})

    @precondition(lambda self: not self.deleted)
    @rule(paused=st.booleans())
    def pause(self, paused: bool) -> None:
        self.paused = paused
        self.world.kube.edit_spec(NS, NAME, {"paused": paused})

    @precondition(lambda self: not self.deleted)
    @rule(base=st.integers(0, 6), after=st.sampled_from(["0s", "30s"]), returning=st.booleans(),
          budget=st.integers(1, 3))
    def on_demand(self, base: int, after: str, returning: bool, budget: int) -> None:
        """Part of the pool on-demand, a fallback while spot is short, and (maybe) the return to
        spot, whose replacements are the only purchases beyond a deficit: at most `budget` a pass,
        one per on-demand instance ever bought."""
        self.world.kube.edit_spec(NS, NAME, {"onDemand": {
            "baseCount": base, "fallback": {"after": after},
            "returnToSpot": {"enabled": returning, "maxInFlight": budget}}})
        self.budget = max(self.budget, budget) if returning else self.budget
        self.fallback = True

    @rule(sold_out=st.booleans())
    def spot_market(self, sold_out: bool) -> None:
        """Every spot pool sells out (only a fallback buys then), or comes back."""
        self.world.sell_out_spot(sold_out)

    @precondition(lambda self: not self.deleted)
    @rule()
    def delete(self) -> None:
        self.deleted = True
        self.world.kube.delete(NS, NAME)

    # -- the cloud --------------------------------------------------------------------------------------
    @rule(count=st.integers(1, 4))
    def reclaim(self, count: int) -> None:
        ids = [i.instance_id for i in self.world.owned(self.uid)][:count]
        if ids:
            self.world.sim.simulator.market.reclaim(ids)
            self.need += len(ids)

    @rule(action=st.sampled_from(["RunInstances", "DescribeInstances", "TerminateInstances"]),
          lost_answer=st.booleans(), times=st.integers(1, 4))
    def fault(self, action: str, lost_answer: bool, times: int) -> None:
        spec = (FaultSpec(drop_rate=1.0, drop_phase="after", times=times) if lost_answer
                else FaultSpec(error_rate=1.0, error_codes=["InternalError"], times=times))
        self.world.sim.simulator.faults.set(action, spec)

    # -- the operator ------------------------------------------------------------------------------------
    @rule(point=st.sampled_from(failpoints.POINTS), hit=st.integers(1, 2))
    def crash_at(self, point: str, hit: int) -> None:
        """Passes until the failpoint kills the process (at most three), and no further: what
        the crash left behind meets whatever the next rules do."""
        failpoints.arm(point, raise_=Crash(), count=hit)
        for _ in range(3):
            if self.one_pass(1):
                break
        failpoints.disarm()

    @rule(count=st.integers(1, 3), seconds=st.sampled_from([1, 5, 30, 120]))
    def passes(self, count: int, seconds: float) -> None:
        for _ in range(count):
            self.one_pass(seconds)

    def one_pass(self, seconds: float) -> bool:
        """One pass, checked: it may create no more instances than were missing when it began
        (expected, or nothing when paused or deleting, minus what was alive). True if it crashed."""
        w = self.world
        wanted = 0 if self.deleted or self.paused else self.expected
        room = max(0, wanted - len(w.owned(self.uid)))
        before = w.bought(self.uid)
        crashed = False
        try:
            self.run(w.reconcile(NS, NAME))
        except Crash:
            self.run(w.crash())
            crashed = True
        except Exception:  # a cloud fault mid-pass: kopf logs it and the daemon goes on
            pass
        created = w.bought(self.uid) - before
        assert created <= room + self.budget, f"a pass bought {created} with only {room} missing"
        w.clock.advance(seconds)
        return crashed

    @rule()
    def settle(self) -> None:
        """Faults clear, crashes stop (spot comes back, unless a fallback can fill the pool
        without it); then the invariants must hold."""
        failpoints.disarm()
        self.world.sim.simulator.faults.clear()
        if not self.fallback:
            self.world.sell_out_spot(False)  # without a fallback only spot can fill the pool
        self.run(self.world.settle(NS, NAME, passes=80, step=15))
        w = self.world
        alive = len(w.owned(self.uid))
        if self.deleted:
            assert (NS, NAME) not in w.kube.objects, "the finalizer stayed"
            assert alive == 0, f"{alive} instances left running after delete"
        elif not self.paused:
            assert alive == self.expected, f"{alive} alive, {self.expected} expected"

    @invariant()
    def never_bought_more_than_needed(self) -> None:
        if self.w is not None:
            bought = self.w.bought(self.uid)
            # Spot replacements replace on-demand instances, one each at most.
            replaceable = self.w.bought_on_demand(self.uid) if self.budget else 0
            assert bought <= self.need + replaceable, f"bought {bought}, the history needed {self.need}"


PoolMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPoolMachine = PoolMachine.TestCase
