"""The chart and deploy/ installed for real: the image built from deploy/Dockerfile, started by a real
kubelet (containerd + runc) with the chart's security context, read-only root, probes and projected
service-account token; the operator talks to the apiserver through the `kubernetes` Service with
that token and the chart's RBAC only, reconciles a pool against the simulator, is scraped by a real
Prometheus through its Service over HTTPS with the token of the ServiceAccount the chart's
`metrics.readers` binds (the operator checks it with TokenReview and SubjectAccessReview: no token
401, another ServiceAccount's 403), passes `helm test` (which resolves the Service through cluster
DNS), rolls on `helm upgrade`, and leaves only the CRD on `helm uninstall`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from spotpool.controller.leadership import lease_name
from tests.chart.helm import CHART
from tests.conftest import CRD_NAME, REPO
from tests.e2e.conftest import Pools
from tests.node.conftest import NETWORK, NodeCluster, OperatorImage
from tests.support.identity import (
    AUDIENCE,
    EXTERNAL_ID,
    OPERATOR_ROLE_ARN,
    PROVIDER_ID,
    TEAM_ACCOUNT,
    TEAM_ROLE_ARN,
    trusting_apiserver,
)
from tests.support.kube import unique_name, wait_for
from tests.support.processes import SimulatorProcess, simulator_config
from tests.support.prometheus import PrometheusProcess

pytestmark = pytest.mark.cluster

POD_TIMEOUT = 180  # first start on a cold node: image unpack, sandbox, probes


@pytest.fixture
def node_simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    """The simulator where the node's pods reach it: on the pod network's gateway. The test drives
    its control API from that address too, so the control API is opened to non-loopback peers (the
    pods never call it)."""
    base = simulator_config()
    config = base.model_copy(update={"api": base.api.model_copy(update={"allow_remote_control": True})})
    sim = SimulatorProcess(tmp_path / "simulator", config, host=NETWORK.gateway).start()
    yield sim
    sim.stop()


def operator_pods(cluster: NodeCluster, namespace: str, instance: str | None = None) -> list[dict[str, Any]]:
    selector = "app.kubernetes.io/component=operator"
    if instance:
        selector += f",app.kubernetes.io/instance={instance}"
    return cluster.kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return pod.get("status", {}).get("phase") == "Running" and conditions.get("Ready") == "True"


def wait_pods_ready(cluster: NodeCluster, namespace: str, instance: str | None, replicas: int,
                    exclude: set[str] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    """Wait until exactly `replicas` operator pods, none of them in `exclude`, are Running and Ready."""
    def ready() -> list[dict[str, Any]] | None:
        pods = [p for p in operator_pods(cluster, namespace, instance) if not p["metadata"].get("deletionTimestamp")]
        fresh = [p for p in pods if p["metadata"]["uid"] not in exclude]
        return fresh if len(fresh) == replicas == len(pods) and all(map(pod_ready, fresh)) else None

    try:
        return wait_for(ready, timeout=POD_TIMEOUT, interval=1, what=f"{replicas} operator pod(s) Ready in {namespace}")
    except AssertionError as exc:
        events = cluster.kubectl.run("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
        logs = cluster.kubectl.run("logs", "-n", namespace, "-l", "app.kubernetes.io/component=operator",
                                   "--tail=30", "--prefix", check=False).stdout
        raise AssertionError(f"{exc}\nevents:\n{events[-4000:]}\nlogs:\n{logs[-4000:]}") from None


def assert_runs_as_the_chart_says(cluster: NodeCluster, pod: dict[str, Any], image: OperatorImage,
                                  service_account: str) -> None:
    """What the kubelet actually did with the pod spec: the image, the user, the read-only root, the
    projected token; checked inside the running container, not in the manifest."""
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == service_account
    container = spec["containers"][0]
    assert container["image"] == image.chart_reference
    assert "env" not in container or not any(e["name"] == "KUBECONFIG" for e in container["env"])
    projected = [v for v in spec["volumes"] if "projected" in v]
    assert any("serviceAccountToken" in s for v in projected for s in v["projected"]["sources"]), spec["volumes"]
    assert pod["status"]["containerStatuses"][0]["imageID"], "the kubelet reports the image it ran"
    probe = (
        "import os, json, pathlib\n"
        "token = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount/token').read_text()\n"
        "payload = token.split('.')[1]; payload += '=' * (-len(payload) % 4)\n"
        "import base64; claims = json.loads(base64.urlsafe_b64decode(payload))\n"
        "try:\n    open('/opt/venv/written', 'w'); root_writable = True\n"
        "except OSError:\n    root_writable = False\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'root_writable': root_writable,\n"
        "  'tmp_writable': os.access('/tmp', os.W_OK), 'sub': claims['sub'], 'bound_pod': claims.get(\n"
        "  'kubernetes.io', {}).get('pod', {}).get('name'), 'host': os.environ['KUBERNETES_SERVICE_HOST'],\n"
        "  'caps': [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]}))\n"
    )
    out = cluster.kubectl.run("exec", "-n", namespace, name, "-c", container["name"], "--", "python", "-c",
                              probe).stdout
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts["uid"] == 65532 and facts["gid"] == 65532, facts
    assert facts["root_writable"] is False and facts["tmp_writable"] is True, facts
    assert int(facts["caps"], 16) == 0, facts
    # A bound token from the TokenRequest API, for this very pod and service account.
    assert facts["sub"] == f"system:serviceaccount:{namespace}:{service_account}", facts
    assert facts["bound_pod"] == name, facts
    kubernetes_service = cluster.kubectl.json("get", "service", "kubernetes", "-n", "default")
    assert facts["host"] == kubernetes_service["spec"]["clusterIP"], facts


def endpoint_flags(simulator: SimulatorProcess) -> list[str]:
    """The administrator's allow-list for a simulator on the node network (plain http, so the
    development flag too): pools may name no other endpoint than Tencent's otherwise."""
    return [f"--allowed-endpoint={simulator.url}", "--allow-insecure-endpoints"]


