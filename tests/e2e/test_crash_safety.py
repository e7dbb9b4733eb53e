"""SIGKILL the operator at five moments of a 0→50 scale-up (and a scale-down), restart it, and check
that it ends with exactly the expected count, never buying past it, and that delete leaves nothing.

The kills come from failpoints (SPOTPOOL_FAILPOINTS, see spotpool.controller.failpoints): the real
process SIGKILLs itself at an exact point, which no external timing could hit reliably.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Pools
from tests.support.kube import wait_for
from tests.support.processes import OperatorProcess, SimulatorProcess

pytestmark = pytest.mark.cluster

EXPECTED = 50

SCALE_UP_KILLS = {
    # After the launch was recorded with its client token, before RunInstances is sent.
    "before a RunInstances call": ("before-run-instances:2", None),
    # 0.3 s into a RunInstances call the server takes 1 s to answer: dies with the request on the wire.
    "while a RunInstances call is in flight": ("run-instances-in-flight@0.3:2", {"RunInstances": {"latencyMs": 1000}}),
    # RunInstances returned its ids; they were never recorded anywhere.
    "right after RunInstances returns": ("after-run-instances:2", None),
    # Instances bought and observed, the status write with the results never happens.
    "in the middle of the status write": ("status-write:1", None),
}


def _died_of_sigkill(operator: OperatorProcess) -> bool:
    assert operator.proc is not None
    code = operator.proc.poll()
    return code is not None and code == -9


def _owned_terminations(simulator: SimulatorProcess, owner: set[str]) -> set[str]:
    return {i for call in simulator.calls("TerminateInstances") for i in call["params"].get("InstanceIds", [])
            if i in owner}


@pytest.mark.parametrize("moment", list(SCALE_UP_KILLS), ids=[m.replace(" ", "-") for m in SCALE_UP_KILLS])
def test_killed_during_scale_up_ends_with_exactly_the_expected_count(
    moment: str, operator_factory, pools: Pools, simulator: SimulatorProcess
) -> None:
    failpoints, faults = SCALE_UP_KILLS[moment]
    if faults:
        simulator.control("POST", "faults", faults)
    doomed = operator_factory(env={"SPOTPOOL_FAILPOINTS": failpoints})
    pools.create("crash", expectedCount=EXPECTED, allocationStrategy="Diversified")
    wait_for(lambda: _died_of_sigkill(doomed), timeout=60, what=f"the operator to die {moment}")
    assert f"failpoint {failpoints.split(':')[0].split('@')[0]} reached" in doomed.logs()
    uid = pools.uid("crash")
    simulator.control("DELETE", "faults")

    operator_factory()  # a fresh process, no failpoints: it must pick up where the dead one was

    def exactly_expected() -> bool:
        alive = simulator.alive(uid)
        assert len(alive) <= EXPECTED, f"{len(alive)} alive after restart: bought past expectedCount"
        return len(alive) == EXPECTED

    wait_for(exactly_expected, timeout=90, what=f"{EXPECTED} alive after the restart")
    pools.wait_ready("crash", EXPECTED, timeout=60)
    owned = {i["instanceId"] for i in simulator.instances() if i["tags"].get("spotpool.io/environment-uid") == uid}
    # Had it bought one too many at any moment, it would have had to release some since.
    assert _owned_terminations(simulator, owned) == set()
    assert len(owned) == EXPECTED

    pools.delete("crash", timeout=90)
    assert simulator.alive(uid) == []


def test_killed_during_scale_down_ends_with_exactly_the_expected_count(
    operator_factory, pools: Pools, simulator: SimulatorProcess
) -> None:
    doomed = operator_factory(env={"SPOTPOOL_FAILPOINTS": "after-terminate-instances:1"})
    pools.create("shrink", expectedCount=EXPECTED, allocationStrategy="Diversified")
    pools.wait_ready("shrink", EXPECTED, timeout=90)
    uid = pools.uid("shrink")
    pools.scale("shrink", 20)
    wait_for(lambda: _died_of_sigkill(doomed), timeout=60, what="the operator to die mid scale-down")

    operator_factory()
    wait_for(lambda: len(simulator.alive(uid)) == 20, timeout=60, what="20 alive after the restart")
    pools.wait_ready("shrink", 20, timeout=60)
    assert len(simulator.alive(uid)) == 20
    launches_after = len(simulator.calls("RunInstances"))
    pools.wait("shrink", lambda o: (o.get("status") or {}).get("currentCount") == 20, what="settled")
    assert len(simulator.calls("RunInstances")) == launches_after  # nothing re-bought after the cut

    pools.delete("shrink", timeout=90)
    assert simulator.alive(uid) == []
