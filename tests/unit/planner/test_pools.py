"""Candidate pools, their verdicts, and the order each allocation strategy tries them in."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from spotpool.cloud.errors import ErrorCategory
from spotpool.cloud.models import SpotOffer
from spotpool.planner.backoff import record_refusal
from spotpool.planner.model import PoolKey
from spotpool.planner.pools import Verdict, assess_pools, candidate_pools, order_buyable
from tests.unit.planner.plannerkit import NOW, S5, SA2, Z3, Z4, all_offered, make_offer, make_spec, offers_of


def test_candidates_are_types_major_in_spec_order() -> None:
    assert candidate_pools(make_spec()) == [(Z3, S5), (Z4, S5), (Z3, SA2), (Z4, SA2)]


def test_verdicts_cover_every_reason_a_pool_cannot_be_bought() -> None:
    spec = make_spec(maxPrice="0.0500")
    offers = offers_of(
        make_offer(Z3, S5, "0.0500"),  # exactly maxPrice: buyable
        make_offer(Z4, S5, "0.0100", sold_out=True),
        make_offer(Z3, SA2, None),
    )  # (Z4, SA2) not offered
    assessments = assess_pools(spec, offers, {}, NOW)
    verdicts = {a.key: a.verdict for a in assessments}
    assert verdicts == {
        (Z3, S5): Verdict.BUYABLE,
        (Z4, S5): Verdict.SOLD_OUT,
        (Z3, SA2): Verdict.NO_PRICE,
        (Z4, SA2): Verdict.NOT_OFFERED,
    }
    assert [a.why_not(spec.max_price) for a in assessments[1:]] == [
        "ap-guangzhou-4/S5.MEDIUM4 is sold out",
        "no spot market price is known for ap-guangzhou-3/SA2.MEDIUM4",
        "ap-guangzhou-4/SA2.MEDIUM4 is not offered as spot",
    ]


def test_price_above_max_is_not_buyable_and_says_both_prices() -> None:
    spec = make_spec(maxPrice="0.0100")
    offers = offers_of(make_offer(Z3, S5, "0.025"))
    [first, *_] = assess_pools(spec, offers, {}, NOW)
    assert first.verdict is Verdict.PRICE_ABOVE_MAX
    assert first.why_not(spec.max_price) == (
        "market price 0.0250 USD/h in ap-guangzhou-3/S5.MEDIUM4 is above maxPrice 0.0100"
    )


def test_pool_in_backoff_is_not_buyable_until_retry_after() -> None:
    spec = make_spec()
    backoff = record_refusal(
        {},
        (Z3, S5),
        code="LimitExceeded.UserSpotQuota",
        message="quota",
        category=ErrorCategory.QUOTA,
        now=NOW,
        rng=random.Random(0),
    )
    [first, *_] = assess_pools(spec, all_offered(), backoff, NOW)
    assert (first.verdict, first.backing_off) == (Verdict.BACKING_OFF, True)
    assert first.why_not(spec.max_price).startswith(
        "ap-guangzhou-3/S5.MEDIUM4 is backing off after LimitExceeded.UserSpotQuota until 2025-06-01T12:00:"
    )
    later = backoff[(Z3, S5)].retry_after
    assert later is not None
    [first, *_] = assess_pools(spec, all_offered(), backoff, later)
    assert (first.verdict, first.backing_off) == (Verdict.BUYABLE, False)


def test_market_reasons_win_over_backoff_in_the_verdict() -> None:
    spec = make_spec()
    backoff = record_refusal(
        {}, (Z3, S5), code="X", message="x", category=ErrorCategory.CAPACITY, now=NOW, rng=random.Random(0)
    )
    offers = {**all_offered(), (Z3, S5): make_offer(Z3, S5, "0.02", sold_out=True)}
    [first, *_] = assess_pools(spec, offers, backoff, NOW)
    assert (first.verdict, first.backing_off) == (Verdict.SOLD_OUT, True)


def prices(*pairs: tuple[PoolKey, str]) -> dict[PoolKey, SpotOffer]:
    return offers_of(*(make_offer(zone, itype, price) for (zone, itype), price in pairs))


MARKET = prices(((Z3, S5), "0.0300"), ((Z4, S5), "0.0200"), ((Z3, SA2), "0.0200"), ((Z4, SA2), "0.0100"))


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("LowestPrice", [(Z4, SA2), (Z4, S5), (Z3, SA2), (Z3, S5)]),
        ("Prioritized", [(Z3, S5), (Z4, S5), (Z3, SA2), (Z4, SA2)]),
        ("Diversified", [(Z3, S5), (Z4, S5), (Z3, SA2), (Z4, SA2)]),
    ],
)
def test_strategy_order(strategy: str, expected: list[tuple[str, str]]) -> None:
    spec = make_spec(allocationStrategy=strategy)
    ordered = order_buyable(spec, assess_pools(spec, MARKET, {}, NOW))
    assert [a.key for a in ordered] == expected


def test_lowest_price_ties_follow_instance_types_then_zones() -> None:
    spec = make_spec(instanceTypes=[SA2, S5])
    ordered = order_buyable(spec, assess_pools(spec, all_offered("0.02"), {}, NOW))
    assert [a.key for a in ordered] == [(Z3, SA2), (Z4, SA2), (Z3, S5), (Z4, S5)]


def test_order_only_includes_buyable_pools() -> None:
    spec = make_spec(maxPrice="0.0250")
    ordered = order_buyable(spec, assess_pools(spec, MARKET, {}, NOW))
    assert (Z3, S5) not in [a.key for a in ordered]
    assert all(a.market_price is not None and a.market_price <= Decimal("0.0250") for a in ordered)
