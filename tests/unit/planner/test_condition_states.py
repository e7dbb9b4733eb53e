"""Conditions read back typed, whoever wrote the status (anyone with patch on it may have)."""

from __future__ import annotations

from spotpool.planner.conditions import ConditionState, states


def test_readable_conditions_are_typed_and_the_rest_left_out() -> None:
    raw = [
        {"type": "Ready", "status": "True", "reason": "ExpectedCountRunning", "message": "3 of 3"},
        {"type": "Degraded", "status": "False", "reason": "AsExpected"},  # no message: empty
        {"type": 7, "status": "True", "reason": "x"},  # not a condition
        "Progressing",
    ]
    read = states(raw)
    assert read == {
        "Ready": ConditionState("Ready", "True", "ExpectedCountRunning", "3 of 3"),
        "Degraded": ConditionState("Degraded", "False", "AsExpected", ""),
    }
    assert states(None) == {} and states({"type": "Ready"}) == {}
