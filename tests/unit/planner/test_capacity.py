"""Capacity types in the plan: on-demand base, fallback after the wait, the return to spot under
its budget (replacement first), the hourly spend cap, quota-aware and capacity-aware allocation."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from spotpool.cloud.models import (
    PENDING,
    POSTPAID_BY_HOUR,
    RUNNING,
    SPOTPAID,
    AccountQuota,
    Instance,
    Offer,
    SpotOffer,
    ZoneQuota,
)
from spotpool.planner import plan
from spotpool.planner.capacity import Capacity, take_mix
from spotpool.planner.model import InflightLaunch, Plan, PoolKey, PurchaseSignals, Purpose, ReleaseReason
from spotpool.planner.persistence import inflight_to_status, read_journal
from spotpool.planner.pools import assess_pools, capacity_score, order_buyable
from tests.unit.planner.plannerkit import (
    NOW,
    S5,
    SA2,
    UID,
    Z3,
    Z4,
    all_offered,
    census_of,
    make_instance,
    make_offer,
    make_spec,
    observe,
    offers_of,
    token,
)

ON_DEMAND = "POSTPAID_BY_HOUR"


def od(instance_id: str, **kw: Any) -> Instance:
    return dataclasses.replace(make_instance(instance_id, **kw), charge_type=POSTPAID_BY_HOUR)


def spot(instance_id: str, **kw: Any) -> Instance:
    return make_instance(instance_id, **kw)


def sold_out() -> dict[PoolKey, SpotOffer]:
    return offers_of(*(make_offer(z, t, "0.0200", sold_out=True) for t in (S5, SA2) for z in (Z3, Z4)))


def fallback_spec(**overrides: Any) -> dict[str, Any]:
    on_demand = {"fallback": {"after": "5m"}, **overrides.pop("onDemand", {})}
    return {"onDemand": on_demand, **overrides}


def run(*instances: Instance, offers: dict[PoolKey, SpotOffer] | None = None, signals: PurchaseSignals | None = None,
        journal: tuple[InflightLaunch, ...] = (), **spec: Any) -> Plan:
    return plan(spec=make_spec(**spec), observation=observe(*instances), journal=journal,
                offers=all_offered() if offers is None else offers, backoff={}, now=NOW, owner_uid=UID,
                signals=signals)


def bought(p: Plan) -> Counter[Purpose]:
    counts: Counter[Purpose] = Counter()
    for batch in p.launches:
        counts[batch.purpose] += batch.count
    return counts


def released(p: Plan) -> list[str]:
    return [i for batch in p.releases for i in batch]


def returned(p: Plan) -> list[str]:
    return [i for batch in p.returns for i in batch]


# -- base -------------------------------------------------------------------------------------------------

def test_the_base_is_bought_on_demand_and_the_rest_spot() -> None:
    p = run(expectedCount=5, onDemand={"baseCount": 2})
    assert bought(p) == {Purpose.BASE: 2, Purpose.SPOT: 3}
    assert {b.charge_type for b in p.launches if b.purpose is Purpose.BASE} == {ON_DEMAND}
    # on-demand is bought at its list price, cheapest first (every list price here is 0.1000)
    assert all(b.market_price == Decimal("0.1000") for b in p.launches if b.purpose is Purpose.BASE)


def test_a_lost_spot_instance_is_replaced_by_spot_while_the_base_is_whole() -> None:
    p = run(od("ins-0000000a"), od("ins-0000000b"), spot("ins-0000000c"), expectedCount=4, onDemand={"baseCount": 2})
    assert bought(p) == {Purpose.SPOT: 1}


def test_the_base_never_exceeds_expected_count() -> None:
    p = run(expectedCount=1, onDemand={"baseCount": 3})
    assert bought(p) == {Purpose.BASE: 1}


def test_roles_oldest_on_demand_are_the_base() -> None:
    census = census_of([od("ins-0000000a", age_minutes=10), od("ins-0000000b", age_minutes=90),
                        spot("ins-0000000c")])
    mix = take_mix(census, 1)
    assert mix.roles() == {"ins-0000000b": Capacity.BASE, "ins-0000000a": Capacity.FALLBACK,
                           "ins-0000000c": Capacity.SPOT}


# -- fallback ---------------------------------------------------------------------------------------------

def test_fallback_waits_for_the_configured_time_then_buys_on_demand() -> None:
    first = run(offers=sold_out(), expectedCount=3, **fallback_spec())
    assert first.launches == ()
    assert first.verdict is not None and first.verdict.spot_short_since == NOW
    assert first.verdict.spot_short_reasons == ("SoldOut",) and not first.verdict.fallback_due

    almost = run(offers=sold_out(), expectedCount=3,
                 signals=PurchaseSignals(spot_short_since=NOW - timedelta(minutes=4, seconds=59)), **fallback_spec())
    assert almost.launches == ()

    due = run(offers=sold_out(), expectedCount=3,
              signals=PurchaseSignals(spot_short_since=NOW - timedelta(minutes=5)), **fallback_spec())
    assert bought(due) == {Purpose.FALLBACK: 3}
    assert due.verdict is not None and due.verdict.fallback_due
    assert due.verdict.spot_short_since == NOW - timedelta(minutes=5)  # the clock is not restarted


def test_without_a_fallback_spot_shortage_is_reported_but_nothing_on_demand_is_bought() -> None:
    p = run(offers=sold_out(), expectedCount=3, signals=PurchaseSignals(spot_short_since=NOW - timedelta(hours=2)))
    assert p.launches == () and p.verdict is not None and p.verdict.spot_short_reasons == ("SoldOut",)


def test_only_the_configured_reasons_fall_back() -> None:
    long_ago = PurchaseSignals(spot_short_since=NOW - timedelta(hours=1))
    too_dear = all_offered("0.0900")  # above maxPrice 0.0500
    p = run(offers=too_dear, expectedCount=2, signals=long_ago,
            **fallback_spec(onDemand={"fallback": {"after": "1m", "reasons": ["SoldOut"]}}))
    assert p.launches == ()
    assert p.verdict is not None and p.verdict.spot_short_reasons == ("PriceAboveMax",)
    p = run(offers=too_dear, expectedCount=2, signals=long_ago,
            **fallback_spec(onDemand={"fallback": {"after": "1m", "reasons": ["PriceAboveMax"]}}))
    assert bought(p) == {Purpose.FALLBACK: 2}


def test_the_shortage_clock_resets_once_nothing_is_missing() -> None:
    long_ago = PurchaseSignals(spot_short_since=NOW - timedelta(hours=1))
    p = run(spot("ins-0000000a"), spot("ins-0000000b"), expectedCount=2, signals=long_ago, **fallback_spec())
    assert p.launches == () and p.verdict is not None and p.verdict.spot_short_since is None
    p = run(od("ins-0000000a"), od("ins-0000000b"), offers=sold_out(), expectedCount=2, signals=long_ago,
            **fallback_spec())
    assert p.launches == () and p.verdict is not None and p.verdict.spot_short_since is None


def test_a_pool_that_looks_buyable_again_keeps_the_shortage_clock_until_spot_fills() -> None:
    since = NOW - timedelta(minutes=3)
    retrying = run(expectedCount=2, signals=PurchaseSignals(spot_short_since=since), **fallback_spec())
    assert bought(retrying) == {Purpose.SPOT: 2}  # the lapsed backoff lets spot be tried again
    assert retrying.verdict is not None and retrying.verdict.spot_short_since == since
    assert not retrying.verdict.spot_short_reasons and not retrying.verdict.fallback_due
    # ... and when that try is refused, the wait goes on from where it was, not from now
    refused = run(offers=sold_out(), expectedCount=2, signals=PurchaseSignals(spot_short_since=since),
                  **fallback_spec())
    assert refused.verdict is not None and refused.verdict.spot_short_since == since


def test_fallback_max_count_bounds_the_on_demand_instances() -> None:
    long_ago = PurchaseSignals(spot_short_since=NOW - timedelta(hours=1))
    spec = fallback_spec(onDemand={"fallback": {"after": "1m", "maxCount": 3}})
    p = run(od("ins-0000000a"), offers=sold_out(), expectedCount=6, signals=long_ago, **spec)
    assert bought(p) == {Purpose.FALLBACK: 2}
    in_flight = (InflightLaunch(token(1), Z3, S5, 2, NOW, charge_type=ON_DEMAND),)
    p = run(od("ins-0000000a"), offers=sold_out(), expectedCount=6, signals=long_ago, journal=in_flight, **spec)
    assert bought(p) == {}


def test_on_demand_sold_out_pools_and_refusals_are_skipped() -> None:
    long_ago = PurchaseSignals(
        spot_short_since=NOW - timedelta(hours=1),
        on_demand={(Z3, S5): Offer(Z3, S5, ON_DEMAND, Decimal("0.05"), Decimal("0.05"), True, "WithoutStock"),
                   (Z4, S5): Offer(Z4, S5, ON_DEMAND, Decimal("0.06"), Decimal("0.06"), False, "EnoughStock")},
    )
    p = run(offers=sold_out(), expectedCount=2, signals=long_ago, **fallback_spec())
    assert [(b.zone, b.instance_type, b.count) for b in p.launches] == [(Z4, S5, 2)]


# -- return to spot ---------------------------------------------------------------------------------------

FALLBACK_FOUR = tuple(od(f"ins-0000000{n}", age_minutes=30 + n) for n in range(4))


def test_return_buys_spot_replacements_within_the_budget_and_releases_nothing_yet() -> None:
    p = run(*FALLBACK_FOUR, expectedCount=4, **fallback_spec(onDemand={"returnToSpot": {"maxInFlight": 2}}))
    assert bought(p) == {Purpose.RETURN: 2}
    assert {b.charge_type for b in p.launches} == {SPOTPAID}
    assert released(p) == [] and returned(p) == []


def test_pending_replacements_are_not_surplus_and_fill_the_budget() -> None:
    pending = (spot("ins-000000p1", state=PENDING, age_minutes=None), spot("ins-000000p2", state=PENDING,
                                                                             age_minutes=None))
    p = run(*FALLBACK_FOUR, *pending, expectedCount=4,
            **fallback_spec(onDemand={"returnToSpot": {"maxInFlight": 2}}))
    assert p.launches == () and released(p) == [] and returned(p) == []


def test_a_running_replacement_releases_the_newest_fallback_instance_then_the_next_starts() -> None:
    running = spot("ins-000000r1")
    p = run(*FALLBACK_FOUR, running, expectedCount=4, **fallback_spec(onDemand={"returnToSpot": {"maxInFlight": 1}}))
    assert returned(p) == ["ins-00000000"]  # age 30 min: the newest
    assert released(p) == []
    assert bought(p) == {Purpose.RETURN: 1}  # three fallback left, budget 1, nothing in flight


def test_a_spend_cap_the_fallback_nearly_fills_does_not_block_the_return() -> None:
    """Four fallback instances at 0.10/h under a 0.41 cap: a spot replacement (0.02) on top of them
    would pass it, yet once it runs its fallback instance goes and the pool costs less. Counted on
    top, no return ever started, and the pool paid on-demand prices for as long as the cap stood
    (issue 18)."""
    p = run(*FALLBACK_FOUR, expectedCount=4, maxHourlyCost="0.4100",
            **fallback_spec(onDemand={"returnToSpot": {"maxInFlight": 2}}))
    assert bought(p) == {Purpose.RETURN: 2}
    # A cap the pool would pass even after the return (0.20 for two fallback left + 0.04) holds it back.
    p = run(*FALLBACK_FOUR, expectedCount=4, maxHourlyCost="0.2100",
            **fallback_spec(onDemand={"returnToSpot": {"maxInFlight": 2}}))
    assert p.launches == ()
    # and says so: the cap, the cost, what it holds back (before, Degraded stayed False)
    assert p.verdict is not None and p.verdict.return_held is not None
    reason, message = p.verdict.return_held
    assert reason == "MaxHourlyCostReached" and "spec.maxHourlyCost 0.2100" in message
    assert "4 on-demand fallback instances" in message


def test_a_guards_ceiling_bounds_the_return_surge() -> None:
    """The administrator's guards let the pool hold 5 at once: one replacement at a time, not the
    budget's two, and none at all when the ceiling is the count (the return then waits, said)."""
    spec = fallback_spec(onDemand={"returnToSpot": {"maxInFlight": 2}})
    p = run(*FALLBACK_FOUR, expectedCount=4, signals=PurchaseSignals(held_ceiling=5), **spec)
    assert bought(p) == {Purpose.RETURN: 1}
    assert p.verdict is not None and p.verdict.return_held is None
    held = run(*FALLBACK_FOUR, expectedCount=4, signals=PurchaseSignals(held_ceiling=4), **spec)
    assert held.launches == () and held.verdict is not None and held.verdict.return_held is not None
    reason, message = held.verdict.return_held
    assert reason == "SpendGuard" and "hold 4 instances at once" in message


