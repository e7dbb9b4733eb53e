"""Day 2 end to end: a real kube-apiserver, `spotpool operator` and `spotpool simulator` as
processes. A running pool's image is changed with `kubectl patch`; the pool rolls to it
surge-first under its disruption budget, and a budget of 0 holds the rollout.

What ran, when, and with which image is read from the simulator (its instances' timelines, its
call ledger and DescribeInstances), never from the operator's own account. The bounds are checked
twice: live, on every change of the object a `kubectl get --watch` delivers, and exactly, from the
simulator's timeline of every instance the pool ever had.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from spotpool.cloud.client import CvmClient
from spotpool.cloud.models import Credentials
from tests.e2e.conftest import Pools, condition, ready, status
from tests.support.kube import wait_for
from tests.support.processes import DEMO_SECRET_ID, DEMO_SECRET_KEY, OperatorProcess, SimulatorProcess

pytestmark = pytest.mark.cluster

OLD_IMAGE = "img-pmqg1cw7"  # Pools.create's image
# The default market has no image list (`images: null`): every well-formed img-xxxxxxxx exists, so
# the launch check's DryRun accepts this one as it would any image the account can use.
NEW_IMAGE = "img-0patched"
UID_TAG = "spotpool.io/environment-uid"


def ever_bought(sim: SimulatorProcess, uid: str) -> list[dict[str, Any]]:
    """Every instance of the pool since the simulator started, gone ones included."""
    return sim.instances(ever="true", tag=f"{UID_TAG}={uid}")


def purchases_since(sim: SimulatorProcess, since: float) -> list[dict[str, Any]]:
    """RunInstances calls that bought after `since` (DryRun launch checks and refusals excluded),
    one per ClientToken (a replayed purchase buys nothing new)."""
    bought: dict[str, dict[str, Any]] = {}
    for call in sim.calls("RunInstances"):
        if call["time"] >= since and call["errorCode"] is None and not call["params"].get("DryRun"):
            bought.setdefault(call["params"]["ClientToken"], call)
    return sorted(bought.values(), key=lambda c: c["time"])


def sim_time(sim: SimulatorProcess) -> float:
    """The simulator's clock, the one its timelines and call ledger are written on."""
    return float(sim.control("GET", "health")["time"])


def images_of(sim: SimulatorProcess, uid: str) -> dict[str, str]:
    """ImageId of each alive instance of the pool, as the CVM API's DescribeInstances reports it."""

    async def describe() -> dict[str, Any]:
        async with CvmClient(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY), "ap-guangzhou", sim.url) as client:
            return await client.call("DescribeInstances", {
                "Filters": [{"Name": f"tag:{UID_TAG}", "Values": [uid]}], "Offset": 0, "Limit": 100})

    answer = asyncio.run(describe())
    return {i["InstanceId"]: i["ImageId"] for i in answer["InstanceSet"]
            if i["InstanceState"] in ("PENDING", "RUNNING")}


def bounds_after(ever: list[dict[str, Any]], since: float) -> tuple[int, int]:
    """(most alive, fewest running) at any moment from `since` on, from the instances' timelines:
    alive from launch to termination, running from boot to termination. Changes at the same
    instant are applied together before the counts are read."""
    changes: dict[float, list[tuple[int, int]]] = {}
    for instance in ever:
        line = instance["timeline"]
        launched, up, gone = line["launchedAt"], line["runningAt"], line["terminatedAt"]
        changes.setdefault(launched, []).append((1, 0))
        if up is not None and (gone is None or up < gone):
            changes.setdefault(up, []).append((0, 1))
            if gone is not None:
                changes.setdefault(gone, []).append((0, -1))
        if gone is not None:
            changes.setdefault(gone, []).append((-1, 0))
    alive = running = 0
    most, fewest = 0, None
    for at in sorted(changes):
        for d_alive, d_running in changes[at]:
            alive += d_alive
            running += d_running
        if at >= since:
            most = max(most, alive)
            fewest = running if fewest is None else min(fewest, running)
    if fewest is None:  # nothing changed after `since`: the counts then held throughout
        return alive, running
    return most, fewest


@dataclass
class Sample:
    resource_version: str
    progressing: str | None
    updated: int | None
    drifted: int  # instances status lists as drifted
    alive: int  # in the simulator, at the moment the change was seen
    running: int


