"""The plain manifests for users without Helm (`kubectl apply -k deploy/`): rendered from the chart by
tools/render-manifests.sh, built by the real kubectl's kustomize, accepted by the real apiserver."""

from __future__ import annotations

import filecmp
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, Cluster

MANIFESTS = REPO / "deploy" / "manifests"
NAMESPACE = "spotpool-system"


def test_committed_manifests_are_the_rendered_chart(bin_dir: Path, tmp_path: Path) -> None:
    subprocess.run([str(REPO / "tools" / "render-manifests.sh"), str(tmp_path)], check=True,
                   env={**os.environ, "HELM": str(bin_dir / "helm")})
    committed = sorted(p.name for p in MANIFESTS.iterdir())
    assert committed == sorted(p.name for p in tmp_path.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(MANIFESTS, tmp_path, committed, shallow=False)
    assert not mismatch and not errors, f"deploy/manifests is stale ({mismatch}): run tools/render-manifests.sh"


def _kustomize(bin_dir: Path) -> list[dict]:
    proc = subprocess.run([str(bin_dir / "kubectl"), "kustomize", str(REPO / "deploy")],
                          capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def test_kustomize_builds_the_whole_install(bin_dir: Path) -> None:
    objects = _kustomize(bin_dir)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRole",
                            "ClusterRole",  # the metrics reader, for you to bind to your Prometheus
                            "ClusterRoleBinding", "ClusterRoleBinding", "Service", "Deployment", "ConfigMap",
                            "Role", "RoleBinding", "PodDisruptionBudget", "NetworkPolicy"])
    source = yaml.safe_load((REPO / "crds" / "spotpool.io_spotcomputeenvironments.yaml").read_text())
    (crd,) = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert crd["spec"] == source["spec"]
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] in {"ServiceAccount", "Service", "Deployment", "ConfigMap", "PodDisruptionBudget"}:
            assert obj["metadata"]["namespace"] == NAMESPACE
        if obj["kind"] in {"Role", "RoleBinding"}:  # the leader-election Lease's, shared by installations
            assert obj["metadata"]["namespace"] == "kube-system"
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "spotpool", "namespace": NAMESPACE}]


@pytest.fixture
def install_namespace(cluster: Cluster) -> Iterator[str]:
    """spotpool-system must exist for a server-side dry run of namespaced objects in it (a dry-run
    Namespace is not persisted). Created only if missing, and then deleted again."""
    created = cluster.kubectl.get("namespace", NAMESPACE) is None
    if created:
        cluster.kubectl.run("create", "namespace", NAMESPACE)
    yield NAMESPACE
    if created:
        cluster.kubectl.run("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.mark.cluster
def test_apply_k_is_accepted_by_the_apiserver(cluster: Cluster, crd: str, install_namespace: str) -> None:
    proc = cluster.kubectl.run("apply", "-k", str(REPO / "deploy"), "--dry-run=server")
    for line in ("namespace/spotpool-system", f"customresourcedefinition.apiextensions.k8s.io/{crd}",
                 "deployment.apps/spotpool", "service/spotpool", "serviceaccount/spotpool",
                 "clusterrole.rbac.authorization.k8s.io/spotpool",
                 "clusterrolebinding.rbac.authorization.k8s.io/spotpool-cluster",
                 "configmap/spotpool-dashboard", "role.rbac.authorization.k8s.io/spotpool-leader-election",
                 "rolebinding.rbac.authorization.k8s.io/spotpool-leader-election",
                 "poddisruptionbudget.policy/spotpool"):
        assert line in proc.stdout, proc.stdout
    assert "(server dry run)" in proc.stdout
