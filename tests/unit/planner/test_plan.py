"""plan(): the rules of DESIGN.md end to end, one rule per test."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from spotpool.cloud.errors import ErrorCategory
from spotpool.cloud.models import LAUNCH_FAILED, PENDING, RUNNING, SHUTDOWN, STOPPED, TERMINATING, Instance
from spotpool.planner import Plan, ReleaseReason, plan, record_refusal
from spotpool.planner.model import INFLIGHT_VISIBILITY_GRACE, InflightLaunch, PoolBackoff, PoolKey
from tests.unit.planner.plannerkit import (
    NOW,
    S5,
    SA2,
    UID,
    Z3,
    Z4,
    all_offered,
    make_instance,
    make_launch,
    make_offer,
    make_spec,
    offers_of,
)


def run(
    instances: Iterable[Instance] = (),
    *,
    inflight: Iterable[InflightLaunch] = (),
    backoff: dict[PoolKey, PoolBackoff] | None = None,
    offers: dict[PoolKey, Any] | None = None,
    deleting: bool = False,
    **spec: Any,
) -> Plan:
    return plan(
        spec=make_spec(**spec),
        instances=list(instances),
        offers=all_offered() if offers is None else offers,
        inflight=list(inflight),
        backoff=backoff or {},
        now=NOW,
        owner_uid=UID,
        deleting=deleting,
    )


def running(n: int, prefix: str = "ins-run", **kwargs: Any) -> list[Instance]:
    return [make_instance(f"{prefix}{i:05d}", age_minutes=10 + i, **kwargs) for i in range(n)]


def launched(p: Plan) -> list[tuple[str, str, int]]:
    return [(b.zone, b.instance_type, b.count) for b in p.launches]


def test_empty_environment_buys_the_expected_count() -> None:
    p = run(expectedCount=4)
    assert (p.deficit, p.surplus, p.alive) == (4, 0, 0)
    assert launched(p) == [(Z3, S5, 4)]
    assert p.releases == [] and p.release_reason is None


def test_full_environment_does_nothing() -> None:
    p = run(running(4), expectedCount=4)
    assert (p.deficit, p.surplus, p.launches, p.releases, p.cleanup) == (0, 0, [], [], [])


def test_pending_instances_count_as_alive() -> None:
    p = run(running(2) + running(2, "ins-pen", state=PENDING), expectedCount=4)
    assert p.deficit == 0 and p.launches == []


def test_dead_instances_are_replaced() -> None:
    dead = [
        make_instance("ins-fail0001", state=LAUNCH_FAILED),
        make_instance("ins-term0001", state=TERMINATING),
        make_instance("ins-shut0001", state=SHUTDOWN),
    ]
    p = run(running(1) + dead, expectedCount=4)
    assert p.deficit == 3 and launched(p) == [(Z3, S5, 3)]


def test_instances_outside_candidate_pools_count_and_are_not_replaced() -> None:
    elsewhere = running(3, zone="ap-guangzhou-7", instance_type="C5.LARGE8")
    p = run(elsewhere, expectedCount=4)
    assert p.alive == 3 and launched(p) == [(Z3, S5, 1)]


def test_inflight_launches_count_toward_the_deficit() -> None:
    p = run(running(1), inflight=[make_launch("t1", count=2)], expectedCount=4)
    assert (p.deficit, p.inflight_unseen) == (1, 2)
    assert launched(p) == [(Z3, S5, 1)]


def test_nothing_is_bought_while_inflight_covers_the_deficit() -> None:
    p = run(inflight=[make_launch("t1", count=4)], expectedCount=4)
    assert p.deficit == 0 and p.launches == []


def test_surplus_ignores_inflight_and_releases_the_certain_part_now() -> None:
    # 6 alive, expected 4, 3 more in flight: 2 are surplus whatever the launch does.
    p = run(running(6), inflight=[make_launch("t1", count=3)], expectedCount=4)
    assert (p.deficit, p.surplus) == (0, 2)
    assert sum(len(batch) for batch in p.releases) == 2


def test_scale_in_releases_newest_first_by_default() -> None:
    p = run(running(5), expectedCount=3)
    assert p.release_reason is ReleaseReason.SCALE_IN
    assert p.releases == [["ins-run00000", "ins-run00001"]]  # the youngest two (10 and 11 minutes)


def test_scale_in_releases_pending_before_running() -> None:
    instances = [*running(3), make_instance("ins-pen00001", state=PENDING, age_minutes=999)]
    p = run(instances, expectedCount=2, scaleInPolicy="OldestFirst")
    assert p.releases == [["ins-pen00001", "ins-run00002"]]


def test_scale_in_to_zero_releases_everything_in_batches_of_100() -> None:
    p = run(running(230), expectedCount=0)
    assert [len(b) for b in p.releases] == [100, 100, 30]
    assert len({i for b in p.releases for i in b}) == 230


def test_most_expensive_first_uses_the_market_price() -> None:
    offers = offers_of(make_offer(Z3, S5, "0.0200"), make_offer(Z4, SA2, "0.0400"))
    cheap = make_instance("ins-cheap001", age_minutes=1)
    dear = make_instance("ins-dear0001", zone=Z4, instance_type=SA2, age_minutes=500)
    p = run([cheap, dear], offers=offers, expectedCount=1, scaleInPolicy="MostExpensiveFirst")
    assert p.releases == [["ins-dear0001"]]


def test_dead_instances_are_cleaned_up_as_unwanted_not_as_surplus() -> None:
    dead = [make_instance("ins-shut0001", state=SHUTDOWN), make_instance("ins-fail0001", state=LAUNCH_FAILED)]
    p = run(running(2) + dead, expectedCount=2)
    assert p.surplus == 0 and p.releases == []
    assert p.cleanup == [["ins-fail0001", "ins-shut0001"]]


def test_stopped_and_terminating_instances_are_left_alone() -> None:
    others = [make_instance("ins-stop0001", state=STOPPED), make_instance("ins-term0001", state=TERMINATING)]
    p = run(running(2) + others, expectedCount=2)
    assert p.cleanup == [] and p.releases == []


def test_unowned_instances_are_never_counted_or_released() -> None:
    strangers = running(5, "ins-oth", owner="someone-else") + running(1, "ins-unt", owner=None)
    p = run(strangers + running(1), expectedCount=0)
    assert p.alive == 1
    assert p.releases == [["ins-run00000"]]
    assert p.notes == (f"ignored 6 instances not owned by {UID}",)


def test_paused_buys_and_releases_nothing_but_still_counts() -> None:
    p = run([*running(1), make_instance("ins-fail0001", state=LAUNCH_FAILED)], expectedCount=5, paused=True)
    assert (p.launches, p.releases, p.cleanup) == ([], [], [])
    assert p.deficit == 4
    assert "paused" in p.notes[0]
    p = run(running(6), expectedCount=5, paused=True)
    assert p.releases == [] and p.surplus == 1


def test_lowest_price_buys_in_the_cheapest_pool() -> None:
    offers = {**all_offered("0.0300"), (Z4, SA2): make_offer(Z4, SA2, "0.0100")}
    assert launched(run(offers=offers, expectedCount=3)) == [(Z4, SA2, 3)]


def test_prioritized_buys_in_the_first_type_and_zone_even_when_dearer() -> None:
    offers = {**all_offered("0.0100"), (Z3, S5): make_offer(Z3, S5, "0.0400")}
    assert launched(run(offers=offers, expectedCount=3, allocationStrategy="Prioritized")) == [(Z3, S5, 3)]


def test_diversified_accounts_for_what_each_pool_has() -> None:
    have = running(2, zone=Z3, instance_type=S5)
    p = run(
        have,
        inflight=[make_launch("t", count=1, zone=Z4, instance_type=S5)],
        expectedCount=7,
        allocationStrategy="Diversified",
    )
    # levels before: (Z3,S5)=2, (Z4,S5)=1 (in flight), (Z3,SA2)=0, (Z4,SA2)=0; deficit 7-2-1 = 4.
    # Emptiest first, ties in candidate order: SA2/Z3, SA2/Z4, S5/Z4, SA2/Z3 -> levels 2,2,2,1.
    assert launched(p) == [(Z4, S5, 1), (Z3, SA2, 2), (Z4, SA2, 1)]


def test_never_buys_above_max_price_and_says_why() -> None:
    offers = all_offered("0.0600")
    p = run(offers=offers, expectedCount=2, maxPrice="0.0500")
    assert p.launches == [] and p.deficit == 2
    assert "2 instances short and no pool can be bought" in p.notes[0]
    assert "market price 0.0600 USD/h in ap-guangzhou-3/S5.MEDIUM4 is above maxPrice 0.0500" in p.notes[0]


def test_pools_without_a_price_or_sold_out_are_skipped() -> None:
    offers = offers_of(
        make_offer(Z3, S5, None),
        make_offer(Z4, S5, "0.0100", sold_out=True),
        make_offer(Z3, SA2, "0.0400"),
    )
    assert launched(run(offers=offers, expectedCount=2)) == [(Z3, SA2, 2)]


def test_a_refusal_moves_the_remainder_to_the_next_pool() -> None:
    """The executor's loop: plan, RunInstances refused, record_refusal, plan again."""
    spec_args: dict[str, Any] = {"expectedCount": 5, "allocationStrategy": "Prioritized"}
    first = run(**spec_args)
    assert launched(first) == [(Z3, S5, 5)]
    backoff = record_refusal(
        {},
        (Z3, S5),
        code="ResourceInsufficient.SpecifiedInstanceType",
        message="sold out",
        category=ErrorCategory.CAPACITY,
        now=NOW,
        rng=random.Random(7),
    )
    second = run(backoff=backoff, **spec_args)
    assert launched(second) == [(Z4, S5, 5)]
    # the second pool delivered 3 of 5 (partial delivery, not a refusal): it gets the rest too
    partial = make_launch("t2", count=5, ids=("ins-a", "ins-b", "ins-c"), zone=Z4)
    assert launched(run(backoff=backoff, inflight=[partial], **spec_args)) == [(Z4, S5, 2)]