def reconcile_a_pool(cluster: NodeCluster, simulator: SimulatorProcess, count: int = 3) -> tuple[Pools, str]:
    """A pool in a namespace of its own, converged by the in-cluster operator against the simulator."""
    namespace = unique_name("pools")
    cluster.kubectl.run("create", "namespace", namespace)
    wait_for(lambda: cluster.kubectl.get("serviceaccount", "default", namespace), timeout=30,
             what=f"namespace {namespace} to be set up")
    pools = Pools(cluster.kubectl, namespace, simulator)
    pools.secret()
    pools.create("farm", expectedCount=count)
    pools.wait_ready("farm", count, timeout=120)
    assert len(simulator.alive(pools.uid("farm"))) == count
    return pools, namespace


class ServiceEndpointsDiscovery:
    """Prometheus HTTP service discovery for one Service port: the ready endpoints of the Service's
    EndpointSlices, read from the API on every refresh, labelled with their pod, which is what
    kubernetes_sd_configs' `endpoints` role (behind a ServiceMonitor) gives Prometheus."""

    def __init__(self, cluster: NodeCluster, namespace: str, service: str, port_name: str) -> None:
        self.cluster, self.namespace, self.service, self.port_name = cluster, namespace, service, port_name
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/targets"

    def targets(self) -> list[dict[str, Any]]:
        slices = self.cluster.kubectl.json("get", "endpointslices", "-n", self.namespace, "-l",
                                           f"kubernetes.io/service-name={self.service}")["items"]
        groups = []
        for item in slices:
            port = next(p["port"] for p in item.get("ports") or [] if p.get("name") == self.port_name)
            for endpoint in item.get("endpoints") or []:
                if endpoint.get("conditions", {}).get("ready"):
                    groups.append({"targets": [f"{address}:{port}" for address in endpoint["addresses"]],
                                   "labels": {"pod": endpoint.get("targetRef", {}).get("name", "")}})
        return groups

    def start(self) -> ServiceEndpointsDiscovery:
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(discovery.targets()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def test_helm_install_runs_the_operator_on_a_real_node_through_upgrade_and_uninstall(
    node_cluster: NodeCluster, operator_image: OperatorImage, node_simulator: SimulatorProcess, tmp_path: Path
) -> None:
    cluster, kubectl, helm = node_cluster, node_cluster.kubectl, node_cluster.helm
    namespace, release = unique_name("spotpool"), unique_name("sp")
    kubectl.run("create", "namespace", namespace)
    # Prometheus's ServiceAccount, which the chart's metrics.readers binds to its metrics-reader role.
    kubectl.run("create", "serviceaccount", "prometheus", f"--namespace={namespace}")
    # Default values but the cluster id, the simulator's endpoint allowed and the metrics reader: the
    # image is the chart's own reference, loaded into the node's runtime without a registry.
    helm.run("install", release, CHART, f"--namespace={namespace}", "--set", f"operator.clusterId={release}",
             "--set-json", json.dumps([node_simulator.url]).join(("endpoints.allowed=", "")),
             "--set", "endpoints.allowInsecure=true",
             "--set-json", 'metrics.readers=[{"name": "prometheus"}]',
             "--wait", f"--timeout={POD_TIMEOUT}s", timeout=POD_TIMEOUT + 60)
    deployment = kubectl.json("get", "deployment", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
    replicas = deployment["items"][0]["spec"]["replicas"]
    pods = wait_pods_ready(cluster, namespace, release, replicas)
    service_account = pods[0]["spec"]["serviceAccountName"]
    for pod in pods:
        assert_runs_as_the_chart_says(cluster, pod, operator_image, service_account)

    pools, pool_namespace = reconcile_a_pool(cluster, node_simulator)

    # Prometheus scrapes each pod behind the metrics Service, as the chart's ServiceMonitor makes it
    # do: HTTPS (the operator's self-signed certificate, not verified), with its ServiceAccount's
    # token; the leader reports the pool. Debian's Prometheus is built without kubernetes_sd_configs,
    # so the Service's EndpointSlices reach it through http_sd_configs instead (served below from the
    # API), and the token is a TokenRequest one in a file, as a Pod's projected token would be.
    service = kubectl.json("get", "service", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
    svc = service["items"][0]
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "https-metrics")
    discovery = ServiceEndpointsDiscovery(cluster, namespace, svc["metadata"]["name"], "https-metrics").start()
    token = kubectl.run("create", "token", "prometheus", f"--namespace={namespace}", "--duration=1h").stdout.strip()
    token_file = tmp_path / "prometheus-token"
    token_file.write_text(token)
    scrape = [{"job_name": "spotpool", "scheme": "https",
               "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
               "tls_config": {"insecure_skip_verify": True},
               "http_sd_configs": [{"url": discovery.url, "refresh_interval": "1s"}]}]
    prometheus = PrometheusProcess(tmp_path / "prometheus", [], scrape_configs=scrape).start()
    try:
        def every_pod_up() -> bool:
            targets = prometheus.active_targets()
            return len(targets) == replicas and all(t["health"] == "up" for t in targets)

        wait_for(every_pod_up, timeout=60, what=f"Prometheus to scrape all {replicas} operator pods")
        assert {t["labels"]["pod"] for t in prometheus.active_targets()} == {p["metadata"]["name"] for p in pods}
        wait_for(lambda: prometheus.query(
            f'spotpool_environment_expected_instances{{namespace="{pool_namespace}",environment="farm"}} == 3'),
            timeout=60, what="Prometheus to see the pool's expected instances")
    finally:
        prometheus.stop()
        discovery.stop()
    # And the Service's ClusterIP answers from the host too (kube-proxy routes it to a Ready pod), to
    # the chart's scraper only: no token 401, another ServiceAccount's token 403.
    url = f"https://{svc['spec']['clusterIP']}:{port}/metrics"
    metrics = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10, verify=False)
    assert metrics.status_code == 200 and "spotpool_build_info" in metrics.text
    assert httpx.get(url, timeout=10, verify=False).status_code == 401
    other = kubectl.run("create", "token", "default", f"--namespace={namespace}").stdout.strip()
    assert httpx.get(url, headers={"Authorization": f"Bearer {other}"}, timeout=10, verify=False).status_code == 403

    # helm test: a pod of the same image fetches /healthz (plain) by the Service's DNS name, and
    # /metrics without a token is refused.
    test = helm.run("test", release, f"--namespace={namespace}", "--logs", timeout=POD_TIMEOUT)
    assert "Succeeded" in test.stdout and " 200 " in test.stdout and " 401 without a token" in test.stdout, \
        test.stdout

    # helm upgrade changes the pod template: every pod is replaced, and the new ones become Ready.
    before = {p["metadata"]["uid"] for p in pods}
    helm.run("upgrade", release, CHART, f"--namespace={namespace}", "--reuse-values", "--set",
             "operator.logLevel=debug", "--wait", f"--timeout={POD_TIMEOUT}s", timeout=POD_TIMEOUT + 60)
    rolled = wait_pods_ready(cluster, namespace, release, replicas, exclude=before)
    assert all("--log-level=debug" in p["spec"]["containers"][0]["args"] for p in rolled)
    pools.scale("farm", 4)
    pools.wait_ready("farm", 4, timeout=120)

    # Release the pool while an operator still runs, then uninstall: only the CRD stays (and the
    # Prometheus ServiceAccount, made by this test, goes first).
    kubectl.run("delete", "serviceaccount", "prometheus", f"--namespace={namespace}")
    uid = pools.uid("farm")
    pools.delete("farm", timeout=120)
    assert node_simulator.alive(uid) == [], "the operator released every instance it owned"
    helm.run("uninstall", release, f"--namespace={namespace}", "--wait", f"--timeout={POD_TIMEOUT}s",
             timeout=POD_TIMEOUT + 60)
    wait_for(lambda: not operator_pods(cluster, namespace, release), timeout=120, what="operator pods to go")
    label = f"app.kubernetes.io/instance={release}"
    left = kubectl.json("get", "all,serviceaccounts,secrets,configmaps,roles,rolebindings,poddisruptionbudgets",
                        "-n", namespace, "-l", label)["items"]
    assert left == [], [f"{o['kind']}/{o['metadata']['name']}" for o in left]
    # The leader-election Role and RoleBinding lived in kube-system, with the Lease: gone too.
    left = kubectl.json("get", "roles,rolebindings", "-n", "kube-system", "-l", label)["items"]
    assert left == [], [f"{o['kind']}/{o['metadata']['name']}" for o in left]
    # What the operator made at run time: only its leader-election Lease, in kube-system, which stays
    # by design (docs/high-availability.md: every installation with the same cluster id and scope
    # shares it). Nothing else but what every namespace has. (The Lease still names the last leader:
    # helm deletes the RBAC and the ServiceAccount while the pod is stopping, so its release of the
    # Lease is refused.)
    unlabelled = kubectl.json("get", "serviceaccounts,secrets,configmaps,leases.coordination.k8s.io",
                              "-n", namespace)["items"]
    left = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in unlabelled)
    assert left == ["ConfigMap/kube-root-ca.crt", "ServiceAccount/default"], left
    lease = kubectl.get("lease", lease_name(release), "kube-system")  # operator.clusterId={release}, cluster-wide
    assert lease is not None
    kubectl.run("delete", "lease", lease_name(release), "-n", "kube-system")
    cluster_wide = kubectl.json("get", "clusterroles,clusterrolebindings", "-l", label)["items"]
    assert cluster_wide == [], [o["metadata"]["name"] for o in cluster_wide]
    assert kubectl.get("customresourcedefinition", CRD_NAME) is not None, "the CRD is kept"
    kubectl.run("delete", "namespace", pool_namespace, namespace, "--wait=false")


