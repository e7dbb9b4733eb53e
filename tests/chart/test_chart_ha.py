"""The chart's high availability as rendered by the real helm: two replicas electing a leader, a
rollout that never leaves the pools without a standby, spreading over nodes and zones (soft by
default, hard on request), the Lease's Role in one namespace (kube-system, shared by every
installation), and refusals of unsafe settings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.chart.helm import CHART, Helm, find, one

SELECTOR = {"app.kubernetes.io/name": "spotpool", "app.kubernetes.io/instance": "spotpool"}


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_two_replicas_roll_with_a_standby_always_up(helm: Helm) -> None:
    objects = helm.template()
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # A new Pod starts before an old one stops, so a standby is there when the leader goes.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    container = pod_spec(objects)["containers"][0]
    assert container["args"][-5:] == ["--leader-elect", "--leader-election-namespace=kube-system",
                                      "--lease-duration=15", "--renew-deadline=10", "--retry-period=2"]
    # The Pod name is the identity's prefix. (Its namespace has no say in where the Lease is.)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]
           if e["name"] in ("POD_NAME", "POD_NAMESPACE")}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_soft_spreading_by_default(helm: Helm) -> None:
    spec = pod_spec(helm.template())
    (preferred,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == {"weight": 100, "podAffinityTerm": {
        "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": SELECTOR}}}
    (spread,) = spec["topologySpreadConstraints"]
    assert spread == {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                      "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": SELECTOR},
                      "matchLabelKeys": ["pod-template-hash"]}


def test_hard_spreading_on_request(helm: Helm) -> None:
    objects = helm.template("--set", "podAntiAffinity=hard", "--set", "topologySpread=hard")
    spec = pod_spec(objects)
    (required,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": SELECTOR}}
    assert spec["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"
    # With one replica per node required, a surge Pod could find no node: replace one at a time.
    assert one(objects, "Deployment")["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_no_spreading_and_the_users_own_anti_affinity(helm: Helm) -> None:
    spec = pod_spec(helm.template("--set", "podAntiAffinity=none", "--set", "topologySpread=none"))
    assert "affinity" not in spec and "topologySpreadConstraints" not in spec
    own = {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "example.com/rack", "labelSelector": {"matchLabels": {"app": "x"}}}]}
    spec = pod_spec(helm.template("--set-json", f"affinity={json.dumps({'podAntiAffinity': own})}",
                                  "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                                           ".nodeSelectorTerms[0].matchExpressions[0].key=zone"))
    assert spec["affinity"]["podAntiAffinity"] == own  # not merged with ours
    assert "nodeAffinity" in spec["affinity"]
    # Ours alongside a user's node affinity.
    spec = pod_spec(helm.template("--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                                           ".nodeSelectorTerms[0].matchExpressions[0].key=zone"))
    assert set(spec["affinity"]) == {"nodeAffinity", "podAntiAffinity"}


def test_priority_class(helm: Helm) -> None:
    assert "priorityClassName" not in pod_spec(helm.template())
    spec = pod_spec(helm.template("--set", "priorityClassName=system-cluster-critical"))
    assert spec["priorityClassName"] == "system-cluster-critical"


def test_the_lease_role_lives_in_one_namespace(helm: Helm) -> None:
    objects = helm.template()
    role = one(objects, "Role", "spotpool-leader-election")
    assert role["metadata"]["namespace"] == "kube-system"
    # get and update on the operator's own Lease only: kube-system holds the control plane's Leases.
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["spotpool-leader"],
         "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    binding = one(objects, "RoleBinding", "spotpool-leader-election")
    assert binding["metadata"]["namespace"] == "kube-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "spotpool-leader-election"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "spotpool", "namespace": "spotpool-system"}]
    # No Lease rights anywhere else, cluster-wide least of all.
    for cluster_role in find(objects, "ClusterRole"):
        assert all("leases" not in rule.get("resources", []) for rule in cluster_role["rules"])
    assert [r["metadata"]["namespace"] for r in find(objects, "Role")] == ["kube-system"]


def test_an_explicit_lease_namespace_wins(helm: Helm) -> None:
    objects = helm.template("--set", "leaderElection.namespace=spotpool-leases", release="canary",
                            namespace="canary")
    role = one(objects, "Role", "canary-spotpool-leader-election")
    binding = one(objects, "RoleBinding", "canary-spotpool-leader-election")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "spotpool-leases"
    assert role["rules"][0]["resourceNames"] == ["spotpool-leader"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "canary-spotpool", "namespace": "canary"}]
    assert "--leader-election-namespace=spotpool-leases" in pod_spec(objects)["containers"][0]["args"]


def test_leader_election_off_means_one_replica_recreated(helm: Helm) -> None:
    objects = helm.template("--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a.startswith("--leader") for a in pod_spec(objects)["containers"][0]["args"])
    assert not find(objects, "Role")


@pytest.mark.parametrize(("settings", "message"), [
    (["leaderElection.enabled=false"], "replicaCount > 1 needs leaderElection.enabled"),
    (["leaderElection.leaseDuration=10"], "leaseDuration must be greater than leaderElection.renewDeadline"),
    (["leaderElection.retryPeriod=9"], "renewDeadline must be greater than 1.2 x leaderElection.retryPeriod"),
])
def test_unsafe_settings_are_refused(helm: Helm, settings: list[str], message: str) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    proc = helm.run("template", "spotpool", CHART, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("setting", ["podAntiAffinity=required", "topologySpread=maybe",
                                     "leaderElection.leaseDuration=15.5", "leaderElection.namespace=Not_Valid",
                                     "replicaCount=-1"])
def test_schema_rejects_bad_ha_values(helm: Helm, setting: str) -> None:
    proc = helm.run("template", "spotpool", CHART, "--set", setting, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
