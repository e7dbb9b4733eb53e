"""The simulator's STS (AssumeRoleWithWebIdentity, AssumeRole, GetCallerIdentity), the X-TC-Token
check on every signed call, and the CVM metadata service's role path.

The real simulator code runs in process (`SimulatorTransport`, no socket) under a fake clock that
spotpool's CvmClient shares; tokens are signed by a test issuer whose JWKS the provider holds.
tests/integration checks the same with Tencent's SDK over TCP and with a real kube-apiserver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from spotpool.cloud.errors import CloudError
from spotpool.cloud.models import Credentials
from spotpool.simulator import SimulatorConfig
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.support.identity import (
    ACCOUNT,
    AUDIENCE,
    CVM_ROLE,
    EXTERNAL_ID,
    OPERATOR_ROLE,
    OPERATOR_ROLE_ARN,
    PROVIDER_ID,
    SUBJECT,
    TEAM_ACCOUNT,
    TEAM_ROLE_ARN,
    Issuer,
    Rig,
    identity_config,
)

DEMO = Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY)


def base_config() -> SimulatorConfig:
    from tests.unit.simulator.test_market import small_config

    return small_config()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def rig(issuer: Issuer) -> AsyncIterator[Rig]:
    rig = Rig(identity_config(base_config(), issuer, sts={"min_duration_seconds": 60}), issuer)
    yield rig
    await rig.close()


async def sts(rig: Rig, action: str, params: dict[str, Any], credentials: Any = None) -> dict[str, Any]:
    """One STS call: unsigned (credentials None) or signed."""
    client = rig.client(credentials, service="sts")
    result: dict[str, Any] = await client.call(action, params)
    return result


async def refusal(rig: Rig, action: str, params: dict[str, Any], credentials: Any = None) -> CloudError:
    with pytest.raises(CloudError) as caught:
        await sts(rig, action, params, credentials)
    return caught.value


def web_identity(token: str, **changes: Any) -> dict[str, Any]:
    return {"ProviderId": PROVIDER_ID, "WebIdentityToken": token, "RoleArn": OPERATOR_ROLE_ARN,
            "RoleSessionName": "spotpool", **changes}


def temporary(answer: dict[str, Any]) -> Credentials:
    creds = answer["Credentials"]
    return Credentials(creds["TmpSecretId"], creds["TmpSecretKey"], creds["Token"],
                       float(answer["ExpiredTime"]))


# ---------------------------------------------------------------- AssumeRoleWithWebIdentity


async def test_a_trusted_token_gets_temporary_credentials_of_the_role(rig: Rig) -> None:
    answer = await sts(rig, "AssumeRoleWithWebIdentity", web_identity(rig.token(), DurationSeconds=900))
    assert answer["ExpiredTime"] == int(rig.clock.now) + 900
    assert answer["Expiration"].endswith("Z")
    creds = temporary(answer)
    assert creds.secret_id.startswith("AKID") and creds.token
    me = await sts(rig, "GetCallerIdentity", {}, creds)
    role_id = next(r for r in rig.simulator.config.roles if r.name == OPERATOR_ROLE).resolved_role_id
    assert me["Type"] == "CAMRole" and me["AccountId"] == ACCOUNT
    assert me["Arn"] == f"qcs::sts:{ACCOUNT}:assumed-role/{role_id}"
    assert me["UserId"] == f"{role_id}:spotpool"


async def test_the_default_duration_is_7200_seconds(rig: Rig) -> None:
    answer = await sts(rig, "AssumeRoleWithWebIdentity", web_identity(rig.token()))
    assert answer["ExpiredTime"] == int(rig.clock.now) + 7200


async def test_an_es256_issuer_is_accepted() -> None:
    issuer = Issuer(algorithm="ES256")
    rig = Rig(identity_config(base_config(), issuer), issuer)
    try:
        answer = await sts(rig, "AssumeRoleWithWebIdentity", web_identity(rig.token()))
        assert temporary(answer).token
    finally:
        await rig.close()


def _other_key_same_kid(rig: Rig) -> str:
    forger = Issuer(kid=rig.issuer.kid)  # same key id and issuer, another key
    return forger.token(now=rig.clock.now)


@pytest.mark.parametrize(("case", "make", "reason"), [
    ("bad signature", _other_key_same_kid, "signature does not verify"),
    ("wrong issuer", lambda rig: rig.token(issuer="https://evil.example"), "issuer"),
    ("wrong audience", lambda rig: rig.token(audience="kubernetes"), "audience"),
    ("expired", lambda rig: rig.token(now=rig.clock.now - 7200, lifetime=3600), "expired"),
    ("not yet valid", lambda rig: rig.token(now=rig.clock.now + 600), "not valid before"),
    ("no subject", lambda rig: rig.token(drop=("sub",)), "subject"),
    ("no expiry", lambda rig: rig.token(drop=("exp",)), "expiry"),
    ("unknown key id", lambda rig: rig.token(kid="rotated-away"), "key id"),
    ("not a JWT", lambda rig: "not.a.jwt", "well-formed"),
    ("alg none", lambda rig: jwt.encode({"iss": rig.issuer.issuer, "sub": SUBJECT, "aud": AUDIENCE,
                                         "exp": int(rig.clock.now) + 60}, None, algorithm="none"),
     "algorithm"),
    ("HS256 with the public key as secret",
     lambda rig: jwt.encode({"iss": rig.issuer.issuer, "sub": SUBJECT, "aud": AUDIENCE,
                             "exp": int(rig.clock.now) + 60}, "a-shared-secret-of-32-bytes-long!",
                            algorithm="HS256", headers={"kid": rig.issuer.kid}),
     "algorithm"),
])
async def test_a_token_failing_a_check_is_refused_and_never_quoted(
    rig: Rig, case: str, make: Any, reason: str
) -> None:
    token = make(rig)
    err = await refusal(rig, "AssumeRoleWithWebIdentity", web_identity(token))
    assert err.code == "InvalidParameter.WebIdentityTokenError", case
    assert reason in err.message, (case, err.message)
    assert token not in err.message
    assert not rig.simulator.identities.sessions()


async def test_a_subject_the_role_does_not_trust_is_unauthorized(rig: Rig) -> None:
    token = rig.token("system:serviceaccount:tenant:sneaky")
    err = await refusal(rig, "AssumeRoleWithWebIdentity", web_identity(token))
    assert err.code == "UnauthorizedOperation"
    assert "system:serviceaccount:tenant:sneaky" in err.message


async def test_subjects_are_globs(issuer: Issuer) -> None:
    rig = Rig(identity_config(base_config(), issuer, subjects=["system:serviceaccount:spotpool:*"]),
              issuer)
    try:
        assert await sts(rig, "AssumeRoleWithWebIdentity",
                         web_identity(rig.token("system:serviceaccount:spotpool:any")))
        err = await refusal(rig, "AssumeRoleWithWebIdentity",
                            web_identity(rig.token("system:serviceaccount:other:any")))
        assert err.code == "UnauthorizedOperation"
    finally:
        await rig.close()


async def test_a_role_without_web_identity_trust_is_unauthorized(rig: Rig) -> None:
    err = await refusal(rig, "AssumeRoleWithWebIdentity",
                        web_identity(rig.token(), RoleArn=f"qcs::cam::uin/{ACCOUNT}:roleName/{CVM_ROLE}"))
    assert err.code == "UnauthorizedOperation"


@pytest.mark.parametrize(("changes", "code"), [
    ({"ProviderId": "nobody"}, "InvalidParameter.ParamError"),
    ({"RoleArn": f"qcs::cam::uin/{ACCOUNT}:roleName/absent"}, "ResourceNotFound.RoleNotFound"),
    ({"RoleArn": "arn:aws:iam::1:role/x"}, "InvalidParameter.ParamError"),
    ({"RoleSessionName": "a b"}, "InvalidParameter.ParamError"),
    ({"RoleSessionName": ""}, "MissingParameter"),
    ({"DurationSeconds": 43201}, "InvalidParameter.OverTimeError"),
    ({"DurationSeconds": 59}, "InvalidParameter.ParamError"),
    ({"Unknown": 1}, "UnknownParameter"),
])
async def test_parameters_are_checked(rig: Rig, changes: dict[str, Any], code: str) -> None:
    err = await refusal(rig, "AssumeRoleWithWebIdentity", web_identity(rig.token(), **changes))
    assert err.code == code, err.message


async def test_a_role_can_cap_its_sessions_below_the_sts_maximum(issuer: Issuer) -> None:
    config = identity_config(base_config(), issuer)
    roles = [r.model_dump() for r in config.roles]
    roles[0]["max_session_duration_seconds"] = 3600
    rig = Rig(config.with_overrides({"roles": roles}), issuer)
    try:
        err = await refusal(rig, "AssumeRoleWithWebIdentity",
                            web_identity(rig.token(), DurationSeconds=3601))
        assert err.code == "InvalidParameter.OverTimeError"
    finally:
        await rig.close()


async def test_the_ledger_keeps_no_web_identity_token(rig: Rig) -> None:
    token = rig.token()
    await sts(rig, "AssumeRoleWithWebIdentity", web_identity(token))
    (entry,) = rig.calls("AssumeRoleWithWebIdentity")
    assert token not in str(entry.to_json())
    assert entry.secret_id is None and entry.error_code is None


# ----------------------------------------------------------------------------- AssumeRole


async def operator_session(rig: Rig) -> Credentials:
    return temporary(await sts(rig, "AssumeRoleWithWebIdentity", web_identity(rig.token())))


async def test_role_chaining_with_the_external_id_acts_in_the_team_account(rig: Rig) -> None:
    operator = await operator_session(rig)
    answer = await sts(rig, "AssumeRole", {"RoleArn": TEAM_ROLE_ARN, "RoleSessionName": "pool-a",
                                           "ExternalId": EXTERNAL_ID, "DurationSeconds": 900}, operator)
    team = temporary(answer)
    me = await sts(rig, "GetCallerIdentity", {}, team)
    assert me["AccountId"] == TEAM_ACCOUNT and me["Type"] == "CAMRole"
    assert me["PrincipalId"] == ACCOUNT  # who asked for the role's keys
    assert me["UserId"].endswith(":pool-a")


@pytest.mark.parametrize("external_id", [None, "someone-elses-id"])
async def test_the_external_id_must_match(rig: Rig, external_id: str | None) -> None:
    operator = await operator_session(rig)
    params: dict[str, Any] = {"RoleArn": TEAM_ROLE_ARN, "RoleSessionName": "pool-a"}
    if external_id:
        params["ExternalId"] = external_id
    err = await refusal(rig, "AssumeRole", params, operator)
    assert err.code == "UnauthorizedOperation" and "ExternalId" in err.message


async def test_a_principal_the_trust_policy_does_not_name_is_unauthorized(rig: Rig) -> None:
    err = await refusal(rig, "AssumeRole", {"RoleArn": TEAM_ROLE_ARN, "RoleSessionName": "xy",
                                            "ExternalId": EXTERNAL_ID}, DEMO)
    assert err.code == "UnauthorizedOperation"
    assert f"qcs::cam::uin/{ACCOUNT}:uin/{ACCOUNT}" in err.message


async def test_a_key_pair_of_the_trusted_account_assumes_a_role(rig: Rig) -> None:
    answer = await sts(rig, "AssumeRole", {"RoleArn": f"qcs::cam::uin/{ACCOUNT}:roleName/{CVM_ROLE}",
                                           "RoleSessionName": "by-key"}, DEMO)
    me = await sts(rig, "GetCallerIdentity", {}, temporary(answer))
    assert me["AccountId"] == ACCOUNT and me["PrincipalId"] == ACCOUNT


async def test_a_role_is_found_by_its_role_id_arn_too(rig: Rig) -> None:
    role = next(r for r in rig.simulator.config.roles if r.name == CVM_ROLE)
    answer = await sts(rig, "AssumeRole", {"RoleArn": role.id_arn, "RoleSessionName": "by-id"}, DEMO)
    assert temporary(answer).token


@pytest.mark.parametrize(("params", "code"), [
    ({"RoleSessionName": "xy"}, "MissingParameter"),
    ({"RoleArn": TEAM_ROLE_ARN, "RoleSessionName": "xy", "ExternalId": "a b"},
     "InvalidParameter.ParamError"),
    ({"RoleArn": TEAM_ROLE_ARN, "RoleSessionName": "xy", "Policy": "not%20json"},
     "InvalidParameter.StrategyFormatError"),
    ({"RoleArn": TEAM_ROLE_ARN, "RoleSessionName": "xy", "SerialNumber": "qcs::cam:uin/1::mfa/softToken",
      "TokenCode": "123456"}, "UnsupportedOperation"),
])
async def test_assume_role_parameters_are_checked(rig: Rig, params: dict[str, Any], code: str) -> None:
    err = await refusal(rig, "AssumeRole", params, DEMO)
    assert err.code == code


async def test_assume_role_needs_a_signature(rig: Rig) -> None:
    err = await refusal(rig, "AssumeRole", {"RoleArn": TEAM_ROLE_ARN, "RoleSessionName": "xy"})
    assert err.code == "AuthFailure.InvalidAuthorization"


# ------------------------------------------------------------------------- X-TC-Token


async def test_an_expired_session_is_refused_with_token_failure(rig: Rig) -> None:
    creds = temporary(await sts(rig, "AssumeRoleWithWebIdentity",
                                web_identity(rig.token(), DurationSeconds=60)))
    client = rig.client(creds)
    assert await client.describe_instances() == []
    rig.clock.advance(60)
    with pytest.raises(CloudError) as caught:
        await client.describe_instances()
    assert caught.value.code == "AuthFailure.TokenFailure"
    assert "expired" in caught.value.message
    assert creds.token and creds.token not in str(caught.value)


async def test_a_long_expired_session_is_forgotten(rig: Rig) -> None:
    creds = temporary(await sts(rig, "AssumeRoleWithWebIdentity",
                                web_identity(rig.token(), DurationSeconds=60)))
    rig.clock.advance(60 + 3600)
    await sts(rig, "AssumeRoleWithWebIdentity", web_identity(rig.token()))  # a new issue purges
    with pytest.raises(CloudError) as caught:
        await rig.client(creds).describe_instances()
    assert caught.value.code == "AuthFailure.SecretIdNotFound"


@pytest.mark.parametrize("token", [None, "", "not-the-token"])
async def test_a_session_key_needs_its_own_token(rig: Rig, token: str | None) -> None:
    creds = await operator_session(rig)
    wrong = Credentials(creds.secret_id, creds.secret_key, token)
    with pytest.raises(CloudError) as caught:
        await rig.client(wrong).describe_instances()
    assert caught.value.code == "AuthFailure.TokenFailure"


async def test_a_token_with_a_long_term_key_is_refused(rig: Rig) -> None:
    """Before issue 19 the simulator served a request with any X-TC-Token."""
    with pytest.raises(CloudError) as caught:
        await rig.client(Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY, "made-up-token")).describe_instances()
    assert caught.value.code == "AuthFailure.TokenFailure"


async def test_a_session_token_of_another_session_is_refused(rig: Rig) -> None:
    one, two = await operator_session(rig), await operator_session(rig)
    with pytest.raises(CloudError) as caught:
        await rig.client(Credentials(one.secret_id, one.secret_key, two.token)).describe_instances()
    assert caught.value.code == "AuthFailure.TokenFailure"


async def test_sessions_are_listed_without_their_secrets(rig: Rig) -> None:
    creds = await operator_session(rig)
    from spotpool.simulator.control import _sessions

    response = await _sessions(rig.simulator)
    body = response.body
    assert isinstance(body, bytes)
    assert creds.secret_id.encode() in body
    assert creds.secret_key.encode() not in body and (creds.token or "").encode() not in body


# ------------------------------------------------------------------------- faults


async def test_sts_is_faulted_only_when_named(rig: Rig) -> None:
    from spotpool.simulator.faults import FaultSpec

    rig.simulator.faults.set("*", FaultSpec(error_rate=1.0, error_codes=["InternalError"]))
    assert await operator_session(rig)  # "*" breaks CVM actions, not STS
    rig.simulator.faults.set("AssumeRoleWithWebIdentity",
                             FaultSpec(error_rate=1.0, error_codes=["InternalError.SystemError"]))
    err = await refusal(rig, "AssumeRoleWithWebIdentity", web_identity(rig.token()))
    assert err.code == "InternalError.SystemError"


# ----------------------------------------------------------------------- metadata


async def metadata(rig: Rig, path: str) -> tuple[int, str]:
    import httpx

    async with httpx.AsyncClient(transport=rig.transport) as http:
        response = await http.get(f"http://metadata/latest/meta-data/cam/security-credentials/{path}")
        return response.status_code, response.text


async def test_the_metadata_service_hands_out_the_bound_role(rig: Rig) -> None:
    import json

    assert await metadata(rig, "") == (200, CVM_ROLE)
    status, text = await metadata(rig, CVM_ROLE)
    data = json.loads(text)
    assert status == 200 and data["Code"] == "Success"
    assert data["ExpiredTime"] == int(rig.clock.now) + 7200
    creds = Credentials(data["TmpSecretId"], data["TmpSecretKey"], data["Token"])
    me = await sts(rig, "GetCallerIdentity", {}, creds)
    assert me["AccountId"] == ACCOUNT and me["UserId"].endswith(":cvm-metadata")
    assert json.loads((await metadata(rig, CVM_ROLE))[1]) == data  # the same until renewal
    rig.clock.advance(7200 - 900)
    renewed = json.loads((await metadata(rig, CVM_ROLE))[1])
    assert renewed["TmpSecretId"] != data["TmpSecretId"]
    assert renewed["ExpiredTime"] == int(rig.clock.now) + 7200


async def test_the_metadata_service_knows_only_the_bound_role(rig: Rig) -> None:
    assert (await metadata(rig, "another-role"))[0] == 404


async def test_the_metadata_service_answers_loopback_only_unless_allowed(issuer: Issuer) -> None:
    rig = Rig(identity_config(base_config(), issuer), issuer)
    rig.transport.peer = "10.1.2.3"
    try:
        assert (await metadata(rig, CVM_ROLE))[0] == 403
    finally:
        await rig.close()
    rig = Rig(identity_config(base_config(), issuer, metadata={"allow_remote": True}), issuer)
    rig.transport.peer = "10.1.2.3"
    try:
        assert (await metadata(rig, CVM_ROLE))[0] == 200
    finally:
        await rig.close()


async def test_no_bound_role_is_a_404() -> None:
    issuer = Issuer()
    rig = Rig(base_config(), issuer)
    try:
        assert (await metadata(rig, ""))[0] == 404
        assert (await metadata(rig, CVM_ROLE))[0] == 404
    finally:
        await rig.close()


# ----------------------------------------------------------------------- configuration


def test_a_trust_naming_an_unknown_provider_is_refused(issuer: Issuer) -> None:
    config = identity_config(base_config(), issuer)
    with pytest.raises(ValueError, match="unknown provider_id"):
        config.with_overrides({"oidc_providers": []})


def test_a_provider_of_another_account_cannot_be_trusted(issuer: Issuer) -> None:
    config = identity_config(base_config(), issuer)
    providers = [p.model_dump() for p in config.oidc_providers]
    providers[0]["account_id"] = TEAM_ACCOUNT
    with pytest.raises(ValueError, match="registered in account"):
        config.with_overrides({"oidc_providers": providers})


def test_a_provider_needs_exactly_one_key_source(issuer: Issuer) -> None:
    config = identity_config(base_config(), issuer)
    providers = [p.model_dump() for p in config.oidc_providers]
    providers[0]["jwks_url"] = "https://example/jwks"
    with pytest.raises(ValueError, match="exactly one of jwks"):
        config.with_overrides({"oidc_providers": providers})


def test_the_metadata_role_must_exist(issuer: Issuer) -> None:
    with pytest.raises(ValueError, match=r"metadata\.role"):
        identity_config(base_config(), issuer, metadata={"role": "absent"})


def test_trusted_principals_have_a_documented_shape(issuer: Issuer) -> None:
    config = identity_config(base_config(), issuer)
    roles = [r.model_dump() for r in config.roles]
    roles[2]["trust"]["principals"] = ["arn:aws:iam::1:root"]
    with pytest.raises(ValueError, match="principal"):
        config.with_overrides({"roles": roles})
