"""TKE-style pod identity on a real kube-apiserver: a ServiceAccount token issued by TokenRequest is
exchanged at the simulator's STS, which checks it against the apiserver's own service-account
issuer and JWKS (/openid/v1/jwks), and the temporary credentials sign DescribeInstances and
RunInstances. What the pod-identity webhook would set up (a projected token in a file, the role
ARN, the provider id) is done by hand: the token is written to a file the provider reads.

The simulator runs in the test's event loop with the real clock; spotpool's WebIdentityProvider,
AssumeRoleProvider and CvmClient are the clients."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotpool.cloud import AssumeRoleProvider, CredentialError, CvmClient, WebIdentityProvider
from spotpool.cloud.models import Credentials, RunInstancesRequest
from spotpool.simulator import RunningSimulator, SimulatorConfig, run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.conftest import Cluster
from tests.support.identity import (
    ACCOUNT,
    AUDIENCE,
    EXTERNAL_ID,
    OPERATOR_ROLE_ARN,
    PROVIDER_ID,
    TEAM_ACCOUNT,
    TEAM_ROLE_ARN,
    trusting_apiserver,
)
from tests.support.specs import simulator_config

pytestmark = pytest.mark.cluster

SERVICE_ACCOUNT = "spotpool-operator"
PURCHASE = RunInstancesRequest(zone="ap-guangzhou-3", instance_type="S5.MEDIUM4",
                               image_id="img-pmqg1cw7", count=1, client_token="pod-identity-1",
                               max_price="1.0", tags={"team": "render"})


def service_account_token(cluster: Cluster, namespace: str, name: str, audience: str | None = AUDIENCE,
                          duration: str = "10m") -> str:
    """A token from the TokenRequest API (what a projected ServiceAccount token volume holds)."""
    args = ["create", "token", name, f"--namespace={namespace}", f"--duration={duration}"]
    if audience is not None:
        args.append(f"--audience={audience}")
    return cluster.kubectl.run(*args).stdout.strip()


def apiserver(cluster: Cluster, tmp_path: Path) -> tuple[str, Path]:
    """The apiserver's URL and a file with the CA that signed its serving certificate, from the
    admin kubeconfig (the local control plane's, or SPOTPOOL_TEST_KUBECONFIG's)."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    entry = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    ca = tmp_path / "apiserver-ca.crt"
    if "certificate-authority-data" in entry:
        ca.write_bytes(base64.b64decode(entry["certificate-authority-data"]))
    else:
        ca.write_text(Path(entry["certificate-authority"]).read_text())
    return entry["server"], ca


def pod_identity_config(cluster: Cluster, namespace: str, token: str, **source: Any) -> SimulatorConfig:
    """The simulator trusting the apiserver's service-account issuer (the `iss` its tokens carry)
    for the operator role, with this namespace's ServiceAccount as the trusted subject."""
    base = simulator_config(seed=11, lifecycle={"boot_delay_seconds": 0.2, "terminate_delay_seconds": 0.2},
                            sts={"min_duration_seconds": 1})
    return trusting_apiserver(base, cluster.kubectl, token, f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}",
                              **source)


def provider_of(sim: RunningSimulator, token_file: Path, **kwargs: Any) -> WebIdentityProvider:
    return WebIdentityProvider(token_file=token_file, role_arn=OPERATOR_ROLE_ARN, provider_id=PROVIDER_ID,
                               region="ap-guangzhou", endpoint=sim.url, **kwargs)


@pytest.fixture
def service_account(cluster: Cluster, namespace: str) -> str:
    cluster.kubectl.run("create", "serviceaccount", SERVICE_ACCOUNT, f"--namespace={namespace}")
    return SERVICE_ACCOUNT


async def test_a_service_account_token_buys_with_temporary_credentials(
    cluster: Cluster, namespace: str, service_account: str, tmp_path: Path
) -> None:
    token = service_account_token(cluster, namespace, service_account)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    async with run_simulator(pod_identity_config(cluster, namespace, token)) as sim:
        provider = provider_of(sim, token_file)
        async with CvmClient(provider, "ap-guangzhou", sim.url) as cvm, \
                CvmClient(provider, "ap-guangzhou", sim.url, service="sts") as sts:
            identity = await sts.get_caller_identity()
            assert (identity.account_id, identity.type) == (ACCOUNT, "CAMRole")
            assert await cvm.describe_instances() == []
            (bought,) = await cvm.run_instances(PURCHASE)
            (seen,) = await cvm.describe_instances(instance_ids=[bought])
            assert seen.tags["team"] == "render"
        await provider.aclose()
        (instance,) = sim.market.instances()
        assert instance.account_id == ACCOUNT
        (call,) = sim.simulator.ledger.entries("RunInstances")
        assert call.secret_id == (await provider.current()).secret_id and call.error_code is None
        assert token not in json.dumps([c.to_json() for c in sim.simulator.ledger.entries()])


