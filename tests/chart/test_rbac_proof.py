"""The RBAC proof: the chart's permissions are enough, and each of them is needed.

Enough: the chart installed on the test control plane (limited-namespace mode, the test's
namespace only), the real `spotpool operator` started with the exact command line of the chart's
Deployment and authenticated with a TokenRequest token of the chart's ServiceAccount, runs the core
end-to-end scenario (its /metrics scraped over HTTPS with the token of a ServiceAccount the chart's
`metrics.readers` binds to the metrics-reader ClusterRole, 0 -> N Ready, a reclaim healed with
InstanceLost events, delete releases everything) without a single Forbidden.

Needed: the same, with one rule (verb) taken out of the installed Role or ClusterRole; the
scenario must then fail, at the step that rule serves, with the API server's Forbidden in the
operator's log. A rule the scenario passes without is not needed, and the chart should drop it.

The chart is installed with its defaults but for the namespace list, debug logging and short
observation intervals; in particular no cluster id, so the operator reads the kube-system
namespace's UID as it does in production.

Limited-namespace mode only: a cluster-wide operator on this shared control plane would adopt the
other tests' SpotComputeEnvironments.

The chart's args include --leader-elect (on by default), so the operator acts only while it holds its
Lease: the Lease rules of the separate leader-election Role (get and update on the operator's own
Lease, create on leases, in the Lease namespace: kube-system by default) are proven the same way.
Without `get` or `create` the operator never leads, so nothing is reconciled; without `update` it
creates the Lease, leads, cannot renew, and stops acting at its renew deadline for good: the
scenario is started after that moment (`after`), so that the first step breaks whatever the
machine's speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotpool.api.names import CLUSTER_TAG
from tests.chart.helm import Releases, one, operator_args, operator_lease
from tests.conftest import Cluster
from tests.support.kube import Kubectl, token_kubeconfig, wait_for
from tests.support.processes import DEMO_SECRET_ID, DEMO_SECRET_KEY, OperatorProcess, SimulatorProcess
from tests.support.specs import pool_spec

pytestmark = pytest.mark.cluster

POOL = "proof"
SECRET = "tencentcloud-credentials"  # the chart's default credentials.name
SCRAPER = "scraper"  # the ServiceAccount the chart's metrics.readers binds to the metrics-reader ClusterRole
EXPECTED = 4
RECLAIMED = 2
# How long a step may take with every permission (it takes a few seconds), and how long a negative
# case waits at the step its missing rule breaks before calling it broken.
STEP_TIMEOUT = 60.0
BROKEN_STEP_TIMEOUT = 15.0


class ScenarioFailed(AssertionError):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"step {step!r} did not succeed: {detail}")
        self.step = step


@dataclass
class Scenario:
    """The core end-to-end scenario, step by step, each step bounded in time."""

    kubectl: Kubectl
    namespace: str
    simulator: SimulatorProcess
    timeouts: dict[str, float]
    operator: OperatorProcess

    STEPS = ("metrics scraped", "Ready with 0", f"Ready with {EXPECTED}", "reclaim healed", "delete releases all")

    def run(self) -> None:
        self._step(self.STEPS[0], self._scrape)
        self._step(self.STEPS[1], self._create_empty)
        self._step(self.STEPS[2], self._scale_up)
        self._step(self.STEPS[3], self._reclaim)
        self._step(self.STEPS[4], self._delete)

    def _step(self, step: str, action: Callable[[float], None]) -> None:
        try:
            action(self.timeouts.get(step, STEP_TIMEOUT))
        except ScenarioFailed:
            raise
        except AssertionError as exc:
            raise ScenarioFailed(step, str(exc)) from None

    # -- the steps ---------------------------------------------------------------------------------
    def _scrape(self, timeout: float) -> None:
        """The chart's scraper reads /metrics (HTTPS, its bearer token: the operator asks the API
        server who holds it and whether that user may get /metrics)."""
        token = self.kubectl.run("create", "token", SCRAPER, f"--namespace={self.namespace}",
                                 "--duration=1h").stdout.strip()
        seen: list[int] = []

        def scraped() -> bool:
            response = self.operator.scrape(token)
            seen.append(response.status_code)
            return response.status_code == 200 and "spotpool_build_info" in response.text

        try:
            wait_for(scraped, timeout=timeout, what="/metrics to answer the scraper 200")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; answers: {sorted(set(seen))}") from None

    def _create_empty(self, timeout: float) -> None:
        self.kubectl.apply(json.dumps({
            "apiVersion": "spotpool.io/v1alpha1", "kind": "SpotComputeEnvironment",
            "metadata": {"name": POOL, "namespace": self.namespace},
            "spec": pool_spec(expectedCount=0, credentialsSecretRef={"name": SECRET}, endpoint=self.simulator.url),
        }))
        self._wait_ready(0, timeout)

    def _scale_up(self, timeout: float) -> None:
        self.kubectl.run("scale", f"sce/{POOL}", f"--replicas={EXPECTED}", f"--namespace={self.namespace}")
        self._wait_ready(EXPECTED, timeout)
        alive = self.simulator.alive(self.uid())
        assert len(alive) == EXPECTED
        # The chart sets no cluster id: the operator reads the kube-system namespace's UID, and tags
        # every instance with it, so two clusters sharing an account never touch each other's.
        kube_system = self.kubectl.get("namespace", "kube-system")
        assert kube_system is not None
        tags = {i["tags"].get(CLUSTER_TAG) for i in alive}
        assert tags == {kube_system["metadata"]["uid"]}, f"instances tagged {CLUSTER_TAG}={tags}"

    def _reclaim(self, timeout: float) -> None:
        uid = self.uid()
        reclaimed = [i["instanceId"] for i in self.simulator.alive(uid)][:RECLAIMED]
        self.simulator.control("POST", "reclaim", {"instanceIds": reclaimed})
        wait_for(lambda: self.simulator.alive(uid) and len(self.simulator.alive(uid)) == EXPECTED
                 and not set(reclaimed) & {i["instanceId"] for i in self.simulator.alive(uid)},
                 timeout=timeout, what=f"{EXPECTED} alive again, none of the reclaimed ones")
        self._wait_ready(EXPECTED, timeout)

        def reported() -> bool:
            lost = " ".join(e["message"] for e in self.events() if e["reason"] == "InstanceLost")
            return all(instance_id in lost for instance_id in reclaimed)

        wait_for(reported, timeout=timeout, what=f"InstanceLost Events naming {reclaimed}")

    def _delete(self, timeout: float) -> None:
        uid = self.uid()
        self.kubectl.run("delete", "sce", POOL, f"--namespace={self.namespace}", "--wait=false")
        wait_for(lambda: self.kubectl.get("sce", POOL, self.namespace) is None, timeout=timeout,
                 what=f"{POOL} to be deleted by the operator")
        assert self.simulator.alive(uid) == [], "instances left alive after the delete"

    # -- reading -----------------------------------------------------------------------------------
    def uid(self) -> str:
        obj = self.kubectl.get("sce", POOL, self.namespace)
        assert obj is not None
        return obj["metadata"]["uid"]

    def events(self) -> list[dict[str, Any]]:
        return self.kubectl.json("get", "events", f"--namespace={self.namespace}",
                                 f"--field-selector=involvedObject.name={POOL}")["items"]

    def _wait_ready(self, count: int, timeout: float) -> None:
        def ready() -> bool:
            obj = self.kubectl.get("sce", POOL, self.namespace) or {}
            status = obj.get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            return (conditions.get("Ready") == "True" and status.get("runningCount") == count
                    and status.get("currentCount") == count)

        wait_for(ready, timeout=timeout, what=f"{POOL} to be Ready with {count} running")


# -- the chart, installed and (for the negative cases) with one rule taken out --------------------

@dataclass
class Installed:
    release: str
    args: list[str]  # the chart Deployment's container args
    service_account: str
    role: str  # the namespaced rules, in the test's namespace
    cluster_role: str  # the cluster-scoped reads
    lease_role: str  # the Lease rules, in the Lease namespace (kube-system by default)
    lease_namespace: str


def install(releases: Releases, namespace: str, leases: list[tuple[str, str]]) -> Installed:
    """The chart in `namespace`, serving only `namespace`. (Tests ask for `namespace` before
    `releases`, so the release is uninstalled, cluster-scoped RBAC included, before the namespace
    holding its record goes.) The Lease its operator campaigns for goes into `leases`, to be deleted
    after the test: it lives outside the test's namespace."""
    release, _ = releases.install(
        namespace, "--set", "crds.install=false", "--set", f"rbac.namespaces={{{namespace}}}",
        "--set", "operator.logLevel=debug", "--set-json", f'metrics.readers=[{{"name": "{SCRAPER}"}}]',
        "--set-json", "operator.observeInterval=2", "--set-json", "operator.progressInterval=0.5")
    manifest = releases.helm.run("get", "manifest", release, f"--namespace={namespace}").stdout
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    lease_role = one(objects, "Role", f"{release}-spotpool-leader-election")["metadata"]
    leases.append(operator_lease(operator_args(objects)))
    assert leases[-1][0] == lease_role["namespace"]
    return Installed(release, pod["containers"][0]["args"], pod["serviceAccountName"],
                     one(objects, "Role", f"{release}-spotpool")["metadata"]["name"],
                     one(objects, "ClusterRole", f"{release}-spotpool-cluster")["metadata"]["name"],
                     lease_role["name"], lease_role["namespace"])


