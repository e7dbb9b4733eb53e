"""Counting owned, alive and in-flight instances."""

from __future__ import annotations

from collections.abc import Iterable

from spotpool.cloud.models import LAUNCH_FAILED, PENDING, RUNNING, SHUTDOWN, TERMINATING, Instance
from spotpool.planner.census import Census
from spotpool.planner.model import INFLIGHT_VISIBILITY_GRACE, InflightLaunch
from tests.unit.planner.plannerkit import SA2, UID, Z4, census_of, make_instance, make_launch


def census(instances: Iterable[Instance] = (), inflight: Iterable[InflightLaunch] = ()) -> Census:
    return census_of(instances, inflight)


def accounted(result: Census) -> tuple[str, ...]:
    """The tokens of the records the observation accounts for (the executor may forget them)."""
    return tuple(r.launch.client_token for r in result.records if r.accounted)


def test_alive_is_pending_plus_running_only() -> None:
    result = census(
        [
            make_instance("ins-run00001", state=RUNNING),
            make_instance("ins-pen00001", state=PENDING),
            make_instance("ins-fail0001", state=LAUNCH_FAILED),
            make_instance("ins-term0001", state=TERMINATING),
            make_instance("ins-shut0001", state=SHUTDOWN),
        ]
    )
    assert result.alive_count == 2
    assert (result.running, result.pending) == (1, 1)
    assert len(result.owned) == 5


def test_instances_without_our_ownership_tag_are_not_counted() -> None:
    result = census(
        [
            make_instance("ins-ours0001"),
            make_instance("ins-other001", owner="another-uid"),
            make_instance("ins-untagged", owner=None),
        ]
    )
    assert [i.instance_id for i in result.owned] == ["ins-ours0001"]
    assert result.foreign == 2


def test_duplicate_listings_count_once() -> None:
    result = census([make_instance("ins-dup00001"), make_instance("ins-dup00001")])
    assert result.alive_count == 1


def test_instances_outside_the_candidate_pools_still_count_as_alive() -> None:
    result = census([make_instance("ins-far00001", zone="ap-guangzhou-7", instance_type="C5.LARGE8")])
    assert result.alive_count == 1


def test_launch_without_ids_counts_its_whole_request() -> None:
    result = census(inflight=[make_launch("t1", count=7)])
    assert result.inflight_unseen == 7
    assert result.unseen_by_pool == {("ap-guangzhou-3", "S5.MEDIUM4"): 7}
    assert accounted(result) == ()


def test_launch_with_ids_counts_only_ids_not_observed_yet() -> None:
    result = census(
        [make_instance("ins-seen0001", state=PENDING)],
        [make_launch("t1", count=3, ids=("ins-seen0001", "ins-unseen01", "ins-unseen02"))],
    )
    assert result.inflight_unseen == 2
    assert result.alive_count == 1
    assert accounted(result) == ()


def test_partial_delivery_counts_only_returned_ids() -> None:
    result = census(inflight=[make_launch("t1", count=5, ids=("ins-only0001",))])
    assert result.inflight_unseen == 1


def test_an_id_seen_in_a_dead_state_is_accounted_for() -> None:
    result = census(
        [make_instance("ins-fail0001", state=LAUNCH_FAILED)],
        [make_launch("t1", count=1, ids=("ins-fail0001",))],
    )
    assert result.inflight_unseen == 0
    assert accounted(result) == ("t1",)


def test_fully_observed_launches_are_accounted_for() -> None:
    result = census(
        [make_instance("ins-a0000001"), make_instance("ins-b0000001")],
        [
            make_launch("done", count=2, ids=("ins-a0000001", "ins-b0000001")),
            make_launch("open", count=1, ids=("ins-c0000001",), zone=Z4, instance_type=SA2),
        ],
    )
    assert accounted(result) == ("done",)
    assert result.unseen_by_pool == {(Z4, SA2): 1}


def test_the_census_counts_every_record_whatever_its_age() -> None:
    """Expiry is the journal's call now (`decide_journal`): the census has no clock."""
    grace = INFLIGHT_VISIBILITY_GRACE.total_seconds()
    result = census(
        inflight=[
            make_launch("old-no-ids", count=4, age_seconds=grace * 10),
            make_launch("old-ids", count=1, ids=("ins-gone0001",), age_seconds=grace * 10),
            make_launch("young", count=2, age_seconds=grace - 1),
        ]
    )
    assert accounted(result) == ()
    assert result.inflight_unseen == 7
    assert [r.unseen for r in result.records] == [4, 1, 2]


