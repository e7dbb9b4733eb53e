"""plan(): the rules of docs/contract.md end to end, one rule per test."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from spotpool.cloud.errors import ErrorCategory
from spotpool.cloud.models import LAUNCH_FAILED, PENDING, RUNNING, SHUTDOWN, STOPPED, TERMINATING, Instance
from spotpool.planner import DropReason, Plan, ReleaseReason, plan, record_refusal
from spotpool.planner.model import INFLIGHT_VISIBILITY_GRACE, NOT_VISIBLE_HOLD, InflightLaunch, PoolBackoff, PoolKey
from tests.unit.planner.plannerkit import (
    NOW,
    S5,
    SA2,
    UID,
    Z3,
    Z4,
    all_offered,
    decided,
    make_instance,
    make_launch,
    make_offer,
    make_spec,
    observe,
    offers_of,
)


def run(
    instances: Iterable[Instance] = (),
    *,
    journal: Iterable[InflightLaunch] = (),
    confirmed: dict[str, Instance | None] | None = None,
    backoff: dict[PoolKey, PoolBackoff] | None = None,
    offers: dict[PoolKey, Any] | None = None,
    deleting: bool = False,
    unbought: frozenset[str] = frozenset(),
    released: frozenset[str] = frozenset(),
    **spec: Any,
) -> Plan:
    observation = replace(observe(*instances, confirmed=confirmed), unbought=unbought, released=released)
    return plan(
        spec=make_spec(**spec),
        observation=observation,
        offers=all_offered() if offers is None else offers,
        journal=list(journal),
        backoff=backoff or {},
        now=NOW,
        owner_uid=UID,
        deleting=deleting,
    )


def running(n: int, prefix: str = "ins-run", **kwargs: Any) -> list[Instance]:
    return [make_instance(f"{prefix}{i:05d}", age_minutes=10 + i, **kwargs) for i in range(n)]


def launched(p: Plan) -> list[tuple[str, str, int]]:
    return [(b.zone, b.instance_type, b.count) for b in p.launches]


def counts(p: Plan, expected: int) -> tuple[int, int, int]:
    """(deficit, surplus, alive) of the census the plan was made on."""
    return (p.census.deficit(expected), p.census.surplus(expected), p.census.alive_count)


def tokens(records: Iterable[Any]) -> list[str]:
    return [r.client_token for r in records]


OLD = INFLIGHT_VISIBILITY_GRACE.total_seconds() + 1
"""Age of a record past the grace."""
ELSEWHERE = "ap-guangzhou-7"
"""A zone that is not a candidate of `make_spec()`: a record there may not be replayed."""


def test_empty_environment_buys_the_expected_count() -> None:
    p = run(expectedCount=4)
    assert counts(p, 4) == (4, 0, 0)
    assert launched(p) == [(Z3, S5, 4)]
    assert p.releases == () and p.release_reason is None
    assert p.acts


def test_full_environment_does_nothing() -> None:
    p = run(running(4), expectedCount=4)
    assert counts(p, 4)[:2] == (0, 0)
    assert (p.launches, p.releases, p.cleanup, p.replays) == ((), (), (), ())
    assert not p.acts


def test_pending_instances_count_as_alive() -> None:
    p = run(running(2) + running(2, "ins-pen", state=PENDING), expectedCount=4)
    assert p.census.deficit(4) == 0 and p.launches == ()


def test_dead_instances_are_replaced() -> None:
    dead = [
        make_instance("ins-fail0001", state=LAUNCH_FAILED),
        make_instance("ins-term0001", state=TERMINATING),
        make_instance("ins-shut0001", state=SHUTDOWN),
    ]
    p = run(running(1) + dead, expectedCount=4)
    assert p.census.deficit(4) == 3 and launched(p) == [(Z3, S5, 3)]


def test_instances_outside_candidate_pools_count_and_are_not_replaced() -> None:
    elsewhere = running(3, zone="ap-guangzhou-7", instance_type="C5.LARGE8")
    p = run(elsewhere, expectedCount=4)
    assert p.census.alive_count == 3 and launched(p) == [(Z3, S5, 1)]


def test_inflight_launches_count_toward_the_deficit() -> None:
    p = run(running(1), journal=[make_launch("t1", count=2)], expectedCount=4)
    assert (p.census.deficit(4), p.census.inflight_unseen) == (1, 2)
    assert launched(p) == [(Z3, S5, 1)]
    assert tokens(p.replays) == ["t1"]  # never answered, still wanted: replayed with its own token


def test_nothing_is_bought_while_inflight_covers_the_deficit() -> None:
    p = run(journal=[make_launch("t1", count=4)], expectedCount=4)
    assert p.census.deficit(4) == 0 and p.launches == ()
    assert tokens(p.replays) == ["t1"]


def test_surplus_ignores_inflight_and_releases_the_certain_part_now() -> None:
    # 6 alive, expected 4, 3 more in flight: 2 are surplus whatever the launch does.
    p = run(running(6), journal=[make_launch("t1", count=3)], expectedCount=4)
    assert counts(p, 4)[:2] == (0, 2)
    assert sum(len(batch) for batch in p.releases) == 2
    assert p.replays == () and tokens(p.journal) == ["t1"]  # not wanted, but held: it may have bought


def test_scale_in_releases_newest_first_by_default() -> None:
    p = run(running(5), expectedCount=3)
    assert p.release_reason is ReleaseReason.SCALE_IN
    assert p.releases == (("ins-run00000", "ins-run00001"),)  # the youngest two (10 and 11 minutes)


def test_scale_in_releases_pending_before_running() -> None:
    instances = [*running(3), make_instance("ins-pen00001", state=PENDING, age_minutes=999)]
    p = run(instances, expectedCount=2, scaleInPolicy="OldestFirst")
    assert p.releases == (("ins-pen00001", "ins-run00002"),)


def test_scale_in_to_zero_releases_everything_in_batches_of_100() -> None:
    p = run(running(230), expectedCount=0)
    assert [len(b) for b in p.releases] == [100, 100, 30]
    assert len({i for b in p.releases for i in b}) == 230


def test_most_expensive_first_uses_the_market_price() -> None:
    offers = offers_of(make_offer(Z3, S5, "0.0200"), make_offer(Z4, SA2, "0.0400"))
    cheap = make_instance("ins-cheap001", age_minutes=1)
    dear = make_instance("ins-dear0001", zone=Z4, instance_type=SA2, age_minutes=500)
    p = run([cheap, dear], offers=offers, expectedCount=1, scaleInPolicy="MostExpensiveFirst")
    assert p.releases == (("ins-dear0001",),)


def test_dead_instances_are_cleaned_up_as_unwanted_not_as_surplus() -> None:
    dead = [make_instance("ins-shut0001", state=SHUTDOWN), make_instance("ins-fail0001", state=LAUNCH_FAILED)]
    p = run(running(2) + dead, expectedCount=2)
    assert p.census.surplus(2) == 0 and p.releases == ()
    assert p.cleanup == (("ins-fail0001", "ins-shut0001"),)


def test_stopped_and_terminating_instances_are_left_alone() -> None:
    others = [make_instance("ins-stop0001", state=STOPPED), make_instance("ins-term0001", state=TERMINATING)]
    p = run(running(2) + others, expectedCount=2)
    assert p.cleanup == () and p.releases == ()


def test_unowned_instances_are_never_counted_or_released() -> None:
    strangers = running(5, "ins-oth", owner="someone-else") + running(1, "ins-unt", owner=None)
    p = run(strangers + running(1), expectedCount=0)
    assert p.census.alive_count == 1
    assert p.releases == (("ins-run00000",),)
    assert p.notes == (f"ignored 6 instances not owned by {UID}",)


def test_paused_buys_and_releases_nothing_but_still_counts() -> None:
    p = run([*running(1), make_instance("ins-fail0001", state=LAUNCH_FAILED)], expectedCount=5, paused=True)
    assert (p.launches, p.releases, p.cleanup) == ((), (), ())
    assert p.census.deficit(5) == 4
    assert "paused" in p.notes[0]
    p = run(running(6), expectedCount=5, paused=True)
    assert p.releases == () and p.census.surplus(5) == 1


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
        journal=[make_launch("t", count=1, zone=Z4, instance_type=S5)],
        expectedCount=7,
        allocationStrategy="Diversified",
    )
    # levels before: (Z3,S5)=2, (Z4,S5)=1 (in flight), (Z3,SA2)=0, (Z4,SA2)=0; deficit 7-2-1 = 4.
    # Emptiest first, ties in candidate order: SA2/Z3, SA2/Z4, S5/Z4, SA2/Z3 -> levels 2,2,2,1.
    assert launched(p) == [(Z4, S5, 1), (Z3, SA2, 2), (Z4, SA2, 1)]


def test_never_buys_above_max_price_and_says_why() -> None:
    offers = all_offered("0.0600")
    p = run(offers=offers, expectedCount=2, maxPrice="0.0500")
    assert p.launches == () and p.census.deficit(2) == 2
    assert "2 instances short and no spot pool can be bought" in p.notes[0]
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
    assert launched(run(backoff=backoff, journal=[partial], **spec_args)) == [(Z4, S5, 2)]


def test_records_are_resolved_kept_replayed_or_dropped() -> None:
    seen = make_instance("ins-seen0001", state=PENDING)
    p = run(
        [seen],
        journal=[
            make_launch("ids", count=2, ids=("ins-seen0001", "ins-unsn0001"), age_seconds=OLD * 10),
            make_launch("seen", count=1, ids=("ins-seen0001",), age_seconds=OLD),
            make_launch("stale", count=2, zone=ELSEWHERE, age_seconds=OLD),
            make_launch("held", count=1, zone=ELSEWHERE, age_seconds=30),
            make_launch("open", count=1),
        ],
        expectedCount=6,
    )
    # seen: every id listed, resolved. ids: an id still unseen, kept however old.
    # stale/held: never answered, pool no longer a candidate: held, dropped past the grace.
    # open: never answered and still wanted: replayed.
    assert tokens(p.journal) == ["ids", "held", "open"]
    assert tokens(p.replays) == ["open"]
    assert [(d.client_token, d.reason) for d in p.dropped] == [("stale", DropReason.EXPIRED)]
    assert p.census.inflight_unseen == 3 and p.census.deficit(6) == 2
    assert launched(p) == [(Z3, S5, 2)]


def test_a_record_is_replayed_only_if_the_deficit_covers_its_whole_count() -> None:
    p = run(running(3), journal=[make_launch("t1", count=2)], expectedCount=4)
    assert p.replays == () and tokens(p.journal) == ["t1"]  # held, and it still counts
    assert p.census.deficit(4) == 0 and p.launches == ()
    expired = run(running(3), journal=[make_launch("t1", count=2, age_seconds=OLD)], expectedCount=4)
    assert expired.journal == () and [d.reason for d in expired.dropped] == [DropReason.EXPIRED]
    assert launched(expired) == [(Z3, S5, 1)]


def test_earlier_records_use_up_the_room_for_replays() -> None:
    p = run(
        journal=[make_launch("first", count=3, age_seconds=20), make_launch("second", count=2, age_seconds=10)],
        expectedCount=4,
    )
    assert tokens(p.replays) == ["first"] and tokens(p.journal) == ["first", "second"]
    assert p.census.deficit(4) == 0


def test_paused_replays_nothing_and_drops_past_the_grace() -> None:
    young = make_launch("young", count=1)
    old = make_launch("old", count=1, age_seconds=OLD)
    p = run(journal=[old, young], expectedCount=4, paused=True)
    assert p.replays == () and tokens(p.journal) == ["young"]
    assert tokens(p.dropped) == ["old"]


def test_a_record_with_ids_never_expires_and_counts_its_unseen_ids() -> None:
    old = make_launch("t1", count=3, ids=("ins-unsn0001", "ins-unsn0002"), age_seconds=OLD * 100)
    p = run(journal=[old], expectedCount=4)
    assert tokens(p.journal) == ["t1"] and p.dropped == () and p.replays == ()
    assert p.census.inflight_unseen == 2 and launched(p) == [(Z3, S5, 2)]


def test_ids_looked_up_as_gone_resolve_the_record() -> None:
    ids = ("ins-gone0001", "ins-gone0002")
    launch = make_launch("t1", count=2, ids=ids, seen=ids)  # an earlier pass observed them
    p = run(journal=[launch], confirmed={"ins-gone0001": None, "ins-gone0002": None}, expectedCount=2)
    assert p.journal == () and p.census.inflight_unseen == 0
    assert launched(p) == [(Z3, S5, 2)]


def test_a_kept_record_notes_which_of_its_ids_an_observation_showed() -> None:
    launch = make_launch("t1", count=2, ids=("ins-look0001", "ins-look0002"))
    p = run(journal=[launch], confirmed={"ins-look0001": make_instance("ins-look0001")}, expectedCount=2)
    assert [r.seen for r in p.journal] == [("ins-look0001",)]


def test_bought_ids_nothing_ever_showed_are_not_gone_on_a_look_ups_word() -> None:
    """RunInstances answered with them, no listing or look-up has shown them, and a look-up does
    not find them: the pool's key may not see them (CAM). Counted as bought, and said, for the
    hold; a pool bought them again every pass before (300 for 2)."""
    ids = ("ins-hide0001", "ins-hide0002")
    confirmed: dict[str, Instance | None] = {i: None for i in ids}
    past_grace = make_launch("t1", count=2, ids=ids, age_seconds=OLD)
    p = run(journal=[past_grace], confirmed=confirmed, expectedCount=2)
    assert tokens(p.journal) == ["t1"] and p.census.inflight_unseen == 2 and p.launches == ()
    assert p.census.hidden == frozenset(ids)
    past_hold = make_launch("t1", count=2, ids=ids, age_seconds=NOT_VISIBLE_HOLD.total_seconds() + 1)
    assert launched(run(journal=[past_hold], confirmed=confirmed, expectedCount=2)) == [(Z3, S5, 2)]
    # released by this process: the cloud's "not found" is the end of a termination, not a hiding
    released = run(journal=[past_grace], confirmed=confirmed, expectedCount=2, released=frozenset(ids))
    assert released.journal == () and launched(released) == [(Z3, S5, 2)]


def test_a_deletion_never_releases_by_id_what_its_key_cannot_find() -> None:
    """Nothing proves a hidden id the pool's (an id forged into status could name another team's
    instance): the deletion waits for it to show, releasing nothing by id."""
    ids = ("ins-hide0001", "ins-hide0002")
    confirmed: dict[str, Instance | None] = {i: None for i in ids}
    p = run(journal=[make_launch("t1", count=2, ids=ids)], confirmed=confirmed, deleting=True)
    assert p.releases == () and not p.deletion_complete and p.census.hidden == frozenset(ids)
    done = run(journal=[make_launch("t1", count=2, ids=ids)], confirmed=confirmed, deleting=True,
               released=frozenset(ids))
    assert done.releases == () and done.deletion_complete


def test_not_found_is_gone_once_anything_shows_the_pool() -> None:
    """CAM hides by tags, and all of a pool's instances carry the same: a key that sees one of them
    sees them all, so an id it cannot find is gone (a double fault lost its `seen` mark)."""
    ids = ("ins-hide0001",)
    p = run([make_instance("ins-seen0001")], journal=[make_launch("t1", count=1, ids=ids)],
            confirmed={"ins-hide0001": None}, expectedCount=2)
    assert p.census.hidden == frozenset() and launched(p) == [(Z3, S5, 1)]


def test_an_id_only_found_by_lookup_counts_and_is_overdue_past_the_grace() -> None:
    found = make_instance("ins-look0001")
    young = run(journal=[make_launch("t1", count=1, ids=("ins-look0001",))],
                confirmed={"ins-look0001": found}, expectedCount=1)
    assert tokens(young.journal) == ["t1"] and young.census.alive_count == 1 and young.launches == ()
    assert young.unlisted_overdue == 0
    old = run(journal=[make_launch("t1", count=1, ids=("ins-look0001",), age_seconds=OLD)],
              confirmed={"ins-look0001": found}, expectedCount=1)
    assert old.unlisted_overdue == 1 and tokens(old.journal) == ["t1"]


def test_a_looked_up_instance_that_is_not_ours_is_never_released() -> None:
    stranger = make_instance("ins-strn0001", owner="someone-else")
    p = run(journal=[make_launch("t1", count=1, ids=("ins-strn0001",))],
            confirmed={"ins-strn0001": stranger}, expectedCount=0, deleting=True)
    assert p.releases == () and p.journal == () and p.deletion_complete


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
    assert p.launches == () and p.cleanup == () and not p.deletion_complete


def test_deletion_waits_until_the_cloud_no_longer_shows_a_terminating_instance() -> None:
    # TERMINATING is not gone: a termination may still fail (LatestOperationState FAILED), and the
    # instance then runs again. Only an id the cloud no longer shows lets the deletion finish.
    p = run([make_instance("ins-term0001", state=TERMINATING)], deleting=True)
    assert p.releases == () and p.release_reason is None and not p.deletion_complete
    assert run([], deleting=True).deletion_complete


def test_deletion_waits_for_unresolved_launches() -> None:
    p = run(journal=[make_launch("t1", count=2)], deleting=True)
    assert not p.deletion_complete
    assert p.replays == () and tokens(p.journal) == ["t1"]  # a deletion never replays: a replay may buy
    old = make_launch(
        "t1", count=2, age_seconds=(INFLIGHT_VISIBILITY_GRACE + timedelta(seconds=1)).total_seconds()
    )
    done = run(journal=[old], deleting=True)
    assert done.deletion_complete and done.journal == ()
    assert [(d.client_token, d.reason) for d in done.dropped] == [("t1", DropReason.EXPIRED)]


def test_a_record_a_listing_proves_unbought_is_dropped_at_once() -> None:
    # A listing of the record's zone and type that does not go through the tag index shows nothing
    # carrying its token: it bought nothing, and a deletion need not wait out the grace.
    p = run(journal=[make_launch("t1", count=2)], deleting=True, unbought=frozenset({"t1"}))
    assert p.deletion_complete and p.journal == ()
    assert [(d.client_token, d.reason) for d in p.dropped] == [("t1", DropReason.NOT_BOUGHT)]
    live = run(journal=[make_launch("t1", count=2)], expectedCount=0, unbought=frozenset({"t1"}))
    assert live.journal == () and [d.reason for d in live.dropped] == [DropReason.NOT_BOUGHT]


def test_a_record_older_than_the_grace_is_never_replayed() -> None:
    # CVM does not say how long it remembers a token: past the grace a replay might buy anew.
    old = make_launch("t1", count=2, age_seconds=(INFLIGHT_VISIBILITY_GRACE + timedelta(days=2)).total_seconds())
    p = run(journal=[old], expectedCount=5)
    assert p.replays == () and [d.reason for d in p.dropped] == [DropReason.EXPIRED]


def test_deletion_waits_for_a_record_with_ids_however_old() -> None:
    old = make_launch("t1", count=1, ids=("ins-unsn0001",), age_seconds=OLD * 100)
    p = run(journal=[old], deleting=True)
    assert not p.deletion_complete and tokens(p.journal) == ["t1"] and p.dropped == ()
    seen = make_launch("t1", count=1, ids=("ins-unsn0001",), age_seconds=OLD * 100, seen=("ins-unsn0001",))
    gone = run(journal=[seen], confirmed={"ins-unsn0001": None}, deleting=True)
    assert gone.deletion_complete and gone.journal == ()


def test_a_record_found_by_its_launch_tag_resolves_while_deleting() -> None:
    bought = make_instance("ins-tag00001", state=PENDING, launch="t1")
    p = run([bought], journal=[make_launch("t1", count=1)], deleting=True)
    assert p.journal == () and p.dropped == ()
    assert p.releases == (("ins-tag00001",),) and not p.deletion_complete


def test_same_inputs_give_the_same_plan() -> None:
    instances = running(7) + running(3, "ins-pen", state=PENDING)
    assert run(instances, expectedCount=4) == run(instances, expectedCount=4)
    assert decided(run(instances, expectedCount=4)) == decided(run(list(reversed(instances)), expectedCount=4))
    assert run(instances, expectedCount=4).releases == run(list(reversed(instances)), expectedCount=4).releases
    assert run(expectedCount=9, allocationStrategy="Diversified") == run(
        expectedCount=9, allocationStrategy="Diversified"
    )


def test_zero_expected_with_nothing_is_a_no_op() -> None:
    p = run(expectedCount=0)
    assert (p.launches, p.releases, *counts(p, 0)[:2]) == ((), (), 0, 0)


def test_running_instance_state_is_required_for_alive() -> None:
    assert run([make_instance("ins-x0000001", state=RUNNING)], expectedCount=1).census.deficit(1) == 0
