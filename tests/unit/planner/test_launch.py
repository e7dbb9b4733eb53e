"""Deficit to RunInstances batches: first pool for LowestPrice/Prioritized, even spread for Diversified."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from spotpool.api.spec import AllocationStrategy
from spotpool.planner.launch import plan_launches
from spotpool.planner.model import PoolKey
from spotpool.planner.pools import PoolAssessment, assess_pools
from tests.unit.planner.plannerkit import NOW, S5, SA2, Z3, Z4, all_offered, make_spec

MAX = Decimal("0.0500")


def pools() -> list[PoolAssessment]:
    return assess_pools(make_spec(), all_offered("0.0200"), {}, NOW)


def launch(
    deficit: int, strategy: AllocationStrategy, occupancy: Counter[PoolKey] | None = None
) -> list[tuple[str, str, int]]:
    batches = plan_launches(
        deficit=deficit, strategy=strategy, pools=pools(), occupancy=occupancy or Counter(), max_price=MAX
    ).batches
    assert all(b.max_price == MAX and b.market_price == Decimal("0.0200") for b in batches)
    return [(b.zone, b.instance_type, b.count) for b in batches]


def test_no_deficit_or_no_pool_means_no_batch() -> None:
    assert launch(0, AllocationStrategy.LOWEST_PRICE) == []
    assert (
        plan_launches(
            deficit=5, strategy=AllocationStrategy.LOWEST_PRICE, pools=[], occupancy=Counter(), max_price=MAX
        ).unfilled
        == 5
    )


def test_first_pool_takes_the_whole_deficit() -> None:
    assert launch(7, AllocationStrategy.LOWEST_PRICE) == [(Z3, S5, 7)]
    assert launch(7, AllocationStrategy.PRIORITIZED) == [(Z3, S5, 7)]


def test_large_deficits_split_into_batches_of_at_most_100() -> None:
    assert launch(250, AllocationStrategy.PRIORITIZED) == [(Z3, S5, 100), (Z3, S5, 100), (Z3, S5, 50)]
    assert launch(200, AllocationStrategy.PRIORITIZED) == [(Z3, S5, 100), (Z3, S5, 100)]


def test_diversified_spreads_evenly_round_robin() -> None:
    assert launch(6, AllocationStrategy.DIVERSIFIED) == [(Z3, S5, 2), (Z4, S5, 2), (Z3, SA2, 1), (Z4, SA2, 1)]


def test_diversified_fills_the_emptiest_pools_first() -> None:
    occupancy = Counter({(Z3, S5): 3, (Z4, S5): 1})
    # levels 3,1,0,0 -> +5 makes every pool reach 2 (0+2, 0+2, 1+1) with the rest nothing
    assert launch(5, AllocationStrategy.DIVERSIFIED, occupancy) == [(Z4, S5, 1), (Z3, SA2, 2), (Z4, SA2, 2)]


def test_diversified_shares_are_split_into_batches_too() -> None:
    batches = launch(404, AllocationStrategy.DIVERSIFIED)
    assert all(1 <= count <= 100 for _, _, count in batches)
    assert sum(count for _, _, count in batches) == 404
    per_pool: Counter[PoolKey] = Counter()
    for zone, itype, count in batches:
        per_pool[(zone, itype)] += count
    assert sorted(per_pool.values()) == [101, 101, 101, 101]
