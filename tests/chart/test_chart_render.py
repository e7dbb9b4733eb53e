"""The Helm chart as rendered by the real helm: lint, values schema, what each values variant renders,
the restricted security context, labels, RBAC rules and the CRD copy. No cluster needed."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

import spotpool
from spotpool.controller.leadership import lease_name
from tests.chart.helm import CHART, Helm, find, lease_rules, one, operator_args, operator_lease
from tests.conftest import REPO

VARIANTS = {
    "default": [],
    "limited-namespaces": ["--set", "rbac.namespaces={team-a,team-b}"],
    "service-monitor": ["--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.additionalLabels.release=kps"],
    "pdb": ["--set", "podDisruptionBudget.enabled=true"],
    "credentials": ["--set", "credentials.create=true", "--set", "credentials.secretId=AKIDEXAMPLE",
                    "--set", "credentials.secretKey=example-key"],
}
# The chart's default leader election flags (templates/leader-election.yaml): the Lease in kube-system,
# whatever the release namespace.
LEADER_ELECTION_ARGS = ["--leader-elect", "--leader-election-namespace=kube-system", "--lease-duration=15",
                        "--renew-deadline=10", "--retry-period=2"]
# The orphan collector's default flags (values `orphans`).
ORPHAN_ARGS = ["--orphan-grace=120"]
# The two ports' default flags (values `operator`, `metrics`): /metrics over HTTPS behind a token.
SERVING_ARGS = ["--metrics-port=8443", "--metrics-host=0.0.0.0", "--health-port=8081", "--health-host=0.0.0.0",
                "--metrics-secure"]
# What `helm template` needs to render as for a cluster running the Prometheus Operator.
PROMETHEUS_OPERATOR_API = ["--api-versions", "monitoring.coreos.com/v1"]

SELECTOR = {"app.kubernetes.io/name": "spotpool", "app.kubernetes.io/instance": "spotpool"}
STANDARD_LABELS = {
    **SELECTOR,
    "helm.sh/chart": "spotpool-0.1.0",
    "app.kubernetes.io/version": "0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/part-of": "spotpool",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict(helm: Helm, variant: str) -> None:
    proc = helm.run("lint", "--strict", CHART, *VARIANTS[variant])
    assert "0 chart(s) failed" in proc.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert chart["appVersion"] == spotpool.__version__ == "0.1.0"


def test_default_render(helm: Helm) -> None:
    objects = helm.template()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted([
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
        "ClusterRoleBinding", "Service", "Deployment", "ConfigMap", "Pod",
        "ClusterRole",  # the metrics reader (bound to nobody until metrics.readers names someone)
        "Role", "RoleBinding", "PodDisruptionBudget",  # leader election's Lease, two replicas
        "NetworkPolicy",
    ])
    deployment = one(objects, "Deployment", "spotpool")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/spotpool/spotpool:0.1.0"
    assert container["args"] == ["--all-namespaces", *SERVING_ARGS, "--log-format=json",
                                 "--log-level=info", "--observe-interval=15", "--progress-interval=2",
                                 "--first-passes-at-once=50",
                                 *ORPHAN_ARGS, *LEADER_ELECTION_ARGS]
    # The kubelet probes the plain health port; /metrics is HTTPS on a port of its own.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-health"}
    assert container["ports"] == [{"name": "https-metrics", "containerPort": 8443, "protocol": "TCP"},
                                  {"name": "http-health", "containerPort": 8081, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "spotpool"


def test_operator_values_reach_the_command_line(helm: Helm) -> None:
    objects = helm.template(
        "--set", "operator.clusterId=prod-gz", "--set", "operator.observeInterval=30",
        "--set-json", "operator.progressInterval=0.5", "--set", "operator.firstPassesAtOnce=200",
        "--set", "operator.logLevel=debug", "--set", "operator.logFormat=plain",
        "--set", "image.tag=0.1.1", "--set", "image.pullPolicy=Always",
        "--set", "imagePullSecrets[0].name=registry", "--set", "nodeSelector.pool=system",
        "--set", "tolerations[0].key=dedicated", "--set", "tolerations[0].operator=Exists",
        "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                 ".nodeSelectorTerms[0].matchExpressions[0].key=zone",
        "--set", "podAnnotations.team=platform", "--set", "priorityClassName=system-cluster-critical",
    )
    pod = one(objects, "Deployment")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["--all-namespaces", *SERVING_ARGS, "--log-format=plain",
                                 "--log-level=debug", "--observe-interval=30", "--progress-interval=0.5",
                                 "--first-passes-at-once=200", "--cluster-id=prod-gz", *ORPHAN_ARGS,
                                 *LEADER_ELECTION_ARGS]
    assert container["image"] == "ghcr.io/spotpool/spotpool:0.1.1"
    assert container["imagePullPolicy"] == "Always"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert "nodeAffinity" in pod["spec"]["affinity"]
    assert pod["metadata"]["annotations"] == {"team": "platform"}
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"


def test_the_orphan_collector_can_only_report(helm: Helm) -> None:
    objects = helm.template("--set", "orphans.release=false", "--set", "orphans.grace=600")
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--orphan-grace=600" in args and "--no-orphan-release" in args


def test_limited_namespaces(helm: Helm) -> None:
    objects = helm.template(*VARIANTS["limited-namespaces"])
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in args
    # Namespaced permissions only in the listed namespaces (and the Lease's in kube-system)...
    roles = find(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["kube-system", "team-a", "team-b"]
    bindings = find(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["kube-system", "team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "spotpool", "namespace": "spotpool-system"}]
    # ...and cluster-wide only the reads kopf needs for discovery, and the metrics port's reviews.
    cluster_role = one(objects, "ClusterRole", "spotpool-cluster")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions", "namespaces", "tokenreviews", "subjectaccessreviews"}
    assert {r["metadata"]["name"] for r in find(objects, "ClusterRole")} == {"spotpool-cluster",
                                                                            "spotpool-metrics-reader"}


METRICS_READER = "spotpool-metrics-reader"  # what scrapers are granted, not the operator


def _operator_roles(objects: list[dict]) -> list[dict]:
    return [role for role in find(objects, "ClusterRole") + find(objects, "Role")
            if role["metadata"]["name"] != METRICS_READER]


def _rules(objects: list[dict]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb)
            for role in _operator_roles(objects)
            for rule in role["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}


LEAST_PRIVILEGE = {
    *{("spotpool.io", "spotcomputeenvironments", v) for v in ("list", "watch", "patch")},
    ("spotpool.io", "spotcomputeenvironments/status", "patch"),
    ("", "events", "create"),
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "secrets", "patch"),
    *{("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")},
    *{("", "namespaces", v) for v in ("get", "list", "watch")},
    *{("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")},
    # /metrics behind a token (metrics.secure): who holds it, and may that user get /metrics?
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
}


@pytest.mark.parametrize("variant", ["default", "limited-namespaces"])
def test_rbac_grants_exactly_what_the_operator_needs(helm: Helm, variant: str) -> None:
    objects = helm.template(*VARIANTS[variant])
    assert _rules(objects) == LEAST_PRIVILEGE
    reader = one(objects, "ClusterRole", METRICS_READER)
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    for role in _operator_roles(objects):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


# Values that change the Lease's name: the cluster id (as given, and as the operator sanitizes it) and
# the watched namespaces.
LEASE_VARIANTS = {
    "default": [],
    "cluster-id": ["--set", "operator.clusterId=prod-gz"],
    "uuid-cluster-id": ["--set", "operator.clusterId=1f0c6a8e-7d1b-4cde-9b1e-2a3f4b5c6d7e"],
    "sanitized-cluster-id": ["--set-string", "operator.clusterId=Prod_GZ/eu 1 (été)!"],
    "long-cluster-id": ["--set-string", "operator.clusterId=" + "Ab-" * 21],
    "punctuation-cluster-id": ["--set-string", "operator.clusterId=--.--"],
    "namespaces": ["--set", "rbac.namespaces={team-b,team-a}"],
    "cluster-id-and-namespaces": ["--set", "operator.clusterId=1f0c6a8e-7d1b-4cde-9b1e-2a3f4b5c6d7e",
                                  "--set", "rbac.namespaces={team-a}"],
    "lease-namespace": ["--set", "leaderElection.namespace=spotpool-leases", "--set", "operator.clusterId=x"],
}


@pytest.mark.parametrize("variant", LEASE_VARIANTS)
def test_the_lease_role_grants_the_operators_own_lease_only(helm: Helm, variant: str) -> None:
    """The chart names the Lease (templates/_helpers.tpl `spotpool.leaseName`) exactly as the operator
    does from the rendered flags (leadership.lease_name): get and update on that name only, since
    kube-system holds the control plane's Leases too; create by any name (RBAC cannot name an object
    being created)."""
    objects = helm.template(*LEASE_VARIANTS[variant])
    namespace, name = operator_lease(operator_args(objects))
    role = one(objects, "Role", "spotpool-leader-election")
    binding = one(objects, "RoleBinding", "spotpool-leader-election")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
    assert lease_rules(role) == {"get": [name], "update": [name], "create": None}
    assert len(name) <= 63


def test_two_releases_in_different_namespaces_share_the_lease(helm: Helm) -> None:
    """Default values, two releases in two namespaces (both cluster-wide, both tagging with the
    kube-system UID): the same Lease namespace and name, so they elect one leader between them."""
    def lease(*args: str, release: str, namespace: str) -> tuple[str, str]:
        """The Lease as the release's operator campaigns for it, checked against its Role."""
        objects = helm.template(*args, release=release, namespace=namespace)
        (role,) = [r for r in find(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
        lease_namespace, name = operator_lease(operator_args(objects))
        assert role["metadata"]["namespace"] == lease_namespace and lease_rules(role)["get"] == [name]
        return lease_namespace, name

    ops = lease(release="spotpool", namespace="spotpool-system")
    assert ops == lease(release="canary", namespace="canary") == ("kube-system", lease_name()) \
        == ("kube-system", "spotpool-leader")
    # The same scope from two namespaces: one Lease too; disjoint scopes (a team each): one each.
    team_a = lease("--set", "rbac.namespaces={team-a}", release="spotpool", namespace="spotpool-system")
    assert team_a == lease("--set", "rbac.namespaces={team-a}", release="team-a-ops", namespace="team-a")
    team_b = lease("--set", "rbac.namespaces={team-b}", release="team-b-ops", namespace="team-b")
    assert len({ops, team_a, team_b}) == 3 and {ops[0], team_a[0], team_b[0]} == {"kube-system"}


def test_service_monitor(helm: Helm) -> None:
    objects = helm.template(*VARIANTS["service-monitor"], *PROMETHEUS_OPERATOR_API)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == SELECTOR
    assert SELECTOR.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["spotpool-system"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "https-metrics"
    assert endpoint["path"] == "/metrics"
    # HTTPS with Prometheus's own ServiceAccount token; the self-signed certificate is not verified.
    assert endpoint["scheme"] == "https"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}

    # A token from a Secret instead (Prometheus Operators that deny ServiceMonitors file access).
    authorization = {"type": "Bearer", "credentials": {"name": "scraper-token", "key": "token"}}
    objects = helm.template(*VARIANTS["service-monitor"], *PROMETHEUS_OPERATOR_API,
                            "--set-json", f"serviceMonitor.authorization={json.dumps(authorization)}")
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == authorization and "bearerTokenFile" not in endpoint


def test_metrics_readers_are_bound_to_the_metrics_reader_cluster_role(helm: Helm) -> None:
    objects = helm.template()
    assert not find(objects, "ClusterRoleBinding", METRICS_READER), "bound to nobody by default"
    readers = [{"name": "prometheus-k8s", "namespace": "monitoring"}, {"name": "scraper"}]
    objects = helm.template("--set-json", f"metrics.readers={json.dumps(readers)}")
    binding = one(objects, "ClusterRoleBinding", METRICS_READER)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": METRICS_READER}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"},
        {"kind": "ServiceAccount", "name": "scraper", "namespace": "spotpool-system"},  # the release's
    ]


