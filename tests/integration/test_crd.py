"""The SpotComputeEnvironment CRD on a real kube-apiserver: schema, CEL rules, defaults, printer
columns, the scale subresource, and RBAC through a TokenRequest token."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from spotpool.api.spec import EnvironmentSpec, SpecError, reserved_tag_key
from tests.conftest import CRD_FILE, REPO, Cluster
from tests.support.kube import Kubectl, token_kubeconfig, unique_name
from tests.support.specs import pool_spec
from tests.unit.test_spec import ALLOWED_KEYS, RESERVED_KEYS

pytestmark = pytest.mark.cluster

VALID = {
    "apiVersion": "spotpool.io/v1alpha1",
    "kind": "SpotComputeEnvironment",
    "metadata": {"name": "valid"},
    "spec": pool_spec(),
}


def with_spec(**changes: object) -> dict:
    """VALID with spec fields replaced; a value of None removes the field."""
    obj = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            obj["spec"].pop(key, None)
        else:
            obj["spec"][key] = value
    return obj


# One invalid object per rule, and the field path the API server's message must name.
INVALID = [
    ("negative expectedCount", with_spec(expectedCount=-1), "spec.expectedCount"),
    ("expectedCount above 10000", with_spec(expectedCount=10001), "spec.expectedCount"),
    ("missing maxPrice", with_spec(maxPrice=None), "spec.maxPrice"),
    ("zero maxPrice", with_spec(maxPrice="0"), "spec.maxPrice"),
    ("non-decimal maxPrice", with_spec(maxPrice="cheap"), "spec.maxPrice"),
    ("negative maxPrice", with_spec(maxPrice="-0.5"), "spec.maxPrice"),
    ("malformed region", with_spec(region="Guangzhou"), "spec.region"),
    ("empty zones", with_spec(zones=[]), "spec.zones"),
    ("duplicate zones", with_spec(zones=["ap-guangzhou-3", "ap-guangzhou-3"]), "spec.zones"),
    ("zone outside region", with_spec(zones=["ap-shanghai-2"]), "spec.zones"),
    ("empty instanceTypes", with_spec(instanceTypes=[]), "spec.instanceTypes"),
    ("duplicate instanceTypes", with_spec(instanceTypes=["S5.MEDIUM4", "S5.MEDIUM4"]), "spec.instanceTypes"),
    ("malformed instance type", with_spec(instanceTypes=["s5-medium"]), "spec.instanceTypes"),
    ("malformed imageId", with_spec(imageId="image-1"), "spec.imageId"),
    ("unknown allocationStrategy", with_spec(allocationStrategy="Cheapest"), "spec.allocationStrategy"),
    ("unknown scaleInPolicy", with_spec(scaleInPolicy="Random"), "spec.scaleInPolicy"),
    ("missing credentialsSecretRef", with_spec(credentialsSecretRef=None), "spec.credentialsSecretRef"),
    ("invalid Secret name", with_spec(credentialsSecretRef={"name": "Not_A_Name"}), "spec.credentialsSecretRef.name"),
    ("a Secret beside an operator identity", with_spec(credentials={"source": "OperatorIdentity"}),
     "spec.credentialsSecretRef"),
    ("a role without its ARN", with_spec(credentialsSecretRef=None, credentials={"source": "Role"}),
     "spec.credentials.roleArn"),
    ("a malformed role ARN", with_spec(credentialsSecretRef=None, credentials={"source": "Role", "roleArn": "team-a"}),
     "spec.credentials.roleArn"),
    ("an ExternalId without a role", with_spec(credentialsSecretRef=None, credentials={
        "source": "OperatorIdentity", "externalId": "abc"}), "spec.credentials.roleArn"),
    ("an unknown credential source", with_spec(credentialsSecretRef=None, credentials={"source": "Env"}),
     "spec.credentials.source"),
    ("non-http endpoint", with_spec(endpoint="ftp://cvm.example"), "spec.endpoint"),
    ("endpoint with user info", with_spec(endpoint="https://u:p@cvm.tencentcloudapi.com"), "spec.endpoint"),
    # 6200 two-byte characters: within maxLength, over the byte budget the CEL rule enforces.
    ("userData over 12288 bytes", with_spec(userData="\u00e9" * 6200), "spec.userData"),
    ("reserved tag key", with_spec(tags={"spotpool.io/environment": "x"}), "spec.tags"),
    ("reserved tag key in upper case", with_spec(tags={"SPOTPOOL.IO/environment": "x"}), "spec.tags"),
    ("reserved tag key in mixed case", with_spec(tags={"team": "a", "SpotPool.Io/launch": "x"}), "spec.tags"),
    ("reserved tag key after a space", with_spec(tags={" spotpool.io/environment": "x"}), "spec.tags"),
    ("reserved tag key in whitespace", with_spec(tags={"\tSpotpool.IO/x\u3000": "x"}), "spec.tags"),
    ("unknown system disk type", with_spec(systemDisk={"type": "SSD"}), "spec.systemDisk.type"),
    ("subnet for a zone not in zones", with_spec(network={
        "vpcId": "vpc-2ari9m7h", "subnetIds": {"ap-guangzhou-7": "subnet-ahv6swf2"}}), "spec.network.subnetIds"),
    ("VPC without a subnet for every zone", with_spec(network={
        "vpcId": "vpc-2ari9m7h", "subnetIds": {"ap-guangzhou-3": "subnet-ahv6swf2"}}), "spec.network.subnetIds"),
    ("subnets without a VPC", with_spec(network={"subnetIds": {"ap-guangzhou-3": "subnet-ahv6swf2"}}),
     "spec.network.vpcId"),
    ("six security groups", with_spec(network={"securityGroupIds": [f"sg-0000000{i}" for i in range(6)]}),
     "spec.network.securityGroupIds"),
    ("malformed key id", with_spec(loginSettings={"keyIds": ["key-1"]}), "spec.loginSettings.keyIds"),
    ("zero maxHourlyCost", with_spec(maxHourlyCost="0"), "spec.maxHourlyCost"),
    ("non-decimal maxHourlyCost", with_spec(maxHourlyCost="cheap"), "spec.maxHourlyCost"),
    ("negative baseCount", with_spec(onDemand={"baseCount": -1}), "spec.onDemand.baseCount"),
    ("fallback without a wait", with_spec(onDemand={"fallback": {}}), "spec.onDemand.fallback.after"),
    ("malformed fallback wait", with_spec(onDemand={"fallback": {"after": "5 minutes"}}),
     "spec.onDemand.fallback.after"),
    ("fallback wait over 24h", with_spec(onDemand={"fallback": {"after": "25h"}}), "spec.onDemand.fallback.after"),
    ("unknown fallback reason", with_spec(onDemand={"fallback": {"after": "5m", "reasons": ["Expensive"]}}),
     "spec.onDemand.fallback.reasons"),
    ("zero maxInFlight", with_spec(onDemand={"returnToSpot": {"maxInFlight": 0}}),
     "spec.onDemand.returnToSpot.maxInFlight"),
    ("maxInFlight over 100%", with_spec(onDemand={"returnToSpot": {"maxInFlight": "101%"}}),
     "spec.onDemand.returnToSpot.maxInFlight"),
    ("maxInFlight not a percentage", with_spec(onDemand={"returnToSpot": {"maxInFlight": "half"}}),
     "spec.onDemand.returnToSpot.maxInFlight"),
    ("expireAfter under an hour", with_spec(disruption={"expireAfter": "30m"}), "spec.disruption.expireAfter"),
    ("expireAfter over a year", with_spec(disruption={"expireAfter": "9000h"}), "spec.disruption.expireAfter"),
    ("unknown drift reason", with_spec(disruption={"drift": {"Colour": "Replace"}}), "spec.disruption.drift"),
    ("unknown drift action", with_spec(disruption={"drift": {"Image": "Later"}}), "spec.disruption.drift.Image"),
    ("negative budget", with_spec(disruption={"budgets": [{"instances": -1}]}), "spec.disruption.budgets[0].instances"),
    ("budget over 100%", with_spec(disruption={"budgets": [{"instances": "150%"}]}),
     "spec.disruption.budgets[0].instances"),
    ("schedule without duration", with_spec(disruption={"budgets": [{"instances": 1, "schedule": "0 9 * * *"}]}),
     "spec.disruption.budgets[0]"),
    ("schedule of three fields", with_spec(disruption={"budgets": [{"instances": 1, "schedule": "0 9 *",
                                                                    "duration": "1h"}]}),
     "spec.disruption.budgets[0].schedule"),
    ("unknown budget reason", with_spec(disruption={"budgets": [{"instances": 1, "reasons": ["Boredom"]}]}),
     "spec.disruption.budgets[0].reasons"),
    ("drain grace not a duration", with_spec(disruption={"drainGrace": "soon"}), "spec.disruption.drainGrace"),
]


def test_names_over_63_characters_are_refused(cluster: Cluster, crd: str, namespace: str) -> None:
    obj = copy.deepcopy(VALID)
    obj["metadata"]["name"] = "x" * 64
    proc = cluster.kubectl.apply(json.dumps(obj), f"--namespace={namespace}", "--dry-run=server", check=False)
    assert proc.returncode != 0 and "metadata.name must be at most 63 characters" in proc.stderr, proc.stderr


def test_crd_is_established_with_subresources(cluster: Cluster, crd: str) -> None:
    got = cluster.kubectl.json("get", "crd", crd)
    assert any(c["type"] == "Established" and c["status"] == "True" for c in got["status"]["conditions"])
    version = got["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.expectedCount",
        "statusReplicasPath": ".status.currentCount",
        "labelSelectorPath": ".status.selector",
    }
    assert got["spec"]["names"]["shortNames"] == ["sce"]
    assert got["spec"]["names"]["categories"] == ["spotpool"]


def test_reapplying_the_crd_server_side_is_a_clean_no_op(cluster: Cluster, crd: str) -> None:
    out = cluster.kubectl.apply(CRD_FILE.read_text()).stdout
    assert "serverside-applied" in out


def test_every_schema_field_has_a_description(crd: str) -> None:
    schema = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing: list[str] = []

    def walk(node: dict, path: str) -> None:
        for name, prop in node.get("properties", {}).items():
            if path == "" and name in ("apiVersion", "kind", "metadata"):
                continue
            if "description" not in prop:
                missing.append(f"{path}.{name}")
            walk(prop, f"{path}.{name}")
            if "items" in prop:
                walk(prop["items"], f"{path}.{name}[]")

    walk(schema, "")
    assert missing == []


@pytest.mark.parametrize("example", sorted((REPO / "deploy" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_accepted(cluster: Cluster, crd: str, namespace: str, example: Path) -> None:
    out = cluster.kubectl.apply(example.read_text(), f"--namespace={namespace}").stdout
    for doc in yaml.safe_load_all(example.read_text()):
        got = cluster.kubectl.get(doc["kind"], doc["metadata"]["name"], namespace)
        assert got is not None, out


def test_defaults_are_filled_in(cluster: Cluster, crd: str, namespace: str) -> None:
    cluster.kubectl.apply(json.dumps(VALID), f"--namespace={namespace}")
    spec = cluster.kubectl.get("sce", "valid", namespace)["spec"]  # type: ignore[index]
    assert spec["allocationStrategy"] == "LowestPrice"
    assert spec["scaleInPolicy"] == "NewestFirst"
    assert spec["paused"] is False


SOURCES = [
    {"source": "OperatorIdentity"},
    {"source": "Role", "roleArn": "qcs::cam::uin/100000000001:roleName/team-a"},
    {"source": "Role", "roleArn": "qcs::cam::uin/1:role/4611686018427", "externalId": "team-a:batch"},
]


@pytest.mark.parametrize("credentials", SOURCES, ids=["operator-identity", "role", "role-by-id-with-external-id"])
def test_pools_without_a_secret_are_accepted(cluster: Cluster, crd: str, namespace: str,
                                             credentials: dict[str, str]) -> None:
    obj = with_spec(credentialsSecretRef=None, credentials=credentials)
    cluster.kubectl.apply(json.dumps(obj), f"--namespace={namespace}")
    assert cluster.kubectl.get("sce", "valid", namespace)["spec"]["credentials"] == credentials  # type: ignore[index]


def test_every_documented_disruption_shape_is_accepted(cluster: Cluster, crd: str, namespace: str) -> None:
    disruption = {
        "drift": {"Image": "Replace", "InstanceNamePrefix": "Ignore", "Zone": "Ignore"},
        "expireAfter": "720h",
        "budgets": [{"instances": "10%"}, {"instances": 0, "reasons": ["Drifted", "ReturnToSpot"],
                                           "schedule": "0 9 * * 1-5", "duration": "8h"},
                    {"instances": 5, "schedule": "@daily", "duration": "30m"}],
        "doNotDisruptMaxHold": "24h",
        "drainGrace": "5m",
    }
    cluster.kubectl.apply(json.dumps(with_spec(disruption=disruption)), f"--namespace={namespace}")
    spec = cluster.kubectl.get("sce", "valid", namespace)["spec"]  # type: ignore[index]
    assert spec["disruption"] == disruption
    EnvironmentSpec.from_k8s(spec)  # the operator reads what the API server keeps


def test_on_demand_defaults_and_every_documented_shape_are_accepted(cluster: Cluster, crd: str, namespace: str) -> None:
    obj = with_spec(allocationStrategy="CapacityOptimized", maxHourlyCost="2.50",
                    onDemand={"fallback": {"after": "1h30m"}, "returnToSpot": {"maxInFlight": 2}})
    cluster.kubectl.apply(json.dumps(obj), f"--namespace={namespace}")
    spec = cluster.kubectl.get("sce", "valid", namespace)["spec"]  # type: ignore[index]
    assert spec["onDemand"]["baseCount"] == 0
    assert spec["onDemand"]["fallback"]["reasons"] == ["SoldOut", "QuotaExceeded", "PriceAboveMax"]
    assert spec["onDemand"]["returnToSpot"] == {"enabled": True, "maxInFlight": 2}
    obj = with_spec(onDemand={"baseCount": 1, "returnToSpot": {"maxInFlight": "100%"}})
    cluster.kubectl.apply(json.dumps(obj), f"--namespace={namespace}")
    spec = cluster.kubectl.get("sce", "valid", namespace)["spec"]  # type: ignore[index]
    assert spec["onDemand"]["returnToSpot"]["maxInFlight"] == "100%"


@pytest.mark.parametrize(("case", "obj", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_objects_are_refused_naming_the_field(
    cluster: Cluster, crd: str, namespace: str, case: str, obj: dict, field: str
) -> None:
    proc = cluster.kubectl.apply(json.dumps(obj), f"--namespace={namespace}", "--dry-run=server", check=False)
    assert proc.returncode != 0, f"{case}: accepted\n{proc.stdout}"
    assert field in proc.stderr, f"{case}: message does not name {field}:\n{proc.stderr}"
    assert cluster.kubectl.get("sce", "valid", namespace) is None


@pytest.mark.parametrize("key", RESERVED_KEYS + ALLOWED_KEYS, ids=repr)
def test_the_api_server_and_the_spec_model_refuse_the_same_tag_keys(
    cluster: Cluster, crd: str, namespace: str, key: str
) -> None:
    """The CEL rule (trim, then the generated pattern of every code point folding to each prefix
    character) and `reserved_tag_key` (strip of the same whitespace, NFKC case fold) agree on every
    near miss: case, Unicode spaces, compatibility forms (fullwidth, mathematical, circled), U+001F
    (which str.isspace() counts and CEL's trim() does not), a zero-width space, look-alike letters."""
    obj = with_spec(tags={key: "x"})
    proc = cluster.kubectl.apply(json.dumps(obj), f"--namespace={namespace}", "--dry-run=server", check=False)
    try:
        EnvironmentSpec.from_k8s(obj["spec"])
        model_refuses = False
    except SpecError:
        model_refuses = True
    assert model_refuses == reserved_tag_key(key)
    assert (proc.returncode != 0) == model_refuses, proc.stderr
    if model_refuses:
        assert "spec.tags" in proc.stderr and "reserves for ownership" in proc.stderr, proc.stderr


# Where the instances live cannot change under them (issue 8): the API server refuses it, naming
# the field and saying what to do instead.
MOVES = [
    ("region", VALID, with_spec(region="ap-shanghai", zones=["ap-shanghai-2"]), "spec.region is immutable"),
    ("endpoint added", VALID, with_spec(endpoint="https://cvm.example.com"), "spec.endpoint is immutable"),
    ("endpoint changed", with_spec(endpoint="https://cvm.example.com"),
     with_spec(endpoint="https://cvm.other.example.com"), "spec.endpoint is immutable"),
    ("endpoint removed", with_spec(endpoint="https://cvm.example.com"), VALID, "spec.endpoint is immutable"),
]


@pytest.mark.parametrize(("case", "before", "after", "message"), MOVES, ids=[m[0] for m in MOVES])
def test_where_the_instances_live_cannot_change(
    cluster: Cluster, crd: str, namespace: str, case: str, before: dict, after: dict, message: str
) -> None:
    cluster.kubectl.apply(json.dumps(before), f"--namespace={namespace}")
    proc = cluster.kubectl.run("replace", "-f", "-", f"--namespace={namespace}", input=json.dumps(after), check=False)
    assert proc.returncode != 0, f"{case}: accepted"
    assert message in proc.stderr and "create a new SpotComputeEnvironment" in proc.stderr, proc.stderr
    # Everything else may still change.
    cluster.kubectl.run("patch", "sce", "valid", f"--namespace={namespace}", "--type=merge",
                        "-p", json.dumps({"spec": {"expectedCount": 7, "maxPrice": "0.1"}}))


def test_printer_columns(cluster: Cluster, crd: str, namespace: str) -> None:
    cluster.kubectl.apply(json.dumps(VALID), f"--namespace={namespace}")
    status = {"status": {
        "currentCount": 3, "runningCount": 2, "pendingCount": 1, "hourlyCost": "0.0639", "updatedCount": 1,
        "selector": "spotpool.io/environment=valid",
        "conditions": [{"type": "Ready", "status": "False", "reason": "Scaling", "message": "2 of 3 running",
                        "lastTransitionTime": "2026-11-26T00:00:00Z"}],
    }}
    cluster.kubectl.run("patch", "sce", "valid", f"--namespace={namespace}", "--subresource=status",
                        "--type=merge", "-p", json.dumps(status))
    lines = cluster.kubectl.run("get", "sce", "valid", f"--namespace={namespace}").stdout.splitlines()
    assert lines[0].split() == ["NAME", "EXPECTED", "CURRENT", "RUNNING", "UP-TO-DATE", "MAXPRICE", "HOURLYCOST",
                                "READY", "AGE"]
    assert lines[1].split()[:8] == ["valid", "3", "3", "2", "1", "0.0923", "0.0639", "False"]
    # The category lists it too.
    assert "valid" in cluster.kubectl.run("get", "spotpool", f"--namespace={namespace}").stdout


def test_kubectl_scale_drives_expected_count(cluster: Cluster, crd: str, namespace: str) -> None:
    cluster.kubectl.apply(json.dumps(VALID), f"--namespace={namespace}")
    cluster.kubectl.run("patch", "sce", "valid", f"--namespace={namespace}", "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": {
                            "currentCount": 3, "selector": "spotpool.io/environment=valid"}}))
    cluster.kubectl.run("scale", "sce/valid", "--replicas=7", f"--namespace={namespace}")
    assert cluster.kubectl.get("sce", "valid", namespace)["spec"]["expectedCount"] == 7  # type: ignore[index]
    scale = json.loads(cluster.kubectl.run(
        "get", "--raw", f"/apis/spotpool.io/v1alpha1/namespaces/{namespace}/spotcomputeenvironments/valid/scale"
    ).stdout)
    assert scale["spec"]["replicas"] == 7
    assert scale["status"] == {"replicas": 3, "selector": "spotpool.io/environment=valid"}
    refused = cluster.kubectl.run("scale", "sce/valid", "--replicas=10001", f"--namespace={namespace}", check=False)
    assert refused.returncode != 0 and "spec.expectedCount" in refused.stderr