def test_kustomize_deploy_runs_the_operator_on_a_real_node_and_reconciles(
    node_cluster: NodeCluster, operator_image: OperatorImage, node_simulator: SimulatorProcess
) -> None:
    cluster, kubectl = node_cluster, node_cluster.kubectl
    kubectl.run("apply", "-k", str(REPO / "deploy"), timeout=120)  # as README says
    deployment = kubectl.json("get", "deployment", "-n", "spotpool-system",
                              "-l", "app.kubernetes.io/component=operator")
    # The administrator allows the simulator's endpoint (a JSON patch of the args, as README shows).
    name = deployment["items"][0]["metadata"]["name"]
    patch = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": flag}
             for flag in endpoint_flags(node_simulator)]
    kubectl.run("patch", "deployment", name, "-n", "spotpool-system", "--type=json", "-p", json.dumps(patch))
    kubectl.run("rollout", "status", f"deployment/{name}", "-n", "spotpool-system", f"--timeout={POD_TIMEOUT}s",
                timeout=POD_TIMEOUT + 30)
    deployment = kubectl.json("get", "deployment", "-n", "spotpool-system",
                              "-l", "app.kubernetes.io/component=operator")
    replicas = deployment["items"][0]["spec"]["replicas"]
    pods = wait_pods_ready(cluster, "spotpool-system", None, replicas)
    assert_runs_as_the_chart_says(cluster, pods[0], operator_image, pods[0]["spec"]["serviceAccountName"])
    pools, pool_namespace = reconcile_a_pool(cluster, node_simulator, count=2)
    pools.delete("farm", timeout=120)
    kubectl.run("delete", "namespace", pool_namespace, "--wait=false")
    kubectl.run("delete", "-k", str(REPO / "deploy"), "--wait=true", timeout=180)
    wait_for(lambda: kubectl.get("namespace", "spotpool-system") is None, timeout=120,
             what="the spotpool-system namespace to be deleted")


