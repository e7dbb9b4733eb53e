"""Session fixtures shared by every test tier.

`cluster` is a real control plane: etcd, kube-apiserver and kube-controller-manager built from the Go
module proxy and started on loopback for the whole session, or, when SPOTPOOL_TEST_KUBECONFIG names
a kubeconfig (kind on a laptop), that existing cluster. Tests never mock the Kubernetes API.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spotpool.api.names import CRD_NAME
from spotpool.devcluster.controlplane import ControlPlane, ensure_binaries
from tests.support.kube import Kubectl, unique_name, wait_for
from tests.support.processes import SimulatorProcess, simulator_config

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "spotpool.io_spotcomputeenvironments.yaml"


@dataclass
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    kubectl: Kubectl
    local: ControlPlane | None  # None when testing against SPOTPOOL_TEST_KUBECONFIG

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    bin_dir = ensure_binaries()
    external = os.environ.get("SPOTPOOL_TEST_KUBECONFIG")
    if external:
        path = Path(external).expanduser()
        yield Cluster(path, bin_dir, Kubectl(bin_dir / "kubectl", path), None)
        return
    with ControlPlane(binaries=bin_dir) as plane:
        yield Cluster(plane.kubeconfig, bin_dir, Kubectl(bin_dir / "kubectl", plane.kubeconfig), plane)


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> str:
    """The SpotComputeEnvironment CRD, applied server-side and Established."""
    cluster.kubectl.apply(CRD_FILE.read_text(), "--force-conflicts")
    cluster.kubectl.run("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    return CRD_NAME


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test; deleted afterwards (the controller manager finishes it)."""
    name = unique_name("t")
    cluster.kubectl.run("create", "namespace", name)
    wait_for(lambda: cluster.kubectl.get("serviceaccount", "default", name) if cluster.local else True,
             timeout=30, what=f"namespace {name} to be set up")
    yield name
    cluster.kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    """`spotpool simulator` as a process of its own, on a free port, with a quick lifecycle."""
    sim = SimulatorProcess(tmp_path / "simulator", simulator_config()).start()
    yield sim
    sim.stop()
