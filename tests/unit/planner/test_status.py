"""build_status(): the status dict of the CRD contract, and its three conditions."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from spotpool.cloud.errors import ErrorCategory
from spotpool.cloud.models import LAUNCH_FAILED, PENDING, TERMINATING, Instance
from spotpool.planner import ErrorRecord, StatusReport, build_status, record_refusal
from spotpool.planner.conditions import MAX_MESSAGE_LENGTH, REASON_PATTERN
from spotpool.planner.formatting import format_time
from spotpool.planner.model import InflightLaunch, PoolBackoff, PoolKey
from spotpool.planner.status import MAX_STATUS_INSTANCES
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
    make_launch,
    make_offer,
    make_spec,
    offers_of,
    token,
)


def report(
    instances: Iterable[Instance] = (),
    *,
    journal: Iterable[InflightLaunch] = (),
    backoff: dict[PoolKey, PoolBackoff] | None = None,
    offers: dict[PoolKey, Any] | None = None,
    previous: list[dict[str, Any]] | None = None,
    now: Any = NOW,
    last_error: ErrorRecord | None = None,
    blocked: tuple[str, str] | None = None,
    deleting: bool = False,
    unlisted_overdue: int = 0,
    **spec: Any,
) -> StatusReport:
    """The status of an environment observed as `instances`, with `journal` its launch records."""
    journal = list(journal)
    return build_status(
        spec=make_spec(**spec),
        generation=3,
        census=census_of(instances, journal),
        journal=journal,
        offers=all_offered() if offers is None else offers,
        backoff=backoff or {},
        now=now,
        previous_conditions=previous or [],
        environment_label="render-farm",
        last_error=last_error,
        blocked=blocked,
        deleting=deleting,
        unlisted_overdue=unlisted_overdue,
    )


def status(instances: Iterable[Instance] = (), **kwargs: Any) -> dict[str, Any]:
    return report(instances, **kwargs).body


def cond(result: dict[str, Any], kind: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [c for c in result["conditions"] if c["type"] == kind]
    [found] = matches
    return found


def refused(
    pool: PoolKey, category: ErrorCategory, code: str, message: str = "refused", **kw: Any
) -> dict[PoolKey, PoolBackoff]:
    return record_refusal(
        {}, pool, code=code, message=message, category=category, now=NOW, rng=random.Random(3), **kw
    )


def test_full_shape_for_a_converged_environment() -> None:
    instances = [
        make_instance("ins-aaaaaaa1", age_minutes=90),
        make_instance("ins-aaaaaaa2", zone=Z4, instance_type=SA2, state=PENDING, age_minutes=None),
    ]
    offers = offers_of(make_offer(Z3, S5, "0.0213"), make_offer(Z4, SA2, "0.02135"))
    result = status(instances, offers=offers, expectedCount=2)
    assert {k: v for k, v in result.items() if k not in ("pools", "instances", "conditions")} == {
        "observedGeneration": 3,
        "currentCount": 2,
        "updatedCount": 2,
        "runningCount": 1,
        "pendingCount": 1,
        "selector": "spotpool.io/environment=render-farm",
        "hourlyCost": "0.0427",
        "capacity": {"spot": 2, "onDemandBase": 0, "onDemandFallback": 0,
                     # merge-patch nulls: remove what no longer holds
                     "spotShortSince": None, "spotShortReasons": None, "returning": None},
        "instancesOmitted": None,  # merge-patch null: removes a stale count
        "inflightLaunches": [],
        "launchSequence": 0,
    }
    assert result["pools"] == [
        {
            "zone": Z3,
            "instanceType": S5,
            "running": 1,
            "pending": 0,
            "available": True,
            "marketPrice": "0.0213",
        },
        {"zone": Z4, "instanceType": S5, "running": 0, "pending": 0, "available": False},
        {"zone": Z3, "instanceType": SA2, "running": 0, "pending": 0, "available": False},
        {
            "zone": Z4,
            "instanceType": SA2,
            "running": 0,
            "pending": 1,
            "available": True,
            "marketPrice": "0.02135",
        },
    ]
    assert result["instances"] == [
        {"id": "ins-aaaaaaa2", "zone": Z4, "instanceType": SA2, "state": "PENDING", "capacity": "Spot"},
        {
            "id": "ins-aaaaaaa1",
            "zone": Z3,
            "instanceType": S5,
            "state": "RUNNING",
            "capacity": "Spot",
            "launchTime": "2025-06-01T10:30:00Z",
        },
    ]
    assert [c["type"] for c in result["conditions"]] == ["Ready", "Progressing", "Degraded"]
    for c in result["conditions"]:
        assert set(c) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
        assert REASON_PATTERN.fullmatch(c["reason"])
        assert c["observedGeneration"] == 3 and c["lastTransitionTime"] == "2025-06-01T12:00:00Z"


def test_ready_when_running_equals_expected() -> None:
    result = status([make_instance(f"ins-r000000{i}") for i in range(2)], expectedCount=2)
    assert (cond(result, "Ready")["status"], cond(result, "Ready")["reason"]) == (
        "True",
        "ExpectedCountRunning",
    )
    assert cond(result, "Progressing")["status"] == "False"
    assert cond(result, "Degraded")["status"] == "False"


def test_pending_instances_are_not_ready_but_progressing() -> None:
    result = status([make_instance("ins-p0000001", state=PENDING)], expectedCount=1)
    assert (cond(result, "Ready")["status"], cond(result, "Ready")["reason"]) == (
        "False",
        "RunningBelowExpected",
    )
    assert (cond(result, "Progressing")["status"], cond(result, "Progressing")["reason"]) == (
        "True",
        "InstancesStarting",
    )


def test_too_many_running_is_not_ready_and_scaling_in() -> None:
    result = status([make_instance(f"ins-r000000{i}") for i in range(3)], expectedCount=2)
    assert cond(result, "Ready")["reason"] == "RunningAboveExpected"
    assert (cond(result, "Progressing")["status"], cond(result, "Progressing")["reason"]) == (
        "True",
        "ScalingIn",
    )


def test_deficit_is_progressing_scaling_out() -> None:
    c = cond(status(expectedCount=2), "Progressing")
    assert (c["status"], c["reason"]) == ("True", "ScalingOut")


def test_unseen_launch_is_progressing_launching() -> None:
    c = cond(status(journal=[make_launch("t", count=2)], expectedCount=2), "Progressing")
    assert (c["status"], c["reason"]) == ("True", "Launching")


def test_paused_is_not_progressing() -> None:
    c = cond(status(expectedCount=2, paused=True), "Progressing")
    assert (c["status"], c["reason"]) == ("False", "Paused")


def test_last_transition_time_is_kept_while_status_is_unchanged() -> None:
    first = status(expectedCount=2)
    later = status(previous=first["conditions"], now=NOW + timedelta(minutes=5), expectedCount=2)
    assert cond(later, "Ready")["lastTransitionTime"] == "2025-06-01T12:00:00Z"
    flipped = status(
        [make_instance("ins-r0000001"), make_instance("ins-r0000002")],
        previous=first["conditions"],
        now=NOW + timedelta(minutes=5),
        expectedCount=2,
    )
    assert cond(flipped, "Ready")["lastTransitionTime"] == "2025-06-01T12:05:00Z"
    assert cond(flipped, "Degraded")["lastTransitionTime"] == "2025-06-01T12:00:00Z"


def test_every_pool_above_max_price_is_degraded_before_any_call() -> None:
    offers = {**all_offered("0.0250"), (Z4, SA2): make_offer(Z4, SA2, "0.0300")}
    c = cond(status(offers=offers, expectedCount=1, maxPrice="0.0100"), "Degraded")
    assert (c["status"], c["reason"]) == ("True", "PriceAboveMax")
    assert "market price 0.0250 USD/h in ap-guangzhou-3/S5.MEDIUM4 is above maxPrice 0.0100" in c["message"]
    for zone, itype in ((Z4, S5), (Z3, SA2), (Z4, SA2)):
        assert f"{zone}/{itype}" in c["message"]


def test_refusal_while_short_is_degraded_with_the_tencent_code() -> None:
    backoff = refused(
        (Z3, S5), ErrorCategory.CAPACITY, "ResourceInsufficient.SpecifiedInstanceType", "no stock"
    )
    result = status(
        backoff=backoff,
        expectedCount=1,
        allocationStrategy="Prioritized",
        offers={(Z3, S5): make_offer(Z3, S5, "0.02")},
    )
    c = cond(result, "Degraded")
    assert (c["status"], c["reason"]) == ("True", "InsufficientCapacity")
    assert (
        "ap-guangzhou-3/S5.MEDIUM4 refused with ResourceInsufficient.SpecifiedInstanceType: no stock"
        in c["message"]
    )
    [pool] = [p for p in result["pools"] if (p["zone"], p["instanceType"]) == (Z3, S5)]
    assert pool["available"] is False
    assert pool["lastError"] == {
        "code": "ResourceInsufficient.SpecifiedInstanceType",
        "message": "no stock",
        "time": "2025-06-01T12:00:00Z",
        "category": "capacity",
    }
    retry_after = backoff[(Z3, S5)].retry_after
    assert retry_after is not None and pool["retryAfter"] == format_time(retry_after)
    assert pool["failures"] == 1


def test_refusal_is_not_degradation_once_the_count_is_covered() -> None:
    backoff = refused((Z3, S5), ErrorCategory.CAPACITY, "ResourceInsufficient.SpecifiedInstanceType")
    result = status(backoff=backoff, journal=[make_launch("t", count=1, zone=Z4)], expectedCount=1)
    assert cond(result, "Degraded")["status"] == "False"


def test_price_refusal_message_gives_both_prices() -> None:
    backoff = refused(
        (Z3, S5),
        ErrorCategory.PRICE,
        "InvalidParameterValue.InsufficientPrice",
        "The bid is lower than the market price",
        market_price=Decimal("0.0520"),
        max_price=Decimal("0.0500"),
    )
    offers = offers_of(make_offer(Z3, S5, "0.0520"))
    c = cond(status(backoff=backoff, offers=offers, expectedCount=1, maxPrice="0.0500"), "Degraded")
    assert c["reason"] == "PriceAboveMax"
    assert (
        "InvalidParameterValue.InsufficientPrice: The bid is lower than the market price "
        "(market price 0.0520 USD/h, maxPrice 0.0500)"
    ) in c["message"]


def test_worst_reason_names_the_condition_and_every_pool_is_listed() -> None:
    backoff = {
        **refused((Z3, S5), ErrorCategory.THROTTLED, "RequestLimitExceeded"),
        **refused((Z4, S5), ErrorCategory.QUOTA, "LimitExceeded.UserSpotQuota"),
        **refused((Z3, SA2), ErrorCategory.CAPACITY, "ResourceInsufficient.SpecifiedInstanceType"),
    }
    c = cond(status(backoff=backoff, expectedCount=1, offers=all_offered()), "Degraded")
    assert c["reason"] == "QuotaExceeded"
    assert c["message"].index("LimitExceeded.UserSpotQuota") < c["message"].index("ResourceInsufficient")
    assert c["message"].index("ResourceInsufficient") < c["message"].index("RequestLimitExceeded")


@pytest.mark.parametrize(
    ("category", "reason"),
    [
        (ErrorCategory.AUTH, "AuthFailure"),
        (ErrorCategory.INVALID_REQUEST, "InvalidConfig"),
        (ErrorCategory.NOT_FOUND, "InvalidConfig"),
        (ErrorCategory.QUOTA, "QuotaExceeded"),
        (ErrorCategory.THROTTLED, "Throttled"),
        (ErrorCategory.TRANSIENT, "CloudUnavailable"),
        (ErrorCategory.UNKNOWN, "CloudUnavailable"),
        (ErrorCategory.CAPACITY, "InsufficientCapacity"),
        (ErrorCategory.PRICE, "PriceAboveMax"),
    ],
)
def test_environment_wide_errors_degrade_even_when_ready(category: ErrorCategory, reason: str) -> None:
    error = ErrorRecord(code="Some.Code", message="it failed", category=category, time=NOW)
    result = status([make_instance("ins-r0000001")], last_error=error, expectedCount=1)
    c = cond(result, "Degraded")
    assert (c["status"], c["reason"], c["message"]) == ("True", reason, "Some.Code: it failed")
    assert cond(result, "Ready")["status"] == "True"


def test_config_error_is_the_worst_problem() -> None:
    error = ErrorRecord(
        code="RequestLimitExceeded", message="slow down", category=ErrorCategory.THROTTLED, time=NOW
    )
    c = cond(
        status(blocked=("AuthFailure", "Secret batch/creds has no key secretKey"), last_error=error),
        "Degraded",
    )
    assert c["reason"] == "AuthFailure"
    assert c["message"] == "Secret batch/creds has no key secretKey; RequestLimitExceeded: slow down"


def test_invalid_condition_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        status(blocked=("Not a reason", "x"))


def test_long_messages_are_clipped_to_the_metav1_limit() -> None:
    c = cond(status(blocked=("InvalidConfig", "x" * 40000)), "Degraded")
    assert len(c["message"]) == MAX_MESSAGE_LENGTH and c["message"].endswith(" ...")


def test_hourly_cost_counts_alive_instances_at_market_price() -> None:
    instances = [
        make_instance("ins-r0000001"),
        make_instance("ins-p0000001", state=PENDING),
        make_instance("ins-f0000001", state=LAUNCH_FAILED),
        make_instance("ins-u0000001", zone="ap-guangzhou-7"),  # no known price: adds nothing
    ]
    assert status(instances, offers=all_offered("0.02135"))["hourlyCost"] == "0.0427"


def test_inflight_launches_are_written_as_given() -> None:
    launch = make_launch(token(1, count=3), count=3, ids=("ins-a0000001",))
    assert status(journal=[launch])["inflightLaunches"] == [
        {
            "clientToken": token(1, count=3),
            "zone": Z3,
            "instanceType": S5,
            "count": 3,
            "requestedAt": "2025-06-01T11:59:55Z",
            "instanceIds": ["ins-a0000001"],
        },
    ]


def test_foreign_instances_do_not_appear() -> None:
    result = status([make_instance("ins-other001", owner="x")])
    assert result["instances"] == [] and result["currentCount"] == 0


def test_instance_list_is_capped_with_non_running_first() -> None:
    instances = [make_instance(f"ins-{i:08d}") for i in range(MAX_STATUS_INSTANCES + 5)]
    instances.append(make_instance("ins-zzpendng", state=PENDING))
    result = status(instances, expectedCount=MAX_STATUS_INSTANCES + 6)
    assert len(result["instances"]) == MAX_STATUS_INSTANCES
    assert result["instances"][0]["id"] == "ins-zzpendng"
    assert result["instancesOmitted"] == 6
    assert status()["instancesOmitted"] is None


def test_retry_after_is_absent_once_the_backoff_expired() -> None:
    backoff = refused((Z3, S5), ErrorCategory.CAPACITY, "ResourceInsufficient.SpecifiedInstanceType")
    result = status(backoff=backoff, now=NOW + timedelta(minutes=1))
    [pool, *_] = result["pools"]
    assert (
        "retryAfter" not in pool and pool["lastError"]["code"] == "ResourceInsufficient.SpecifiedInstanceType"
    )
    assert pool["available"] is True


def test_deleting_is_not_ready_and_progressing_until_everything_is_released() -> None:
    result = status([make_instance("ins-r0000001")], deleting=True, expectedCount=1)
    assert cond(result, "Ready")["reason"] == "Deleting"
    assert (cond(result, "Progressing")["status"], cond(result, "Progressing")["reason"]) == (
        "True",
        "Deleting",
    )
    assert cond(result, "Degraded")["status"] == "False"
    terminating = status([make_instance("ins-t0000001", state=TERMINATING)], deleting=True)
    assert (cond(terminating, "Progressing")["status"], cond(terminating, "Progressing")["reason"]) == (
        "True", "Deleting")
    assert "confirm 1 terminating instances are gone" in cond(terminating, "Progressing")["message"]
    done = status([], deleting=True)
    assert (cond(done, "Progressing")["status"], cond(done, "Progressing")["reason"]) == ("False", "Deleted")


@pytest.mark.parametrize("label", ["", "x" * 64, "-bad", "a/b"])
def test_selector_must_be_a_valid_label(label: str) -> None:
    with pytest.raises(ValueError):
        build_status(
            spec=make_spec(),
            generation=1,
            census=census_of(),
            now=NOW,
            previous_conditions=[],
            environment_label=label,
        )


def test_the_report_gives_the_conditions_as_booleans() -> None:
    ready = report([make_instance("ins-r0000001")], expectedCount=1)
    assert (ready.ready, ready.progressing, ready.degraded) == (True, False, False)
    short = report(expectedCount=2, offers={})
    assert (short.ready, short.progressing, short.degraded) == (False, True, True)
    assert cond(short.body, "Degraded")["status"] == "True"


def test_a_blocked_pass_writes_only_conditions_generation_and_selector() -> None:
    result = build_status(
        spec=make_spec(),
        generation=4,
        now=NOW,
        previous_conditions=[],
        environment_label="render-farm",
        blocked=("AuthFailure", "Secret batch/creds has no key secretKey"),
    )
    assert set(result.body) == {"observedGeneration", "selector", "conditions"}
    assert result.body["observedGeneration"] == 4
    assert (result.ready, result.progressing, result.degraded) == (False, False, True)
    c = cond(result.body, "Degraded")
    assert (c["reason"], c["message"]) == ("AuthFailure", "Secret batch/creds has no key secretKey")
    assert cond(result.body, "Progressing")["message"] == "blocked: Secret batch/creds has no key secretKey"


def test_without_a_spec_the_status_is_blocked_too() -> None:
    result = build_status(
        spec=None,
        generation=1,
        now=NOW,
        previous_conditions=[],
        environment_label="render-farm",
        census=census_of([make_instance("ins-r0000001")]),
        blocked=("InvalidConfig", "spec.maxPrice is not a price"),
    )
    assert "currentCount" not in result.body and result.degraded and not result.ready


def test_launch_sequence_and_account_are_written() -> None:
    result = build_status(
        spec=make_spec(),
        generation=1,
        census=census_of(),
        sequence=17,
        account={"uin": "100000000001"},
        now=NOW,
        previous_conditions=[],
        environment_label="render-farm",
    ).body
    assert result["launchSequence"] == 17 and result["account"] == {"uin": "100000000001"}
    assert "account" not in status()


def test_instances_unlisted_past_the_grace_are_degraded() -> None:
    result = report([make_instance("ins-r0000001")], unlisted_overdue=2, expectedCount=1)
    c = cond(result.body, "Degraded")
    assert (c["status"], c["reason"]) == ("True", "InstancesUnlisted")
    assert c["message"].startswith("2 bought instances are still missing")
    assert result.ready


def test_the_census_after_a_pass_counts_what_the_api_just_answered() -> None:
    before = census_of([make_instance("ins-r0000001"), make_instance("ins-r0000002")])
    bought = make_launch(token(1, count=1), count=1, ids=("ins-new00001",))
    after = before.after(journal=[], bought=[bought], released=["ins-r0000002"], owner_uid=UID)
    result = build_status(
        spec=make_spec(expectedCount=2), generation=1, census=after, now=NOW,
        previous_conditions=[], environment_label="render-farm",
    ).body
    assert (result["currentCount"], result["runningCount"], result["pendingCount"]) == (2, 1, 1)
    assert {i["id"]: i["state"] for i in result["instances"]} == {
        "ins-new00001": "PENDING", "ins-r0000002": "TERMINATING", "ins-r0000001": "RUNNING",
    }
