"""Tencent's official STS SDK against the simulator: GetCallerIdentity, the call the operator uses to
learn which account a key pair acts in (so it can refuse to act when a pool's credentials move), and
(issue 19) temporary credentials: the STS client's AssumeRole and AssumeRoleWithWebIdentity, and the
SDK's credential providers signing CVM calls with them."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.cvm.v20170312 import cvm_client
from tencentcloud.cvm.v20170312 import models as cvm_models
from tencentcloud.sts.v20180813 import models, sts_client

from spotpool.simulator import RunningSimulator, SimulatorConfig, run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.support.identity import (
    ACCOUNT,
    CVM_ROLE,
    EXTERNAL_ID,
    OPERATOR_ROLE_ARN,
    PROVIDER_ID,
    TEAM_ACCOUNT,
    TEAM_ROLE_ARN,
    Issuer,
    identity_config,
)
from tests.support.specs import simulator_config

OTHER = ("AKIDOTHERACCOUNT000000000000000000000", "otherAccountSecretKey0000000000000", "200000000002")


def client(sim: RunningSimulator, secret_id: str, secret_key: str) -> sts_client.StsClient:
    http = HttpProfile(protocol="http", endpoint=f"127.0.0.1:{sim.port}")
    return sts_client.StsClient(credential.Credential(secret_id, secret_key), "ap-guangzhou",
                                ClientProfile(httpProfile=http))


async def identity(sim: RunningSimulator, secret_id: str, secret_key: str) -> models.GetCallerIdentityResponse:
    return await asyncio.to_thread(
        client(sim, secret_id, secret_key).GetCallerIdentity, models.GetCallerIdentityRequest())


async def test_each_key_pair_names_its_account() -> None:
    config = SimulatorConfig.default().with_overrides({"credentials": [
        {"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
        {"secret_id": OTHER[0], "secret_key": OTHER[1], "account_id": OTHER[2]},
    ]})
    async with run_simulator(config) as sim:
        demo = await identity(sim, DEMO_SECRET_ID, DEMO_SECRET_KEY)
        other = await identity(sim, *OTHER[:2])
    assert demo.AccountId == "100000000001" and other.AccountId == "200000000002"
    assert demo.Arn == "qcs::cam::uin/100000000001:uin/100000000001"
    assert (demo.UserId, demo.PrincipalId, demo.Type) == ("100000000001", "100000000001", "CAMUser")
    assert demo.RequestId


async def test_a_wrong_key_is_refused_as_sts_refuses_it() -> None:
    async with run_simulator(SimulatorConfig.default()) as sim:
        with pytest.raises(TencentCloudSDKException) as caught:
            await identity(sim, DEMO_SECRET_ID, "not-the-key")
    assert caught.value.code == "AuthFailure.SignatureFailure"


# ----------------------------------------------------------------------------------------------
# Issue 19: temporary credentials. The SDK's STS client and its credential providers
# (OIDCRoleArnCredential, STSAssumeRoleCredential, CVMRoleCredential) against the simulator. The
# providers build their own HttpProfile, always https; the simulator serves plain http, so the
# tests give them one whose default scheme is http (`plain_http_providers`) and, for the CVM role,
# the metadata URL on the simulator's port. Nothing else of the SDK is changed.

@pytest.fixture
def plain_http_providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(credential, "HttpProfile", functools.partial(HttpProfile, protocol="http"))
    yield


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def identity_simulator_config(issuer: Issuer, **changes: Any) -> SimulatorConfig:
    return identity_config(simulator_config(seed=5), issuer, **changes)


def profile(sim: RunningSimulator) -> ClientProfile:
    return ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=f"127.0.0.1:{sim.port}"))


def describe_zones(sim: RunningSimulator, cred: Any) -> list[str]:
    client = cvm_client.CvmClient(cred, "ap-guangzhou", profile(sim))
    return [zone.Zone for zone in client.DescribeZones(cvm_models.DescribeZonesRequest()).ZoneSet]


def sts_as(sim: RunningSimulator, cred: Any) -> sts_client.StsClient:
    return sts_client.StsClient(cred, "ap-guangzhou", profile(sim))


async def test_the_sdk_sts_client_assumes_roles(issuer: Issuer) -> None:
    async with run_simulator(identity_simulator_config(issuer)) as sim:
        def run() -> tuple[Any, Any, Any]:
            # Unsigned as the SDK documents it ("Authorization: SKIP"): any credential will do.
            anonymous = credential.Credential("unused", "unused")
            request = models.AssumeRoleWithWebIdentityRequest()
            request.ProviderId, request.WebIdentityToken = PROVIDER_ID, issuer.token()
            request.RoleArn, request.RoleSessionName = OPERATOR_ROLE_ARN, "sdk"
            answer = sts_as(sim, anonymous).AssumeRoleWithWebIdentity(request)
            operator = credential.Credential(answer.Credentials.TmpSecretId,
                                             answer.Credentials.TmpSecretKey, answer.Credentials.Token)
            chain = models.AssumeRoleRequest()
            chain.RoleArn, chain.RoleSessionName, chain.ExternalId = TEAM_ROLE_ARN, "sdk-team", EXTERNAL_ID
            chain.DurationSeconds = 900
            team = sts_as(sim, operator).AssumeRole(chain)
            team_cred = credential.Credential(team.Credentials.TmpSecretId, team.Credentials.TmpSecretKey,
                                              team.Credentials.Token)
            me = sts_as(sim, team_cred).GetCallerIdentity(models.GetCallerIdentityRequest())
            return answer, team, me

        answer, team, me = await asyncio.to_thread(run)
    assert answer.ExpiredTime > time.time() + 7000 and answer.Expiration.endswith("Z")
    assert team.ExpiredTime <= time.time() + 901
    assert (me.AccountId, me.Type, me.PrincipalId) == (TEAM_ACCOUNT, "CAMRole", ACCOUNT)
    assert me.Arn.startswith(f"qcs::sts:{TEAM_ACCOUNT}:assumed-role/")


async def test_oidc_role_arn_credential_signs_cvm_calls(issuer: Issuer, plain_http_providers: None) -> None:
    async with run_simulator(identity_simulator_config(issuer)) as sim:
        def run() -> tuple[list[str], str]:
            cred = credential.OIDCRoleArnCredential("ap-guangzhou", PROVIDER_ID, issuer.token(),
                                                    OPERATOR_ROLE_ARN, "sdk-oidc", 7200,
                                                    endpoint=f"127.0.0.1:{sim.port}")
            zones = describe_zones(sim, cred)
            return zones, sts_as(sim, cred).GetCallerIdentity(models.GetCallerIdentityRequest()).Type

        zones, kind = await asyncio.to_thread(run)
    assert "ap-guangzhou-3" in zones and kind == "CAMRole"


async def test_tke_default_oidc_provider_reads_the_webhooks_environment(
    issuer: Issuer, plain_http_providers: None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(issuer.token())
    for name, value in {"TKE_REGION": "ap-guangzhou", "TKE_PROVIDER_ID": PROVIDER_ID,
                        "TKE_ROLE_ARN": OPERATOR_ROLE_ARN,
                        "TKE_WEB_IDENTITY_TOKEN_FILE": str(token_file)}.items():
        monkeypatch.setenv(name, value)
    async with run_simulator(identity_simulator_config(issuer)) as sim:
        def run() -> list[str]:
            cred = credential.DefaultTkeOIDCRoleArnProvider().get_credentials()
            cred.endpoint = f"127.0.0.1:{sim.port}"
            return describe_zones(sim, cred)

        assert "ap-guangzhou-3" in await asyncio.to_thread(run)


async def test_sts_assume_role_credential_signs_cvm_calls(issuer: Issuer, plain_http_providers: None) -> None:
    async with run_simulator(identity_simulator_config(issuer)) as sim:
        def run() -> list[str]:
            cred = credential.STSAssumeRoleCredential(
                DEMO_SECRET_ID, DEMO_SECRET_KEY, f"qcs::cam::uin/{ACCOUNT}:roleName/{CVM_ROLE}",
                "sdk-assume", 900, endpoint=f"127.0.0.1:{sim.port}")
            return describe_zones(sim, cred)

        assert "ap-guangzhou-3" in await asyncio.to_thread(run)


async def test_cvm_role_credential_reads_the_metadata_service(issuer: Issuer) -> None:
    async with run_simulator(identity_simulator_config(issuer)) as sim:
        def run() -> tuple[str | None, list[str], Any]:
            cred = credential.CVMRoleCredential()
            cred._role_endpoint = f"{sim.url}/latest/meta-data/cam/security-credentials/"
            role = cred.get_role_name()
            zones = describe_zones(sim, cred)
            return role, zones, sts_as(sim, cred).GetCallerIdentity(models.GetCallerIdentityRequest())

        role, zones, me = await asyncio.to_thread(run)
    assert role == CVM_ROLE and "ap-guangzhou-3" in zones
    assert (me.AccountId, me.Type) == (ACCOUNT, "CAMRole")


async def test_the_sdk_gets_token_failure_for_a_wrong_or_expired_token(issuer: Issuer) -> None:
    config = identity_simulator_config(issuer, sts={"min_duration_seconds": 1})
    async with run_simulator(config) as sim:
        def run() -> tuple[str, str]:
            request = models.AssumeRoleWithWebIdentityRequest()
            request.ProviderId, request.WebIdentityToken = PROVIDER_ID, issuer.token()
            request.RoleArn, request.RoleSessionName, request.DurationSeconds = OPERATOR_ROLE_ARN, "sdk", 1
            creds = sts_as(sim, credential.Credential("unused", "unused")).AssumeRoleWithWebIdentity(
                request).Credentials
            codes = []
            for cred in (credential.Credential(creds.TmpSecretId, creds.TmpSecretKey, creds.Token + "x"),
                         credential.Credential(creds.TmpSecretId, creds.TmpSecretKey, creds.Token)):
                if cred.token == creds.Token:
                    time.sleep(1.1)  # past the 1 s session
                try:
                    describe_zones(sim, cred)
                    codes.append("served")
                except TencentCloudSDKException as exc:
                    codes.append(exc.code)
            return codes[0], codes[1]

        wrong, expired = await asyncio.to_thread(run)
    assert wrong == expired == "AuthFailure.TokenFailure"
