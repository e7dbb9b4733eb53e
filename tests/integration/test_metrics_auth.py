"""/metrics behind a token against the real kube-apiserver: the operator's ports as `spotpool
operator` starts them (controller/health.py), its TokenReview and SubjectAccessReview sent with a
ServiceAccount's token that holds only the chart's two review permissions, and ServiceAccount tokens
from the TokenRequest API as the scrapers. No token → 401, a token the API server does not know →
401, a token without get on /metrics → 403, a token bound to a metrics-reader ClusterRole → 200;
health stays plain. An operator without the review permissions answers 503 and logs the Forbidden."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubernetes
import pytest

from spotpool.controller.cli import parse
from spotpool.controller.health import Serving, serve
from spotpool.controller.metricsauth import KubeReviewApi
from spotpool.controller.runtime import Runtime
from tests.conftest import Cluster
from tests.support.kube import token_kubeconfig

pytestmark = pytest.mark.cluster

LOOPBACK = ["--metrics-host=127.0.0.1", "--metrics-port=0", "--health-host=127.0.0.1", "--health-port=0"]


@dataclass
class Identities:
    namespace: str
    operator: str  # may create tokenreviews and subjectaccessreviews, nothing else
    reader: str  # bound to a ClusterRole granting get on nonResourceURLs ["/metrics"]
    nobody: str  # a ServiceAccount with no permission at all


def cluster_role(name: str, rules: list[dict[str, object]], subject: tuple[str, str]) -> str:
    return "\n---\n".join(json.dumps(obj) for obj in (
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": subject[1], "namespace": subject[0]}]},
    ))


@pytest.fixture
def identities(cluster: Cluster, namespace: str) -> Iterator[Identities]:
    kubectl = cluster.kubectl
    for account in ("operator", "prometheus", "nobody"):
        kubectl.run("create", "serviceaccount", account, f"--namespace={namespace}")
    # The operator's rules as the chart grants them (templates/rbac.yaml; proven needed by
    # tests/chart/test_rbac_proof.py), and the chart's metrics-reader rule (templates/metrics-reader.yaml).
    reviews = [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
               {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}]
    kubectl.apply(cluster_role(f"{namespace}-reviews", reviews, (namespace, "operator")))
    reader = [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    kubectl.apply(cluster_role(f"{namespace}-metrics-reader", reader, (namespace, "prometheus")))

    def token(account: str) -> str:
        return kubectl.run("create", "token", account, f"--namespace={namespace}", "--duration=1h").stdout.strip()

    yield Identities(namespace, token("operator"), token("prometheus"), token("nobody"))
    for name in (f"{namespace}-reviews", f"{namespace}-metrics-reader"):
        kubectl.run("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found", check=False)


def reviews_as(cluster: Cluster, token: str, namespace: str, path: Path) -> KubeReviewApi:
    kubeconfig = token_kubeconfig(cluster.kubeconfig, token, namespace, path)
    return KubeReviewApi(kubernetes.config.new_client_from_config(str(kubeconfig)))


@pytest.fixture
async def serving(cluster: Cluster, identities: Identities, tmp_path: Path) -> AsyncIterator[Serving]:
    runtime = Runtime()
    runtime.ready.set()
    reviews = reviews_as(cluster, identities.operator, identities.namespace, tmp_path / "operator.kubeconfig")
    running = await serve(runtime, parse(LOOPBACK), reviews=reviews)
    yield running
    await running.cleanup()


async def scrape(serving: Serving, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(verify=False, timeout=30) as client:  # the self-signed certificate
        return await client.get(f"https://127.0.0.1:{serving.metrics_port}/metrics", headers=headers)


async def test_metrics_answer_401_403_and_200_as_the_api_server_decides(
    serving: Serving, identities: Identities
) -> None:
    assert (await scrape(serving, None)).status_code == 401
    assert (await scrape(serving, "made-up-token")).status_code == 401
    # A well-formed JWT the API server did not sign: TokenReview says not authenticated.
    forged = identities.reader.rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
    assert (await scrape(serving, forged)).status_code == 401

    refused = await scrape(serving, identities.nobody)
    assert refused.status_code == 403
    assert f"system:serviceaccount:{identities.namespace}:nobody" in refused.text
    assert "spotpool_" not in refused.text

    allowed = await scrape(serving, identities.reader)
    assert allowed.status_code == 200 and "spotpool_build_info" in allowed.text

    async with httpx.AsyncClient(timeout=10) as client:  # the kubelet's probes: plain, no token
        assert (await client.get(f"http://127.0.0.1:{serving.health_port}/healthz")).status_code == 200
        assert (await client.get(f"http://127.0.0.1:{serving.health_port}/readyz")).status_code == 200


async def test_an_operator_that_may_not_ask_answers_503_and_logs_the_forbidden(
    cluster: Cluster, identities: Identities, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = Runtime()
    reviews = reviews_as(cluster, identities.nobody, identities.namespace, tmp_path / "nobody.kubeconfig")
    running = await serve(runtime, parse(LOOPBACK), reviews=reviews)
    caplog.set_level(logging.WARNING, "spotpool.controller.metricsauth")
    try:
        response = await scrape(running, identities.reader)
        assert response.status_code == 503, "the reader's token is not at fault: not a 401"
        assert "spotpool_" not in response.text
    finally:
        await running.cleanup()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "403 Forbidden" in warning and "tokenreviews" in warning, warning
