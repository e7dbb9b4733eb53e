"""Only the leader acts, and a leader whose term ends mid-pass stops before its next write or spend.

The elector itself is tested against the real API server (tests/integration/test_leadership.py);
here a scripted leadership drives the real reconciler, to prove where the fence stands."""

from __future__ import annotations

import asyncio

from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.support.inprocess import World, pool_spec, world

NS, NAME = "team", "pool"


class Scripted:
    """Leads in term 1 for the first `checks` questions, then not (a renew deadline that passed)."""

    term = 1

    def __init__(self, checks: int | None = None) -> None:
        self.checks = checks
        self.asked = 0

    def is_leader(self, term: int | None = None) -> bool:
        self.asked += 1
        return self.checks is None or self.asked <= self.checks

    def remaining(self) -> float:
        """A leader's time left in its term (the client bounds each spending call by it)."""
        return 10.0


async def start(w: World, count: int = 5) -> str:
    w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
    return str(w.kube.create(NS, NAME, pool_spec(w.sim, expectedCount=count))["metadata"]["uid"])


async def test_a_follower_neither_writes_nor_spends() -> None:
    async with world() as w:
        uid = await start(w)
        follower = World(w.sim, w.clock, kube=w.kube, leadership=Scripted(checks=0))
        outcome = await follower.reconcile(NS, NAME)
        assert outcome is not None and outcome.problem and "not the leader" in outcome.problem
        assert w.kube.status_writes == 0 and w.bought(uid) == 0
        assert w.kube.secrets[(NS, "creds")]["finalizers"] == []
        await follower.cloud.close()


async def test_a_term_that_ends_before_the_journal_write_buys_nothing() -> None:
    async with world() as w:
        uid = await start(w)
        # Leads for the pass's first checks (start, Secret finalizer), then its renew deadline passes.
        late = World(w.sim, w.clock, kube=w.kube, leadership=Scripted(checks=2))
        outcome = await late.reconcile(NS, NAME)
        assert outcome is not None and "not the leader" in (outcome.problem or "")
        assert w.bought(uid) == 0 and w.kube.objects[(NS, NAME)]["status"] == {}
        await late.cloud.close()


async def test_two_replicas_with_one_leader_converge_to_exactly_the_count() -> None:
    async with world() as w:
        uid = await start(w, count=30)
        leader = World(w.sim, w.clock, kube=w.kube, leadership=Scripted())
        follower = World(w.sim, w.clock, kube=w.kube, leadership=Scripted(checks=0))
        for _ in range(6):
            await follower.reconcile(NS, NAME)
            await leader.reconcile(NS, NAME)
            w.clock.advance(5)
        assert len(w.owned(uid)) == 30 and w.bought(uid) == 30
        await leader.cloud.close()
        await follower.cloud.close()


async def test_two_acting_replicas_are_fenced_by_the_journal_precondition() -> None:
    """Two leaders at once (a misconfiguration, or the instant of a failover): both read the same
    object, both plan 30, and the resourceVersion precondition on the journal lets one buy."""
    async with world() as w:
        uid = await start(w, count=30)
        a = World(w.sim, w.clock, kube=w.kube, leadership=Scripted())
        b = World(w.sim, w.clock, kube=w.kube, leadership=Scripted())
        outcomes = await asyncio.gather(a.reconcile(NS, NAME), b.reconcile(NS, NAME))
        assert w.bought(uid) == 30
        assert sum(1 for o in outcomes if o is not None and o.problem) == 1  # the loser saw the conflict
        await a.cloud.close()
        await b.cloud.close()


async def test_every_status_write_is_bounded_by_the_time_left_in_its_term() -> None:
    """An API server that holds a write (its etcd down) answered it after the term had ended (the
    chaos e2e saw one land 5 s after the leader's last renewal). Each write now carries the term's
    time left as its timeout: the client gives it up when the term ends, and the server cancels it."""
    from tests.support.inprocess import Switch, start

    switch = Switch()
    async with world() as w:
        leader = World(w.sim, w.clock, kube=w.kube, leadership=switch)
        try:
            await start(w, expectedCount=3)
            await leader.settle(NS, NAME)
            assert w.bought(w.kube.objects[(NS, NAME)]["metadata"]["uid"]) == 3
            assert w.kube.write_timeouts and all(t == switch.remaining() for t in w.kube.write_timeouts)
        finally:
            await leader.close()