def test_an_operator_pod_with_pod_identity_and_no_secret_access_buys_in_a_teams_role(
    node_cluster: NodeCluster, operator_image: OperatorImage, tmp_path: Path
) -> None:
    """Issue 19 on a real node: the chart with `credentialSources.secrets: false` (no Secret RBAC,
    no Secret watch) and TKE pod identity without the webhook (the chart projects a ServiceAccount
    token for STS's audience and sets the TKE_* variables). The operator pod exchanges its token at
    the simulator's STS, which checks it against this cluster's JWKS and the operator role's trust
    in exactly this ServiceAccount, assumes the team's role, and buys in the team's account."""
    cluster, kubectl, helm = node_cluster, node_cluster.kubectl, node_cluster.helm
    namespace, release, account = unique_name("spotpool"), unique_name("sp"), "spotpool-operator"
    kubectl.run("create", "namespace", namespace)
    probe = kubectl.run("create", "token", "default", f"--namespace={namespace}", f"--audience={AUDIENCE}").stdout
    base = simulator_config()
    base = base.model_copy(update={"api": base.api.model_copy(update={"allow_remote_control": True})})
    config = trusting_apiserver(base, kubectl, probe.strip(), f"system:serviceaccount:{namespace}:{account}")
    sim = SimulatorProcess(tmp_path / "identity-simulator", config, host=NETWORK.gateway).start()
    pool_namespace = unique_name("pools")
    try:
        helm.run("install", release, CHART, f"--namespace={namespace}", "--set", f"operator.clusterId={release}",
                 "--set-json", json.dumps([sim.url]).join(("endpoints.allowed=", "")),
                 "--set", "endpoints.allowInsecure=true", "--set", f"serviceAccount.name={account}",
                 "--set", "credentialSources.operatorIdentity=pod-identity", "--set", "credentialSources.secrets=false",
                 "--set", f"credentialSources.stsEndpoint={sim.url}",
                 "--set-json", json.dumps([{"namespace": pool_namespace, "roleArn": "qcs::cam::uin/*:roleName/team-*"}])
                 .join(("credentialSources.allowedRoles=", "")),
                 "--set", "podIdentity.webhook=false", "--set", f"podIdentity.roleArn={OPERATOR_ROLE_ARN}",
                 "--set", f"podIdentity.providerId={PROVIDER_ID}", "--set", "podIdentity.region=ap-guangzhou",
                 "--wait", f"--timeout={POD_TIMEOUT}s", timeout=POD_TIMEOUT + 60)
        deployment = kubectl.json("get", "deployment", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
        wait_pods_ready(cluster, namespace, release, deployment["items"][0]["spec"]["replicas"])
        who = f"system:serviceaccount:{namespace}:{account}"
        for verb in ("get", "list", "watch", "patch"):
            allowed = kubectl.run("auth", "can-i", verb, "secrets", "--all-namespaces", f"--as={who}", check=False)
            assert allowed.stdout.strip() == "no", f"{verb} secrets: {allowed.stdout}"

        kubectl.run("create", "namespace", pool_namespace)
        wait_for(lambda: kubectl.get("serviceaccount", "default", pool_namespace), timeout=30,
                 what=f"namespace {pool_namespace} to be set up")
        pools = Pools(kubectl, pool_namespace, sim)
        pools.create("farm", expectedCount=2, credentialsSecretRef=None,
                     credentials={"source": "Role", "roleArn": TEAM_ROLE_ARN, "externalId": EXTERNAL_ID})
        farm = pools.wait_ready("farm", 2, timeout=120)
        uid = farm["metadata"]["uid"]
        assert farm["status"]["account"]["id"] == TEAM_ACCOUNT
        assert {i["accountId"] for i in sim.instances() if i["tags"].get("spotpool.io/environment-uid") == uid} \
            == {TEAM_ACCOUNT}
        assert [c for c in sim.calls("AssumeRoleWithWebIdentity") if c["errorCode"] is None]
        pools.delete("farm", timeout=120)
        assert sim.alive(uid) == []
        helm.run("uninstall", release, f"--namespace={namespace}", "--wait", f"--timeout={POD_TIMEOUT}s",
                 timeout=POD_TIMEOUT + 60)
        kubectl.run("delete", "lease", lease_name(release), "-n", "kube-system", check=False)
    finally:
        sim.stop()
        kubectl.run("delete", "namespace", pool_namespace, namespace, "--wait=false", check=False)
