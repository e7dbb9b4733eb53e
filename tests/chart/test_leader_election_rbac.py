"""The RBAC proof for leader election: the chart's Lease rule is enough, and each of its verbs is needed.

Enough: with the chart installed, the operator's elector authenticated with a TokenRequest token of
the chart's ServiceAccount leads, keeps leading through several lease durations, and on stop
releases the Lease to a second candidate (same identity source, same token) within a retry period,
without a single Forbidden.

Needed: the same with one verb taken out of the installed leader-election Role fails, at the step
that verb serves, with the API server's Forbidden in the elector's log: without `get` or `create`
nobody ever leads; without `update` the first leader cannot renew and stops at its renew deadline.

Also: two installations (different release names, different namespaces) given the same
`leaderElection.namespace` elect one leader between them, each with its own ServiceAccount.

This runs the elector itself (spotpool.controller.leadership), not the whole operator; the
operator-level RBAC proof (tests/chart/test_rbac_proof.py) covers the Lease too once the operator
runs with --leader-elect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from spotpool.controller.leadership import KubeLeaseStore, LeaderElector, Timing, lease_name
from tests.chart.helm import Releases
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


def install(releases: Releases, namespace: str, *extra: str) -> tuple[str, str]:
    """The chart with defaults (leader election on) serving `namespace` only; (service account, Role)."""
    release, _ = releases.install(namespace, "--set", "crds.install=false",
                                  "--set", f"rbac.namespaces={{{namespace}}}", *extra)
    return f"{release}-spotpool", f"{release}-spotpool-leader-election"


def take_out(cluster: Cluster, role: str, namespace: str, verb: str) -> None:
    """Takes `verb` out of the installed leader-election Role; fails unless it was there."""
    obj = cluster.kubectl.json("get", "role", role, f"--namespace={namespace}")
    (rule,) = obj["rules"]
    assert rule["resources"] == ["leases"] and verb in rule["verbs"], obj["rules"]
    rule["verbs"].remove(verb)
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


def kube_system_lease(cluster: Cluster) -> str:
    """The Lease name the operator uses by default: from the kube-system namespace's UID."""
    kube_system = cluster.kubectl.get("namespace", "kube-system")
    assert kube_system is not None
    return lease_name(kube_system["metadata"]["uid"])


async def test_the_lease_rule_is_enough(cluster: Cluster, namespace: str, releases: Releases, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "spotpool.controller.leadership")
    service_account, _ = install(releases, namespace)
    api = service_account_client(cluster, service_account, namespace, tmp_path / "sa.kubeconfig")
    name = kube_system_lease(cluster)
    await scenario(api, namespace, name)
    assert not forbidden(caplog), forbidden(caplog)
    lease = cluster.kubectl.get("lease", name, namespace)
    assert lease is not None and lease["spec"]["leaseTransitions"] == 1


@pytest.mark.parametrize(("verb", "breaks"), [("get", LEADS), ("create", LEADS), ("update", KEEPS_LEADING)])
async def test_each_verb_is_needed(cluster: Cluster, namespace: str, releases: Releases, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture, verb: str, breaks: str) -> None:
    caplog.set_level(logging.INFO, "spotpool.controller.leadership")
    service_account, role = install(releases, namespace)
    take_out(cluster, role, namespace, verb)
    api = service_account_client(cluster, service_account, namespace, tmp_path / "sa.kubeconfig")
    with pytest.raises(StepFailed) as failed:
        await scenario(api, namespace, lease_name(unique_name("cluster")))
    assert failed.value.step == breaks, f"without {verb} the scenario failed at {failed.value.step!r}"
    assert forbidden(caplog), f"without {verb}: no Forbidden logged"


async def test_two_installations_sharing_the_lease_namespace_elect_one_leader(
    cluster: Cluster, namespace: str, extra_namespaces: list[str], releases: Releases, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "spotpool.controller.leadership")
    shared = namespace
    electors = []
    for i, home in enumerate(extra_namespaces):
        service_account, _ = install(releases, home, "--set", f"leaderElection.namespace={shared}")
        api = service_account_client(cluster, service_account, home, tmp_path / f"sa-{i}.kubeconfig")
        electors.append(candidate(api, shared, kube_system_lease(cluster)))
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
