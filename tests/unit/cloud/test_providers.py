"""Credential providers (web identity, assumed role, CVM role) and CvmClient taking a provider.

Against the real simulator in process (no socket) with one fake clock for the simulator, the
client and the providers, so expiry and renewal are exact and instant; hostile answers come from
httpx.MockTransport handlers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spotpool.cloud import (
    CredentialError,
    CvmClient,
    CvmRoleProvider,
    StaticCredentials,
    WebIdentityProvider,
)
from spotpool.cloud.credentials import CREDENTIALS_EXPIRING, CREDENTIALS_UNAVAILABLE
from spotpool.cloud.errors import CloudError, ErrorCategory
from spotpool.cloud.models import Credentials, RunInstancesRequest
from spotpool.cloud.ratelimit import RateLimiterRegistry
from spotpool.simulator.faults import FaultSpec
from tests.support.identity import (
    ACCOUNT,
    CVM_ROLE,
    OPERATOR_ROLE_ARN,
    PROVIDER_ID,
    TEAM_ACCOUNT,
    FakeClock,
    Issuer,
    Rig,
    identity_config,
)
from tests.unit.simulator.test_market import small_config

PURCHASE = RunInstancesRequest(zone="ap-guangzhou-3", instance_type="S5.MEDIUM4",
                               image_id="img-12345678", count=1, client_token="tok-1", max_price="1.0")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    issuer = Issuer()
    rig = Rig(identity_config(small_config(), issuer, sts={"min_duration_seconds": 60}), issuer)
    yield rig
    await rig.close()


@pytest.fixture
def token_file(tmp_path: Path, rig: Rig) -> Path:
    path = tmp_path / "token"
    path.write_text(rig.token(lifetime=10**6))
    return path


# ------------------------------------------------------------------------- web identity


async def test_web_identity_credentials_sign_cvm_and_sts_calls(rig: Rig, token_file: Path) -> None:
    provider = rig.web_identity(token_file, duration_seconds=900)
    creds = await provider.current()
    assert creds.token and creds.expires_at == int(rig.clock.now) + 900
    assert await provider.current() is creds  # cached
    assert await rig.client(provider).describe_instances() == []
    identity = await rig.client(provider, service="sts").get_caller_identity()
    assert identity.account_id == ACCOUNT and identity.type == "CAMRole"
    (call,) = rig.calls("AssumeRoleWithWebIdentity")
    assert call.params["RoleArn"] == OPERATOR_ROLE_ARN and call.params["DurationSeconds"] == 900
    assert rig.transport.requests[0].headers["Authorization"] == "SKIP"
    assert "X-TC-Token" not in rig.transport.requests[0].headers


async def test_renewal_before_expiry_with_no_failed_call(rig: Rig, token_file: Path) -> None:
    """Credentials of 60 s, a call every 7 s for 10 minutes: each renewal lands before expiry,
    the token file is read again at each (the kubelet rotates it), and no call fails."""
    provider = rig.web_identity(token_file, duration_seconds=60)
    client = rig.client(provider)
    tokens = set()
    for step in range(90):
        token_file.write_text(rig.token(lifetime=3600, extra={"step": step}))
        await client.describe_instances()
        tokens.add((await provider.current()).token)
        rig.clock.advance(7)
    assert not [c for c in rig.calls() if c.error_code], "a call failed"
    # Renewed in the background once half the 60 s are gone (the renewal progresses as the test
    # awaits, so it lands a step or two later under the fake clock): more than once a lifetime.
    assert 630 // 60 < provider.renewals <= 630 // 35 + 1
    assert len(tokens) >= provider.renewals - 1  # the last renewal may land after the last look
    assert len(rig.calls("AssumeRoleWithWebIdentity")) == provider.renewals
    assert provider.last_error is None


async def test_concurrent_callers_share_one_renewal(rig: Rig, token_file: Path) -> None:
    provider = rig.web_identity(token_file)
    results = await asyncio.gather(*(provider.current() for _ in range(50)))
    assert len({id(c) for c in results}) == 1
    assert len(rig.calls("AssumeRoleWithWebIdentity")) == 1


async def test_a_failed_renewal_keeps_the_valid_credentials_and_names_the_source(
    rig: Rig, token_file: Path
) -> None:
    provider = rig.web_identity(token_file, duration_seconds=600)
    first = await provider.current()
    rig.simulator.faults.set("AssumeRoleWithWebIdentity",
                             FaultSpec(error_rate=1.0, error_codes=["InternalError.SystemError"]))
    rig.clock.advance(500)  # within the renewal margin: due
    assert await provider.current() is first  # still good for 100 s: no failed call, no wait
    await provider.settle()  # the renewal went on in the background, and failed
    err = provider.last_error
    assert isinstance(err, CredentialError) and err.transient
    assert err.code == "InternalError.SystemError"
    assert "web identity" in str(err) and OPERATOR_ROLE_ARN in str(err) and str(token_file) in str(err)
    attempts = len(rig.calls("AssumeRoleWithWebIdentity"))
    assert attempts == 1 + 3  # the first fetch, then one renewal of 3 attempts
    assert len(rig.sleeps) == 2  # backoff between the attempts
    assert await provider.current() is first  # within the failure backoff: no new request
    assert len(rig.calls("AssumeRoleWithWebIdentity")) == attempts
    rig.clock.advance(100)  # expired now
    with pytest.raises(CredentialError) as caught:
        await provider.current()
    token = token_file.read_text()
    assert caught.value.code == "InternalError.SystemError"
    assert token not in str(caught.value) and token not in repr(caught.value)
    rig.simulator.faults.clear()
    rig.clock.advance(60)  # past the failure backoff
    assert (await provider.current()).expires_at == int(rig.clock.now) + 600
    assert provider.last_error is None


async def test_a_refusal_is_not_retried_and_is_raised_with_its_code(rig: Rig, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(rig.token("system:serviceaccount:tenant:sneaky"))
    provider = rig.web_identity(path)
    with pytest.raises(CredentialError) as caught:
        await provider.current()
    assert caught.value.code == "UnauthorizedOperation" and not caught.value.transient
    assert caught.value.category is ErrorCategory.AUTH
    assert len(rig.calls("AssumeRoleWithWebIdentity")) == 1
    with pytest.raises(CredentialError):  # within the failure backoff: the same error, no call
        await provider.current()
    assert len(rig.calls("AssumeRoleWithWebIdentity")) == 1


async def test_a_missing_token_file_is_a_clear_error(rig: Rig, tmp_path: Path) -> None:
    provider = rig.web_identity(tmp_path / "absent", max_attempts=1)
    with pytest.raises(CredentialError) as caught:
        await provider.current()
    assert caught.value.code == CREDENTIALS_UNAVAILABLE
    assert "cannot read the token file" in caught.value.message
    assert str(tmp_path / "absent") in caught.value.source


async def test_an_echoed_token_is_redacted(tmp_path: Path) -> None:
    """A hostile STS that quotes the web identity token in its error message."""
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ"
    path = tmp_path / "token"
    path.write_text(token)

    def echo(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)["WebIdentityToken"]
        return httpx.Response(200, json={"Response": {"Error": {
            "Code": "InvalidParameter.WebIdentityTokenError", "Message": f"bad token {sent}"},
            "RequestId": "r1"}})

    provider = WebIdentityProvider(token_file=path, role_arn=OPERATOR_ROLE_ARN, provider_id=PROVIDER_ID,
                                   region="ap-guangzhou", transport=httpx.MockTransport(echo))
    try:
        with pytest.raises(CredentialError) as caught:
            await provider.current()
    finally:
        await provider.aclose()
    assert token not in str(caught.value) and "***" in caught.value.message


def test_from_environment_reads_what_the_pod_identity_webhook_injects(tmp_path: Path) -> None:
    env = {"TKE_REGION": "ap-shanghai", "TKE_PROVIDER_ID": "cls-123", "TKE_ROLE_ARN": OPERATOR_ROLE_ARN,
           "TKE_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "t")}
    provider = WebIdentityProvider.from_environment(env)
    assert (provider.region, provider.provider_id, provider.role_arn) == ("ap-shanghai", "cls-123",
                                                                          OPERATOR_ROLE_ARN)
    with pytest.raises(ValueError, match="TKE_ROLE_ARN, TKE_WEB_IDENTITY_TOKEN_FILE"):
        WebIdentityProvider.from_environment({"TKE_REGION": "r", "TKE_PROVIDER_ID": "p"})


@pytest.mark.parametrize("changes", [
    {"role_arn": "arn:aws:iam::1:role/x"}, {"session_name": "a b"}, {"session_name": "caf\u00e9"},
    {"duration_seconds": 43201},
    {"provider_id": ""},
])
def test_bad_arguments_are_refused_at_construction(tmp_path: Path, changes: dict[str, Any]) -> None:
    args = {"token_file": tmp_path / "t", "role_arn": OPERATOR_ROLE_ARN, "provider_id": PROVIDER_ID,
            "region": "ap-guangzhou", **changes}
    with pytest.raises(ValueError):
        WebIdentityProvider(**args)


# ------------------------------------------------------------------------- assumed role


async def test_a_team_role_chained_on_the_operator_buys_in_the_team_account(
    rig: Rig, token_file: Path
) -> None:
    team = rig.assume_role(rig.web_identity(token_file), session_name="team-pool")
    client = rig.client(team)
    ids = await client.run_instances(PURCHASE)
    assert [i.account_id for i in rig.simulator.market.instances()] == [TEAM_ACCOUNT]
    assert (await rig.client(team, service="sts").get_caller_identity()).account_id == TEAM_ACCOUNT
    assert await rig.client(rig.web_identity(token_file)).describe_instances(instance_ids=ids) == []
    assert "assumed role" in team.source and "web identity" in team.source


async def test_a_wrong_external_id_is_refused_naming_both_sources(rig: Rig, token_file: Path) -> None:
    team = rig.assume_role(rig.web_identity(token_file), external_id="someone-elses")
    with pytest.raises(CredentialError) as caught:
        await team.current()
    assert caught.value.code == "UnauthorizedOperation"
    assert "assumed role" in caught.value.source and "ExternalId" in caught.value.message


async def test_the_base_providers_failure_is_raised_with_its_code(rig: Rig, tmp_path: Path) -> None:
    team = rig.assume_role(rig.web_identity(tmp_path / "absent", max_attempts=1), max_attempts=1)
    with pytest.raises(CredentialError) as caught:
        await team.current()
    assert caught.value.code == CREDENTIALS_UNAVAILABLE
    assert "web identity" in caught.value.message and "assumed role" in caught.value.source


async def test_assume_role_signed_by_a_key_pair(rig: Rig) -> None:
    from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY

    role = rig.assume_role(StaticCredentials(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY)),
                           role_arn=f"qcs::cam::uin/{ACCOUNT}:roleName/{CVM_ROLE}", external_id=None)
    assert (await rig.client(role, service="sts").get_caller_identity()).type == "CAMRole"


# ------------------------------------------------------------------------- CVM role


async def test_the_cvm_role_is_discovered_and_renewed(rig: Rig) -> None:
    provider = rig.cvm_role()
    creds = await provider.current()
    assert creds.expires_at == int(rig.clock.now) + 7200
    assert (await rig.client(provider, service="sts").get_caller_identity()).account_id == ACCOUNT
    rig.clock.advance(7200 - 200)
    assert await provider.current() is creds  # still good: answered while renewing
    await provider.settle()
    renewed = await provider.current()
    assert renewed.secret_id != creds.secret_id and provider.renewals == 2
    assert await rig.client(provider).describe_instances() == []


async def test_an_unbound_cvm_role_is_a_clear_error(rig: Rig) -> None:
    provider = rig.cvm_role("not-bound")
    with pytest.raises(CredentialError) as caught:
        await provider.current()
    assert caught.value.code == CREDENTIALS_UNAVAILABLE and "HTTP 404" in caught.value.message
    assert "not-bound" in caught.value.source and not caught.value.transient


async def test_an_unreachable_metadata_service_is_transient_and_bounded(rig: Rig) -> None:
    rig.transport.fail_with = httpx.ConnectTimeout
    provider = rig.cvm_role(CVM_ROLE)
    with pytest.raises(CredentialError) as caught:
        await provider.current()
    assert caught.value.transient and "is this a CVM instance" in caught.value.message
    assert len(rig.transport.requests) == 3 and len(rig.sleeps) == 2


async def test_a_silent_metadata_service_times_out() -> None:
    async def silent(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    provider = CvmRoleProvider("r", deadline=0.05, max_attempts=1,
                               transport=httpx.MockTransport(silent))
    try:
        with pytest.raises(CredentialError) as caught:
            await provider.current()
    finally:
        await provider.aclose()
    assert "within 0.05 s" in caught.value.message


@pytest.mark.parametrize(("body", "reason"), [
    ("<html>no</html>", "not a JSON object"),
    (json.dumps({"Code": "Failure"}), "Code Failure"),
    (json.dumps({"Code": "Success", "TmpSecretId": "AKID with blanks", "TmpSecretKey": "tmpKey123",
                 "Token": "tmpToken123", "ExpiredTime": 2_000_000_000}), "TmpSecretId"),
    (json.dumps({"Code": "Success", "TmpSecretId": "AKIDtmp", "TmpSecretKey": "tmpKey123",
                 "Token": "tmpToken123"}), "ExpiredTime"),
])
async def test_a_malformed_metadata_answer_is_refused(body: str, reason: str) -> None:
    provider = CvmRoleProvider("r", max_attempts=1, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, text=body)))
    try:
        with pytest.raises(CredentialError) as caught:
            await provider.current()
    finally:
        await provider.aclose()
    assert reason in caught.value.message


async def test_metadata_credentials_that_already_expired_are_refused() -> None:
    clock = FakeClock()
    body = json.dumps({"Code": "Success", "TmpSecretId": "AKIDtmp", "TmpSecretKey": "tmpKey123",
                       "Token": "tmpToken123", "ExpiredTime": int(clock.now) - 1})
    provider = CvmRoleProvider("r", max_attempts=1, clock=clock, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, text=body)))
    try:
        with pytest.raises(CredentialError, match="already expired"):
            await provider.current()
    finally:
        await provider.aclose()


# ------------------------------------------------------------------------- CvmClient


class Expiring:
    """A provider whose credentials expire at a set time and are never renewed."""

    def __init__(self, expires_at: float) -> None:
        self.credentials = Credentials("AKIDTEMP", "tmpKeyThatMustNeverLeak", "TokenThatMustNeverLeak",
                                       expires_at)
        self.source = "a test provider"
        self.rate_limit_key = "test"

    async def current(self) -> Credentials:
        return self.credentials


def fake_cvm(seen: list[str], message: str = "") -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        action = request.headers["X-TC-Action"]
        seen.append(action)
        if message:
            return httpx.Response(200, json={"Response": {"Error": {"Code": "InternalError",
                                                                    "Message": message},
                                                          "RequestId": "r"}})
        payload: dict[str, Any] = {"RunInstances": {"InstanceIdSet": ["ins-12345678"]},
                                   "TerminateInstances": {}}[action]
        return httpx.Response(200, json={"Response": {**payload, "RequestId": "r"}})

    return httpx.MockTransport(handler)


def client_of(provider: Any, transport: httpx.MockTransport, clock: FakeClock, **kwargs: Any) -> CvmClient:
    async def no_wait(_: float) -> None:
        return None

    return CvmClient(provider, "ap-guangzhou", "https://cvm.tencentcloudapi.com", transport=transport,
                     clock=clock, limiter=RateLimiterRegistry(sleep=no_wait), sleep=no_wait, **kwargs)


async def test_a_purchase_is_not_sent_with_credentials_expiring_within_its_deadline() -> None:
    clock = FakeClock()
    seen: list[str] = []
    async with client_of(Expiring(clock.now + 30), fake_cvm(seen), clock, deadline=60) as client:
        with pytest.raises(CredentialError) as caught:
            await client.run_instances(PURCHASE)
        assert caught.value.code == CREDENTIALS_EXPIRING and caught.value.source == "a test provider"
        assert seen == []
        await client.terminate_instances(["ins-12345678"])  # releases still try
        assert seen == ["TerminateInstances"]


async def test_a_purchase_goes_when_the_credentials_outlast_its_deadline() -> None:
    clock = FakeClock()
    seen: list[str] = []
    async with client_of(Expiring(clock.now + 61), fake_cvm(seen), clock, deadline=60) as client:
        assert await client.run_instances(PURCHASE) == ["ins-12345678"]


async def test_a_guard_with_less_time_than_the_deadline_bounds_the_check() -> None:
    class Guard:
        def check(self) -> None:
            return None

        def remaining(self) -> float:
            return 10.0

    clock = FakeClock()
    seen: list[str] = []
    async with client_of(Expiring(clock.now + 30), fake_cvm(seen), clock, deadline=60) as client:
        assert await client.run_instances(PURCHASE, guard=Guard()) == ["ins-12345678"]


async def test_messages_are_cleaned_of_temporary_secrets_renewed_ones_included() -> None:
    clock = FakeClock()
    provider = Expiring(clock.now + 3600)
    old = provider.credentials
    seen: list[str] = []
    echo = f"key {old.secret_key} token {old.token}"
    async with client_of(provider, fake_cvm(seen, echo), clock, max_attempts=1) as client:
        with pytest.raises(CloudError) as caught:
            await client.terminate_instances(["ins-12345678"])
        assert old.secret_key not in str(caught.value) and (old.token or "") not in str(caught.value)
        provider.credentials = Credentials("AKIDNEW", "newKey", "newToken", clock.now + 3600)
        with pytest.raises(CloudError) as caught:  # a late answer quoting the old secrets
            await client.terminate_instances(["ins-12345678"])
        assert old.secret_key not in str(caught.value) and (old.token or "") not in str(caught.value)


async def test_the_client_signs_each_attempt_with_the_current_credentials(rig: Rig, token_file: Path) -> None:
    provider = rig.web_identity(token_file, duration_seconds=120)
    client = rig.client(provider)
    await client.describe_instances()
    rig.clock.advance(100)
    await client.describe_instances()  # 20 s left: signed with them, a renewal starts
    await provider.settle()
    await client.describe_instances()
    signers = [c.secret_id for c in rig.calls("DescribeInstances")]
    assert signers[0] == signers[1] != signers[2] and provider.renewals == 2


async def test_a_static_client_keeps_its_repr_and_bucket() -> None:
    from spotpool.cloud.ratelimit import account_key

    creds = Credentials("AKIDSTATIC", "staticKey")
    client = CvmClient(creds, "ap-guangzhou")
    try:
        assert "secret_id='AKIDSTATIC'" in repr(client) and "staticKey" not in repr(client)
        assert client._transport.bucket_account == account_key("AKIDSTATIC", "staticKey")
        assert client.source == "key pair AKIDSTATIC"
    finally:
        await client.close()


def test_unsigned_clients_are_for_sts_only() -> None:
    with pytest.raises(ValueError, match="STS only"):
        CvmClient(None, "ap-guangzhou")


async def test_an_expired_static_token_is_refused_by_the_simulator(rig: Rig, token_file: Path) -> None:
    creds = await rig.web_identity(token_file, duration_seconds=60).current()
    client = rig.client(creds)  # plain Credentials: nobody renews them
    rig.clock.advance(61)
    with pytest.raises(CloudError) as caught:
        await client.describe_instances()
    assert caught.value.code == "AuthFailure.TokenFailure"


async def test_the_client_does_not_retry_a_providers_failure() -> None:
    class Failing:
        source = "a failing provider"
        rate_limit_key = "failing"
        calls = 0

        async def current(self) -> Credentials:
            self.calls += 1
            raise CredentialError(CREDENTIALS_UNAVAILABLE, "STS is down", source=self.source,
                                  action="AssumeRole", category=ErrorCategory.TRANSIENT)

    provider = Failing()
    seen: list[str] = []
    async with client_of(provider, fake_cvm(seen), FakeClock()) as client:
        with pytest.raises(CredentialError) as caught:
            await client.terminate_instances(["ins-12345678"])
    assert provider.calls == 1 and seen == [] and caught.value.source == "a failing provider"


async def test_a_cancelled_caller_does_not_cancel_the_shared_renewal(rig: Rig, token_file: Path) -> None:
    provider = rig.web_identity(token_file)
    gate = asyncio.Event()
    fetch = provider._fetch

    async def slow_fetch() -> Credentials:
        await gate.wait()
        return await fetch()

    provider._fetch = slow_fetch  # type: ignore[method-assign]
    first = asyncio.ensure_future(provider.current())
    second = asyncio.ensure_future(provider.current())
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert (await second).token
    assert len(rig.calls("AssumeRoleWithWebIdentity")) == 1


async def test_refresh_renews_at_once(rig: Rig, token_file: Path) -> None:
    provider = rig.web_identity(token_file)
    first = await provider.current()
    second = await provider.refresh()
    assert second.secret_id != first.secret_id and await provider.current() is second


async def test_a_caller_waits_for_the_renewal_when_nothing_valid_is_left(rig: Rig, token_file: Path) -> None:
    provider = rig.web_identity(token_file, duration_seconds=60)
    first = await provider.current()
    rig.clock.advance(58)  # 2 s left: less than min_validity (5 s)
    second = await provider.current()
    assert second.secret_id != first.secret_id


async def test_closing_a_provider_cancels_its_renewal(rig: Rig, token_file: Path) -> None:
    provider = rig.web_identity(token_file)
    gate = asyncio.Event()

    async def stuck() -> Credentials:
        await gate.wait()
        raise AssertionError("unreachable")

    provider._fetch = stuck  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(provider.current())
    await asyncio.sleep(0)
    await provider.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiting
