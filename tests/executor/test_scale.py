"""Scale behaviour of the executor, in-process (timing and figures live in benchmarks/):
one sweep per account and region serves every pool, a huge deficit does not starve a small pool,
and a purchase shows in `currentCount` as soon as RunInstances answers."""

from __future__ import annotations

import asyncio

from spotpool.cloud.ratelimit import RateLimiterRegistry
from spotpool.controller.purchasing import CALLS_IN_FLIGHT
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from spotpool.simulator.faults import FaultSpec
from tests.support.inprocess import pool_spec, world

NS = "team"


def sweeps(calls: list) -> list:
    return [c for c in calls if "Filters" in c.params]


async def test_one_sweep_per_interval_serves_every_pool() -> None:
    async with world(observe_interval=15.0) as w:
        w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        names = [f"pool-{n}" for n in range(30)]
        for name in names:
            w.kube.create(NS, name, pool_spec(w.sim, expectedCount=3))
        for _ in range(6):  # buy, then let them boot
            await asyncio.gather(*(w.reconcile(NS, name) for name in names))
            w.clock.advance(5)
        assert sum(len(w.owned(w.kube.objects[(NS, n)]["metadata"]["uid"])) for n in names) == 90
        w.sim.simulator.ledger.clear()
        w.clock.advance(15)
        await asyncio.gather(*(w.reconcile(NS, name) for name in names))  # one interval, every pool
        listing = sweeps(w.sim.simulator.ledger.entries("DescribeInstances"))
        assert len(listing) == 1, f"{len(listing)} listings for 30 pools in one interval (90 instances: 1 page)"
        assert w.sim.simulator.ledger.entries("RunInstances") == []


async def test_a_huge_deficit_does_not_starve_a_small_pool() -> None:
    # Real client-side rate limits (RunInstances 10/s, first come first served): the big pool's
    # 20 calls must not all queue ahead of the small pool's one.
    async with world(limiter=RateLimiterRegistry()) as w:
        w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.sim.simulator.market.update_pool("ap-guangzhou-3", "S5.MEDIUM4", stock=5000)
        big = w.kube.create(NS, "big", pool_spec(w.sim, expectedCount=0, zones=["ap-guangzhou-3"],
                                                 instanceTypes=["S5.MEDIUM4"]))
        small = w.kube.create(NS, "small", pool_spec(w.sim, expectedCount=0, zones=["ap-guangzhou-4"]))
        await asyncio.gather(w.reconcile(NS, "big"), w.reconcile(NS, "small"))  # account known, market read
        w.kube.edit_spec(NS, "big", {"expectedCount": 2000})
        w.kube.edit_spec(NS, "small", {"expectedCount": 1})
        await asyncio.gather(w.reconcile(NS, "big"), w.reconcile(NS, "small"))
        owners = [c.params.get("TagSpecification", [{}])[0] for c in w.sim.simulator.ledger.entries("RunInstances")
                  if not c.params.get("DryRun")]  # the launch checks before the purchases
        order = ["small" if small["metadata"]["uid"] in str(o) else "big" for o in owners]
        assert order.count("big") == 20 and order.count("small") == 1
        # Reserved behind at most CALLS_IN_FLIGHT of the big pool's (answers may cross by one).
        assert order.index("small") <= CALLS_IN_FLIGHT + 1, f"the small pool's call came {order.index('small') + 1}th"
        assert len(w.owned(big["metadata"]["uid"])) == 2000


async def test_a_purchase_counts_in_current_count_as_soon_as_it_answers() -> None:
    async with world(observe_interval=15.0) as w:
        w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.create(NS, "pool", pool_spec(w.sim, expectedCount=250))
        await w.reconcile(NS, "pool")  # one pass: bought, no listing since
        status = w.kube.objects[(NS, "pool")]["status"]
        assert status["currentCount"] == 250 and status["pendingCount"] == 250
        launched = [e for e in w.events if e.reason == "Launched"]
        assert len(launched) == 1, "one Event for the pass's purchases, not one per RunInstances call"
        assert launched[0].message.startswith("Bought 250 ") and "and 240 more" in launched[0].message


async def test_a_new_key_pairs_first_pass_reads_everything_beside_the_account_look_up() -> None:
    # GetCallerIdentity answers 300 ms late, every other action at once. The sweep, the market,
    # the quota and the launch check's DryRun must all be answered before it (they went out
    # beside it, not after it), each once, and nothing is bought before the account is known.
    async with world(observe_interval=15.0) as w:
        w.sim.simulator.faults.set("GetCallerIdentity", FaultSpec(latency_ms=300))
        w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        w.kube.create(NS, "pool", pool_spec(w.sim, expectedCount=5, zones=["ap-guangzhou-3"],
                                            instanceTypes=["S5.MEDIUM4"]))
        await w.reconcile(NS, "pool")
        calls = [(c.action, bool(c.params.get("DryRun"))) for c in w.sim.simulator.ledger.entries()]
        looked_up = calls.index(("GetCallerIdentity", False))
        first_reads = {("DescribeInstances", False), ("DescribeZoneInstanceConfigInfos", False),
                       ("DescribeAccountQuota", False), ("RunInstances", True)}
        assert set(calls[:looked_up]) == first_reads and len(calls[:looked_up]) == 4, calls
        assert calls[looked_up + 1:] == [("RunInstances", False)], "joined, not asked again, then one purchase"
        assert w.kube.objects[(NS, "pool")]["status"]["currentCount"] == 5
