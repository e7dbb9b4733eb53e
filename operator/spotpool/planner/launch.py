"""Turning a deficit into RunInstances batches over the ordered buyable pools."""

from __future__ import annotations

import heapq
from collections import Counter
from decimal import Decimal

from spotpool.api.spec import AllocationStrategy
from spotpool.planner.model import MAX_LAUNCH_COUNT, LaunchBatch, PoolKey
from spotpool.planner.pools import PoolAssessment


def plan_launches(
    *,
    deficit: int,
    strategy: AllocationStrategy,
    pools: list[PoolAssessment],
    occupancy: Counter[PoolKey],
    max_price: Decimal,
) -> list[LaunchBatch]:
    """Batches buying exactly `deficit` instances from `pools` (already strategy-ordered).

    LowestPrice and Prioritized put the whole deficit on the first pool: if the cloud refuses it,
    the executor records the refusal and plans again, and the remainder moves to the next pool in
    the same reconcile. Diversified spreads the deficit over every buyable pool, filling the
    emptiest first (`occupancy` = alive plus in-flight per pool), so one reclaim wave in one pool
    takes out as few instances as possible.
    """
    if deficit <= 0 or not pools:
        return []
    if strategy is AllocationStrategy.DIVERSIFIED:
        shares = _water_fill(deficit, pools, occupancy)
    else:
        shares = [(pools[0], deficit)]
    return [
        LaunchBatch(
            zone=pool.zone,
            instance_type=pool.instance_type,
            count=count,
            max_price=max_price,
            market_price=pool.market_price,
        )
        for pool, share in shares
        for count in _split(share)
    ]


def _water_fill(
    deficit: int, pools: list[PoolAssessment], occupancy: Counter[PoolKey]
) -> list[tuple[PoolAssessment, int]]:
    """Give each new instance to the pool with the fewest, ties to the earlier pool (round-robin).

    Pools already fuller than the rest get nothing until the others catch up: the result is as
    even as the existing instances allow.
    """
    heap = [(occupancy[pool.key], index) for index, pool in enumerate(pools)]
    heapq.heapify(heap)
    shares = [0] * len(pools)
    for _ in range(deficit):
        level, index = heapq.heappop(heap)
        shares[index] += 1
        heapq.heappush(heap, (level + 1, index))
    return [(pool, share) for pool, share in zip(pools, shares, strict=True) if share > 0]


def _split(count: int) -> list[int]:
    """Split a count into RunInstances-sized pieces (each 1..MAX_LAUNCH_COUNT)."""
    full, rest = divmod(count, MAX_LAUNCH_COUNT)
    return [MAX_LAUNCH_COUNT] * full + ([rest] if rest else [])
