"""The chart against the real control plane: the rendered objects are accepted by the apiserver, its
Pods pass the `restricted` Pod Security admission, install/upgrade/uninstall carry the CRD along
(and keep it), and the RBAC grants exactly what the operator needs, cluster-wide or per namespace.

Nothing here uses `--wait` and no Pod ever runs: the test control plane has no scheduler and no
kubelet. The chart's only hook is the `helm test` Pod, which Helm creates only on `helm test`, so
install and upgrade need no `--no-hooks`; `helm test` itself cannot be exercised here.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, Helm, Releases, one
from tests.conftest import Cluster
from tests.support.kube import unique_name, wait_for

pytestmark = pytest.mark.cluster

CRD_RELATIVE = Path("files") / "crds" / "spotpool.io_spotcomputeenvironments.yaml"
SPEC_DESCRIPTION = "description: What the pool should look like."


@pytest.mark.parametrize("variant", ["default", "limited-namespaces", "credentials"])
def test_rendered_chart_is_accepted_by_the_apiserver(cluster: Cluster, crd: str, helm: Helm, namespace: str,
                                                     variant: str) -> None:
    args = {
        "default": [],
        "limited-namespaces": ["--set", f"rbac.namespaces={{{namespace}}}"],
        "credentials": ["--set", "credentials.create=true", "--set", "credentials.secretId=AKIDEXAMPLE",
                        "--set", "credentials.secretKey=example-key", "--set", "podDisruptionBudget.enabled=true"],
    }[variant]
    objects = helm.template(*args, release=unique_name("sp"), namespace=namespace)
    proc = cluster.kubectl.apply(yaml.safe_dump_all(objects), "--dry-run=server")
    accepted = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), proc.stdout


def _pod(name: str, namespace: str, spec: dict[str, Any]) -> str:
    spec = {**copy.deepcopy(spec), "serviceAccountName": "default"}  # the SA is irrelevant to Pod Security
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                       "spec": spec})


def test_pods_pass_restricted_pod_security_admission(cluster: Cluster, helm: Helm, namespace: str) -> None:
    cluster.kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    objects = helm.template(namespace=namespace)
    operator = one(objects, "Deployment")["spec"]["template"]["spec"]
    test_pod = one(objects, "Pod")["spec"]
    for name, spec in (("operator", operator), ("helm-test", test_pod)):
        proc = cluster.kubectl.run("create", "--dry-run=server", "-f", "-", input=_pod(name, namespace, spec),
                                   check=False)
        assert proc.returncode == 0, proc.stderr
    # The control: the same container without the hardening is refused, so the admission is really on.
    loose = copy.deepcopy(operator)
    del loose["securityContext"]
    del loose["containers"][0]["securityContext"]
    proc = cluster.kubectl.run("create", "--dry-run=server", "-f", "-", input=_pod("loose", namespace, loose),
                               check=False)
    assert proc.returncode != 0
    assert 'violates PodSecurity "restricted' in proc.stderr


@pytest.fixture
def crd_restored(cluster: Cluster, crd: str) -> Iterator[dict[str, Any]]:
    """The session's CRD as it is now; put back afterwards (spec, labels, annotations and field
    ownership), since the other tests use it and a kept CRD carries the uninstalled release's marks.
    Request it before `releases`, so that it is restored after the releases are uninstalled."""
    before = cluster.kubectl.json("get", "crd", crd)
    yield before
    now = cluster.kubectl.get("crd", crd)
    if now is None or "deletionTimestamp" in now["metadata"]:
        # crds.keep failed and helm deleted it: bring it back for the other tests
        wait_for(lambda: cluster.kubectl.get("crd", crd) is None, timeout=60, what=f"CRD {crd} to be deleted")
        fresh = {"apiVersion": before["apiVersion"], "kind": before["kind"], "spec": before["spec"],
                 "metadata": {"name": crd, "labels": before["metadata"].get("labels", {})}}
        cluster.kubectl.run("create", "-f", "-", input=json.dumps(fresh))
        cluster.kubectl.run("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        return
    now["spec"] = before["spec"]
    for key in ("labels", "annotations", "managedFields"):
        now["metadata"].pop(key, None)
        if key in before["metadata"]:
            now["metadata"][key] = before["metadata"][key]
    cluster.kubectl.run("replace", "-f", "-", input=json.dumps(now))
    restored = cluster.kubectl.json("get", "crd", crd)
    assert restored["spec"] == before["spec"]
    assert restored["metadata"].get("annotations") == before["metadata"].get("annotations")


def _args(cluster: Cluster, name: str, namespace: str) -> list[str]:
    deployment = cluster.kubectl.get("deployment", f"{name}-spotpool", namespace)
    assert deployment, f"deployment {name}-spotpool not found"
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_install_upgrade_uninstall_carries_and_keeps_the_crd(
    cluster: Cluster, cluster_helm: Helm, crd: str, crd_restored: dict[str, Any], releases: Releases,
    namespace: str, tmp_path: Path,
) -> None:
    # Install with default values: the CRD is part of the release. On this shared cluster it already
    # exists (the session's `crd` fixture applied it), as for a user who applied it with kubectl
    # before: --take-ownership adopts it.
    name, output = releases.install(namespace, "--take-ownership")
    assert "kubectl create secret generic tencentcloud-credentials" in output  # NOTES
    assert "--observe-interval=15" in _args(cluster, name, namespace)
    live = cluster.kubectl.json("get", "crd", crd)
    assert live["metadata"]["annotations"]["meta.helm.sh/release-name"] == name
    assert live["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # Upgrade with a changed value and a changed CRD (a modified copy of the chart).
    chart = tmp_path / "spotpool"
    shutil.copytree(CHART, chart)
    crd_file = chart / CRD_RELATIVE
    assert SPEC_DESCRIPTION in crd_file.read_text()
    crd_file.write_text(crd_file.read_text().replace(SPEC_DESCRIPTION, f"{SPEC_DESCRIPTION} (upgraded)"))
    # --force-conflicts: the CRD's fields are still co-owned by the session fixture's server-side apply,
    # which Helm (server-side apply by default) must override. A CRD only ever applied by Helm needs
    # no flag; one first applied with kubectl does, exactly like here.
    cluster_helm.run("upgrade", name, chart, f"--namespace={namespace}", "--set", "operator.observeInterval=45",
                     "--force-conflicts")
    assert "--observe-interval=45" in _args(cluster, name, namespace)
    schema = cluster.kubectl.json("get", "crd", crd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["description"] == "What the pool should look like. (upgraded)"

    # Uninstall: the release's objects go, cluster-scoped ones included; the CRD stays (crds.keep).
    cluster_helm.run("uninstall", name, f"--namespace={namespace}")
    for kind, obj_name, ns in (("deployment", f"{name}-spotpool", namespace),
                               ("serviceaccount", f"{name}-spotpool", namespace),
                               ("clusterrole", f"{name}-spotpool", None),
                               ("clusterrolebinding", f"{name}-spotpool-cluster", None)):
        wait_for(lambda kind=kind, obj_name=obj_name, ns=ns: cluster.kubectl.get(kind, obj_name, ns) is None,
                 timeout=30,
                 what=f"{kind} {obj_name} to be deleted by helm uninstall")
    kept = cluster.kubectl.get("crd", crd)
    assert kept and "deletionTimestamp" not in kept["metadata"]
    assert kept["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["description"].endswith(
        "(upgraded)")
    assert cluster_helm.run("list", f"--namespace={namespace}", "--short").stdout.strip() == ""


def _can_i(cluster: Cluster, subject: str, *args: str) -> bool:
    proc = cluster.kubectl.run("auth", "can-i", *args, f"--as={subject}", check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


SCE = "spotcomputeenvironments.spotpool.io"
LEASES = "leases.coordination.k8s.io"


def test_rbac_cluster_wide(cluster: Cluster, crd: str, releases: Releases, namespace: str,
                           extra_namespaces: list[str]) -> None:
    name, _ = releases.install(namespace, "--set", "crds.install=false",
                               "--set-json", 'metrics.readers=[{"name": "scraper"}]')
    operator = f"system:serviceaccount:{namespace}:{name}-spotpool"
    anywhere = f"--namespace={extra_namespaces[0]}"
    allowed = [
        ("list", SCE, "--all-namespaces"), ("watch", SCE, "--all-namespaces"),
        ("patch", SCE, anywhere),
        ("patch", SCE, "--subresource=status", anywhere), ("create", "events", anywhere),
        ("get", "secrets", anywhere), ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("watch", "namespaces"), ("get", "namespaces/kube-system"),
        # Key pairs come from a watch of Secrets, and each carries spotpool's finalizer while used.
        ("list", "secrets", anywhere), ("watch", "secrets", anywhere), ("patch", "secrets", anywhere),
        # Leader election: its own Lease in kube-system, shared with any other installation.
        ("get", f"{LEASES}/spotpool-leader", "--namespace=kube-system"),
        ("update", f"{LEASES}/spotpool-leader", "--namespace=kube-system"),
        ("create", LEASES, "--namespace=kube-system"),
        # /metrics behind a token: who holds a scraper's token, and may it get /metrics?
        ("create", "tokenreviews.authentication.k8s.io"), ("create", "subjectaccessreviews.authorization.k8s.io"),
    ]
    denied = [
        ("get", SCE, anywhere), ("get", SCE, "--subresource=status", anywhere),
        ("delete", SCE, anywhere), ("create", SCE, anywhere), ("update", SCE, anywhere),
        ("update", SCE, "--subresource=status", anywhere), ("delete", "secrets", anywhere),
        ("update", "secrets", anywhere), ("create", "secrets", anywhere), ("create", "pods", anywhere),
        ("patch", "events", anywhere),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io"), ("delete", "namespaces"),
        # No other Lease: kube-system holds the control plane's own.
        ("get", f"{LEASES}/kube-scheduler", "--namespace=kube-system"),
        ("update", f"{LEASES}/kube-controller-manager", "--namespace=kube-system"),
        ("list", LEASES, "--namespace=kube-system"), ("delete", f"{LEASES}/spotpool-leader", "--namespace=kube-system"),
        ("get", f"{LEASES}/spotpool-leader", f"--namespace={namespace}"), ("create", LEASES, anywhere),
        # The operator asks about /metrics; reading it is the scrapers' right, not its own.
        ("get", "/metrics"),
    ]
    for check in allowed:
        assert _can_i(cluster, operator, *check), f"operator cannot {check}"
    for check in denied:
        assert not _can_i(cluster, operator, *check), f"operator can {check}"
    # metrics.readers: the chart's metrics-reader ClusterRole, bound to those ServiceAccounts only.
    assert _can_i(cluster, f"system:serviceaccount:{namespace}:scraper", "get", "/metrics")
    assert not _can_i(cluster, f"system:serviceaccount:{namespace}:default", "get", "/metrics")


def test_rbac_limited_to_listed_namespaces(cluster: Cluster, crd: str, releases: Releases, namespace: str,
                                          extra_namespaces: list[str]) -> None:
    first, second = extra_namespaces
    name, output = releases.install(namespace, "--set", "crds.install=false",
                                    "--set", f"rbac.namespaces={{{first},{second}}}")
    assert f"It watches SpotComputeEnvironments in: {first}, {second}." in output
    operator = f"system:serviceaccount:{namespace}:{name}-spotpool"
    for ns in (first, second):
        for check in (("patch", SCE, "--subresource=status"), ("watch", SCE), ("create", "events"),
                      ("get", "secrets")):
            assert _can_i(cluster, operator, *check, f"--namespace={ns}"), f"operator cannot {check} in {ns}"
    assert _can_i(cluster, operator, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert _can_i(cluster, operator, "watch", "namespaces")
    # Not in the release's own namespace, nor anywhere else, nor cluster-wide.
    for ns in (namespace, "kube-system", "default"):
        for check in (("get", "secrets"), ("patch", SCE, "--subresource=status"), ("list", SCE),
                      ("create", "events")):
            assert not _can_i(cluster, operator, *check, f"--namespace={ns}"), f"operator can {check} in {ns}"
    assert not _can_i(cluster, operator, "list", SCE, "--all-namespaces")
    assert not _can_i(cluster, operator, "delete", SCE, f"--namespace={first}")
    assert not _can_i(cluster, operator, "create", "pods", f"--namespace={first}")