def test_the_administrators_max_price_bounds_on_demand_too() -> None:
    """`--max-price 0.05` with list prices of 0.10: neither the base nor a fallback is bought
    on-demand (before, a base of 5 was bought at list price under the guard, and a bid below the
    market with a PriceAboveMax fallback was a switch to on-demand), and the plan says why."""
    ceiling = PurchaseSignals(price_ceiling=Decimal("0.05"))
    p = run(expectedCount=4, signals=ceiling, onDemand={"baseCount": 2})
    assert bought(p) == {Purpose.SPOT: 2}
    assert p.verdict is not None and p.verdict.price_guarded is not None
    assert "2 on-demand instances are not bought" in p.verdict.price_guarded
    assert "limit of 0.05 USD/h (--max-price)" in p.verdict.price_guarded
    fallback = run(offers=sold_out(), expectedCount=3, signals=ceiling, **fallback_spec(onDemand={
        "fallback": {"after": "0s"}}))
    assert fallback.launches == () and fallback.verdict is not None and fallback.verdict.price_guarded
    under = run(expectedCount=4, signals=PurchaseSignals(price_ceiling=Decimal("0.10")), onDemand={"baseCount": 2})
    assert bought(under) == {Purpose.BASE: 2, Purpose.SPOT: 2} and under.verdict is not None
    assert under.verdict.price_guarded is None