def test_a_certificate_secret_is_mounted_served_and_verified_by_the_service_monitor(helm: Helm) -> None:
    objects = helm.template("--set", "metrics.certSecret=spotpool-metrics-tls", *VARIANTS["service-monitor"],
                            *PROMETHEUS_OPERATOR_API)
    pod_spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert container["args"][1:8] == [*SERVING_ARGS, "--metrics-cert-file=/etc/spotpool/metrics-cert/tls.crt",
                                      "--metrics-key-file=/etc/spotpool/metrics-cert/tls.key"]
    assert {"name": "metrics-cert", "mountPath": "/etc/spotpool/metrics-cert", "readOnly": True} \
        in container["volumeMounts"]
    volume = next(v for v in pod_spec["volumes"] if v["name"] == "metrics-cert")
    assert volume["secret"] == {"secretName": "spotpool-metrics-tls", "defaultMode": 0o440,
                                "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}
    _restricted(pod_spec)
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": "spotpool-metrics-tls", "key": "ca.crt"}},
                                     "serverName": "spotpool.spotpool-system.svc"}


def test_metrics_secure_false_serves_plain_metrics_and_grants_no_reviews(helm: Helm) -> None:
    objects = helm.template("--set", "metrics.secure=false", *VARIANTS["service-monitor"], *PROMETHEUS_OPERATOR_API)
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--no-metrics-secure" in container["args"] and "--metrics-secure" not in container["args"]
    assert container["ports"][0] == {"name": "http-metrics", "containerPort": 8443, "protocol": "TCP"}
    assert not find(objects, "ClusterRole", METRICS_READER)
    assert not {r for r in _rules(objects) if r[1] in ("tokenreviews", "subjectaccessreviews")}
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "http-metrics" and not {"scheme", "tlsConfig", "bearerTokenFile"} & set(endpoint)
    assert "https://" not in one(objects, "Pod")["spec"]["containers"][0]["command"][2]


