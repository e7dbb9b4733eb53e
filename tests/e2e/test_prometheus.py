"""The Grafana dashboard against a real Prometheus scraping a real operator.

`spotpool operator` runs against the CVM simulator with pools that produce every kind of series the
dashboard reads: launches, an on-demand base and an hourly spend cap, a refused purchase (a zone
whose spot quota is zero), reclaims, a scale-in, injected CVM API errors, and reconcile errors (a
pool whose status the operator may not write: it runs as the chart's ServiceAccount, with the
chart's RBAC narrowed to the other pools).
Prometheus (Debian's package) scrapes it every second; every query of every panel, as Grafana would
send it, must then return at least one number. `promtool check metrics` must find nothing to say
about the spotpool series.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spotpool.dashboard import dashboard_queries
from tests.chart.helm import Helm, Releases
from tests.conftest import Cluster
from tests.e2e.conftest import Pools, condition
from tests.support.kube import token_kubeconfig
from tests.support.processes import OperatorProcess, SimulatorProcess
from tests.support.prometheus import PrometheusProcess, check_metrics, has_finite_value

pytestmark = pytest.mark.cluster

SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "30s"  # $__rate_interval: many scrapes, and short enough that fresh activity shows
PANEL_TIMEOUT = 120.0
CHURN_EVERY = 5.0  # seconds between two reclaims while some panel still waits for data
WRITABLE_POOLS = ["main", "capped"]  # the pools whose status the operator may write; not "locked"
CAPPED_ZONE = "ap-guangzhou-7"  # no other pool here uses it
MAX_HOURLY_COST = "2.5"  # far above what "main" costs: the cap is drawn, never reached


def status_capacity(obj: dict[str, Any]) -> tuple[int, int, int]:
    capacity = (obj.get("status") or {}).get("capacity") or {}
    return capacity.get("spot", 0), capacity.get("onDemandBase", 0), capacity.get("onDemandFallback", 0)


@pytest.fixture
def chart_identity(cluster: Cluster, crd: str, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for the chart's ServiceAccount (TokenRequest), with the chart's RBAC for
    `namespace` except that it may write the status of `WRITABLE_POOLS` only."""
    kubectl = cluster.kubectl
    releases = Releases(Helm(cluster.helm, tmp_path / "helm-home", cluster.kubeconfig))
    try:
        release, _ = releases.install(namespace, "--set", "crds.install=false",
                                      "--set", f"rbac.namespaces={{{namespace}}}")
        fullname = f"{release}-spotpool"
        role = kubectl.json("get", "role", fullname, f"--namespace={namespace}")
        status = [r for r in role["rules"] if r.get("resources") == ["spotcomputeenvironments/status"]]
        assert len(status) == 1, role["rules"]
        status[0]["resourceNames"] = WRITABLE_POOLS
        kubectl.run("replace", "-f", "-", input=json.dumps(role))
        deployment = kubectl.get("deployment", fullname, namespace)
        assert deployment is not None
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        token = kubectl.run("create", "token", account, f"--namespace={namespace}", "--duration=1h").stdout.strip()
        yield token_kubeconfig(cluster.kubeconfig, token, namespace, tmp_path / "operator.kubeconfig")
    finally:
        releases.uninstall_all()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[OperatorProcess], PrometheusProcess]]:
    started: list[PrometheusProcess] = []

    def start(operator: OperatorProcess) -> PrometheusProcess:
        prom = PrometheusProcess(tmp_path / "prometheus", [f"127.0.0.1:{operator.metrics_port}"],
                                 scrape_interval=SCRAPE_INTERVAL)
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.stop()