def test_resolved_inflight_is_reported_for_the_executor_to_drop() -> None:
    seen = make_instance("ins-seen0001", state=PENDING)
    p = run(
        [seen],
        inflight=[
            make_launch("seen", count=1, ids=("ins-seen0001",)),
            make_launch("stale", count=2, age_seconds=INFLIGHT_VISIBILITY_GRACE.total_seconds() + 1),
            make_launch("open", count=1),
        ],
        expectedCount=4,
    )
    assert p.resolved_inflight == ("seen", "stale")
    assert p.inflight_unseen == 1 and p.deficit == 2


def test_deleting_releases_every_owned_instance_not_terminating() -> None:
    instances = [
        *running(2),
        make_instance("ins-pen00001", state=PENDING),
        make_instance("ins-fail0001", state=LAUNCH_FAILED),
        make_instance("ins-stop0001", state=STOPPED),
        make_instance("ins-term0001", state=TERMINATING),
        make_instance("ins-other001", owner="someone-else"),
    ]
    p = run(instances, deleting=True, expectedCount=10, paused=True)
    released = [i for b in p.releases for i in b]
    assert p.release_reason is ReleaseReason.DELETE
    assert released[0] == "ins-pen00001"
    assert sorted(released) == sorted(
        ["ins-run00000", "ins-run00001", "ins-pen00001", "ins-fail0001", "ins-stop0001"]
    )
    assert p.launches == [] and p.cleanup == [] and not p.deletion_complete


