"""Client tokens: deterministic, distinct per request, within CVM's 64 ASCII characters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotpool.planner import client_token

TOKEN = ("3f6d2a10-0000-4000-8000-000000000001", 7, "ap-guangzhou-3", "S5.MEDIUM4", 5)


def test_same_request_same_token() -> None:
    assert client_token(*TOKEN) == client_token(*TOKEN)


def test_token_does_not_depend_on_the_process() -> None:
    # A pinned value proves no per-process input (hash seed, time, randomness) leaks in: an operator
    # restarted, or a second replica, computes the very same token.
    assert client_token(*TOKEN) == "608f9a2d-a14b-57d2-a35c-a682ffba64f4"


UID, SEQUENCE, ZONE, TYPE, COUNT = TOKEN


@pytest.mark.parametrize(
    "changed",
    [
        (UID + "x", SEQUENCE, ZONE, TYPE, COUNT),
        (UID, SEQUENCE + 1, ZONE, TYPE, COUNT),
        (UID, SEQUENCE, ZONE + "x", TYPE, COUNT),
        (UID, SEQUENCE, ZONE, TYPE + "x", COUNT),
        (UID, SEQUENCE, ZONE, TYPE, COUNT + 1),
    ],
)
def test_every_input_changes_the_token(changed: tuple[str, int, str, str, int]) -> None:
    assert client_token(*changed) != client_token(*TOKEN)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        client_token("uid", -1, "z", "t", 1)
    with pytest.raises(ValueError):
        client_token("uid", 0, "z", "t", 0)


@given(st.text(), st.integers(min_value=0), st.text(), st.text(), st.integers(min_value=1, max_value=100))
def test_tokens_are_short_ascii(uid: str, sequence: int, zone: str, itype: str, count: int) -> None:
    token = client_token(uid, sequence, zone, itype, count)
    assert token.isascii() and 1 <= len(token) <= 64


def test_a_sequence_started_again_stays_above_every_earlier_one() -> None:
    """A pool whose status was lost starts its launch sequence again from the clock: above where
    an earlier start could have got by launching at RunInstances' limit (10 a second) ever since,
    so no token of an earlier launch is made again."""
    from datetime import UTC, datetime, timedelta

    from spotpool.planner.persistence import read_status
    from spotpool.planner.tokens import first_sequence

    earlier = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    for gap in (timedelta(milliseconds=1), timedelta(seconds=1), timedelta(days=30)):
        launches_since = int(gap.total_seconds() * 10)
        assert first_sequence(earlier + gap) > first_sequence(earlier) + launches_since
    assert read_status({}).sequence is None  # none recorded: the executor starts one, never 0
    assert read_status({"launchSequence": "7"}).sequence is None
    assert read_status({"launchSequence": 7}).sequence == 7
