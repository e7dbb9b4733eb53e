"""Credential sources (issue 19), in process: the real Reconciler and CloudAccess, the operator's
identity a web-identity provider, roles assumed from it, all against the simulator's STS (which
checks the JWT against the issuer's keys, the roles' trust policies and ExternalIds, and every
session token on every call).

A pool that names a role buys in that role's account and nowhere else; a namespace that names a
role it was not given, or a source the administrator did not allow, buys nothing and is told
which field and which flag; short sessions are renewed before they expire, with no call failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from spotpool.cloud.credentials import CredentialProvider
from spotpool.cloud.providers import AssumeRoleProvider, WebIdentityProvider
from spotpool.controller.identity import CredentialPolicy, Identities
from spotpool.controller.policy import Policy
from spotpool.simulator import run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from spotpool.simulator.faults import FaultSpec
from tests.support.identity import (
    ACCOUNT,
    EXTERNAL_ID,
    OPERATOR_ROLE_ARN,
    PROVIDER_ID,
    TEAM_ACCOUNT,
    TEAM_ROLE_ARN,
    Issuer,
    identity_config,
)
from tests.support.inprocess import FakeClock, World, pool_spec, simulator_config

TEAM = "team-render"
ROLE_POLICY = CredentialPolicy(roles=((TEAM, "qcs::cam::uin/*:roleName/team-*"),), operator_identity=("platform",))


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


@asynccontextmanager
async def identity_world(tmp_path: Path, policy: CredentialPolicy = ROLE_POLICY, *,
                         duration: int = 7200, sts: dict[str, Any] | None = None,
                         operator: bool = True) -> AsyncIterator[World]:
    """A World whose operator has a pod identity (a token file its issuer signed), with roles
    assumed from it for `duration` seconds."""
    issuer = Issuer()
    clock = FakeClock()
    config = identity_config(simulator_config(), issuer, sts=sts)
    async with run_simulator(config, clock=clock) as sim:
        token = tmp_path / "token"
        token.write_text(issuer.token(now=clock()))
        identities = Identities()
        if operator:
            base = WebIdentityProvider(token_file=token, role_arn=OPERATOR_ROLE_ARN, provider_id=PROVIDER_ID,
                                       region="ap-guangzhou", endpoint=sim.url, duration_seconds=duration,
                                       clock=clock, sleep=_no_sleep)

            def assume(base: CredentialProvider, arn: str, external_id: str | None, session: str) -> CredentialProvider:
                return AssumeRoleProvider(base, role_arn=arn, external_id=external_id, session_name=session,
                                          endpoint=sim.url, duration_seconds=duration, clock=clock, sleep=_no_sleep)

            identities = Identities(base, assume=assume)
        w = World(sim, clock, policy=Policy.development(credentials=policy), identities=identities)
        # What the kubelet does with a projected ServiceAccount token: a fresh one well before expiry.
        w.rotate_token = lambda: token.write_text(issuer.token(now=clock()))  # type: ignore[attr-defined]
        try:
            yield w
        finally:
            await w.close()
            await identities.aclose()


def role_pool(w: World, namespace: str = TEAM, **changes: Any) -> str:
    spec = pool_spec(w.sim, expectedCount=3, credentials={
        "source": "Role", "roleArn": TEAM_ROLE_ARN, "externalId": EXTERNAL_ID}, **changes)
    del spec["credentialsSecretRef"]
    return str(w.kube.create(namespace, "pool", spec)["metadata"]["uid"])


def accounts_of(w: World, uid: str) -> set[str]:
    return {i.account_id for i in w.owned(uid)}


async def test_a_pool_in_a_team_role_buys_in_that_roles_account_only(tmp_path: Path) -> None:
    async with identity_world(tmp_path) as w:
        uid = role_pool(w)
        await w.settle(TEAM, "pool")
        assert len(w.owned(uid)) == 3 and accounts_of(w, uid) == {TEAM_ACCOUNT}
        status = w.status(TEAM, "pool")
        assert status["account"]["id"] == TEAM_ACCOUNT
        assert status["credentials"]["source"] == "Role" and status["credentials"]["roleArn"] == TEAM_ROLE_ARN
        assert "assumed role" in status["credentials"]["from"] and EXTERNAL_ID not in str(status)
        # Every CVM call went out with a session token the simulator checked, none with a key pair.
        calls = [c for c in w.sim.simulator.ledger.entries() if c.action in ("RunInstances", "DescribeInstances")]
        failed = [(c.action, c.error_code) for c in calls if c.error_code not in (None, "DryRunOperation")]
        assert calls and failed == []
        assert {c.account_id for c in calls} == {TEAM_ACCOUNT}
        w.kube.delete(TEAM, "pool")
        await w.settle(TEAM, "pool")
        assert (TEAM, "pool") not in w.kube.objects and w.owned(uid) == []


async def test_the_operators_own_identity_buys_in_its_account(tmp_path: Path) -> None:
    async with identity_world(tmp_path) as w:
        spec = pool_spec(w.sim, expectedCount=2, credentials={"source": "OperatorIdentity"})
        del spec["credentialsSecretRef"]
        uid = w.kube.create("platform", "pool", spec)["metadata"]["uid"]
        await w.settle("platform", "pool")
        assert len(w.owned(uid)) == 2 and accounts_of(w, uid) == {ACCOUNT}
        assert w.status("platform", "pool")["credentials"]["source"] == "OperatorIdentity"


@pytest.mark.parametrize(("namespace", "credentials", "needle"), [
    ("team-other", {"source": "Role", "roleArn": TEAM_ROLE_ARN, "externalId": EXTERNAL_ID},
     "spec.credentials.roleArn qcs::cam::uin/200000000002:roleName/team-render is not a role namespace team-other"),
    (TEAM, {"source": "OperatorIdentity"}, "spec.credentials.source OperatorIdentity: namespace team-render may not"),
], ids=["another-teams-role", "operator-identity-not-allowed"])
async def test_a_source_the_administrator_did_not_give_the_namespace_buys_nothing(
        tmp_path: Path, namespace: str, credentials: dict[str, str], needle: str) -> None:
    """The confused deputy: any namespace could otherwise name any team's role."""
    async with identity_world(tmp_path) as w:
        spec = pool_spec(w.sim, expectedCount=2, credentials=credentials)
        del spec["credentialsSecretRef"]
        uid = w.kube.create(namespace, "pool", spec)["metadata"]["uid"]
        await w.settle(namespace, "pool")
        assert w.bought(uid) == 0 and not w.sim.simulator.ledger.entries("AssumeRole")
        degraded = w.condition(namespace, "pool", "Degraded")
        assert degraded["reason"] == "InvalidConfig" and needle in degraded["message"], degraded["message"]
        w.kube.delete(namespace, "pool")
        await w.settle(namespace, "pool")
        assert (namespace, "pool") not in w.kube.objects


