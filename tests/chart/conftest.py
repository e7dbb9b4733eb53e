"""Fixtures for the chart, manifest and dashboard tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spotpool.devcluster.controlplane import ensure_binaries
from tests.chart.helm import Helm, Releases
from tests.conftest import Cluster
from tests.support.kube import unique_name


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    return ensure_binaries()


@pytest.fixture(scope="session")
def helm(bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm for rendering and linting: no cluster."""
    return Helm(bin_dir / "helm", tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def cluster_helm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm bound to the test control plane's kubeconfig."""
    return Helm(cluster.helm, tmp_path_factory.mktemp("helm-home"), cluster.kubeconfig)


@pytest.fixture
def extra_namespaces(cluster: Cluster) -> Iterator[list[str]]:
    """Two more fresh namespaces (for limited-namespace RBAC); deleted afterwards."""
    names = [unique_name("t"), unique_name("t")]
    for name in names:
        cluster.kubectl.run("create", "namespace", name)
    yield names
    for name in names:
        cluster.kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def releases(cluster_helm: Helm) -> Iterator[Releases]:
    releases = Releases(cluster_helm)
    yield releases
    releases.uninstall_all()


@pytest.fixture
def leases(cluster: Cluster) -> Iterator[list[tuple[str, str]]]:
    """(namespace, name) of Leases a test's operators or electors create outside the test's namespaces
    (kube-system, by default): deleted afterwards, since no namespace deletion takes them along."""
    made: list[tuple[str, str]] = []
    yield made
    for namespace, name in made:
        cluster.kubectl.run("delete", "lease", name, f"--namespace={namespace}", "--ignore-not-found", check=False)
