"""Fixtures for the tests that run spotpool's own pods on a real node.

`node_cluster` is a control plane that advertises the node network's gateway, with a scheduler and
the workload controllers, plus one real node (containerd + runc, kubelet, kube-proxy, CoreDNS; see
spotpool.devcluster.node). `operator_image` is the image tools/build-image.sh builds from
deploy/Dockerfile, loaded into the node's runtime under the chart's default name, as
`kind load image-archive` does, so the chart and deploy/ install with their default image.

Nothing here skips: a machine that cannot run a node (no root, no runc, no binaries) fails these
tests with what is missing, because a chart that was never started is not known to work.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from spotpool.devcluster.controlplane import ControlPlane, ensure_binaries
from spotpool.devcluster.node import Node, NodeNetwork
from tests.chart.helm import CHART, Helm
from tests.conftest import REPO
from tests.support.kube import Kubectl

NETWORK = NodeNetwork()


@dataclass(frozen=True)
class OperatorImage:
    """The built image: its local tag, the chart's default reference for it, and its archive."""

    tag: str
    chart_reference: str
    archive: Path
    size_bytes: int


@dataclass
class NodeCluster:
    plane: ControlPlane
    node: Node
    kubectl: Kubectl
    helm: Helm


def chart_image_reference() -> str:
    """The image the chart (and deploy/, rendered from it) runs by default."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"


@pytest.fixture(scope="session")
def operator_image() -> OperatorImage:
    """Build the operator image from deploy/Dockerfile (tools/build-image.sh) and the pause image."""
    proc = subprocess.run([str(REPO / "tools" / "build-image.sh")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"tools/build-image.sh failed:\n{proc.stderr[-5000:]}"
    tag = proc.stdout.strip().splitlines()[-1]
    pause = subprocess.run([str(REPO / "tools" / "build-pause-image.sh")], capture_output=True, text=True,
                           timeout=300)
    assert pause.returncode == 0, f"tools/build-pause-image.sh failed:\n{pause.stderr[-3000:]}"
    size = subprocess.run(["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "image", "inspect",
                           "--format", "{{.Size}}", tag], capture_output=True, text=True, check=True)
    return OperatorImage(tag, chart_image_reference(), REPO / ".cache" / "image" / "spotpool.oci.tar",
                         int(size.stdout.strip()))


# Package scope: the node (kubelet, containerd, a second control plane) stops once these tests are
# done instead of idling through the rest of the suite.
@pytest.fixture(scope="package")
def node_cluster(operator_image: OperatorImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    bin_dir = ensure_binaries()
    with ControlPlane(binaries=bin_dir, advertise_address=NETWORK.gateway) as plane:
        with Node(plane, bin_dir, tmp_path_factory.mktemp("node"), network=NETWORK,
                  pause_archive=REPO / ".cache" / "image" / "pause.oci.tar") as node:
            node.load_image(operator_image.archive, operator_image.tag, operator_image.chart_reference)
            yield NodeCluster(plane, node, Kubectl(bin_dir / "kubectl", plane.kubeconfig),
                              Helm(bin_dir / "helm", tmp_path_factory.mktemp("helm-home"), plane.kubeconfig))
