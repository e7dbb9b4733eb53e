"""`GET /_sim/instances`: each instance's timeline (launched, running, terminated, in the ledger's
epoch seconds) and `ever=true`, which keeps gone instances listed, so a test can order an
instance's life against the API calls after the fact."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import make_mocked_request

from spotpool.simulator.server import Simulator
from tests.unit.simulator.test_market import FakeClock, launch, small_config


class _Loopback:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


def get(sim: Simulator, path: str) -> tuple[int, Any]:
    request = make_mocked_request("GET", f"/_sim/{path}", app=sim.app, transport=_Loopback())
    response = asyncio.run(asyncio.run(sim.app.router.resolve(request)).handler(request))
    return response.status, json.loads(response.body)


def test_the_timeline_orders_launch_boot_and_termination_and_ever_keeps_gone_instances() -> None:
    clock = FakeClock()
    sim = Simulator(small_config(), clock)
    start = clock.now
    kept, gone = launch(sim.market, 2)
    clock.advance(5)  # booted 2 s after the launch
    sim.market.terminate_instances("ap-guangzhou", [gone], "req-1")
    clock.advance(10)  # gone 1 s after the termination began

    _, visible = get(sim, "instances")
    assert [i["instanceId"] for i in visible["instances"]] == [kept]
    assert visible["instances"][0]["timeline"] == {"launchedAt": start, "runningAt": start + 2, "terminatedAt": None}

    _, ever = get(sim, "instances?ever=true")
    timelines = {i["instanceId"]: i["timeline"] for i in ever["instances"]}
    assert list(timelines) == [kept, gone]
    assert timelines[gone] == {"launchedAt": start, "runningAt": start + 2, "terminatedAt": start + 5}
    _, filtered = get(sim, "instances?ever=true&state=RUNNING")
    assert [i["instanceId"] for i in filtered["instances"]] == [kept]

    status, error = get(sim, "instances?ever=yes")
    assert status == 400 and "ever" in error["error"]


def test_an_instance_that_never_boots_has_no_running_time() -> None:
    clock = FakeClock()
    sim = Simulator(small_config(lifecycle={"launch_failure_rate": 1.0}), clock)
    [iid] = launch(sim.market, 1)
    clock.advance(5)
    _, listed = get(sim, "instances")
    [instance] = listed["instances"]
    assert instance["instanceId"] == iid and instance["state"] == "LAUNCH_FAILED"
    assert instance["timeline"]["runningAt"] is None