def test_a_namespace_the_administrator_keeps_from_on_demand_buys_none() -> None:
    refused = PurchaseSignals(on_demand_refused="namespace team may not buy on-demand (--on-demand-namespace)")
    p = run(expectedCount=4, signals=refused, onDemand={"baseCount": 2})
    assert bought(p) == {Purpose.SPOT: 2}
    assert p.verdict is not None and p.verdict.price_guarded is not None
    assert p.verdict.price_guarded.startswith("2 on-demand instances are not bought: namespace team")
    fallback = run(offers=sold_out(), expectedCount=3, signals=refused,
                   **fallback_spec(onDemand={"fallback": {"after": "0s"}}))
    assert fallback.launches == () and fallback.verdict is not None and fallback.verdict.price_guarded


def test_the_return_honours_a_percentage_budget() -> None:
    fleet = tuple(od(f"ins-00000{n:03d}") for n in range(10))
    p = run(*fleet, expectedCount=10, **fallback_spec(onDemand={"returnToSpot": {"maxInFlight": "25%"}}))
    assert bought(p) == {Purpose.RETURN: 3}  # ceil(10 x 25 %)


def test_no_return_when_disabled_nor_while_spot_is_short() -> None:
    p = run(*FALLBACK_FOUR, expectedCount=4, **fallback_spec(onDemand={"returnToSpot": {"enabled": False}}))
    assert p.launches == ()
    p = run(*FALLBACK_FOUR, offers=sold_out(), expectedCount=4, **fallback_spec())
    assert p.launches == ()


