"""TKE pod identity end to end (issue 19): the operator process holds no key at all. It reads a
ServiceAccount token the real kube-apiserver issued (TokenRequest, for STS's audience, as the
projected token volume TKE's webhook mounts), exchanges it at the simulator's STS (which checks it
against the apiserver's own JWKS and the operator role's trust policy), assumes the team's role
from it, and buys in the team's account only. It runs with `--no-secret-credentials`: a pool that
names a Secret is refused, and so is a pool naming a role its namespace was not given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import Pools, condition, ready, status
from tests.support.identity import (
    AUDIENCE,
    EXTERNAL_ID,
    OPERATOR_ROLE_ARN,
    PROVIDER_ID,
    TEAM_ACCOUNT,
    TEAM_ROLE_ARN,
    trusting_apiserver,
)
from tests.support.kube import wait_for
from tests.support.processes import OperatorProcess, SimulatorProcess, simulator_config

pytestmark = pytest.mark.cluster

SERVICE_ACCOUNT = "spotpool-operator"


@pytest.fixture
def identity_simulator(cluster: Cluster, namespace: str, tmp_path: Path) -> tuple[SimulatorProcess, Path]:
    """The simulator trusting the apiserver's ServiceAccount issuer for the operator role, and the
    token file the operator reads (what the projected volume would hold)."""
    cluster.kubectl.run("create", "serviceaccount", SERVICE_ACCOUNT, f"--namespace={namespace}")
    token = cluster.kubectl.run("create", "token", SERVICE_ACCOUNT, f"--namespace={namespace}",
                                f"--audience={AUDIENCE}", "--duration=1h").stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    config = trusting_apiserver(simulator_config(), cluster.kubectl, token,
                                f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}")
    sim = SimulatorProcess(tmp_path / "identity-simulator", config=config).start()
    yield sim, token_file
    sim.stop()


def test_a_pool_buys_in_its_teams_role_with_no_key_anywhere(
    cluster: Cluster, namespace: str, identity_simulator: tuple[SimulatorProcess, Path],
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    sim, token_file = identity_simulator
    operator_factory(
        extra_args=("--allow-loopback-endpoints", "--operator-identity=pod-identity", f"--sts-endpoint={sim.url}",
                    "--no-secret-credentials", f"--allow-role={namespace}=qcs::cam::uin/*:roleName/team-*"),
        env={"TKE_REGION": "ap-guangzhou", "TKE_PROVIDER_ID": PROVIDER_ID, "TKE_ROLE_ARN": OPERATOR_ROLE_ARN,
             "TKE_WEB_IDENTITY_TOKEN_FILE": str(token_file)},
    )
    pools = Pools(cluster.kubectl, namespace, sim)
    try:
        pools.create("render", expectedCount=2, credentialsSecretRef=None,
                     credentials={"source": "Role", "roleArn": TEAM_ROLE_ARN, "externalId": EXTERNAL_ID})
        obj = pools.wait_ready("render", 2, timeout=90)
        assert status(obj)["account"]["id"] == TEAM_ACCOUNT
        assert status(obj)["credentials"]["source"] == "Role"
        uid = obj["metadata"]["uid"]
        assert {i["accountId"] for i in sim.instances() if i["tags"].get("spotpool.io/environment-uid") == uid} \
            == {TEAM_ACCOUNT}
        exchanges = sim.calls("AssumeRoleWithWebIdentity")
        assert exchanges and all(c["errorCode"] is None for c in exchanges)

        # A role this namespace was not given, and a Secret: refused, naming the field.
        pools.create("other", expectedCount=1, credentialsSecretRef=None, credentials={
            "source": "Role", "roleArn": "qcs::cam::uin/300000000003:roleName/finance"})
        pools.create("keyed", expectedCount=1)
        for name, field in (("other", "spec.credentials.roleArn"), ("keyed", "spec.credentialsSecretRef")):
            refused = pools.wait(name, lambda o: condition(o, "Degraded").get("reason") == "InvalidConfig",
                                 timeout=60, what="Degraded InvalidConfig")
            assert field in condition(refused, "Degraded")["message"] and not ready(refused)

        pools.delete("render", timeout=90)
        wait_for(lambda: not sim.alive(uid), timeout=30, what="the team's instances to be gone")
    finally:
        for name in pools.created:
            cluster.kubectl.run("patch", "sce", name, f"--namespace={namespace}", "--type=merge",
                                "-p", '{"metadata":{"finalizers":[]}}', check=False)
