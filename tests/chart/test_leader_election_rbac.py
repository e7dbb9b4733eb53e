"""The RBAC proof for leader election: the chart's Lease rules are enough, each of their verbs is
needed, and they reach no other Lease.

Enough: with the chart installed, the operator's elector authenticated with a TokenRequest token of
the chart's ServiceAccount leads on the Lease the chart names (in kube-system, named as the operator
names it from the rendered flags), keeps leading through several lease durations, and on stop
releases the Lease to a second candidate (same identity source, same token) within a retry period,
without a single Forbidden.

Needed: the same with one verb taken out of the installed leader-election Role fails, at the step
that verb serves, with the API server's Forbidden in the elector's log: without `get` or `create`
nobody ever leads; without `update` the first leader cannot renew and stops at its renew deadline.

No more: the ServiceAccount can neither read nor update any other Lease of kube-system (the control
plane's own leader election lives there), nor its own Lease's name in its release namespace.

Also: two installations in different namespaces, with the default Lease settings and the same scope
(the same watched namespace, or both cluster-wide), elect one leader between them, each with its
own ServiceAccount and its own Role in kube-system.

This runs the elector itself (spotpool.controller.leadership), not the whole operator; the
operator-level RBAC proof (tests/chart/test_rbac_proof.py) covers the Lease too once the operator
runs with --leader-elect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from spotpool.controller.leadership import KubeLeaseStore, LeaderElector, LeaseRecord, Timing, lease_name
from tests.chart.helm import Releases, one, operator_args, operator_lease
from tests.conftest import Cluster
from tests.support.kube import token_kubeconfig, unique_name

pytestmark = pytest.mark.cluster

TIMING = Timing(lease_duration=3, renew_deadline=2.0, retry_period=0.5)
LEADS, KEEPS_LEADING, HANDS_OVER = "leads", "keeps leading", "hands over on stop"
ATTEMPT = TIMING.retry_period * (1 + TIMING.jitter) + 1.0  # one jittered retry, plus slack


class StepFailed(AssertionError):
    def __init__(self, step: str) -> None:
        super().__init__(f"step {step!r} failed")
        self.step = step


@dataclass(frozen=True)
class Installed:
    service_account: str
    role: str  # the leader-election Role, in the Lease's namespace
    lease_namespace: str
    lease: str  # the Lease's name, as the installed operator computes it from its flags


def install(releases: Releases, leases: list[tuple[str, str]], namespace: str, *extra: str,
            watched: str | None = None) -> Installed:
    """The chart with defaults (leader election on) in `namespace`, serving `watched` only (default:
    `namespace`; "" for cluster-wide). The Lease it names is deleted after the test."""
    watched = namespace if watched is None else watched
    scope = ["--set", f"rbac.namespaces={{{watched}}}"] if watched else []
    release, _ = releases.install(namespace, "--set", "crds.install=false", *scope, *extra)
    manifest = releases.helm.run("get", "manifest", release, f"--namespace={namespace}").stdout
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    role = one(objects, "Role", f"{release}-spotpool-leader-election")
    lease_namespace, lease = operator_lease(operator_args(objects))
    assert role["metadata"]["namespace"] == lease_namespace
    leases.append((lease_namespace, lease))
    return Installed(f"{release}-spotpool", role["metadata"]["name"], lease_namespace, lease)


def take_out(cluster: Cluster, installed: Installed, verb: str) -> None:
    """Takes `verb` out of the installed leader-election Role (a rule left with none goes); fails
    unless it was there."""
    obj = cluster.kubectl.json("get", "role", installed.role, f"--namespace={installed.lease_namespace}")
    rules = []
    for rule in obj["rules"]:
        assert rule["resources"] == ["leases"], obj["rules"]
        if verb in rule["verbs"]:
            rule["verbs"].remove(verb)
            verb = ""
        if rule["verbs"]:
            rules.append(rule)
    assert not verb, f"{verb} was not granted: {obj['rules']}"
    obj["rules"] = rules
    cluster.kubectl.run("replace", "-f", "-", input=json.dumps(obj))


def service_account_client(cluster: Cluster, service_account: str, namespace: str, path: Path) -> Any:
    token = cluster.kubectl.run("create", "token", service_account, f"--namespace={namespace}",
                                "--duration=1h").stdout.strip()
    kubeconfig = token_kubeconfig(cluster.kubeconfig, token, namespace, path)
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def candidate(api: Any, namespace: str, name: str) -> LeaderElector:
    return LeaderElector(KubeLeaseStore(namespace, api, request_timeout=2.0), name, None, TIMING)


async def scenario(api: Any, lease_namespace: str, name: str) -> None:
    first, second = candidate(api, lease_namespace, name), candidate(api, lease_namespace, name)
    first.start()
    try:
        try:
            await asyncio.wait_for(first.wait_leading(), timeout=2 * ATTEMPT)
        except TimeoutError:
            raise StepFailed(LEADS) from None
        second.start()
        end = time.monotonic() + 2 * TIMING.lease_duration
        while time.monotonic() < end:
            if not first.is_leader() or second.is_leader():
                raise StepFailed(KEEPS_LEADING)
            await asyncio.sleep(0.05)
        await first.stop()
        try:
            await asyncio.wait_for(second.wait_leading(), timeout=ATTEMPT)
        except TimeoutError:
            raise StepFailed(HANDS_OVER) from None
    finally:
        await first.stop(release=False)
        await second.stop()


def forbidden(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "spotpool.controller.leadership" and "Forbidden" in r.getMessage()]


async def test_the_lease_rule_is_enough(cluster: Cluster, namespace: str, releases: Releases,
                                        leases: list[tuple[str, str]], tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "spotpool.controller.leadership")
    installed = install(releases, leases, namespace)
    # The default Lease: kube-system, whatever the release namespace; named from the watched namespace.
    assert (installed.lease_namespace, installed.lease) == ("kube-system", lease_name(None, [namespace]))
    api = service_account_client(cluster, installed.service_account, namespace, tmp_path / "sa.kubeconfig")
    await scenario(api, installed.lease_namespace, installed.lease)
    assert not forbidden(caplog), forbidden(caplog)
    lease = cluster.kubectl.get("lease", installed.lease, installed.lease_namespace)
    assert lease is not None and lease["spec"]["leaseTransitions"] == 1


@pytest.mark.parametrize(("verb", "breaks"), [("get", LEADS), ("create", LEADS), ("update", KEEPS_LEADING)])
async def test_each_verb_is_needed(cluster: Cluster, namespace: str, releases: Releases,
                                   leases: list[tuple[str, str]], tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture, verb: str, breaks: str) -> None:
    caplog.set_level(logging.INFO, "spotpool.controller.leadership")
    installed = install(releases, leases, namespace)
    take_out(cluster, installed, verb)
    api = service_account_client(cluster, installed.service_account, namespace, tmp_path / "sa.kubeconfig")
    with pytest.raises(StepFailed) as failed:
        await scenario(api, installed.lease_namespace, installed.lease)
    assert failed.value.step == breaks, f"without {verb} the scenario failed at {failed.value.step!r}"
    assert forbidden(caplog), f"without {verb}: no Forbidden logged"


async def test_no_other_lease_is_reachable(cluster: Cluster, namespace: str, releases: Releases,
                                           leases: list[tuple[str, str]], tmp_path: Path) -> None:
    installed = install(releases, leases, namespace)
    assert installed.lease_namespace == "kube-system"
    other = unique_name("not-spotpool")  # as the control plane's own Leases in kube-system
    leases.append(("kube-system", other))
    cluster.kubectl.apply(json.dumps({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                      "metadata": {"name": other, "namespace": "kube-system"},
                                      "spec": {"holderIdentity": "kube-controller-manager_x",
                                               "leaseDurationSeconds": 15}}))
    version = cluster.kubectl.json("get", "lease", other, "--namespace=kube-system")["metadata"]["resourceVersion"]
    api = service_account_client(cluster, installed.service_account, namespace, tmp_path / "sa.kubeconfig")
    store = KubeLeaseStore("kube-system", api)
    intruder = LeaseRecord("intruder", 15, datetime.now(UTC), datetime.now(UTC))
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get(other),
        lambda: store.update(other, intruder, version),
        lambda: KubeLeaseStore(namespace, api).get(installed.lease),  # its own name, elsewhere
    ]
    for attempt in attempts:
        with pytest.raises(ApiException) as denied:
            await attempt()
        assert denied.value.status == 403, denied.value
    lease = cluster.kubectl.get("lease", other, "kube-system")
    assert lease is not None and lease["spec"]["holderIdentity"] == "kube-controller-manager_x"


@pytest.mark.parametrize("cluster_wide", [False, True], ids=["same-namespace-watched", "both-cluster-wide"])
async def test_two_installations_in_different_namespaces_elect_one_leader(
    cluster: Cluster, namespace: str, extra_namespaces: list[str], releases: Releases,
    leases: list[tuple[str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture, cluster_wide: bool,
) -> None:
    """Two releases, each in a namespace of its own, default leader election values: one Lease, one
    leader. Cluster-wide, the Lease is the cluster's one `spotpool-leader` (any left by an earlier run
    is removed first)."""
    caplog.set_level(logging.INFO, "spotpool.controller.leadership")
    if cluster_wide:
        cluster.kubectl.run("delete", "lease", lease_name(), "--namespace=kube-system", "--ignore-not-found")
    electors, installed = [], []
    for i, home in enumerate(extra_namespaces):
        one_install = install(releases, leases, home, watched="" if cluster_wide else namespace)
        installed.append(one_install)
        api = service_account_client(cluster, one_install.service_account, home, tmp_path / f"sa-{i}.kubeconfig")
        electors.append(candidate(api, one_install.lease_namespace, one_install.lease))
    first, second = installed
    assert (first.lease_namespace, first.lease) == (second.lease_namespace, second.lease) == \
        ("kube-system", lease_name(None, [] if cluster_wide else [namespace]))
    assert first.role != second.role and first.service_account != second.service_account
    for elector in electors:
        elector.start()
    try:
        await asyncio.wait_for(asyncio.wait([asyncio.ensure_future(e.wait_leading()) for e in electors],
                                            return_when=asyncio.FIRST_COMPLETED), timeout=2 * ATTEMPT)
        end = time.monotonic() + 2 * TIMING.lease_duration
        while time.monotonic() < end:
            assert sum(e.is_leader() for e in electors) == 1
            await asyncio.sleep(0.05)
        assert not forbidden(caplog), forbidden(caplog)
    finally:
        for elector in electors:
            await elector.stop()