def test_the_base_stays_when_the_pool_shrinks() -> None:
    fleet = (od("ins-0000000a", age_minutes=120), *(spot(f"ins-0000000{n}") for n in range(5)))
    p = run(*fleet, expectedCount=2, onDemand={"baseCount": 1})
    assert len(released(p)) == 4 and "ins-0000000a" not in released(p)


def test_scale_in_releases_fallback_on_demand_first() -> None:
    fleet = (*FALLBACK_FOUR, *(spot(f"ins-000000s{n}") for n in range(4)))
    p = run(*fleet, expectedCount=4, **fallback_spec())
    assert sorted(returned(p) + released(p)) == sorted(i.instance_id for i in FALLBACK_FOUR)


# -- the spend cap ----------------------------------------------------------------------------------------

def test_the_cap_stops_buying_and_says_so() -> None:
    p = run(spot("ins-0000000a"), expectedCount=10, maxHourlyCost="0.1000")  # 0.02/h each
    assert bought(p) == {Purpose.SPOT: 4}  # 0.02 + 4 x 0.02 = 0.10
    assert p.verdict is not None and p.verdict.capped_count == 5
    assert p.verdict.capped == ("the pool costs 0.1000 USD/h with this pass's purchases, against "
                                 "spec.maxHourlyCost 0.1000 USD/h: 5 instances short are not bought")


