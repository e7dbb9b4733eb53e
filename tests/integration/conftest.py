"""Fixtures serving the CVM simulator on a loopback port.

`simulator` runs in the test's event loop (for async clients such as spotpool's own);
`threaded_simulator` runs in a background thread, for synchronous clients such as Tencent's
official SDK or httpx driven by hypothesis.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from spotpool.simulator import RunningSimulator, SimulatorConfig, run_simulator
from tests.support.specs import simulator_config


def fast_config(**changes: Any) -> SimulatorConfig:
    """The default market with quick lifecycles and a fixed seed, plus `changes` (deep-merged)."""
    base = simulator_config(seed=1234, lifecycle={"boot_delay_seconds": 0.2, "terminate_delay_seconds": 0.2})
    return base.with_overrides(changes) if changes else base


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    """A fresh simulator (default market, 0.2 s boot and terminate delays) on a free port."""
    async with run_simulator(fast_config()) as running:
        yield running


@contextmanager
def serve_in_thread(
    config: SimulatorConfig, clock: Callable[[], float] | None = None
) -> Iterator[RunningSimulator]:
    """Run a simulator in its own event loop on a daemon thread until the block exits."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        box["loop"] = asyncio.get_running_loop()
        kwargs = {} if clock is None else {"clock": clock}
        try:
            async with run_simulator(config, **kwargs) as running:
                box["running"] = running
                ready.set()
                await stop.wait()
        finally:
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(timeout=10) or "running" not in box:
        raise RuntimeError("the simulator thread did not start")
    try:
        yield box["running"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=10)


@pytest.fixture(name="fast_config")
def fast_config_fixture() -> Callable[..., SimulatorConfig]:
    """`fast_config(**changes)`: the fixture's market with deep-merged changes."""
    return fast_config


@pytest.fixture(name="serve_in_thread")
def serve_in_thread_fixture() -> Callable[..., Any]:
    """`serve_in_thread(config, clock=None)`: a context manager serving from a thread."""
    return serve_in_thread


@pytest.fixture
def threaded_simulator() -> Iterator[RunningSimulator]:
    """Like `simulator`, but serving from a background thread for synchronous clients."""
    with serve_in_thread(fast_config()) as running:
        yield running