def remove_verbs(kubectl: Kubectl, kind: str, name: str, namespace: str | None, api_group: str,
                 resource: str, verbs: set[str]) -> None:
    """Takes `verbs` on `resource` out of the installed Role (or ClusterRole); a rule left with no
    verb goes. Fails unless the rule was there to take out."""
    ns = [f"--namespace={namespace}"] if namespace else []
    obj = kubectl.json("get", kind, name, *ns)
    rules, removed = [], set()
    for rule in obj["rules"]:
        if api_group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            assert rule["apiGroups"] == [api_group] and rule["resources"] == [resource], rule  # nothing else lost
            removed |= set(rule["verbs"]) & verbs
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v not in verbs]}
            if not rule["verbs"]:
                continue
        rules.append(rule)
    assert removed == verbs, f"the chart's {kind} {name} does not grant {verbs} on {resource}: {obj['rules']}"
    obj["rules"] = rules
    kubectl.run("replace", "-f", "-", input=json.dumps(obj))


def forbidden(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if "Forbidden" in line or " 403" in line or '"403' in line]


MAIN_ROLE, LEASE_ROLE, CLUSTER_ROLE = "role", "leader-election role", "clusterrole"


@dataclass(frozen=True)
class Rule:
    """Verbs of a rule of one of the chart's roles, and the scenario step that cannot succeed
    without them. `role`: the Role of the watched namespace (MAIN_ROLE), the leader-election Role in
    the Lease namespace (LEASE_ROLE), or the ClusterRole (CLUSTER_ROLE). `after`: a line the
    operator logs once the missing verb has taken effect, awaited before the scenario starts."""

    api_group: str
    resource: str
    verbs: tuple[str, ...]
    breaks: str  # the step that must fail
    role: str = MAIN_ROLE
    after: str | None = None

    @property
    def cluster(self) -> bool:
        return self.role == CLUSTER_ROLE

    def __str__(self) -> str:
        return f"{'/'.join(self.verbs)} {self.resource}"