def test_deletion_is_complete_once_only_terminating_instances_remain() -> None:
    p = run([make_instance("ins-term0001", state=TERMINATING)], deleting=True)
    assert p.releases == [] and p.release_reason is None and p.deletion_complete


def test_deletion_waits_for_unresolved_launches() -> None:
    p = run(inflight=[make_launch("t1", count=2)], deleting=True)
    assert not p.deletion_complete
    old = make_launch(
        "t1", count=2, age_seconds=(INFLIGHT_VISIBILITY_GRACE + timedelta(seconds=1)).total_seconds()
    )
    assert run(inflight=[old], deleting=True).deletion_complete


def test_same_inputs_give_the_same_plan() -> None:
    instances = running(7) + running(3, "ins-pen", state=PENDING)
    assert run(instances, expectedCount=4) == run(list(reversed(instances)), expectedCount=4)
    assert run(expectedCount=9, allocationStrategy="Diversified") == run(
        expectedCount=9, allocationStrategy="Diversified"
    )


def test_zero_expected_with_nothing_is_a_no_op() -> None:
    p = run(expectedCount=0)
    assert (p.launches, p.releases, p.deficit, p.surplus) == ([], [], 0, 0)


def test_running_instance_state_is_required_for_alive() -> None:
    assert run([make_instance("ins-x0000001", state=RUNNING)], expectedCount=1).deficit == 0