def test_token_request_token_is_limited_by_its_role(
    cluster: Cluster, crd: str, namespace: str, tmp_path: Path
) -> None:
    kubectl = cluster.kubectl
    kubectl.apply(json.dumps(VALID), f"--namespace={namespace}")
    kubectl.run("create", "serviceaccount", "reader", f"--namespace={namespace}")
    kubectl.run("create", "role", "sce-reader", "--verb=get,list,watch",
                "--resource=spotcomputeenvironments.spotpool.io", f"--namespace={namespace}")
    kubectl.run("create", "rolebinding", "sce-reader", "--role=sce-reader",
                f"--serviceaccount={namespace}:reader", f"--namespace={namespace}")
    token = kubectl.run("create", "token", "reader", f"--namespace={namespace}", "--duration=10m").stdout.strip()
    reader = Kubectl(kubectl.binary, token_kubeconfig(cluster.kubeconfig, token, namespace, tmp_path / "kc"))

    who = reader.json("auth", "whoami")
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    assert "valid" in reader.run("get", "sce").stdout
    for forbidden in (
        ("delete", "sce", "valid"),
        ("get", "secrets"),
        ("get", "sce", f"--namespace={unique_name('elsewhere')}"),
    ):
        proc = reader.run(*forbidden, check=False)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (forbidden, proc.stderr)
    bogus = Kubectl(kubectl.binary, token_kubeconfig(cluster.kubeconfig, token[:-4] + "AAAA", namespace,
                                                     tmp_path / "bad"))
    assert "Unauthorized" in bogus.run("get", "sce", check=False).stderr