SCRAPED, READY_0, READY_N, HEALED, DELETED = Scenario.STEPS
STARTUP = "operator starts"
NEEDED_RULES = [
    # Every status write (conditions, counts, launch records) goes through the status subresource.
    Rule("spotpool.io", "spotcomputeenvironments/status", ("patch",), READY_0),
    # Events are best effort: the pool converges, but InstanceLost (and every other Event) is lost.
    Rule("", "events", ("create",), HEALED),
    # The CAM credentials come from the Secret the pool names; without them nothing is observed.
    Rule("", "secrets", ("get",), READY_0),
    # Nothing is bought before the Secret carries spotpool's finalizer (it must outlive every
    # instance it bought, namespace deletion included), and adding one is a patch.
    Rule("", "secrets", ("patch",), READY_0),
    # Key pairs come from a watch (kopf lists, then watches, and fills its index before any handler
    # runs), not from a read per reconcile.
    Rule("", "secrets", ("list",), READY_0),
    Rule("", "secrets", ("watch",), READY_0),
    # kopf lists, then watches, the pools; without either the operator never sees one.
    Rule("spotpool.io", "spotcomputeenvironments", ("list",), READY_0),
    Rule("spotpool.io", "spotcomputeenvironments", ("watch",), READY_0),
    # kopf keeps its finalizer and handler state on the object itself.
    Rule("spotpool.io", "spotcomputeenvironments", ("patch",), READY_N),
    # kopf lists the namespaces before it serves any, even with exact --namespace names. (Without
    # `watch` it only warns, after about a minute of retries, that new namespaces go unnoticed.)
    Rule("", "namespaces", ("list",), READY_0, role=CLUSTER_ROLE),
    # The default cluster id is the kube-system namespace's UID; unreadable, the operator refuses to
    # start rather than share a made-up id with other installations on the same account.
    Rule("", "namespaces", ("get",), STARTUP, role=CLUSTER_ROLE),
    # Leader election (--leader-elect is in the chart's args): every attempt begins by reading the
    # Lease; unreadable, the operator never leads, and a standby never acts.
    Rule("coordination.k8s.io", "leases", ("get",), READY_0, role=LEASE_ROLE),
    # The first replica creates the Lease; without `create` nobody ever holds it.
    Rule("coordination.k8s.io", "leases", ("create",), READY_0, role=LEASE_ROLE),
    # Renewing (and taking over, and releasing) is a conditional update: the operator leads from
    # the Lease's creation until its renew deadline, then stops acting for good.
    Rule("coordination.k8s.io", "leases", ("update",), READY_0, role=LEASE_ROLE, after="stops leading"),
    # /metrics behind a token (metrics.secure, on by default): the operator asks who holds the
    # scraper's token; without `create` on tokenreviews it cannot, and answers 503 to everyone.
    Rule("authentication.k8s.io", "tokenreviews", ("create",), SCRAPED, role=CLUSTER_ROLE),
    # ...then whether that user may get /metrics; without `create` on subjectaccessreviews, 503 too.
    Rule("authorization.k8s.io", "subjectaccessreviews", ("create",), SCRAPED, role=CLUSTER_ROLE),
]


