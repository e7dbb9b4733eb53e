"""The chart's RBAC is enough as well as least: the real `spotpool operator`, started with the
command line of the Deployment the chart installed and authenticated as the chart's ServiceAccount
(a TokenRequest token), converges a pool bought from the CVM simulator without a single Forbidden.

Limited-namespace mode only: a cluster-wide operator on this shared control plane would adopt the
other tests' SpotComputeEnvironments. Cluster-wide grants the same rules through a ClusterRole, which
test_chart_cluster.py checks with `kubectl auth can-i`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spotpool.devcluster.controlplane import free_port
from tests.chart.helm import Releases
from tests.conftest import Cluster
from tests.support.kube import token_kubeconfig, unique_name, wait_for
from tests.support.processes import DEMO_SECRET_ID, DEMO_SECRET_KEY, SimulatorProcess, simulator_config

pytestmark = pytest.mark.cluster


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path / "simulator", simulator_config()).start()
    yield sim
    sim.stop()


class Operator:
    """`spotpool operator` with the given arguments and kubeconfig, as a process of its own."""

    def __init__(self, args: list[str], kubeconfig: Path, log: Path) -> None:
        self.log = log
        self.port = free_port()
        # The chart's command line, but on a free loopback port instead of the Pod's 8080.
        args = [a for a in args if not a.startswith("--metrics-port=")]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spotpool", "operator", *args, "--metrics-host=127.0.0.1",
                 f"--metrics-port={self.port}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def test_operator_converges_a_pool_with_only_the_charts_permissions(
    cluster: Cluster, crd: str, releases: Releases, namespace: str, extra_namespaces: list[str],
    simulator: SimulatorProcess, tmp_path: Path,
) -> None:
    kubectl = cluster.kubectl
    pools = extra_namespaces[0]
    name, _ = releases.install(namespace, "--set", "crds.install=false", "--set", f"rbac.namespaces={{{pools}}}",
                               "--set", f"operator.clusterId={unique_name('chart')}", "--set", "operator.logLevel=debug",
                               "--set-json", "operator.observeInterval=2", "--set-json", "operator.progressInterval=0.5")
    deployment = kubectl.get("deployment", f"{name}-spotpool", namespace)
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    token = kubectl.run("create", "token", account, f"--namespace={namespace}", "--duration=1h").stdout.strip()
    kubeconfig = token_kubeconfig(cluster.kubeconfig, token, pools, tmp_path / "operator.kubeconfig")

    kubectl.apply(json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tencentcloud-credentials", "namespace": pools},
        "stringData": {"secretId": DEMO_SECRET_ID, "secretKey": DEMO_SECRET_KEY},
    }))
    kubectl.apply(json.dumps({
        "apiVersion": "spotpool.io/v1alpha1", "kind": "SpotComputeEnvironment",
        "metadata": {"name": "chart-pool", "namespace": pools},
        "spec": {"expectedCount": 2, "maxPrice": "0.0923", "region": "ap-guangzhou", "zones": ["ap-guangzhou-3"],
                 "instanceTypes": ["S5.MEDIUM4"], "imageId": "img-pmqg1cw7",
                 "credentialsSecretRef": {"name": "tencentcloud-credentials"}, "endpoint": simulator.url},
    }))

    operator = Operator(args, kubeconfig, tmp_path / "operator.log")
    try:
        wait_for(operator.ready, timeout=60, what="the operator to report /readyz")

        def converged() -> bool:
            obj = kubectl.get("sce", "chart-pool", pools) or {}
            conditions = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}
            return conditions.get("Ready") == "True" and obj["status"].get("runningCount") == 2

        wait_for(converged, timeout=120, what="chart-pool to be Ready with 2 running instances")
        events = kubectl.json("get", "events", f"--namespace={pools}",
                              "--field-selector=involvedObject.name=chart-pool")["items"]
        assert events, "the operator posted no Event"

        # Deleting releases the instances and lets the finalizer go: patch and status writes work.
        kubectl.run("delete", "sce", "chart-pool", f"--namespace={pools}", "--wait=false")
        wait_for(lambda: kubectl.get("sce", "chart-pool", pools) is None, timeout=120,
                 what="chart-pool to be deleted by the operator")
        logs = operator.logs()
        assert "Forbidden" not in logs and " 403" not in logs, logs[-3000:]
    finally:
        operator.stop()
        kubectl.run("patch", "sce", "chart-pool", f"--namespace={pools}", "--type=merge",
                    "-p", '{"metadata":{"finalizers":[]}}', check=False)