def test_service_monitor_needs_the_prometheus_operator_api(helm: Helm) -> None:
    # enabled, but the cluster does not serve monitoring.coreos.com/v1: nothing that would fail to apply
    objects = helm.template(*VARIANTS["service-monitor"])
    assert not find(objects, "ServiceMonitor")


def test_pod_disruption_budget(helm: Helm) -> None:
    assert not find(helm.template("--set", "podDisruptionBudget.enabled=false"), "PodDisruptionBudget")
    pdb = one(helm.template(*VARIANTS["pdb"]), "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}


def test_credentials_secret(helm: Helm) -> None:
    assert not find(helm.template(), "Secret")
    (secret,) = find(helm.template(*VARIANTS["credentials"]), "Secret")
    assert secret["metadata"]["name"] == "tencentcloud-credentials"
    assert secret["metadata"]["namespace"] == "spotpool-system"
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"secretId": "AKIDEXAMPLE", "secretKey": "example-key"}

    secrets = find(helm.template(*VARIANTS["credentials"], "--set", "credentials.token=session-token",
                                 "--set", "credentials.name=cam-key",
                                 "--set", "credentials.namespaces={team-a,team-b}"), "Secret")
    assert [(s["metadata"]["name"], s["metadata"]["namespace"]) for s in secrets] == [("cam-key", "team-a"),
                                                                                      ("cam-key", "team-b")]
    assert base64.b64decode(secrets[0]["data"]["token"]).decode() == "session-token"


