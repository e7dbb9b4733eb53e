"""Failpoints: SIGKILL this process at a named point, for crash-safety tests (as etcd's gofail).

`SPOTPOOL_FAILPOINTS="before-run-instances:3,status-write"` kills the process the 3rd time it reaches
`before-run-instances`, or the 1st time it reaches `status-write`. `NAME@SECONDS` instead arms a
SIGKILL that fires SECONDS after the point is reached, to die while a request is on the wire. Unset
in production, each check costs one dict lookup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger(__name__)


def _parse(spec: str) -> dict[str, tuple[int, float | None]]:
    points: dict[str, tuple[int, float | None]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        name, _, delay = name.partition("@")
        points[name] = (int(count or 1), float(delay) if delay else None)
    return points


_ARMED = _parse(os.environ.get("SPOTPOOL_FAILPOINTS", ""))
_HITS: dict[str, int] = {}


def failpoint(name: str) -> None:
    if name not in _ARMED:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    count, delay = _ARMED[name]
    if _HITS[name] != count:
        return
    if delay is None:
        _die(name)
    else:
        asyncio.get_running_loop().call_later(delay, _die, name)


def _die(name: str) -> None:
    log.warning("failpoint %s reached: SIGKILL", name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
