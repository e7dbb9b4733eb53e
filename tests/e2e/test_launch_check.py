"""The launch check end to end: `kubectl apply` a pool whose image does not exist, and the operator
reports it (Degraded/InvalidConfig naming spec.imageId) having sent only RunInstances DryRun;
fixing the image fills the pool."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Pools, condition, status
from tests.support.processes import OperatorProcess, SimulatorProcess

pytestmark = pytest.mark.cluster

GOOD_IMAGE, MISSING_IMAGE = "img-pmqg1cw7", "img-0000dead"


def test_a_missing_image_is_invalid_config_before_anything_is_bought_and_fixing_it_fills_the_pool(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    simulator.control("POST", "market", {"images": [GOOD_IMAGE]})
    pools.create("imaged", expectedCount=3, imageId=MISSING_IMAGE)
    obj = pools.wait("imaged", lambda o: condition(o, "Degraded").get("reason") == "InvalidConfig",
                     what="Degraded/InvalidConfig")
    message = condition(obj, "Degraded")["message"]
    assert f"spec.imageId: RunInstances DryRun refused {MISSING_IMAGE}: InvalidImageId.NotFound" in message, message
    assert condition(obj, "Ready")["status"] == "False"
    assert "validatedLaunchSpec" not in status(obj)
    calls = simulator.calls("RunInstances")
    assert len(calls) == 3, "2 zones + 2 instance types - 1 checks"
    assert all(c["params"].get("DryRun") is True for c in calls), "a RunInstances without DryRun"
    assert simulator.alive(pools.uid("imaged")) == []
    assert any(e["reason"] == "InvalidConfig" and e["type"] == "Warning" for e in pools.events("imaged"))

    pools.patch_spec("imaged", imageId=GOOD_IMAGE)
    obj = pools.wait_ready("imaged", 3)
    assert condition(obj, "Degraded")["status"] == "False"
    assert len(status(obj)["validatedLaunchSpec"]) == 32
    bought = [c for c in simulator.calls("RunInstances") if not c["params"].get("DryRun")]
    assert bought and {c["params"]["ImageId"] for c in bought} == {GOOD_IMAGE}
