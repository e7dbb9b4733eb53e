"""Fencing: a write or a spending call lands only in the leadership term its pass began in.

A check before a call is not enough on its own: between the check and the call a pass may wait
(the client's rate limiter, a retry's backoff, a paused process), and the term may end meanwhile.
So the fence is handed down to the CVM client, which checks it again right before it signs each
attempt, and bounds each attempt by the time the term has left (`remaining`). A leader's renew
deadline is shorter than the lease followers wait out, so an attempt sent in time lands before a
new leader can act (docs/high-availability.md).
"""

from __future__ import annotations

from typing import Protocol


class NotLeader(Exception):
    """This replica stopped leading during a pass: the pass ends before its next write or call."""


class Leadership(Protocol):
    """What passes ask of leader election (`leadership.LeaderElector` or `Standalone`)."""

    term: int

    def is_leader(self, term: int | None = None) -> bool: ...

    def remaining(self) -> float: ...


class Fence:
    """The term a pass began in. Calling it (or `check`) raises `NotLeader` once that term is
    over; `remaining()` is how long the term may still act (None: no leader election)."""

    def __init__(self, leadership: Leadership | None) -> None:
        self._leadership = leadership
        self.term: int | None = leadership.term if leadership is not None else None

    def __call__(self) -> None:
        self.check()

    def check(self) -> None:
        if self._leadership is not None and not self._leadership.is_leader(self.term):
            raise NotLeader("not the leader: another replica acts")

    def remaining(self) -> float | None:
        """Asked right after `check`, so it does not ask whether the term still holds: the
        elector's remaining time is 0 once it stops leading."""
        if self._leadership is None:
            return None
        return self._leadership.remaining()