def test_a_cap_below_the_current_cost_buys_nothing_but_releases_by_expected_count() -> None:
    fleet = tuple(spot(f"ins-0000000{n}") for n in range(6))
    p = run(*fleet, expectedCount=8, maxHourlyCost="0.0500")
    assert p.launches == () and p.verdict is not None and p.verdict.capped_count == 2
    p = run(*fleet, expectedCount=3, maxHourlyCost="0.0500")
    assert len(released(p)) == 3


def test_on_demand_counts_at_list_price_against_the_cap() -> None:
    p = run(expectedCount=4, maxHourlyCost="0.2500", onDemand={"baseCount": 2})
    # base: 2 x 0.10 = 0.20; spot: 2 x 0.02 would make 0.24
    assert bought(p) == {Purpose.BASE: 2, Purpose.SPOT: 2}
    p = run(expectedCount=4, maxHourlyCost="0.2100", onDemand={"baseCount": 2})
    assert bought(p) == {Purpose.BASE: 2} and p.verdict is not None and p.verdict.capped_count == 2


def test_in_flight_purchases_count_against_the_cap() -> None:
    journal = (InflightLaunch(token(1), Z3, S5, 3, NOW - timedelta(seconds=5)),)
    p = run(expectedCount=10, maxHourlyCost="0.1000", journal=journal)
    assert bought(p) == {Purpose.SPOT: 2}


# -- quota ------------------------------------------------------------------------------------------------

def quota(**spot_left: int) -> AccountQuota:
    rows = {zone: ZoneQuota(zone, 100, 100 - left, left) for zone, left in
            ((Z3, spot_left.get("z3", 100)), (Z4, spot_left.get("z4", 100)))}
    return AccountQuota("ap-guangzhou", spot=rows, on_demand={})


def cpu_offers(price: str = "0.0200") -> dict[PoolKey, SpotOffer]:
    return {key: dataclasses.replace(offer, cpu=2) for key, offer in all_offered(price).items()}