def operator_process(cluster: Cluster, installed: Installed, namespace: str, tmp_path: Path) -> OperatorProcess:
    """The operator with the Deployment's flags, authenticated as the chart's ServiceAccount."""
    kubectl = cluster.kubectl
    token = kubectl.run("create", "token", installed.service_account, f"--namespace={namespace}",
                        "--duration=1h").stdout.strip()
    kubeconfig = token_kubeconfig(cluster.kubeconfig, token, namespace, tmp_path / "operator.kubeconfig")
    return OperatorProcess(tmp_path / "operator", kubeconfig, args=tuple(installed.args))


def scraper(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("create", "serviceaccount", SCRAPER, f"--namespace={namespace}")


def secret(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": namespace},
        "stringData": {"secretId": DEMO_SECRET_ID, "secretKey": DEMO_SECRET_KEY},
    }))


def release_pool(kubectl: Kubectl, namespace: str) -> None:
    # With the operator gone (or crippled) our finalizer would pin the namespace forever.
    kubectl.run("patch", "sce", POOL, f"--namespace={namespace}", "--type=merge",
                "-p", '{"metadata":{"finalizers":[]}}', check=False)


def test_the_charts_permissions_are_enough_for_the_core_scenario(
    cluster: Cluster, crd: str, namespace: str, releases: Releases, simulator: SimulatorProcess,
    leases: list[tuple[str, str]], tmp_path: Path,
) -> None:
    installed = install(releases, namespace, leases)
    assert "--namespace=" + namespace in installed.args and "--all-namespaces" not in installed.args
    assert "--metrics-secure" in installed.args
    scraper(cluster.kubectl, namespace)
    operator = operator_process(cluster, installed, namespace, tmp_path).start()
    secret(cluster.kubectl, namespace)  # after the start, as users apply it: only a watch sees it
    try:
        Scenario(cluster.kubectl, namespace, simulator, {}, operator).run()
        assert not forbidden(operator.logs()), "\n".join(forbidden(operator.logs())[:20])
        # Only the chart's scraper: no token is 401, a ServiceAccount the chart does not bind is 403.
        assert operator.scrape().status_code == 401
        default = cluster.kubectl.run("create", "token", "default", f"--namespace={namespace}").stdout.strip()
        assert operator.scrape(default).status_code == 403
        assert "leads (term 1" in operator.logs(), "the operator acted without electing itself"
    finally:
        operator.stop()
        release_pool(cluster.kubectl, namespace)


