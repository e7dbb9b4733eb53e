"""The chart's security values: the administrator's policy flags, the metrics bind address, the
NetworkPolicy, and the sample ValidatingAdmissionPolicy (rendered, and applied to the test control
plane's apiserver, which serves admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, Helm, find, one
from tests.conftest import Cluster
from tests.support.kube import unique_name
from tests.support.specs import pool_spec


def _args(objects: list[dict[str, Any]]) -> list[str]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_policy_values_reach_the_command_line(helm: Helm) -> None:
    objects = helm.template(
        "--set-json", 'endpoints.allowed=["https://cvm.{region}.example.com","https://gw.example.com:8443"]',
        "--set", "spendGuards.maxExpectedCount=0", "--set", "spendGuards.maxNamespaceInstances=50",
        "--set", "spendGuards.maxTotalInstances=200", "--set", "spendGuards.maxPrice=0.25",
        "--set", "spendGuards.instanceTypes={S5.*,SA2.*}", "--set", "operator.metricsHost=127.0.0.1",
        "--set", "spendGuards.onDemandNamespaces={platform-*}",
    )
    args = _args(objects)
    for flag in ("--allowed-endpoint=https://cvm.{region}.example.com", "--allowed-endpoint=https://gw.example.com:8443",
                 "--max-expected-count=0", "--max-namespace-instances=50", "--max-total-instances=200",
                 "--max-price=0.25", "--allowed-instance-type=S5.*", "--allowed-instance-type=SA2.*",
                 "--on-demand-namespace=platform-*",
                 "--metrics-host=127.0.0.1"):
        assert flag in args
    assert "--allow-loopback-endpoints" not in args


def test_defaults_are_the_safe_ones(helm: Helm) -> None:
    objects = helm.template()
    args = _args(objects)
    assert not [a for a in args if a.startswith(("--allowed-endpoint", "--allow-loopback", "--max-", "--allowed-"))]
    assert not find(objects, "ValidatingAdmissionPolicy")
    assert "--allow-loopback-endpoints" in _args(helm.template("--set", "endpoints.allowLoopback=true"))


def test_rendered_args_parse(helm: Helm) -> None:
    """What the chart passes is what the operator's flag parser accepts."""
    from spotpool.controller.cli import parse
    from spotpool.controller.policy import Policy

    objects = helm.template("--set-json", 'endpoints.allowed=["https://cvm.{region}.example.com"]',
                            "--set", "spendGuards.maxPrice=0.25", "--set", "spendGuards.instanceTypes={S5.*}")
    policy = Policy.from_config(parse(_args(objects)))
    assert policy.endpoints.allowed == ("https://cvm.{region}.example.com",)
    assert str(policy.guards.max_price) == "0.25"


@pytest.mark.parametrize("setting", ["endpoints.allowed={ftp://x}", "spendGuards.maxPrice=cheap",
                                     "spendGuards.maxExpectedCount=-1", "spendGuards.instanceTypes={S5 *}",
                                     "admissionPolicy.validationActions={Allow}", "networkPolicy.apiServerPorts={0}"])
def test_schema_rejects_bad_policy_values(helm: Helm, setting: str) -> None:
    proc = helm.run("template", "spotpool", CHART, "--set", setting, check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr


def test_network_policy(helm: Helm) -> None:
    policy = one(helm.template(), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "spotpool",
                                                   "app.kubernetes.io/instance": "spotpool"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"port": "https-metrics", "protocol": "TCP"},
                                          {"port": "http-health", "protocol": "TCP"}],
                                "from": [{"podSelector": {}}]}]
    ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in spec["egress"]]
    assert ports == [[(53, "TCP"), (53, "UDP")], [(443, "TCP"), (6443, "TCP")], [(443, "TCP")]]
    assert all("to" not in rule for rule in spec["egress"])
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    control_plane = {"ipBlock": {"cidr": "10.0.0.0/24"}}
    spec = one(helm.template("--set-json", f"networkPolicy.metricsFrom=[{json.dumps(prometheus)}]",
                             "--set-json", f"networkPolicy.apiServerTo=[{json.dumps(control_plane)}]"),
               "NetworkPolicy")["spec"]
    assert spec["ingress"][0]["from"] == [prometheus]
    assert spec["egress"][1]["to"] == [control_plane]
    assert not find(helm.template("--set", "networkPolicy.enabled=false"), "NetworkPolicy")