def test_purchases_go_where_quota_is_left() -> None:
    p = run(offers=cpu_offers(), expectedCount=5, signals=PurchaseSignals(quota=quota(z3=0)))
    assert {b.zone for b in p.launches} == {Z4}
    pools = assess_pools(make_spec(), cpu_offers(), {}, NOW, quota(z3=0))
    assert {a.verdict.value for a in pools if a.zone == Z3} == {"NoQuota"}


def test_quota_is_shared_by_the_batches_of_one_plan() -> None:
    p = run(offers=cpu_offers(), expectedCount=10, signals=PurchaseSignals(quota=quota(z3=6, z4=4)))
    per_zone = Counter()
    for batch in p.launches:
        per_zone[batch.zone] += batch.count
    assert per_zone == {Z3: 3, Z4: 2}  # 2 vCPUs each
    assert p.verdict is not None and p.verdict.spot_short_reasons == ("QuotaExceeded",)


def test_unknown_quota_does_not_limit() -> None:
    p = run(offers=cpu_offers(), expectedCount=10, signals=PurchaseSignals(quota=None))
    assert bought(p) == {Purpose.SPOT: 10}


# -- capacity-aware allocation ----------------------------------------------------------------------------

def stocked(zone: str, kind: str, price: str, category: str | None) -> SpotOffer:
    return dataclasses.replace(make_offer(zone, kind, price), status_category=category)


def test_capacity_optimized_prefers_stock_then_fewer_reclaims() -> None:
    offers = offers_of(stocked(Z3, S5, "0.0200", "UnderStock"), stocked(Z4, S5, "0.0220", "EnoughStock"),
                       stocked(Z3, SA2, "0.0190", "NormalStock"), stocked(Z4, SA2, "0.0300", "EnoughStock"))
    spec = make_spec(allocationStrategy="CapacityOptimized")
    order = [a.key for a in order_buyable(spec, assess_pools(spec, offers, {}, NOW))]
    assert order == [(Z4, S5), (Z3, SA2), (Z4, SA2), (Z3, S5)]
    reclaimed = [a.key for a in order_buyable(spec, assess_pools(spec, offers, {}, NOW), {(Z4, S5): 4})]
    assert reclaimed[0] == (Z3, SA2) and reclaimed.index((Z4, S5)) > 0


def test_without_stock_is_sold_out() -> None:
    offers = offers_of(stocked(Z3, S5, "0.0200", "WithoutStock"))
    [assessment] = [a for a in assess_pools(make_spec(), offers, {}, NOW) if a.key == (Z3, S5)]
    assert assessment.verdict.value == "SoldOut"


prices = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("1"), places=4)
categories = st.sampled_from([None, "UnderStock", "NormalStock", "EnoughStock"])
RANK = {"UnderStock": 0, None: 1, "NormalStock": 1, "EnoughStock": 2}


@settings(max_examples=300, deadline=None)
@given(prices, prices, categories, categories, st.integers(0, 30), st.integers(0, 30))
def test_capacity_score_never_ranks_a_pool_better_in_every_way_after_a_worse_one(
    p1: Decimal, p2: Decimal, c1: str | None, c2: str | None, r1: int, r2: int
) -> None:
    a = stocked(Z3, S5, str(p1), c1)
    b = stocked(Z4, S5, str(p2), c2)
    if p1 <= p2 and RANK[c1] >= RANK[c2] and r1 <= r2:
        assert capacity_score(a, r1) <= capacity_score(b, r2)
    assert capacity_score(a, r1) >= p1  # weights only ever make a pool look dearer


# -- the journal remembers the charge type ----------------------------------------------------------------

def test_an_on_demand_record_round_trips_and_a_bad_charge_type_is_dropped() -> None:
    launch = InflightLaunch(token(3), Z3, S5, 2, NOW, charge_type=ON_DEMAND)
    written = inflight_to_status(launch)
    assert written["chargeType"] == ON_DEMAND
    assert "chargeType" not in inflight_to_status(dataclasses.replace(launch, charge_type=SPOTPAID))
    [read], dropped = read_journal({"inflightLaunches": [written]})
    assert read == launch and dropped == []
    _, dropped = read_journal({"inflightLaunches": [{**written, "chargeType": "PREPAID"}]})
    assert len(dropped) == 1 and "chargeType" in dropped[0].detail