def test_an_unanswered_launch_is_known_by_its_launch_tag() -> None:
    tagged = [make_instance("ins-tag00001", launch="t1"), make_instance("ins-tag00002", launch="t1", state=PENDING)]
    result = census([*tagged, make_instance("ins-other01", launch="t2")], [make_launch("t1", count=3)])
    [record] = result.records
    assert (record.unseen, record.accounted) == (0, True)  # 2 of 3 delivered: the third was never bought
    assert result.inflight_unseen == 0 and result.alive_count == 3


def test_a_launch_tag_on_a_foreign_instance_accounts_for_nothing() -> None:
    result = census([make_instance("ins-forg0001", launch="t1", owner="someone-else")], [make_launch("t1", count=2)])
    [record] = result.records
    assert (record.unseen, record.accounted) == (2, False)
    assert result.foreign == 1


def test_an_id_found_only_by_lookup_counts_but_keeps_its_record() -> None:
    found = make_instance("ins-look0001", state=PENDING)
    result = census_of(
        [], [make_launch("t1", count=1, ids=("ins-look0001",))], confirmed={"ins-look0001": found}
    )
    assert result.alive_count == 1 and result.unlisted == (found,)
    [record] = result.records
    assert (record.unseen, record.unlisted, record.accounted) == (0, 1, False)
    assert result.inflight_unseen == 0


def test_an_id_looked_up_as_gone_is_accounted_for() -> None:
    result = census_of(
        [], [make_launch("t1", count=2, ids=("ins-gone0001", "ins-gone0002"))],
        confirmed={"ins-gone0001": None, "ins-gone0002": None},
    )
    assert result.gone == {"ins-gone0001", "ins-gone0002"}
    assert result.records[0].accounted and result.inflight_unseen == 0 and result.alive_count == 0


def test_a_looked_up_id_that_is_not_ours_counts_for_nothing() -> None:
    """An id forged into status: the lookup finds someone else's instance, never counted or owned."""
    stranger = make_instance("ins-strn0001", owner="someone-else")
    result = census_of(
        [], [make_launch("t1", count=1, ids=("ins-strn0001",))], confirmed={"ins-strn0001": stranger}
    )
    assert result.owned == () and result.alive_count == 0 and result.foreign == 1
    assert result.records[0].accounted and result.inflight_unseen == 0


def test_deficit_counts_unseen_launches_and_surplus_does_not() -> None:
    result = census([make_instance(f"ins-run0000{i}") for i in range(3)], [make_launch("t1", count=2)])
    assert (result.deficit(6), result.surplus(6)) == (1, 0)
    assert (result.deficit(4), result.surplus(4)) == (0, 0)
    assert (result.deficit(1), result.surplus(1)) == (0, 2)


def test_remaining_counts_owned_instances_not_yet_terminating() -> None:
    result = census([
        make_instance("ins-run00001"),
        make_instance("ins-fail0001", state=LAUNCH_FAILED),
        make_instance("ins-term0001", state=TERMINATING),
        make_instance("ins-other001", owner="someone-else"),
    ])
    assert result.remaining == 2


def test_keeping_counts_only_the_kept_records() -> None:
    kept = make_launch("kept", count=2)
    result = census(inflight=[kept, make_launch("gone", count=3)]).keeping([kept])
    assert [r.launch.client_token for r in result.records] == ["kept"]
    assert result.inflight_unseen == 2


def test_after_counts_bought_ids_as_pending_and_released_as_terminating() -> None:
    before = census([make_instance("ins-run00001"), make_instance("ins-run00002")])
    bought = make_launch("t1", count=2, ids=("ins-new00001", "ins-new00002"))
    result = before.after(journal=[bought], bought=[bought], released=["ins-run00001"], owner_uid=UID)
    assert (result.running, result.pending, result.alive_count) == (1, 2, 3)
    states = {i.instance_id: i.state for i in result.owned}
    assert states["ins-run00001"] == TERMINATING and states["ins-new00001"] == PENDING
    assert result.inflight_unseen == 0 and result.records[0].accounted
