"""Bookkeeping written into status reads back as it was (crash safety of launches and backoff)."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from spotpool.cloud.errors import ErrorCategory
from spotpool.planner import backoff_from_status, build_status, inflight_from_status, record_refusal
from spotpool.planner.formatting import format_cost, format_price, format_time, parse_time
from spotpool.planner.model import InflightLaunch
from tests.unit.planner.plannerkit import NOW, S5, SA2, UID, Z3, Z4, make_launch, make_spec


def test_inflight_round_trips_through_status() -> None:
    launches = [
        make_launch("tok-a", count=3),
        make_launch("tok-b", count=2, ids=("ins-a0000001", "ins-b0000001"), zone=Z4, instance_type=SA2),
    ]
    status = build_status(
        spec=make_spec(),
        generation=1,
        instances=[],
        offers={},
        inflight=launches,
        backoff={},
        now=NOW,
        previous_conditions=[],
        environment_label="env",
        owner_uid=UID,
    )
    assert inflight_from_status(status) == launches


def test_missing_inflight_list_reads_as_empty() -> None:
    assert inflight_from_status({}) == []
    assert inflight_from_status({"inflightLaunches": None}) == []


def test_malformed_inflight_entry_raises_rather_than_forgetting_a_purchase() -> None:
    with pytest.raises(ValueError, match=r"inflightLaunches\[0\]"):
        inflight_from_status({"inflightLaunches": [{"clientToken": "t", "zone": Z3}]})


def test_backoff_round_trips_through_status_pools() -> None:
    backoff = record_refusal(
        {},
        (Z3, S5),
        code="LimitExceeded.UserSpotQuota",
        message="quota",
        category=ErrorCategory.QUOTA,
        now=NOW,
        rng=random.Random(1),
    )
    backoff = record_refusal(
        backoff,
        (Z3, S5),
        code="LimitExceeded.UserSpotQuota",
        message="quota",
        category=ErrorCategory.QUOTA,
        now=NOW,
        rng=random.Random(1),
    )
    status = build_status(
        spec=make_spec(),
        generation=1,
        instances=[],
        offers={},
        inflight=[],
        backoff=backoff,
        now=NOW,
        previous_conditions=[],
        environment_label="env",
        owner_uid=UID,
    )
    restored = backoff_from_status(status)
    assert list(restored) == [(Z3, S5)]
    entry, original = restored[(Z3, S5)], backoff[(Z3, S5)]
    assert (entry.failures, entry.last_code, entry.last_message, entry.category) == (
        2,
        "LimitExceeded.UserSpotQuota",
        "quota",
        ErrorCategory.QUOTA,
    )
    assert original.retry_after is not None and entry.retry_after == parse_time(
        format_time(original.retry_after)
    )
    assert entry.last_time == NOW


def test_unreadable_backoff_entries_are_skipped() -> None:
    status = {
        "pools": [
            {"zone": Z3, "instanceType": S5, "lastError": {"code": "X", "category": "no-such-category"}},
            {"zone": Z4, "instanceType": S5, "lastError": {"message": "no code"}},
            {"zone": Z3, "instanceType": SA2, "lastError": {"code": "Y"}},
            {"zone": Z4, "instanceType": SA2},
        ]
    }
    restored = backoff_from_status(status)
    assert list(restored) == [(Z3, SA2)]
    assert (restored[(Z3, SA2)].failures, restored[(Z3, SA2)].retry_after) == (1, None)


def test_time_format_is_rfc3339_utc_seconds() -> None:
    assert format_time(NOW.replace(microsecond=999999)) == "2025-06-01T12:00:00Z"
    assert parse_time("2025-06-01T20:00:00+08:00") == NOW
    assert parse_time("2025-06-01T12:00:00Z").tzinfo is not None


@pytest.mark.parametrize(
    ("price", "text"), [("0.0213", "0.0213"), ("0.02135", "0.02135"), ("0.1", "0.1000"), ("1", "1.0000")]
)
def test_prices_show_at_least_four_decimals(price: str, text: str) -> None:
    assert format_price(Decimal(price)) == text


def test_costs_round_half_up_to_four_decimals() -> None:
    assert format_cost(Decimal("0.04270")) == "0.0427"
    assert format_cost(Decimal("0.00005")) == "0.0001"
    assert format_cost(Decimal(0)) == "0.0000"


def test_inflight_launch_pool_key() -> None:
    launch = InflightLaunch("t", Z4, SA2, 1, NOW)
    assert launch.pool == (Z4, SA2)
