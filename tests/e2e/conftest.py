"""End-to-end fixtures: a real kube-apiserver (session), the simulator and the operator as processes.

Each test gets its own namespace, simulator and operator (watching only that namespace, with its own
cluster id), so tests cannot see each other's pools or instances.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.support.kube import Kubectl, unique_name, wait_for
from tests.support.processes import (
    DEMO_SECRET_ID,
    DEMO_SECRET_KEY,
    OperatorProcess,
    SimulatorProcess,
)
from tests.support.specs import pool_spec

pytestmark = pytest.mark.cluster


@dataclass
class Pools:
    """SpotComputeEnvironment objects of one test namespace, through the real kubectl."""

    kubectl: Kubectl
    namespace: str
    simulator: SimulatorProcess
    created: list[str] = field(default_factory=list)

    def secret(self, name: str = "cvm", secret_id: str = DEMO_SECRET_ID, secret_key: str = DEMO_SECRET_KEY) -> str:
        manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": self.namespace},
                    "stringData": {"secretId": secret_id, "secretKey": secret_key}}
        self.kubectl.apply(json.dumps(manifest))
        return name

    def create(self, name: str, *, secret: str = "cvm", **spec: Any) -> dict[str, Any]:
        # A change to None leaves the field out.
        body = pool_spec(**{"credentialsSecretRef": {"name": secret}, "endpoint": self.simulator.url, **spec})
        manifest = {"apiVersion": "spotpool.io/v1alpha1", "kind": "SpotComputeEnvironment",
                    "metadata": {"name": name, "namespace": self.namespace}, "spec": body}
        self.kubectl.apply(json.dumps(manifest))
        self.created.append(name)
        return self.get(name)

    def get(self, name: str) -> dict[str, Any]:
        obj = self.kubectl.get("sce", name, self.namespace)
        assert obj is not None, f"{self.namespace}/{name} does not exist"
        return obj

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.kubectl.run("patch", "sce", name, f"--namespace={self.namespace}", "--type=merge",
                         "-p", json.dumps({"spec": spec}))

    def scale(self, name: str, replicas: int) -> None:
        self.kubectl.run("scale", f"sce/{name}", f"--replicas={replicas}", f"--namespace={self.namespace}")

    def wait(self, name: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60,
             what: str = "status") -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.kubectl.get("sce", name, self.namespace)
            return obj if obj is not None and predicate(obj) else None

        return wait_for(check, timeout=timeout, what=f"{self.namespace}/{name}: {what}")

    def wait_ready(self, name: str, count: int, timeout: float = 60) -> dict[str, Any]:
        return self.wait(name, lambda o: ready(o) and status(o).get("runningCount") == count
                         and status(o).get("currentCount") == count, timeout=timeout,
                         what=f"Ready with {count} running")

    def uid(self, name: str) -> str:
        return self.get(name)["metadata"]["uid"]

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.kubectl.json("get", "events", f"--namespace={self.namespace}",
                                  f"--field-selector=involvedObject.name={name}")["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def delete(self, name: str, timeout: float = 60) -> None:
        self.kubectl.run("delete", "sce", name, f"--namespace={self.namespace}", "--wait=false")
        wait_for(lambda: self.kubectl.get("sce", name, self.namespace) is None, timeout=timeout,
                 what=f"{self.namespace}/{name} to be deleted")


def status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status(obj).get("conditions") or [] if c["type"] == kind), {})


def ready(obj: dict[str, Any]) -> bool:
    return condition(obj, "Ready").get("status") == "True"


@pytest.fixture
def operator_factory(
    cluster: Cluster, crd: str, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []
    cluster_id = unique_name("cluster")  # one installation per test: restarts keep the same id

    def start(*, namespace_: str | None = None, kubeconfig: Path | None = None, **kwargs: Any) -> OperatorProcess:
        proc = OperatorProcess(
            workdir=tmp_path / f"operator-{len(started)}",
            kubeconfig=kubeconfig or cluster.kubeconfig,
            namespace=namespace_ or namespace,
            cluster_id=cluster_id,
            **kwargs,
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def operator(operator_factory: Callable[..., OperatorProcess]) -> OperatorProcess:
    return operator_factory()


@pytest.fixture
def pools(cluster: Cluster, namespace: str, simulator: SimulatorProcess) -> Iterator[Pools]:
    helper = Pools(cluster.kubectl, namespace, simulator)
    helper.secret()
    yield helper
    # Objects the test left behind keep our finalizer; with the operator gone they would pin the
    # namespace forever, so strip it (their instances die with the test's simulator anyway).
    for name in helper.created:
        cluster.kubectl.run("patch", "sce", name, f"--namespace={namespace}", "--type=merge",
                            "-p", '{"metadata":{"finalizers":[]}}', check=False)