def test_credentials_create_requires_the_key_pair(helm: Helm) -> None:
    proc = helm.run("template", "spotpool", CHART, "--set", "credentials.create=true",
                    "--set", "credentials.secretId=AKIDEXAMPLE", check=False)
    assert proc.returncode != 0
    assert "/credentials" in proc.stderr and "secretKey" in proc.stderr


@pytest.mark.parametrize(("setting", "where", "key"), [
    ("tpyo=1", "at ''", "tpyo"),
    ("operator.obseveInterval=30", "at '/operator'", "obseveInterval"),
    ("serviceMonitor.additonalLabels.release=kps", "at '/serviceMonitor'", "additonalLabels"),
    ("crds.keepp=false", "at '/crds'", "keepp"),
])
def test_schema_rejects_unknown_keys(helm: Helm, setting: str, where: str, key: str) -> None:
    proc = helm.run("template", "spotpool", CHART, "--set", setting, check=False)
    assert proc.returncode != 0
    assert f"{where}: additional properties '{key}' not allowed" in proc.stderr


@pytest.mark.parametrize("setting", ["operator.logFormat=yaml", "operator.observeInterval=0",
                                     "image.pullPolicy=Sometimes", "rbac.namespaces={Not_A_Namespace}"])
def test_schema_rejects_bad_values(helm: Helm, setting: str) -> None:
    proc = helm.run("template", "spotpool", CHART, "--set", setting, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr


# Objects whose keys are free by nature: string maps (labels, annotations, nodeSelector), resource
# lists, Kubernetes API objects passed through to the API server, and Helm's own `global`.
OPEN_OBJECTS = {"#/definitions/stringMap", "#/definitions/resourceList", "#/definitions/kubernetesObject",
                "#/properties/global"}


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: object, pointer: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and pointer not in OPEN_OBJECTS:
                assert node.get("additionalProperties") is False, f"{pointer} accepts unknown keys"
            for key, child in node.items():
                walk(child, f"{pointer}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{pointer}/{i}")

    walk(schema, "#")
    # and every key of values.yaml is described by the schema
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def _restricted(pod_spec: dict) -> None:
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod_spec.get(key)
    for container in pod_spec["containers"]:
        assert container["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "privileged": False,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert not any("hostPort" in p for p in container.get("ports", []))
    for volume in pod_spec.get("volumes", []):
        assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}


def test_restricted_security_context(helm: Helm) -> None:
    objects = helm.template()
    pod_spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    _restricted(pod_spec)
    # read-only root filesystem: a writable /tmp from an emptyDir
    assert pod_spec["containers"][0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod_spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    _restricted(one(objects, "Pod")["spec"])


def test_labels(helm: Helm) -> None:
    objects = helm.template(*VARIANTS["pdb"], *VARIANTS["credentials"])
    for obj in objects:
        labels = obj["metadata"]["labels"]
        if obj["kind"] == "Pod":  # the helm test Pod must not be selected by the metrics Service
            assert "app.kubernetes.io/name" not in labels
            continue
        assert STANDARD_LABELS.items() <= labels.items(), f"{obj['kind']} {obj['metadata']['name']}"
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
    assert SELECTOR.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert one(objects, "Service")["spec"]["selector"] == SELECTOR


def test_helm_test_pod_checks_healthz_and_the_metrics_refusal_through_the_service(helm: Helm) -> None:
    objects = helm.template()
    pod = one(objects, "Pod")
    service = one(objects, "Service")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"https-metrics": 8443, "http-health": 8081}
    script = container["command"][2]
    assert f'service = "{service["metadata"]["name"]}.spotpool-system.svc"' in script
    assert 'url = f"http://{service}:8081/healthz"' in script
    assert 'url = f"https://{service}:8443/metrics"' in script and "refused.code != 401" in script
    compile(script, "helm-test", "exec")  # the probe script is valid Python


def test_crd_copy_in_chart_is_byte_identical() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "no CRD in crds/"
    assert copy.keys() == source.keys(), "run `make sync-crds`"
    for name in source:
        assert copy[name] == source[name], f"charts/spotpool/files/crds/{name} differs from crds/: run `make sync-crds`"


def test_rendered_crd_is_the_crd_with_chart_metadata(helm: Helm) -> None:
    crd = one(helm.template(), "CustomResourceDefinition")
    source = yaml.safe_load((REPO / "crds" / "spotpool.io_spotcomputeenvironments.yaml").read_text())
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert STANDARD_LABELS.items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crd_switches(helm: Helm) -> None:
    not_kept = one(helm.template("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in not_kept["metadata"]
    assert not find(helm.template("--set", "crds.install=false"), "CustomResourceDefinition")


def test_dashboard_configmap(helm: Helm) -> None:
    dashboard = (CHART / "dashboards" / "spotpool.json").read_text()
    configmap = one(helm.template(), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "spotpool-system"
    assert configmap["data"]["spotpool.json"] == dashboard.rstrip("\n")
    assert json.loads(configmap["data"]["spotpool.json"])["uid"] == "spotpool-pools"

    configmap = one(helm.template("--set", "dashboards.label=grafana_dashboards", "--set-string",
                                  "dashboards.labelValue=spotpool", "--set", "dashboards.namespace=monitoring",
                                  "--set", "dashboards.annotations.grafana_folder=Spot"), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboards"] == "spotpool"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Spot"}
    assert not find(helm.template("--set", "dashboards.enabled=false"), "ConfigMap")


# -- credential sources (issue 19) ------------------------------------------------------------------

POD_IDENTITY = ["--set", "credentialSources.operatorIdentity=pod-identity",
                "--set", "podIdentity.roleArn=qcs::cam::uin/100000000001:roleName/spotpool-operator"]


def test_without_secrets_the_operator_gets_no_access_to_secrets(helm: Helm) -> None:
    for variant in ([], ["--set", "rbac.namespaces={team-a}"]):
        objects = helm.template("--set", "credentialSources.secrets=false", *variant)
        assert not {rule for rule in _rules(objects) if rule[1] == "secrets"}
        assert _rules(objects) == {rule for rule in LEAST_PRIVILEGE if rule[1] != "secrets"}
        assert "--no-secret-credentials" in operator_args(objects)


def test_pod_identity_through_tkes_webhook_annotates_the_service_account(helm: Helm) -> None:
    objects = helm.template(*POD_IDENTITY, "--set", "serviceAccount.annotations.team=platform")
    assert one(objects, "ServiceAccount")["metadata"]["annotations"] == {
        "team": "platform",
        "tke.cloud.tencent.com/role-arn": "qcs::cam::uin/100000000001:roleName/spotpool-operator",
        "tke.cloud.tencent.com/audience": "sts.cloud.tencent.com",
        "tke.cloud.tencent.com/token-expiration": "86400",
    }
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert "--operator-identity=pod-identity" in operator_args(objects)
    assert not [e for e in pod["containers"][0]["env"] if e["name"].startswith("TKE_")]  # the webhook's job


def test_pod_identity_without_the_webhook_projects_the_token_and_sets_the_variables(helm: Helm) -> None:
    objects = helm.template(*POD_IDENTITY, "--set", "podIdentity.webhook=false",
                            "--set", "podIdentity.providerId=tke-cls-abc", "--set", "podIdentity.region=ap-guangzhou",
                            "--set", "podIdentity.tokenExpiration=3600")
    assert "annotations" not in one(objects, "ServiceAccount")["metadata"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "pod-identity-token")
    assert env["TKE_WEB_IDENTITY_TOKEN_FILE"] == mount["mountPath"] + "/token"
    assert (env["TKE_REGION"], env["TKE_PROVIDER_ID"]) == ("ap-guangzhou", "tke-cls-abc")
    assert env["TKE_ROLE_ARN"] == "qcs::cam::uin/100000000001:roleName/spotpool-operator"
    volume = next(v for v in pod["volumes"] if v["name"] == "pod-identity-token")
    assert volume["projected"]["sources"] == [{"serviceAccountToken": {
        "path": "token", "audience": "sts.cloud.tencent.com", "expirationSeconds": 3600}}]


def test_who_may_use_which_source_reaches_the_command_line(helm: Helm) -> None:
    objects = helm.template("--set", "credentialSources.operatorIdentity=cvm-role", "--set",
                            "credentialSources.cvmRole=spotpool-node", "--set-json",
                            'credentialSources.allowedRoles=[{"namespace": "team-*", '
                            '"roleArn": "qcs::cam::uin/*:roleName/spotpool-team-*"}]',
                            "--set", "credentialSources.allowOperatorIdentity={platform}")
    args = operator_args(objects)
    for flag in ("--operator-identity=cvm-role", "--cvm-role=spotpool-node",
                 "--allow-role=team-*=qcs::cam::uin/*:roleName/spotpool-team-*", "--allow-operator-identity=platform"):
        assert flag in args
    default = operator_args(helm.template())
    assert not any(a.startswith(("--operator-identity", "--allow-", "--no-secret")) for a in default)