def test_every_dashboard_panel_gets_data_from_a_real_prometheus(
    chart_identity: Path, operator_factory: Callable[..., OperatorProcess], pools: Pools,
    simulator: SimulatorProcess, prometheus_factory: Callable[[OperatorProcess], PrometheusProcess],
) -> None:
    operator = operator_factory(kubeconfig=chart_identity)
    prom = prometheus_factory(operator)
    prom.wait_targets_up()

    # A refusal that lasts: the zone's spot quota is zero, and the key may not read its quota (a CAM
    # policy without DescribeAccountQuota), so the operator plans without it, tries, is refused with
    # LimitExceeded.UserSpotQuota, and backs off and retries. (With the quota readable it would
    # never try that zone, and the refusals panel would have nothing to show.)
    simulator.control("POST", "market", {"zoneQuotas": {CAPPED_ZONE: 0}})
    simulator.control("POST", "faults", {"DescribeAccountQuota": {"errorRate": 1.0,
                                                                  "errorCodes": ["UnauthorizedOperation"]}})
    pools.create("capped", expectedCount=2, zones=[CAPPED_ZONE], instanceTypes=["S5.MEDIUM4"])
    # Reconcile errors: the operator is Forbidden to write this pool's status.
    pools.create("locked", expectedCount=0)
    # Launches, per-pool instances, prices, cost, and (once Ready) a time to fulfil; the capacity
    # panels get an on-demand base next to the spot instances, and the cost panel a cap to draw.
    pools.create("main", expectedCount=6, allocationStrategy="Diversified", onDemand={"baseCount": 1},
                 maxHourlyCost=MAX_HOURLY_COST)
    pools.wait_ready("main", 6)
    pools.wait("capped", lambda o: condition(o, "Degraded").get("status") == "True", what="Degraded")
    uid = pools.uid("main")
    assert status_capacity(pools.get("main")) == (5, 1, 0)

    def spot_alive() -> list[dict[str, Any]]:  # reclaims take spot instances only
        return [i for i in simulator.alive(uid) if i["chargeType"] == "SPOTPAID"]

    # CVM API errors: the next DescribeInstances calls fail (the client retries them).
    simulator.control("POST", "faults", {"DescribeInstances": {"errorRate": 1.0, "errorCodes": ["InternalError"],
                                                               "times": 3}})
    # An interruption, healed.
    simulator.control("POST", "reclaim", {"instanceIds": [spot_alive()[0]["instanceId"]]})
    pools.wait_ready("main", 6)
    # A scale-in: releases with reason ScaleIn.
    pools.scale("main", 4)
    pools.wait_ready("main", 4)

    # Every panel's every query, until each has returned a number. Meanwhile keep the pool busy
    # (a reclaim every few seconds) so the rate() and histogram panels always have fresh activity
    # inside their window, as a live installation does.
    queries = dashboard_queries(rate_interval=RATE_INTERVAL)
    pending = dict(enumerate(queries))
    last: dict[int, object] = {}
    deadline = time.monotonic() + PANEL_TIMEOUT
    next_churn = time.monotonic()
    while pending and time.monotonic() < deadline:
        for index, (_, expr) in list(pending.items()):
            result = prom.query(expr)
            last[index] = result
            if result and has_finite_value(result):
                del pending[index]
        if pending and time.monotonic() >= next_churn:
            alive = spot_alive()
            if alive:
                simulator.control("POST", "reclaim", {"instanceIds": [alive[0]["instanceId"]]})
            next_churn = time.monotonic() + CHURN_EVERY
        time.sleep(1)
    missing = [f"{queries[i][0]!r}: {queries[i][1]}\n    last result: {last.get(i)!r}" for i in sorted(pending)]
    assert not missing, (f"{len(missing)} of {len(queries)} dashboard queries returned no data within "
                         f"{PANEL_TIMEOUT:.0f} s:\n" + "\n".join(missing))

    # The exposition passes promtool's lint for every spotpool series.
    problems = check_metrics(operator.metrics())
    ours = [p for p in problems if "spotpool_" in p]
    assert not ours, "promtool check metrics:\n" + "\n".join(problems)
    # The operator was Forbidden exactly where it was meant to be (the one pool's status), nowhere else.
    logs = operator.logs().splitlines()
    denied = [line for line in logs if 'HTTP/1.1" 403' in line or 'HTTP/1.1\\" 403' in line]
    assert denied, "no request of the operator was Forbidden: the reconcile errors came from elsewhere"
    assert all("/spotcomputeenvironments/locked/status" in line for line in denied), "\n".join(denied[:10])
    assert not [line for line in logs if "APIForbiddenError" in line]
    # The reconcile errors reached the pool's author as Events that say what failed, and never as a
    # Python traceback (kopf posts its per-object logger's records as Events).
    failures = [e["message"] for e in pools.events("locked") if "reconcile failed" in e.get("message", "")]
    assert failures and all("Forbidden" in m or "ApiException" in m for m in failures), failures
    assert not [e for e in pools.events("locked") if "Traceback" in e.get("message", "")]
