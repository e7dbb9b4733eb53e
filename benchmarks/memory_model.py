"""The operator's memory model, measured in one process: what an instance, a pool and an account
cost to hold, and what one pass holds at its peak.

Runs the real reconciler, `CloudAccess` and client against the in-process simulator and the
Kubernetes fake (tests/support/inprocess.py), converges `--pools` pools of `--size`, then measures:

- **per instance**: the retained size of the account's sweep snapshot (`Observer`), divided by the
  instances in it. Every `Instance` with its tags, as parsed from DescribeInstances.
- **per pool**: what the operator keeps for a pool between passes: its `PoolMemory` (the status as
  last written, the ids it knows; the instances themselves are the sweep's) and the object's body
  (kopf keeps the latest body of every object it watches; the fake's body is the same JSON).
- **per account**: `CloudAccess` in all: clients (rate limiters, connection pools), market and quota
  caches, observers without their snapshots.
- **a pass at its peak**: tracemalloc's peak during one settled pass and during one first pass
  (an adoption: the instances exist, the status is empty), above what was held before it. Passes
  that run at once add up: at startup every pool's first pass starts together.

Sizes are deep: every object reachable from the structure, shared objects counted once, types,
modules and functions not counted. tracemalloc counts Python allocations, not the allocator's
own overhead or fragmentation, so the process's RSS is higher (docs/scaling.md relates the two).

    .venv/bin/python benchmarks/memory_model.py --pools 100 --size 20
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests/support: the in-process world

from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY  # noqa: E402
from tests.support.inprocess import pool_spec, world  # noqa: E402

NS = "model"
_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.CodeType)


def deep_size(roots: Iterable[Any], exclude: Iterable[Any] = ()) -> int:
    """Bytes of every object reachable from `roots` (each once), not counting those reachable only
    through `exclude`, nor types, modules, functions and code."""
    seen: set[int] = {id(o) for o in exclude}
    total = 0
    pending = [o for o in roots if id(o) not in seen]
    while pending:
        obj = pending.pop()
        if id(obj) in seen or isinstance(obj, _SKIP):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        pending.extend(r for r in gc.get_referents(obj) if id(r) not in seen)
    return total


def kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


async def measure(pools: int, size: int) -> list[str]:
    async with world(observe_interval=15.0) as w:
        w.kube.put_secret(NS, "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        names = [f"pool-{n:04d}" for n in range(pools)]
        for name in names:
            w.kube.create(NS, name, pool_spec(w.sim, expectedCount=size))
        for _ in range(12):  # buy, let them boot, see them running
            await asyncio.gather(*(w.reconcile(NS, name) for name in names))
            w.clock.advance(5)
        uids = [w.kube.objects[(NS, n)]["metadata"]["uid"] for n in names]
        bought = sum(len(w.owned(uid)) for uid in uids)
        if bought != pools * size:
            raise SystemExit(f"only {bought} of {pools * size} instances bought (the in-process simulator's "
                             "stock or quota ran out): measure fewer pools")
        w.clock.advance(15)
        await asyncio.gather(*(w.reconcile(NS, name) for name in names))  # a fresh sweep, settled
        gc.collect()

        (observer,) = w.cloud.observers()
        snapshot = observer._snapshot  # what the sweep retains is the point here
        assert snapshot is not None
        instances = sum(len(v) for v in snapshot.by_owner.values())
        per_instance = deep_size([snapshot.by_owner]) / max(instances, 1)
        memories = [w.memos[uid][0] for uid in uids]
        bodies = [w.kube.objects[(NS, n)] for n in names]
        swept = [i for owned in snapshot.by_owner.values() for i in owned.values()]
        per_memory = deep_size(memories, exclude=[snapshot, *swept]) / pools  # instances are the sweep's
        per_body = deep_size(bodies) / pools
        # The client's transport leads to the in-process simulator: not the operator's memory.
        clients = deep_size([w.cloud], exclude=[snapshot, *swept, *memories, w.sim, w.sim.simulator, w.clock])

        # One settled pass, then one first pass over existing instances (the status gone).
        tracemalloc.start(25)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await w.reconcile(NS, names[0])
        _, settled_peak = tracemalloc.get_traced_memory()
        w.memos.pop(uids[1])
        w.kube.objects[(NS, names[1])].pop("status", None)
        gc.collect()
        before_first, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await w.reconcile(NS, names[1])
        _, first_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        adopted = len(w.owned(uids[1])) == size and w.bought(uids[1]) == size
    return [
        f"{pools} pools x {size} converged: {bought} instances bought; the sweep snapshot holds {instances}",
        f"per instance (sweep snapshot): {per_instance:.0f} bytes",
        f"per pool, kept between passes: PoolMemory {kib(per_memory)}, object body {kib(per_body)}",
        f"CloudAccess in all (clients, rate limiters, caches, observers without their snapshots): {kib(clients)}",
        f"one settled pass at its peak: {kib(settled_peak - before)} above what was held",
        f"one first pass (status gone, {size} instances adopted, nothing bought: {adopted}) at its peak: "
        f"{kib(first_peak - before_first)} above what was held",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--size", type=int, default=20)
    args = parser.parse_args()
    print("\n".join(asyncio.run(measure(args.pools, args.size))))


if __name__ == "__main__":
    main()
