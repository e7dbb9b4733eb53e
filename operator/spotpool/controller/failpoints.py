"""Failpoints: make this process fail at a named point, for crash-safety tests (as etcd's gofail).

Two ways to arm them:
- `SPOTPOOL_FAILPOINTS="before-run-instances:3,status-write"` (end-to-end tests) SIGKILLs the
  process the 3rd time it reaches `before-run-instances`, or the 1st time it reaches
  `status-write`. `NAME@SECONDS` instead arms a SIGKILL that fires SECONDS after the point is
  reached, to die while a request is on the wire.
- `arm(NAME, raise_=exc)` (in-process tests) raises `exc` there instead: the test then throws the
  reconciler away and builds a new one from what was persisted, which is what a restart does.
Unarmed, each check costs one dict lookup.

The points, in the order a pass reaches them: `journal-write` (before the launch records are
written), `before-run-instances`, `run-instances-in-flight` (the same moment, for timed kills),
`after-run-instances`, `after-terminate-instances`, `status-write`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass

log = logging.getLogger(__name__)

POINTS = (
    "journal-write",
    "before-run-instances",
    "run-instances-in-flight",
    "after-run-instances",
    "after-terminate-instances",
    "status-write",
)


@dataclass
class _Armed:
    count: int
    delay: float | None = None
    raise_: BaseException | None = None


def _parse(spec: str) -> dict[str, _Armed]:
    points: dict[str, _Armed] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        name, _, delay = name.partition("@")
        points[name] = _Armed(int(count or 1), float(delay) if delay else None)
    return points


_ARMED = _parse(os.environ.get("SPOTPOOL_FAILPOINTS", ""))
_HITS: dict[str, int] = {}


def arm(name: str, *, raise_: BaseException, count: int = 1) -> None:
    """Raise `raise_` the `count`-th time `name` is reached from now on (in-process tests)."""
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(POINTS)}")
    _ARMED[name] = _Armed(count, raise_=raise_)
    _HITS.pop(name, None)


def disarm() -> None:
    _ARMED.clear()
    _HITS.clear()


def failpoint(name: str) -> None:
    armed = _ARMED.get(name)
    if armed is None:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] != armed.count:
        return
    if armed.raise_ is not None:
        del _ARMED[name]
        raise armed.raise_
    if armed.delay is None:
        _die(name)
    else:
        asyncio.get_running_loop().call_later(armed.delay, _die, name)


def _die(name: str) -> None:
    log.warning("failpoint %s reached: SIGKILL", name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
