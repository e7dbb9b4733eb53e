"""Offset pagination under churn (`Market.skew_next_pages`, `api.listing_skew_rate`): a page asked
with Offset > 0 may start one position late with TotalCount unchanged, as when an instance listed
before the offset went away and another was launched between two page reads, so a client paging
by offset misses the instance at the page boundary.

Time is a fake clock; tests/integration/test_simulator_frictions.py checks the same over HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest

from spotpool.simulator.market import Market
from spotpool.simulator.state import SimInstance
from tests.unit.simulator.test_market import REGION, FakeClock, launch, small_config

POOL_A = [("tag:pool", ["a"])]


def page(market: Market, offset: int, limit: int = 2, **kwargs: Any) -> tuple[int, list[str]]:
    total, instances = market.describe_instances(
        REGION, filters=POOL_A, offset=offset, limit=limit, **kwargs
    )
    return total, ids(instances)


def ids(instances: list[SimInstance]) -> list[str]:
    return [inst.instance_id for inst in instances]


def read_by_offset(market: Market, limit: int = 2) -> list[str]:
    """What a client paging by offset until TotalCount collects."""
    seen: list[str] = []
    offset, total = 0, 1
    while offset < total:
        total, found = page(market, offset, limit)
        seen += found
        offset += limit
    return seen


def test_a_skewed_page_starts_one_later_with_the_same_total(market: Market) -> None:
    a = launch(market, 6)
    market.skew_next_pages(1)
    assert page(market, 0) == (6, a[:2])  # the first page is never skewed, nor counted
    assert page(market, 2) == (6, a[3:5])  # a[2] is skipped
    assert page(market, 4) == (6, a[4:6])  # the skew was used up: back to offsets as asked


def test_a_client_paging_by_offset_misses_the_boundary_instance(market: Market) -> None:
    a = launch(market, 6)
    market.skew_next_pages(2)
    assert read_by_offset(market) == a[:2] + a[3:]  # every later page shifted: a[2] is lost
    market.skew_next_pages(1)
    # Only the second page shifted: a[2] is lost and a[4] read twice (dedupe, then look again).
    assert read_by_offset(market) == a[:2] + a[3:5] + a[4:]
    assert read_by_offset(market) == a  # nothing left to skew


def test_zero_cancels_and_a_negative_count_is_refused(market: Market) -> None:
    a = launch(market, 4)
    market.skew_next_pages(3)
    market.skew_next_pages(0)
    assert read_by_offset(market) == a
    with pytest.raises(ValueError, match="negative"):
        market.skew_next_pages(-1)


def test_lookups_by_id_are_not_skewed(market: Market) -> None:
    a = launch(market, 4)
    market.skew_next_pages(1)
    total, found = market.describe_instances(REGION, instance_ids=a, offset=2, limit=2)
    assert total == 4 and ids(found) == a[2:]
    assert page(market, 2) == (4, a[3:])  # the skew was still there for the listing


def test_the_skew_also_applies_to_a_restricted_key_and_late_tag_indexing() -> None:
    clock = FakeClock()
    market = Market(small_config(api={"tag_index_delay_seconds": 5}), clock)
    a = launch(market, 5, tags=(("pool", "a"), ("team", "x")))
    launch(market, 2, tags=(("pool", "a"),))
    clock.advance(5)
    market.skew_next_pages(2)
    assert page(market, 2, visible_tags={"team": "x"}) == (5, a[3:5])
    assert page(market, 2) == (7, ids(market.instances())[3:5])


def test_the_rate_is_seeded_and_off_by_default() -> None:
    def pages(rate: float | None) -> list[list[str]]:
        market = Market(
            small_config(api={} if rate is None else {"listing_skew_rate": rate}), FakeClock()
        )
        launch(market, 10)
        return [page(market, offset, 1)[1] for offset in range(10)]

    plain = pages(None)
    assert plain == pages(0.0)
    always = pages(1.0)
    assert always[0] == plain[0] and always[1:9] == plain[2:] and always[9] == []
    sometimes = pages(0.5)
    assert sometimes == pages(0.5)  # the same seed, the same pages
    assert sometimes != plain and sometimes != always