async def test_the_jwks_is_fetched_from_the_apiserver(
    cluster: Cluster, namespace: str, service_account: str, tmp_path: Path
) -> None:
    """`jwks_url` at the apiserver's /openid/v1/jwks, over TLS with its CA, authorized as a
    ServiceAccount (the default RBAC lets service accounts read the issuer's discovery documents)."""
    token = service_account_token(cluster, namespace, service_account)
    reader = tmp_path / "reader-token"
    reader.write_text(service_account_token(cluster, namespace, service_account, audience=None))
    server, ca = apiserver(cluster, tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    config = pod_identity_config(cluster, namespace, token, jwks_url=f"{server}/openid/v1/jwks",
                                 provider={"jwks_ca_file": str(ca), "jwks_bearer_token_file": str(reader)})
    async with run_simulator(config) as sim:
        provider = provider_of(sim, token_file)
        async with CvmClient(provider, "ap-guangzhou", sim.url) as cvm:
            assert await cvm.describe_instances() == []
        await provider.aclose()


async def test_short_credentials_are_renewed_with_no_failed_call(
    cluster: Cluster, namespace: str, service_account: str, tmp_path: Path
) -> None:
    token = service_account_token(cluster, namespace, service_account)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    async with run_simulator(pod_identity_config(cluster, namespace, token)) as sim:
        provider = provider_of(sim, token_file, duration_seconds=4)
        async with CvmClient(provider, "ap-guangzhou", sim.url) as cvm:
            for _ in range(16):
                await cvm.describe_instances()
                await asyncio.sleep(0.5)
        await provider.aclose()
        calls = sim.simulator.ledger.entries()
        assert not [c.error_code for c in calls if c.error_code]
        assert provider.renewals >= 3
        assert len({c.secret_id for c in calls if c.action == "DescribeInstances"}) >= 3


async def test_tokens_the_role_does_not_trust_are_refused(
    cluster: Cluster, namespace: str, service_account: str, tmp_path: Path
) -> None:
    cluster.kubectl.run("create", "serviceaccount", "tenant", f"--namespace={namespace}")
    token = service_account_token(cluster, namespace, service_account)
    cases = {
        "another service account": (service_account_token(cluster, namespace, "tenant"),
                                    "UnauthorizedOperation"),
        "the apiserver's own audience": (service_account_token(cluster, namespace, service_account,
                                                               audience=None),
                                         "InvalidParameter.WebIdentityTokenError"),
        "a tampered token": (token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
                             "InvalidParameter.WebIdentityTokenError"),
    }
    async with run_simulator(pod_identity_config(cluster, namespace, token)) as sim:
        for case, (bad, code) in cases.items():
            path = tmp_path / case.replace(" ", "-")
            path.write_text(bad)
            provider = provider_of(sim, path, max_attempts=1)
            with pytest.raises(CredentialError) as caught:
                await provider.current()
            await provider.aclose()
            assert caught.value.code == code, case
            assert bad not in str(caught.value)


async def test_a_team_role_in_another_account_buys_there_only(
    cluster: Cluster, namespace: str, service_account: str, tmp_path: Path
) -> None:
    token = service_account_token(cluster, namespace, service_account)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    async with run_simulator(pod_identity_config(cluster, namespace, token)) as sim:
        operator = provider_of(sim, token_file)
        team = AssumeRoleProvider(operator, role_arn=TEAM_ROLE_ARN, external_id=EXTERNAL_ID,
                                  session_name="team-render-pool", endpoint=sim.url)
        async with CvmClient(team, "ap-guangzhou", sim.url) as cvm, \
                CvmClient(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY), "ap-guangzhou", sim.url) as demo:
            (bought,) = await cvm.run_instances(PURCHASE)
            assert [i.instance_id for i in await cvm.describe_instances()] == [bought]
            assert await demo.describe_instances() == []
        await team.aclose()
        await operator.aclose()
        assert [i.account_id for i in sim.market.instances()] == [TEAM_ACCOUNT]