GUARDS = ["--set", "admissionPolicy.enabled=true", "--set", "spendGuards.maxExpectedCount=10",
          "--set", "spendGuards.maxPrice=0.5", "--set", "spendGuards.instanceTypes={S5.*,sa?.medium4}"]


def test_admission_policy_render(helm: Helm) -> None:
    objects = helm.template(*GUARDS)
    policy = one(objects, "ValidatingAdmissionPolicy")
    binding = one(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["spotpool.io"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                      "resources": ["spotcomputeenvironments"]}]
    expressions = [v["expression"] for v in policy["spec"]["validations"]]
    assert expressions[0].startswith("object.spec.expectedCount <= 10 ||")
    assert "double('0.5')" in expressions[1]
    assert '["S5\\\\..*","SA.\\\\.MEDIUM4"]' in expressions[2]
    assert len(find(helm.template(*GUARDS[:4]), "ValidatingAdmissionPolicy")) == 1  # one guard is enough
    proc = helm.run("template", "spotpool", CHART, "--set", "admissionPolicy.enabled=true", check=False)
    assert proc.returncode != 0 and "admissionPolicy.enabled needs spendGuards" in proc.stderr


# -- applied for real ----------------------------------------------------------------------------------

def _pool(namespace: str, name: str, **spec: Any) -> str:
    body = pool_spec(**{"maxPrice": "0.2", "instanceTypes": ["S5.MEDIUM4"], **spec})  # within GUARDS
    return json.dumps({"apiVersion": "spotpool.io/v1alpha1", "kind": "SpotComputeEnvironment",
                       "metadata": {"name": name, "namespace": namespace}, "spec": body})


@pytest.fixture
def admission_policy(cluster: Cluster, crd: str, helm: Helm, namespace: str) -> Iterator[list[dict[str, Any]]]:
    """The chart's policy and binding, the binding narrowed to this test's namespace so that no other
    test's pools are judged by it."""
    objects = [o for o in helm.template(*GUARDS, release=unique_name("vap"), namespace=namespace)
               if o["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")]
    binding = one(objects, "ValidatingAdmissionPolicyBinding")
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    cluster.kubectl.apply(yaml.safe_dump_all(objects))
    yield objects
    for obj in objects:
        cluster.kubectl.run("delete", obj["kind"].lower(), obj["metadata"]["name"], "--wait=false", check=False)


@pytest.mark.cluster
def test_admission_policy_refuses_pools_over_the_guards(cluster: Cluster, namespace: str,
                                                        admission_policy: list[dict[str, Any]]) -> None:
    def create(name: str, **spec: Any) -> Any:
        return cluster.kubectl.run("create", "-f", "-", input=_pool(namespace, name, **spec), check=False)

    # The policy takes effect once the apiserver has compiled it: wait for the first refusal.
    deadline = time.monotonic() + 30
    while True:
        proc = create("too-many", expectedCount=11)
        if proc.returncode != 0 or time.monotonic() > deadline:
            break
        cluster.kubectl.run("delete", "spotcomputeenvironment", "too-many", "-n", namespace, check=False)
        time.sleep(0.5)
    assert proc.returncode != 0, "the policy never refused an object over the guard"
    assert "spec.expectedCount 11 is over the limit of 10 per pool set by the operator administrator" in proc.stderr
    assert "ValidatingAdmissionPolicy" in proc.stderr

    proc = create("too-dear", maxPrice="0.75")
    assert proc.returncode != 0 and "spec.maxPrice 0.75 is over the limit of 0.5 USD/h" in proc.stderr
    proc = create("gpu", instanceTypes=["S5.MEDIUM4", "GN7.2XLARGE32"])
    assert proc.returncode != 0
    assert "spec.instanceTypes GN7.2XLARGE32 match none of the instance types" in proc.stderr

    # Within the guards: accepted; SA?.MEDIUM4 matches case-insensitively.
    assert create("fine", expectedCount=10, maxPrice="0.5", instanceTypes=["S5.SMALL1", "SA2.MEDIUM4"]).returncode == 0
    # Raising past a guard is refused; lowering is not.
    patch = ["patch", "spotcomputeenvironment", "fine", "-n", namespace, "--type=merge", "-p"]
    proc = cluster.kubectl.run(*patch, '{"spec":{"expectedCount":12}}', check=False)
    assert proc.returncode != 0 and "spec.expectedCount 12 is over the limit of 10" in proc.stderr
    assert cluster.kubectl.run(*patch, '{"spec":{"expectedCount":2}}', check=False).returncode == 0
