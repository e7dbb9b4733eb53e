"""`CachedFlight`: one computation at a time shared by every concurrent caller, a value reused
while younger than `max_age` (on an injected clock), `invalidate`, and errors that reach every
waiter without being cached."""

from __future__ import annotations

import asyncio

import pytest

from spotpool.flight import CachedFlight, Flight


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Computation:
    """A compute function that counts its calls and, when gated, waits until released."""

    def __init__(self, *, gated: bool = False, fail_with: BaseException | None = None) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.started = asyncio.Event()
        self.fail_with = fail_with

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return f"value-{self.calls}"


async def test_concurrent_callers_share_one_computation() -> None:
    flight: CachedFlight[str] = CachedFlight(max_age=10, clock=FakeClock())
    compute = Computation(gated=True)
    callers = [asyncio.create_task(flight.get(compute)) for _ in range(5)]
    await compute.started.wait()
    await asyncio.sleep(0)  # every caller has reached the flight by now
    assert compute.calls == 1
    compute.gate.set()
    assert await asyncio.gather(*callers) == ["value-1"] * 5
    assert compute.calls == 1


async def test_a_caller_arriving_while_the_computation_runs_waits_for_it() -> None:
    flight: CachedFlight[str] = CachedFlight(max_age=10, clock=FakeClock())
    compute = Computation(gated=True)
    first = asyncio.create_task(flight.get(compute))
    await compute.started.wait()
    late = asyncio.create_task(flight.get(compute))
    await asyncio.sleep(0)
    assert not late.done()
    compute.gate.set()
    assert await first == await late == "value-1"
    assert compute.calls == 1


async def test_value_is_reused_while_younger_than_max_age_then_recomputed() -> None:
    clock = FakeClock(100.0)
    flight: CachedFlight[str] = CachedFlight(max_age=10, clock=clock)
    compute = Computation()
    assert await flight.get(compute) == "value-1"
    clock.now = 109.999
    assert await flight.get(compute) == "value-1"
    assert compute.calls == 1
    clock.now = 110.0  # exactly max_age old: stale
    assert await flight.get(compute) == "value-2"
    clock.now = 119.0
    assert await flight.get(compute) == "value-2"
    assert compute.calls == 2


async def test_age_counts_from_when_the_computation_started() -> None:
    """A slow read is as old as the moment it began, not the moment it ended."""
    clock = FakeClock(100.0)
    flight: CachedFlight[str] = CachedFlight(max_age=10, clock=clock)

    async def slow() -> str:
        clock.now += 8  # the read takes 8 s
        return "slow"

    assert await flight.get(slow) == "slow"
    clock.now = 109.0  # 9 s after it started, 1 s after it ended
    assert await flight.get(Computation()) == "slow"
    clock.now = 110.0  # 10 s after it started
    assert await flight.get(Computation()) == "value-1"


async def test_invalidate_forces_a_fresh_computation() -> None:
    flight: CachedFlight[str] = CachedFlight(max_age=3600, clock=FakeClock())
    compute = Computation()
    assert await flight.get(compute) == "value-1"
    assert await flight.get(compute) == "value-1"
    flight.invalidate()
    assert await flight.get(compute) == "value-2"
    assert await flight.get(compute) == "value-2"
    assert compute.calls == 2


async def test_an_exception_reaches_every_waiter_and_is_not_cached() -> None:
    flight: CachedFlight[str] = CachedFlight(max_age=3600, clock=FakeClock())
    boom = RuntimeError("listing failed")
    failing = Computation(gated=True, fail_with=boom)
    callers = [asyncio.create_task(flight.get(failing)) for _ in range(4)]
    await failing.started.wait()
    await asyncio.sleep(0)
    failing.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert results == [boom] * 4
    assert failing.calls == 1

    # Not cached: the next caller computes again, and its success is then cached.
    healthy = Computation()
    assert await flight.get(healthy) == "value-1"
    assert await flight.get(healthy) == "value-1"
    assert healthy.calls == 1


async def test_a_failure_does_not_evict_an_earlier_computation_in_flight_for_later_callers() -> None:
    """After a failed flight ends, a new caller starts a new flight (no stale future is awaited)."""
    flight: CachedFlight[str] = CachedFlight(max_age=3600, clock=FakeClock())
    with pytest.raises(ValueError):
        await flight.get(Computation(fail_with=ValueError("x")))
    compute = Computation(gated=True)
    task = asyncio.create_task(flight.get(compute))
    await compute.started.wait()
    compute.gate.set()
    assert await asyncio.wait_for(task, timeout=5) == "value-1"


async def test_a_cancelled_waiter_does_not_cancel_the_shared_computation() -> None:
    flight: CachedFlight[str] = CachedFlight(max_age=3600, clock=FakeClock())
    compute = Computation(gated=True)
    leader = asyncio.create_task(flight.get(compute))
    await compute.started.wait()
    quitter = asyncio.create_task(flight.get(compute))
    stayer = asyncio.create_task(flight.get(compute))
    await asyncio.sleep(0)
    quitter.cancel()
    await asyncio.sleep(0)
    compute.gate.set()
    assert await leader == await stayer == "value-1"
    assert quitter.cancelled()
    assert compute.calls == 1


async def test_cancelling_the_caller_that_runs_the_computation_does_not_cancel_the_others() -> None:
    flight: CachedFlight[str] = CachedFlight(max_age=3600, clock=FakeClock())
    compute = Computation(gated=True)
    leader = asyncio.create_task(flight.get(compute))
    await compute.started.wait()
    follower = asyncio.create_task(flight.get(compute))
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    compute.gate.set()
    assert await asyncio.wait_for(follower, timeout=5) in ("value-1", "value-2")


async def test_invalidate_during_a_computation_makes_later_callers_compute_afresh() -> None:
    flight: CachedFlight[str] = CachedFlight(max_age=3600, clock=FakeClock())
    before = Computation(gated=True)
    early = asyncio.create_task(flight.get(before))
    await before.started.wait()
    flight.invalidate()  # e.g. instances were just bought
    after = Computation()
    late = asyncio.create_task(flight.get(after))
    await asyncio.sleep(0)
    before.gate.set()
    assert await early == "value-1"
    assert await late == "value-1" and after.calls == 1  # the fresh read, not the early one
    probe = Computation()
    assert await flight.get(probe) == "value-1" and probe.calls == 0  # the fresh read is cached


async def test_a_flight_runs_once_for_concurrent_callers_and_survives_a_cancelled_one() -> None:
    calls = 0
    gate = asyncio.Event()

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "answer"

    flight: Flight[str] = Flight()
    first = asyncio.ensure_future(flight.join(compute))
    second = asyncio.ensure_future(flight.join(compute))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == "answer" and calls == 1 and not flight.running
    assert await flight.join(compute) == "answer" and calls == 2