@pytest.mark.parametrize("rule", NEEDED_RULES, ids=str)
def test_the_scenario_fails_without_each_rule(
    rule: Rule, cluster: Cluster, crd: str, namespace: str, releases: Releases,
    simulator: SimulatorProcess, leases: list[tuple[str, str]], tmp_path: Path,
) -> None:
    installed = install(releases, namespace, leases)
    if rule.role == CLUSTER_ROLE:
        remove_verbs(cluster.kubectl, "clusterrole", installed.cluster_role, None, rule.api_group, rule.resource,
                     set(rule.verbs))
    elif rule.role == LEASE_ROLE:
        assert installed.lease_namespace == "kube-system"
        assert "--leader-election-namespace=kube-system" in installed.args and "--leader-elect" in installed.args
        remove_verbs(cluster.kubectl, "role", installed.lease_role, installed.lease_namespace, rule.api_group,
                     rule.resource, set(rule.verbs))
    else:
        remove_verbs(cluster.kubectl, "role", installed.role, namespace, rule.api_group, rule.resource,
                     set(rule.verbs))
    scraper(cluster.kubectl, namespace)
    operator = operator_process(cluster, installed, namespace, tmp_path)
    started = time.monotonic()
    if rule.breaks == STARTUP:
        secret(cluster.kubectl, namespace)
        with pytest.raises(AssertionError, match="operator exited"):
            operator.start()
        assert "cannot tell this installation's instances from others'" in operator.logs()
        assert forbidden(operator.logs()), operator.logs()[-3000:]
        return
    operator.start()
    secret(cluster.kubectl, namespace)  # after the start, as users apply it: only a watch sees it
    try:
        if rule.after is not None:
            # With the chart's timings: the renew deadline (10 s) after the Lease was created.
            wait_for(lambda: rule.after in operator.logs(), timeout=30, what=f"{rule.after!r} in the operator log")
        with pytest.raises(ScenarioFailed) as failed:
            Scenario(cluster.kubectl, namespace, simulator, {rule.breaks: BROKEN_STEP_TIMEOUT}, operator).run()
        assert failed.value.step == rule.breaks, (
            f"without {rule} the scenario failed at {failed.value.step!r}, expected {rule.breaks!r}: "
            f"{failed.value}")
        denied = forbidden(operator.logs())
        assert denied, f"without {rule} no Forbidden in the operator log:\n{operator.logs()[-3000:]}"
    finally:
        operator.stop()
        release_pool(cluster.kubectl, namespace)
    print(f"without {rule}: {failed.value} ({time.monotonic() - started:.0f} s); log: {denied[0][:300]}")
