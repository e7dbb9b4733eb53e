"""Failpoint specs (`SPOTPOOL_FAILPOINTS`) and the hit counting that decides when to die.
`_die` is replaced: these tests must not SIGKILL the test runner."""

from __future__ import annotations

import asyncio

import pytest

from spotpool.controller import failpoints
from spotpool.controller.failpoints import _parse


@pytest.mark.parametrize(("spec", "expected"), [
    ("", {}),
    ("   ", {}),
    ("status-write", {"status-write": (1, None)}),
    ("before-run-instances:3", {"before-run-instances": (3, None)}),
    ("run-instances-in-flight@0.05", {"run-instances-in-flight": (1, 0.05)}),
    ("run-instances-in-flight@0.5:2", {"run-instances-in-flight": (2, 0.5)}),
    ("a:2,b", {"a": (2, None), "b": (1, None)}),
    (" a:2 , , b@1 ,", {"a": (2, None), "b": (1, 1.0)}),
    ("a:1,a:4", {"a": (4, None)}),  # the last mention of a point wins
    ("a@1:", {"a": (1, 1.0)}),  # an empty count means 1, as with no colon at all
])
def test_parse(spec: str, expected: dict[str, tuple[int, float | None]]) -> None:
    parsed = _parse(spec)
    assert {name: (armed.count, armed.delay) for name, armed in parsed.items()} == expected
    assert all(armed.raise_ is None for armed in parsed.values())  # the environment only arms kills


@pytest.mark.parametrize("spec", ["a:x", "a:1.5", "a@soon", "b,a:two"])
def test_parse_refuses_malformed_counts_and_delays(spec: str) -> None:
    with pytest.raises(ValueError):
        _parse(spec)


@pytest.fixture
def deaths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    died: list[str] = []
    monkeypatch.setattr(failpoints, "_die", died.append)
    monkeypatch.setattr(failpoints, "_HITS", {})
    return died


def test_failpoint_fires_on_the_nth_hit_only(monkeypatch: pytest.MonkeyPatch, deaths: list[str]) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", _parse("before-run-instances:3,status-write"))
    failpoints.failpoint("before-run-instances")
    failpoints.failpoint("before-run-instances")
    failpoints.failpoint("after-run-instances")  # not armed
    assert deaths == []
    failpoints.failpoint("before-run-instances")
    assert deaths == ["before-run-instances"]
    failpoints.failpoint("before-run-instances")  # the 4th hit: already past
    assert deaths == ["before-run-instances"]
    failpoints.failpoint("status-write")
    assert deaths == ["before-run-instances", "status-write"]


async def test_failpoint_with_a_delay_dies_later(monkeypatch: pytest.MonkeyPatch, deaths: list[str]) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", _parse("run-instances-in-flight@0.05"))
    failpoints.failpoint("run-instances-in-flight")
    assert deaths == []
    await asyncio.sleep(0.2)
    assert deaths == ["run-instances-in-flight"]


def test_nothing_armed_costs_nothing(monkeypatch: pytest.MonkeyPatch, deaths: list[str]) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", {})
    for _ in range(3):
        failpoints.failpoint("status-write")
    assert deaths == []
    assert failpoints._HITS == {}


def test_points_are_the_documented_ones_in_pass_order() -> None:
    assert failpoints.POINTS == (
        "journal-write",
        "before-run-instances",
        "run-instances-in-flight",
        "after-run-instances",
        "after-terminate-instances",
        "status-write",
    )


class Crash(Exception):
    pass


def test_arm_raises_on_the_nth_hit_then_disarms_itself(
    monkeypatch: pytest.MonkeyPatch, deaths: list[str]
) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", {})
    failpoints.arm("after-run-instances", raise_=Crash("boom"), count=2)
    failpoints.failpoint("after-run-instances")
    failpoints.failpoint("status-write")  # not armed
    with pytest.raises(Crash, match="boom"):
        failpoints.failpoint("after-run-instances")
    failpoints.failpoint("after-run-instances")  # fired once: the point is no longer armed
    assert "after-run-instances" not in failpoints._ARMED
    assert deaths == []  # raising replaces the SIGKILL


def test_arm_counts_hits_from_the_moment_it_is_armed(
    monkeypatch: pytest.MonkeyPatch, deaths: list[str]
) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", {})
    failpoints.arm("status-write", raise_=Crash("first"), count=1)
    with pytest.raises(Crash):
        failpoints.failpoint("status-write")
    failpoints.failpoint("status-write")
    failpoints.failpoint("status-write")  # two hits since: re-arming must start from zero
    failpoints.arm("status-write", raise_=Crash("again"), count=1)
    with pytest.raises(Crash, match="again"):
        failpoints.failpoint("status-write")


def test_arm_refuses_an_unknown_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", {})
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.arm("no-such-point", raise_=Crash())
    assert failpoints._ARMED == {}


def test_disarm_clears_every_point_and_hit(monkeypatch: pytest.MonkeyPatch, deaths: list[str]) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", {})
    failpoints.arm("journal-write", raise_=Crash(), count=2)
    failpoints.failpoint("journal-write")
    assert failpoints._HITS == {"journal-write": 1}
    failpoints.disarm()
    assert failpoints._ARMED == {} and failpoints._HITS == {}
    for _ in range(3):
        failpoints.failpoint("journal-write")  # would have raised on the 2nd hit if still armed
    assert deaths == []