async def test_secrets_switched_off_are_refused_naming_the_field(tmp_path: Path) -> None:
    async with identity_world(tmp_path, CredentialPolicy(secrets=False)) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        uid = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=2))["metadata"]["uid"]
        await w.settle("team", "pool")
        assert w.bought(uid) == 0
        degraded = w.condition("team", "pool", "Degraded")
        assert "spec.credentialsSecretRef" in degraded["message"] and "--no-secret-credentials" in degraded["message"]


async def test_an_operator_without_an_identity_says_so(tmp_path: Path) -> None:
    async with identity_world(tmp_path, operator=False) as w:
        uid = role_pool(w)
        await w.settle(TEAM, "pool")
        assert w.bought(uid) == 0
        assert "--operator-identity" in w.condition(TEAM, "pool", "Degraded")["message"]


async def test_short_sessions_are_renewed_before_they_expire_with_no_call_failing(tmp_path: Path) -> None:
    """Sessions of 15 minutes over an hour and a half of passes (the ServiceAccount token rotated
    every 10 minutes, as the kubelet does, and read again at each exchange): each session renewed
    ahead of its expiry, so no CVM call is ever signed with an expired token."""
    async with identity_world(tmp_path, duration=900, sts={"min_duration_seconds": 900}) as w:
        uid = role_pool(w)
        await w.settle(TEAM, "pool")
        for minute in range(90):
            if minute % 10 == 0:
                w.rotate_token()  # type: ignore[attr-defined]
            w.clock.advance(60)
            await w.reconcile(TEAM, "pool")
        assert len(w.owned(uid)) == 3
        assert len(w.sim.simulator.ledger.entries("AssumeRole")) >= 6
        failed = [c for c in w.sim.simulator.ledger.entries() if c.error_code not in (None, "DryRunOperation")]
        assert failed == [], [(c.action, c.error_code) for c in failed[:3]]


async def test_a_renewal_that_fails_is_said_before_the_session_runs_out(tmp_path: Path) -> None:
    """STS refuses the renewal: the pool goes on with the session in hand, and Degraded names the
    source (never a token) while there is still time to act."""
    async with identity_world(tmp_path, duration=900, sts={"min_duration_seconds": 900}) as w:
        uid = role_pool(w)
        await w.settle(TEAM, "pool")
        w.sim.simulator.faults.set("AssumeRole", FaultSpec(error_codes=["InternalError.SystemError"], error_rate=1.0))
        w.clock.advance(700)  # inside the renewal margin, before the expiry
        await w.reconcile(TEAM, "pool")  # starts the renewal beside the pass
        role = w.identities.role(TEAM_ROLE_ARN, EXTERNAL_ID)  # type: ignore[union-attr]
        assert role is not None
        async with asyncio.timeout(30):  # the STS client's own retries back off in real time
            while getattr(role, "last_error", None) is None:
                await asyncio.sleep(0.05)
        w.clock.advance(5)
        await w.reconcile(TEAM, "pool")
        degraded = w.condition(TEAM, "pool", "Degraded")
        assert degraded["status"] == "True" and "assumed role" in degraded["message"], degraded
        assert len(w.owned(uid)) == 3


async def test_a_pool_moved_from_keys_to_the_operators_identity_keeps_its_instances_and_lets_its_secret_go(
        tmp_path: Path) -> None:
    """The migration docs/trust-and-credentials.md describes: one edit from credentialsSecretRef to
    credentials of the same
    account (here the operator's own); the instances stay, and the Secret's finalizer goes once no
    pool names it."""
    same_account = CredentialPolicy(operator_identity=("team",))
    async with identity_world(tmp_path, same_account) as w:
        w.kube.put_secret("team", "creds", DEMO_SECRET_ID, DEMO_SECRET_KEY)
        uid = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=2))["metadata"]["uid"]
        await w.mark_launch_checked("team", "pool")
        await w.settle("team", "pool")
        assert w.kube.secrets[("team", "creds")]["finalizers"]
        w.kube.edit_spec("team", "pool", {"credentialsSecretRef": None,
                                          "credentials": {"source": "OperatorIdentity"}})
        await w.settle("team", "pool")
        assert w.bought(uid) == 2 and len(w.owned(uid)) == 2
        assert w.status("team", "pool")["credentials"]["source"] == "OperatorIdentity"
        assert "secret" not in w.status("team", "pool")["credentials"]
        assert w.kube.secrets[("team", "creds")]["finalizers"] == []
