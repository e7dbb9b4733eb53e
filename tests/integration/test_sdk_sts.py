"""Tencent's official STS SDK against the simulator: GetCallerIdentity, the call the operator uses to
learn which account a key pair acts in (so it can refuse to act when a pool's credentials move)."""

from __future__ import annotations

import asyncio

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.sts.v20180813 import models, sts_client

from spotpool.simulator import RunningSimulator, SimulatorConfig, run_simulator
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY

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