# -- properties of the whole plan -------------------------------------------------------------------------

fleets = st.lists(
    st.tuples(st.booleans(), st.sampled_from([RUNNING, PENDING]), st.integers(1, 300)), max_size=14
)


@settings(max_examples=400, deadline=None)
@given(fleets, st.integers(0, 12), st.integers(0, 4), st.integers(1, 4), st.booleans(), st.booleans())
def test_capacity_plans_keep_the_money_rules(
    fleet: list[tuple[bool, str, int]], expected: int, base: int, budget: int, spot_buyable: bool, returning: bool
) -> None:
    instances = [
        (od if on_demand else spot)(f"ins-{n:08d}", state=state, age_minutes=age)
        for n, (on_demand, state, age) in enumerate(fleet)
    ]
    spec = {"expectedCount": expected,
            "onDemand": {"baseCount": base, "fallback": {"after": "1m"},
                         "returnToSpot": {"enabled": returning, "maxInFlight": budget}}}
    p = run(*instances, offers=all_offered() if spot_buyable else sold_out(),
            signals=PurchaseSignals(spot_short_since=NOW - timedelta(hours=1)), **spec)
    alive = [i for i in instances if i.state in (RUNNING, PENDING)]
    gone = set(released(p)) | set(returned(p))
    counts = bought(p)
    new = sum(counts.values())
    # Buying: never past expectedCount, except replacements, which stay within the budget.
    assert len(alive) - len(gone) + new - counts[Purpose.RETURN] <= max(expected, len(alive) - len(gone))
    assert counts[Purpose.RETURN] <= budget
    if counts[Purpose.RETURN]:
        assert returning and spot_buyable and len(alive) - len(gone) <= expected + budget
    # Releasing: never below expectedCount, and a fallback instance goes only for running spot.
    assert len(alive) - len(gone) >= min(expected, len(alive))
    if p.returns:
        assert p.release_reason in (None, ReleaseReason.SCALE_IN)
        running_spot = sum(1 for i in alive if i.charge_type == SPOTPAID and i.state == RUNNING)
        on_demand = sum(1 for i in alive if i.charge_type == POSTPAID_BY_HOUR)
        assert len(returned(p)) <= running_spot + on_demand - expected
    # Never both buy for a deficit and release for a surplus.
    assert not ((counts[Purpose.SPOT] or counts[Purpose.BASE] or counts[Purpose.FALLBACK]) and p.releases)
    # The base survives a shrink while anything else can go.
    base_now = min(base, expected)
    ods = sorted((i for i in alive if i.charge_type == POSTPAID_BY_HOUR),
                 key=lambda i: (i.created_time, i.instance_id))
    kept_base = [i for i in ods[:base_now] if i.instance_id not in gone]
    assert len(kept_base) >= min(base_now, len(ods[:base_now]), expected) or len(alive) - len(gone) <= expected


def test_a_look_up_of_a_listed_instance_is_the_fresher_answer() -> None:
    listed = spot("ins-0000000a", state=PENDING, age_minutes=None)
    running = spot("ins-0000000a")
    census = census_of([listed], confirmed={"ins-0000000a": running})
    assert [i.state for i in census.alive] == [RUNNING] and census.unlisted == ()
    # Not ours, or unknown to the cloud: the listing stands.
    foreign = make_instance("ins-0000000a", owner="someone-else")
    assert [i.state for i in census_of([listed], confirmed={"ins-0000000a": foreign}).alive] == [PENDING]
    assert [i.state for i in census_of([listed], confirmed={"ins-0000000a": None}).alive] == [PENDING]
