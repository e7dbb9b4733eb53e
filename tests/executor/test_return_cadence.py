"""How soon a pool is looked at again while its fallback on-demand instances wait for spot.

Only the market says when spot is back, and a market change wakes no pool (the sweep of instances
does not change), so such a pool must not sleep the settled pools' heartbeat (300 s by default):
it is looked at every observe interval until its fallback instances are gone. Found end to end
(tests/e2e/test_beyond_spot.py): the return to spot waited for the heartbeat.
"""

from __future__ import annotations

from typing import Any

from spotpool.controller.config import OperatorConfig
from spotpool.controller.reconciler import Outcome
from tests.support.inprocess import World, world

NS, NAME = "team", "pool"
CONFIG = OperatorConfig(observe_interval=15.0, heartbeat_interval=300.0, progress_interval=2.0)


async def start(w: World, **spec: Any) -> None:
    await w.start_pool(NS, NAME, **spec)
    await w.mark_launch_checked(NS, NAME)


async def settled(w: World) -> Outcome:
    await w.settle(NS, NAME)
    outcome = await w.reconcile(NS, NAME)
    assert outcome is not None and not outcome.progressing and outcome.problem is None, outcome
    return outcome


async def test_fallback_instances_waiting_for_spot_are_looked_at_every_observe_interval() -> None:
    async with world() as w:
        w.sell_out_spot()
        await start(w, expectedCount=2, onDemand={"fallback": {"after": "0s"}})
        outcome = await settled(w)
        assert w.status(NS, NAME)["capacity"]["onDemandFallback"] == 2
        assert outcome.awaiting_spot and outcome.next_delay(CONFIG) == CONFIG.observe_interval

        # Without a return to spot, or paused, nothing is awaited: the heartbeat.
        w.kube.edit_spec(NS, NAME, {"onDemand": {"fallback": {"after": "0s"}, "returnToSpot": {"enabled": False}}})
        outcome = await settled(w)
        assert not outcome.awaiting_spot and outcome.next_delay(CONFIG) == CONFIG.heartbeat_interval
        w.kube.edit_spec(NS, NAME, {"onDemand": {"returnToSpot": None}, "paused": True})  # enabled again
        outcome = await settled(w)
        assert not outcome.awaiting_spot and outcome.next_delay(CONFIG) == CONFIG.heartbeat_interval

        # Spot back: the return goes on (progress interval), and once every fallback instance has
        # gone the pool is settled again.
        w.kube.edit_spec(NS, NAME, {"paused": False})
        w.sell_out_spot(False)
        w.clock.advance(60)  # past the market read's reuse
        outcome = await settled(w)
        assert w.status(NS, NAME)["capacity"]["onDemandFallback"] == 0
        assert not outcome.awaiting_spot and outcome.next_delay(CONFIG) == CONFIG.heartbeat_interval


async def test_a_base_alone_is_settled() -> None:
    async with world() as w:
        await start(w, expectedCount=2, onDemand={"baseCount": 2})
        outcome = await settled(w)
        assert w.status(NS, NAME)["capacity"]["onDemandBase"] == 2
        assert not outcome.awaiting_spot and outcome.next_delay(CONFIG) == CONFIG.heartbeat_interval


def test_next_delay_prefers_progress_then_problems_and_waits_then_the_heartbeat() -> None:
    assert Outcome(progressing=True, awaiting_spot=True).next_delay(CONFIG) == CONFIG.progress_interval
    assert Outcome(progressing=False, problem="throttled").next_delay(CONFIG) == CONFIG.observe_interval
    assert Outcome(progressing=False, awaiting_spot=True).next_delay(CONFIG) == CONFIG.observe_interval
    assert Outcome(progressing=False).next_delay(CONFIG) == CONFIG.heartbeat_interval
