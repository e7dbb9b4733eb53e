"""Single flight: one computation at a time, shared by every caller that asks meanwhile.

Used wherever many pools would otherwise ask the cloud the same thing at once: the account a key
pair belongs to, the market and the quota of an account (`CachedFlight`, reused while young), and
the renewal of temporary credentials. The computation runs in its own task and every caller
awaits it through `asyncio.shield`, so a caller giving up (a daemon cancelled, a pass timed out)
never cancels it for the others. Defined once here; `controller.cloudaccess` and
`cloud.providers` build on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Flight(Generic[T]):
    """At most one computation running; `join` starts one if none runs, then awaits it."""

    def __init__(self) -> None:
        self._task: asyncio.Task[T] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, compute: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Start `compute` unless one runs; the running task either way."""
        if self._task is None:
            task: asyncio.Task[T] = asyncio.ensure_future(compute())
            self._task = task
            task.add_done_callback(self._finished)
        return self._task

    async def join(self, compute: Callable[[], Awaitable[T]]) -> T:
        return await asyncio.shield(self.start(compute))

    async def wait(self) -> None:
        """Until the running computation (if any) ends, whatever its outcome."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    def _finished(self, task: asyncio.Task[T]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # retrieved: a computation nobody awaits any more logs no warning


class CachedFlight(Generic[T]):
    """A `Flight` whose result is reused while younger than `max_age` seconds.

    `invalidate()` also disowns a computation already running: it may predate the change, so
    callers after it start a fresh one and its result is not kept.
    """

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._value: tuple[float, T] | None = None
        self._running: tuple[int, Flight[T]] | None = None
        self._generation = 0

    def invalidate(self) -> None:
        self._value = None
        self._generation += 1

    def amend(self, change: Callable[[T], T]) -> None:
        """Apply `change` to the kept value, if any, without asking again (nor restarting its age)."""
        if self._value is not None:
            self._value = (self._value[0], change(self._value[1]))

    async def get(self, compute: Callable[[], Awaitable[T]]) -> T:
        if self._value is not None and self._clock() - self._value[0] < self._max_age:
            return self._value[1]
        if self._running is None or self._running[0] != self._generation or not self._running[1].running:
            generation, started, flight = self._generation, self._clock(), Flight[T]()
            self._running = (generation, flight)
            task = flight.start(compute)

            def keep(done: asyncio.Task[T]) -> None:
                if not done.cancelled() and done.exception() is None and generation == self._generation:
                    self._value = (started, done.result())

            task.add_done_callback(keep)
            return await asyncio.shield(task)
        return await self._running[1].join(compute)
