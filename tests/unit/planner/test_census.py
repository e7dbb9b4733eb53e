"""Counting owned, alive and in-flight instances."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta

from spotpool.cloud.models import LAUNCH_FAILED, PENDING, RUNNING, SHUTDOWN, TERMINATING, Instance
from spotpool.planner.census import Census, take_census
from spotpool.planner.model import INFLIGHT_VISIBILITY_GRACE, InflightLaunch
from tests.unit.planner.plannerkit import NOW, SA2, UID, Z4, make_instance, make_launch


def census(instances: Iterable[Instance] = (), inflight: Iterable[InflightLaunch] = ()) -> Census:
    return take_census(instances=list(instances), inflight=list(inflight), owner_uid=UID, now=NOW)


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
    assert result.resolved_inflight == ()


def test_launch_with_ids_counts_only_ids_not_observed_yet() -> None:
    result = census(
        [make_instance("ins-seen0001", state=PENDING)],
        [make_launch("t1", count=3, ids=("ins-seen0001", "ins-unseen01", "ins-unseen02"))],
    )
    assert result.inflight_unseen == 2
    assert result.alive_count == 1


def test_partial_delivery_counts_only_returned_ids() -> None:
    result = census(inflight=[make_launch("t1", count=5, ids=("ins-only0001",))])
    assert result.inflight_unseen == 1


def test_an_id_seen_in_a_dead_state_is_accounted_for() -> None:
    result = census(
        [make_instance("ins-fail0001", state=LAUNCH_FAILED)],
        [make_launch("t1", count=1, ids=("ins-fail0001",))],
    )
    assert result.inflight_unseen == 0
    assert result.resolved_inflight == ("t1",)


def test_fully_observed_launches_are_resolved() -> None:
    result = census(
        [make_instance("ins-a0000001"), make_instance("ins-b0000001")],
        [
            make_launch("done", count=2, ids=("ins-a0000001", "ins-b0000001")),
            make_launch("open", count=1, ids=("ins-c0000001",), zone=Z4, instance_type=SA2),
        ],
    )
    assert result.resolved_inflight == ("done",)
    assert result.unseen_by_pool == {(Z4, SA2): 1}


def test_launches_invisible_past_the_grace_stop_counting() -> None:
    grace = INFLIGHT_VISIBILITY_GRACE.total_seconds()
    result = census(
        inflight=[
            make_launch("old-no-ids", count=4, age_seconds=grace),
            make_launch("old-ids", count=1, ids=("ins-gone0001",), age_seconds=grace + 1),
            make_launch("young", count=2, age_seconds=grace - 1),
        ]
    )
    assert result.resolved_inflight == ("old-no-ids", "old-ids")
    assert result.inflight_unseen == 2


def test_naive_and_aware_times_mix_without_error() -> None:
    naive = replace(make_launch("t1", count=1), requested_at=(NOW - timedelta(hours=1)).replace(tzinfo=None))
    assert census(inflight=[naive]).resolved_inflight == ("t1",)