@dataclass
class StatusWatch:
    """`kubectl get sce --watch -o json`: on every change of the object, what status says and what
    the simulator holds at that moment."""

    pools: Pools
    name: str
    uid: str
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    thread: threading.Thread | None = None

    def start(self) -> StatusWatch:
        kubectl = self.pools.kubectl
        self.proc = subprocess.Popen(
            [str(kubectl.binary), f"--kubeconfig={kubectl.kubeconfig}", "get", "sce", self.name,
             f"--namespace={self.pools.namespace}", "--watch", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        # The watch's first object is the current one: the watch is on once it is sampled.
        wait_for(lambda: self.samples or self.errors, timeout=30, what="the watch to deliver the object")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.proc.stdout:
            buffer += line
            while buffer.strip():
                try:
                    obj, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break  # the rest of this object is still to come
                buffer = buffer.lstrip()[end:]
                try:
                    self._sample(obj)
                except Exception as err:  # reported by the test, not lost in the thread
                    self.errors.append(repr(err))

    def _sample(self, obj: dict[str, Any]) -> None:
        alive = self.pools.simulator.alive(self.uid)
        body = status(obj)
        self.samples.append(Sample(
            resource_version=obj["metadata"]["resourceVersion"],
            progressing=condition(obj, "Progressing").get("reason"),
            updated=body.get("updatedCount"),
            drifted=sum(1 for i in body.get("instances") or [] if i.get("drifted")),
            alive=len(alive),
            running=sum(1 for i in alive if i["state"] == "RUNNING"),
        ))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.thread is not None:
            self.thread.join(timeout=10)


@contextmanager
def watching(pools: Pools, name: str, uid: str) -> Iterator[StatusWatch]:
    watch = StatusWatch(pools, name, uid).start()
    try:
        yield watch
    finally:
        watch.stop()


def metric(operator: OperatorProcess, name: str, namespace: str, environment: str, **labels: str) -> float | None:
    """One series of the pool from the operator's /metrics, None when absent."""
    wanted = [f'namespace="{namespace}"', f'environment="{environment}"', *(f'{k}="{v}"' for k, v in labels.items())]
    for line in operator.metrics().splitlines():
        found = re.fullmatch(rf"{name}{{(.*)}} (\S+)", line)
        if found and all(w in found.group(1) for w in wanted):
            return float(found.group(2))
    return None


def column(pools: Pools, name: str, header: str) -> str:
    """One column of `kubectl get sce <name>`, by its header."""
    lines = pools.kubectl.run("get", "sce", name, f"--namespace={pools.namespace}").stdout.splitlines()
    headers = lines[0].split()
    return lines[1].split()[headers.index(header)]


EXPECTED, BUDGET = 6, 2


def test_a_patched_image_rolls_out_surge_first_under_a_budget_of_two(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("roll", expectedCount=EXPECTED, disruption={"budgets": [{"instances": BUDGET}]})
    obj = pools.wait_ready("roll", EXPECTED)
    assert status(obj)["updatedCount"] == EXPECTED
    uid = pools.uid("roll")
    old = set(images_of(simulator, uid))
    assert len(old) == EXPECTED and set(images_of(simulator, uid).values()) == {OLD_IMAGE}

    with watching(pools, "roll", uid) as watch:
        patched_at = sim_time(simulator)
        pools.kubectl.run("patch", "sce", "roll", f"--namespace={pools.namespace}", "--type", "merge",
                          "-p", json.dumps({"spec": {"imageId": NEW_IMAGE}}))
        obj = pools.wait(
            "roll", lambda o: o["metadata"]["generation"] == status(o).get("observedGeneration")
            and status(o).get("updatedCount") == EXPECTED and ready(o)
            and not {i["instanceId"] for i in simulator.alive(uid)} & old,
            timeout=90, what=f"{EXPECTED} up to date and none of the old instances alive")
        # The watch has seen the object as it is now.
        wait_for(lambda: any(s.resource_version == obj["metadata"]["resourceVersion"] for s in watch.samples),
                 timeout=30, what="the watch to catch up")

    assert not watch.errors, watch.errors
    after = watch.samples[1:]  # the first is the object before the patch
    assert len(after) >= 3, f"only {len(after)} changes seen: nothing to say about the rollout"
    for sample in watch.samples:
        assert sample.alive <= EXPECTED + BUDGET, f"{sample}: more alive than expectedCount + the budget"
        assert sample.running >= EXPECTED, f"{sample}: fewer running than expectedCount during the rollout"
    assert "RollingOut" in {s.progressing for s in after}, sorted({str(s.progressing) for s in after})
    assert any(s.drifted for s in after), "status never listed a drifted instance"

    # Exactly, between the samples too: the timeline of every instance the pool ever had.
    ever = ever_bought(simulator, uid)
    most, fewest = bounds_after(ever, patched_at)
    assert most <= EXPECTED + BUDGET, f"{most} alive at once after the patch"
    assert fewest >= EXPECTED, f"{fewest} running at one moment after the patch"
    # Each old instance was replaced once: six bought after the patch, at most two per call, all
    # with the new image; the six old ones released by spotpool, nothing else released.
    bought = purchases_since(simulator, patched_at)
    assert sum(c["params"]["InstanceCount"] for c in bought) == EXPECTED, bought
    assert all(c["params"]["InstanceCount"] <= BUDGET for c in bought)
    assert {c["params"]["ImageId"] for c in bought} == {NEW_IMAGE}
    assert len(ever) == 2 * EXPECTED
    gone = {i["instanceId"]: i["terminatedBy"] for i in ever if i["timeline"]["terminatedAt"] is not None}
    assert gone == dict.fromkeys(old, "user"), gone

    # What the cloud says now: six alive, all on the new image.
    now = images_of(simulator, uid)
    assert len(now) == EXPECTED and set(now.values()) == {NEW_IMAGE}, now
    assert not set(now) & old

    obj = pools.get("roll")
    assert status(obj)["updatedCount"] == EXPECTED
    assert not any(i.get("drifted") for i in status(obj)["instances"])
    assert condition(obj, "Progressing")["reason"] != "RollingOut"
    drifted = [e for e in pools.events("roll") if e["reason"] == "Drifted"]
    assert drifted, [e["reason"] for e in pools.events("roll")]
    assert "Image" in drifted[0]["message"] and "spec.disruption.budgets[0]" in drifted[0]["message"]
    assert column(pools, "roll", "UP-TO-DATE") == str(EXPECTED)
    assert metric(operator, "spotpool_disruptions_total", pools.namespace, "roll", reason="Drifted") == EXPECTED
    assert metric(operator, "spotpool_instance_releases_total", pools.namespace, "roll",
                  reason="Drifted") == EXPECTED
    assert metric(operator, "spotpool_environment_updated_instances", pools.namespace, "roll") == EXPECTED
    assert metric(operator, "spotpool_environment_drifted_instances", pools.namespace, "roll") == 0


def test_a_budget_of_zero_holds_the_rollout_until_it_is_raised(
    operator: OperatorProcess, pools: Pools, simulator: SimulatorProcess
) -> None:
    pools.create("frozen", expectedCount=3, disruption={"budgets": [{"instances": 0}]})
    pools.wait_ready("frozen", 3)
    uid = pools.uid("frozen")
    old = {i["instanceId"] for i in simulator.alive(uid)}
    patched_at = sim_time(simulator)
    pools.patch_spec("frozen", imageId=NEW_IMAGE)
    obj = pools.wait("frozen", lambda o: condition(o, "Progressing").get("reason") == "RolloutBlocked",
                     what="Progressing/RolloutBlocked")
    progressing = condition(obj, "Progressing")
    assert progressing["status"] == "False"
    assert "spec.disruption.budgets[0]" in progressing["message"], progressing["message"]
    assert status(obj)["updatedCount"] == 0
    assert "spec.disruption.budgets[0]" in status(obj)["disruption"]["blockedBy"]
    assert all(i.get("drifted") == ["Image"] for i in status(obj)["instances"]), status(obj)["instances"]
    # Three more observations of the same pool: still nothing bought, nothing released.
    listings = len(simulator.calls("DescribeInstances"))
    wait_for(lambda: len(simulator.calls("DescribeInstances")) >= listings + 3, timeout=30,
             what="three more observations")
    assert purchases_since(simulator, patched_at) == []
    alive = simulator.alive(uid)
    assert {i["instanceId"] for i in alive} == old and all(i["state"] == "RUNNING" for i in alive)
    assert ready(pools.get("frozen"))
    assert column(pools, "frozen", "UP-TO-DATE") == "0"
    blocked = [e for e in pools.events("frozen") if e["reason"] == "DisruptionBlocked"]
    assert blocked and "spec.disruption.budgets[0]" in blocked[0]["message"], [e["reason"] for e in pools.events(
        "frozen")]

    # Raised to one at a time: the rollout goes, one surge instance at a time.
    raised_at = sim_time(simulator)
    pools.patch_spec("frozen", disruption={"budgets": [{"instances": 1}]})
    pools.wait("frozen", lambda o: status(o).get("updatedCount") == 3 and ready(o)
               and not {i["instanceId"] for i in simulator.alive(uid)} & old,
               timeout=60, what="3 up to date and none of the old instances alive")
    most, fewest = bounds_after(ever_bought(simulator, uid), raised_at)
    assert (most, fewest) == (4, 3), (most, fewest)
    assert set(images_of(simulator, uid).values()) == {NEW_IMAGE}
