"""Turning a deficit into RunInstances batches over ordered pools, within what the plan allows."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from spotpool.api.spec import AllocationStrategy
from spotpool.planner.allowance import Allowance
from spotpool.planner.model import MAX_LAUNCH_COUNT, LaunchBatch, PoolKey, Purpose


class Buyable(Protocol):
    """A pool that may be bought from, at a known hourly price (a spot assessment, an on-demand offer)."""

    @property
    def key(self) -> PoolKey: ...

    @property
    def market_price(self) -> Decimal | None: ...


@dataclass(frozen=True)
class Launches:
    """The batches planned, and how much of the deficit they leave unbought (no room left)."""

    batches: tuple[LaunchBatch, ...]
    unfilled: int

    @property
    def count(self) -> int:
        return sum(batch.count for batch in self.batches)


def plan_launches(
    *,
    deficit: int,
    strategy: AllocationStrategy,
    pools: list[Buyable],
    occupancy: Counter[PoolKey],
    max_price: Decimal,
    purpose: Purpose = Purpose.SPOT,
    allowance: Allowance | None = None,
) -> Launches:
    """Batches buying up to `deficit` instances from `pools` (already strategy-ordered).

    LowestPrice, Prioritized and CapacityOptimized put as much of the deficit as the allowance
    lets on the first pool, the rest on the next: if the cloud refuses a pool, the executor
    records the refusal and plans again, and the remainder moves to the next pool. Diversified
    spreads the deficit over every pool, filling the emptiest first (`occupancy` = alive plus
    in-flight per pool), so one reclaim wave in one pool takes out as few instances as possible.
    A pool whose quota or cap room runs out is skipped; what no pool has room for is `unfilled`.
    """
    if deficit <= 0 or not pools:
        return Launches((), max(deficit, 0))
    charge = LaunchBatch("", "", 1, max_price, None, purpose).charge_type

    def room(pool: Buyable) -> int | None:
        return None if allowance is None else allowance.room(pool.key, charge, pool.market_price)

    def take(pool: Buyable, count: int) -> None:
        if allowance is not None:
            allowance.take(pool.key, charge, pool.market_price, count)

    if strategy is AllocationStrategy.DIVERSIFIED:
        shares = _water_fill(deficit, pools, occupancy, room, take)
    else:
        shares, left = [], deficit
        for pool in pools:
            fits = room(pool)
            share = left if fits is None else min(left, fits)
            if share > 0:
                take(pool, share)
                shares.append((pool, share))
                left -= share
    unfilled = deficit - sum(share for _, share in shares)
    if allowance is not None and unfilled:  # every pool's room is used up: say which limit did it
        for pool in pools:
            allowance.note_full(pool.key, charge, pool.market_price)
    batches = tuple(
        LaunchBatch(
            zone=pool.key[0],
            instance_type=pool.key[1],
            count=count,
            max_price=max_price,
            market_price=pool.market_price,
            purpose=purpose,
        )
        for pool, share in shares
        for count in _split(share)
    )
    return Launches(batches, unfilled)


def _water_fill(
    deficit: int,
    pools: list[Buyable],
    occupancy: Counter[PoolKey],
    room: Callable[[Buyable], int | None],
    take: Callable[[Buyable, int], None],
) -> list[tuple[Buyable, int]]:
    """Give each new instance to the pool with the fewest, ties to the earlier pool (round-robin).

    Pools already fuller than the rest get nothing until the others catch up: the result is as
    even as the existing instances allow. A pool leaves the round once it has no room left (its
    zone's quota, the spend cap), asked one instance at a time since pools share both.
    """
    heap = [(occupancy[pool.key], index) for index, pool in enumerate(pools)]
    heapq.heapify(heap)
    shares = [0] * len(pools)
    given = 0
    while heap and given < deficit:
        level, index = heapq.heappop(heap)
        fits = room(pools[index])
        if fits is not None and fits <= 0:
            continue  # out of the round for good: rooms only shrink within a plan
        take(pools[index], 1)
        shares[index] += 1
        given += 1
        heapq.heappush(heap, (level + 1, index))
    return [(pool, share) for pool, share in zip(pools, shares, strict=True) if share > 0]


def _split(count: int) -> list[int]:
    """Split a count into RunInstances-sized pieces (each 1..MAX_LAUNCH_COUNT)."""
    full, rest = divmod(count, MAX_LAUNCH_COUNT)
    return [MAX_LAUNCH_COUNT] * full + ([rest] if rest else [])
