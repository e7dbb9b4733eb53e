"""The Ready, Progressing and Degraded conditions, in metav1.Condition shape.

`lastTransitionTime` moves only when a condition's status flips, so `kubectl wait` and alerts see
real transitions, not every reconcile. Reasons are checked against the metav1 pattern here: an
invalid reason would make the API server refuse the whole status write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotpool.planner.degraded import Problem
from spotpool.planner.formatting import format_time

REASON_PATTERN = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
MAX_MESSAGE_LENGTH = 32768  # metav1.Condition.message limit
_ELLIPSIS = " ..."


@dataclass(frozen=True)
class Counts:
    """The numbers the conditions are decided on."""

    expected: int
    running: int
    pending: int
    deficit: int
    surplus: int
    inflight_unseen: int
    remaining: int  # owned instances not yet terminating (what a deletion still has to release)
    returning: int = 0  # pending spot replacements of fallback on-demand instances (not surplus)
    terminating: int = 0  # owned instances the cloud still shows terminating (a deletion waits for them)


def ready(counts: Counts, *, deleting: bool) -> tuple[bool, str, str]:
    """True iff exactly the expected number of instances is running (docs/contract.md)."""
    summary = f"{counts.running} of {counts.expected} instances running, {counts.pending} pending"
    if deleting:
        return False, "Deleting", f"the environment is being deleted; {summary}"
    if counts.running == counts.expected:
        return True, "ExpectedCountRunning", summary
    if counts.running < counts.expected:
        return False, "RunningBelowExpected", summary
    return False, "RunningAboveExpected", summary


def progressing(counts: Counts, *, paused: bool, deleting: bool,
                refused: tuple[str, str] | None = None,
                rollout: tuple[bool, str, str] | None = None) -> tuple[bool, str, str]:
    """True while instances are being bought, started or released. `refused`: (reason, message)
    of a spend guard: a deficit is then not bought, so it is no progress. `rollout`: the decision
    while drifted or expired instances remain (`RollingOut`, or `RolloutBlocked` and why); a
    deficit comes first, as it does for the planner."""
    if deleting:
        if counts.remaining or counts.inflight_unseen or counts.terminating:
            parts = [f"releasing {counts.remaining} instances"]
            if counts.terminating:
                parts.append(f"waiting for the cloud to confirm {counts.terminating} terminating instances are gone")
            if counts.inflight_unseen:
                parts.append(f"waiting for {counts.inflight_unseen} launched instances to appear")
            return True, "Deleting", ", ".join(parts)
        return False, "Deleted", "the cloud confirmed every instance is gone"
    if paused:
        return (
            False,
            "Paused",
            (
                f"spec.paused is true: buying and releasing nothing "
                f"({counts.deficit} short, {counts.surplus} surplus)"
            ),
        )
    if rollout is not None and not counts.deficit:
        return rollout
    if counts.returning and counts.surplus <= counts.returning:
        return True, "ReturningToSpot", (f"{counts.returning} spot replacements are starting; the on-demand "
                                         f"fallback instances they replace go once they run")
    if counts.surplus:
        return True, "ScalingIn", f"releasing {counts.surplus} surplus instances"
    if counts.deficit and refused is not None:
        return False, refused[0], f"{counts.deficit} instances short, buying nothing: {refused[1]}"
    if counts.deficit:
        launched = f", {counts.inflight_unseen} more launched" if counts.inflight_unseen else ""
        return True, "ScalingOut", f"buying {counts.deficit} instances{launched}"
    if counts.inflight_unseen:
        return True, "Launching", f"waiting for {counts.inflight_unseen} launched instances to appear"
    if counts.pending:
        return True, "InstancesStarting", f"{counts.pending} instances are starting"
    return False, "Stable", f"{counts.expected} instances alive as expected"


def degraded(problems: list[Problem]) -> tuple[bool, str, str]:
    """True when anything is refused or blocked; the worst problem names the reason."""
    if not problems:
        return False, "AsExpected", "no refusals from the cloud"
    return True, problems[0].reason, "; ".join(problem.message for problem in problems)


def condition(
    kind: str,
    decision: tuple[bool, str, str],
    *,
    generation: int,
    now: datetime,
    previous: list[dict[str, Any]],
) -> dict[str, Any]:
    """One metav1.Condition; keeps the previous `lastTransitionTime` when the status is unchanged."""
    is_true, reason, message = decision
    if not REASON_PATTERN.fullmatch(reason):
        raise ValueError(f"condition reason {reason!r} does not match {REASON_PATTERN.pattern}")
    status = "True" if is_true else "False"
    earlier = next((item for item in previous if item.get("type") == kind), None)
    if earlier is not None and earlier.get("status") == status and earlier.get("lastTransitionTime"):
        transition = earlier["lastTransitionTime"]
    else:
        transition = format_time(now)
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": _clip(message),
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }


def _clip(message: str) -> str:
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    return message[: MAX_MESSAGE_LENGTH - len(_ELLIPSIS)] + _ELLIPSIS


@dataclass(frozen=True)
class ConditionState:
    """One condition as a status holds it, typed: what a transition is judged on."""

    kind: str
    status: str  # "True" or "False"
    reason: str
    message: str

    @classmethod
    def read(cls, raw: object) -> ConditionState | None:
        """A condition entry as any writer left it; None when it is not one."""
        if not isinstance(raw, Mapping):
            return None
        fields = [raw.get(key) for key in ("type", "status", "reason", "message")]
        if not all(isinstance(value, str) for value in fields[:3]):
            return None
        kind, status, reason, message = fields
        return cls(str(kind), str(status), str(reason), message if isinstance(message, str) else "")


def states(raw: object) -> dict[str, ConditionState]:
    """The readable conditions of a `status.conditions` list, by type."""
    read = [ConditionState.read(item) for item in raw] if isinstance(raw, list) else []
    return {state.kind: state for state in read if state is not None}
