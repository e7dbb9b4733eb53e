"""Bookkeeping written into status reads back as it was (crash safety of launches and backoff)."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest

from spotpool.cloud.errors import ErrorCategory
from spotpool.planner import DropReason, backoff_from_status, build_status, read_journal, record_refusal
from spotpool.planner.formatting import format_cost, format_price, format_time, parse_time
from spotpool.planner.model import MAX_JOURNAL_RECORDS, InflightLaunch
from tests.unit.planner.plannerkit import NOW, S5, SA2, Z3, Z4, census_of, make_launch, make_spec, token


def written(launches: list[InflightLaunch]) -> dict[str, Any]:
    """A status body as the executor writes it, holding `launches`."""
    return build_status(
        spec=make_spec(),
        generation=1,
        census=census_of(inflight=launches),
        journal=launches,
        now=NOW,
        previous_conditions=[],
        environment_label="env",
    ).body


def test_journal_round_trips_through_status() -> None:
    launches = [
        make_launch(token(1, count=3), count=3),
        make_launch(
            token(2, zone=Z4, instance_type=SA2, count=2),
            count=2, ids=("ins-a0000001", "ins-b0000001"), zone=Z4, instance_type=SA2, seen=("ins-b0000001",),
        ),
    ]
    assert read_journal(written(launches)) == (launches, [])


@pytest.mark.parametrize("shown", ["ins-a0000001", ["ins-z0000009"], [1], None])
def test_seen_ids_that_are_not_the_records_own_read_as_nothing_seen(shown: Any) -> None:
    """The safe side: a look-up's "not found" then holds an id instead of proving it gone."""
    launches, dropped = read_journal({"inflightLaunches": [good(seenIds=shown)]})
    assert dropped == [] and [launch.seen for launch in launches] == [()]


def test_missing_journal_reads_as_empty() -> None:
    assert read_journal({}) == ([], [])
    assert read_journal({"inflightLaunches": None}) == ([], [])


def good(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "clientToken": token(7, count=2),
        "zone": Z3,
        "instanceType": S5,
        "count": 2,
        "requestedAt": "2025-06-01T11:59:55Z",
        "instanceIds": ["ins-a0000001"],
    }
    record.update(overrides)
    return record


def test_a_well_formed_record_reads_back() -> None:
    launches, dropped = read_journal({"inflightLaunches": [good()]})
    assert dropped == []
    assert launches == [make_launch(token(7, count=2), count=2, ids=("ins-a0000001",))]


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"clientToken": "t"}, "clientToken"),
        ({"clientToken": "tok-1"}, "clientToken"),
        ({"clientToken": 42}, "clientToken"),
        ({"zone": "Guangzhou Three"}, "zone"),
        ({"instanceType": "s5.medium4"}, "instanceType"),
        ({"count": 0}, "count"),
        ({"count": 101}, "count"),
        ({"count": True}, "count"),
        ({"count": "2"}, "count"),
        ({"instanceIds": ["ins-a0000001", "ins-b0000001", "ins-c0000001"]}, "instanceIds"),
        ({"instanceIds": ["i-12345678"]}, "instanceIds"),
        ({"instanceIds": "ins-a0000001"}, "instanceIds"),
        ({"requestedAt": "yesterday"}, "inflightLaunches"),
        ({"zone": None}, "zone"),
    ],
)
def test_a_malformed_record_is_dropped_never_replayed(overrides: dict[str, Any], why: str) -> None:
    kept = good(clientToken=token(8, count=2))
    launches, dropped = read_journal({"inflightLaunches": [good(**overrides), kept]})
    assert [launch.client_token for launch in launches] == [kept["clientToken"]]
    [drop] = dropped
    assert drop.reason is DropReason.MALFORMED
    assert drop.detail.startswith("status.inflightLaunches[0]: ") and why in drop.detail


def test_a_record_missing_a_field_is_dropped() -> None:
    launches, dropped = read_journal({"inflightLaunches": [{"clientToken": "t", "zone": Z3}]})
    assert launches == []
    assert [(d.client_token, d.reason) for d in dropped] == [("t", DropReason.MALFORMED)]
    assert "inflightLaunches[0]" in dropped[0].detail


def test_a_repeated_token_keeps_the_first_record() -> None:
    launches, dropped = read_journal({"inflightLaunches": [good(), good(count=3)]})
    assert [launch.count for launch in launches] == [2]
    assert [(d.reason, d.detail) for d in dropped] == [
        (DropReason.MALFORMED, "status.inflightLaunches[1]: repeats a token")
    ]


def test_a_journal_that_is_not_a_list_is_dropped_whole() -> None:
    launches, dropped = read_journal({"inflightLaunches": {"clientToken": token(1)}})
    assert launches == [] and [d.reason for d in dropped] == [DropReason.MALFORMED]


def test_records_beyond_the_limit_are_dropped() -> None:
    items = [good(clientToken=token(n, count=2)) for n in range(MAX_JOURNAL_RECORDS + 2)]
    launches, dropped = read_journal({"inflightLaunches": items})
    assert len(launches) == MAX_JOURNAL_RECORDS and len(dropped) == 2
    assert all(d.reason is DropReason.MALFORMED for d in dropped)


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
        census=census_of(),
        backoff=backoff,
        now=NOW,
        previous_conditions=[],
        environment_label="env",
    ).body
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
