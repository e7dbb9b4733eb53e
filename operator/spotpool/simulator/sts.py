"""STS, served on the simulator's port: GetCallerIdentity, AssumeRole, AssumeRoleWithWebIdentity.

Tencent serves STS at `sts.tencentcloudapi.com`, API version 2018-08-13, signed with service
`sts`; the simulator answers on its one port when a request carries that version.

- `GetCallerIdentity` answers for whoever signed: a key pair as a CAM user of its account
  (`Type: CAMUser`, `Arn: qcs::cam::uin/<account>:uin/<uin>`), a role session as Tencent's own
  example shows it (`Type: CAMRole`, `Arn: qcs::sts:<account>:assumed-role/<roleId>`,
  `UserId: <roleId>:<sessionName>`, `PrincipalId`: who asked for the role). The operator uses it
  to learn which account a pool's credentials act in.
- `AssumeRole`, signed by a key pair or by a role session (role chaining), hands out a session of a
  role whose trust policy names the caller (`RoleTrust.principals`), with the role's ExternalId
  when it has one.
- `AssumeRoleWithWebIdentity` is *unsigned* (the SDK sends `Authorization: SKIP`): the web identity
  token is the credential. It is checked against the provider named by `ProviderId`
  (`simulator/oidc.py`), then the role's trust (`RoleTrust.web_identity`: which provider and which
  subjects, e.g. `system:serviceaccount:<namespace>:<name>`).

Both answer `Credentials {Token, TmpSecretId, TmpSecretKey}`, `ExpiredTime` (Unix seconds) and
`Expiration` (ISO 8601 UTC), with `DurationSeconds` defaulting to 7200 and bounded by
`sts.min/max_duration_seconds` and the role's `max_session_duration_seconds`.

Codes come from STS's catalogue (the SDK's errorcodes.py); where it leaves the choice to a guess,
docs/cvm-api.md says so: a malformed parameter is `InvalidParameter.ParamError`, an unknown role
`ResourceNotFound.RoleNotFound`, a duration above the bound `InvalidParameter.OverTimeError`, a
bad token `InvalidParameter.WebIdentityTokenError`, a trust policy (or ExternalId) that does not
admit the caller `UnauthorizedOperation`, a malformed session policy
`InvalidParameter.StrategyFormatError`.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel

from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.config import RoleSpec, SimulatorConfig
from spotpool.simulator.iam import Identities, Principal, Session
from spotpool.simulator.oidc import OidcVerifier
from spotpool.simulator.params import Tag, _Wire
from spotpool.simulator.render import iso_time, success_body

STS_API_VERSION = "2018-08-13"
#: Actions STS serves without a signature (the token in the request is the credential).
UNSIGNED_ACTIONS = frozenset({"AssumeRoleWithWebIdentity"})

_SESSION_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{2,128}")
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9_+=,.@:/-]{2,128}")
_ROLE_ARN = re.compile(r"qcs::cam::uin/[0-9]{1,20}:(roleName/[A-Za-z0-9_+=,.@-]{1,128}|role/[0-9]{1,20})")
MAX_POLICY_LENGTH = 2048  # encoded; not documented for AssumeRole (GetFederationToken: 2048)
MAX_SESSION_TAGS = 50


class GetCallerIdentityParams(_Wire):
    pass


class AssumeRoleParams(_Wire):
    role_arn: str | None = None
    role_session_name: str | None = None
    duration_seconds: int | None = None
    policy: str | None = None
    external_id: str | None = None
    tags: list[Tag] | None = None
    source_identity: str | None = None
    serial_number: str | None = None
    token_code: str | None = None


class AssumeRoleWithWebIdentityParams(_Wire):
    provider_id: str | None = None
    web_identity_token: str | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    duration_seconds: int | None = None


#: The parameter model of each action STS serves here.
STS_PARAMS: dict[str, type[BaseModel]] = {
    "GetCallerIdentity": GetCallerIdentityParams,
    "AssumeRole": AssumeRoleParams,
    "AssumeRoleWithWebIdentity": AssumeRoleWithWebIdentityParams,
}


def unknown_action(action: str) -> ApiError:
    return ApiError(
        "InvalidAction",
        f"The action {action!r} does not exist in STS {STS_API_VERSION} (simulated: "
        f"{', '.join(STS_PARAMS)}).",
    )


class StsService:
    """The STS actions over the simulator's identities (`iam.Identities`)."""

    def __init__(
        self, config: SimulatorConfig, identities: Identities, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._identities = identities
        self._clock = clock
        self._verifiers = {
            spec.provider_id: OidcVerifier(spec, clock) for spec in config.oidc_providers
        }

    async def handle(
        self, action: str, params: BaseModel, caller: Principal | None, request_id: str
    ) -> bytes:
        """The answer of one STS call; `caller` is None only for an unsigned action."""
        if isinstance(params, GetCallerIdentityParams):
            assert caller is not None
            return success_body(caller.caller_identity(), request_id)
        if isinstance(params, AssumeRoleParams):
            assert caller is not None
            return success_body(_credentials_fields(self.assume_role(params, caller)), request_id)
        if isinstance(params, AssumeRoleWithWebIdentityParams):
            session = await self.assume_role_with_web_identity(params)
            return success_body(_credentials_fields(session), request_id)
        raise unknown_action(action)

    # ----------------------------------------------------------------------- AssumeRole

    def assume_role(self, params: AssumeRoleParams, caller: Principal) -> Session:
        role_arn = _required(params.role_arn, "RoleArn")
        session_name = _session_name(params.role_session_name)
        if params.external_id is not None and not _EXTERNAL_ID.fullmatch(params.external_id):
            raise ApiError(
                "InvalidParameter.ParamError",
                "ExternalId must be 2 to 128 characters of letters, digits and =,.@:/-_+.",
            )
        _check_policy(params.policy)
        if params.tags is not None and len(params.tags) > MAX_SESSION_TAGS:
            raise ApiError(
                "InvalidParameter.ParamError", f"At most {MAX_SESSION_TAGS} session Tags."
            )
        if params.serial_number is not None or params.token_code is not None:
            raise ApiError("UnsupportedOperation", "MFA (SerialNumber, TokenCode) is not simulated.")
        role = self._role(role_arn)
        duration = self._duration(params.duration_seconds, role)
        if not self._identities.trusts(role, caller):
            raise ApiError(
                "UnauthorizedOperation",
                f"The trust policy of role {role.arn} does not allow {caller.arn} to assume it.",
            )
        wanted = role.trust.external_id
        if wanted is not None and params.external_id != wanted:
            raise ApiError(
                "UnauthorizedOperation",
                f"Role {role.arn} requires the ExternalId of its trust policy; the request "
                f"{'gave another' if params.external_id else 'gave none'}.",
            )
        return self._identities.issue(role, session_name, duration, caller.principal_id)

    # -------------------------------------------------------- AssumeRoleWithWebIdentity

    async def assume_role_with_web_identity(
        self, params: AssumeRoleWithWebIdentityParams
    ) -> Session:
        provider_id = _required(params.provider_id, "ProviderId")
        token = _required(params.web_identity_token, "WebIdentityToken")
        role_arn = _required(params.role_arn, "RoleArn")
        session_name = _session_name(params.role_session_name)
        verifier = self._verifiers.get(provider_id)
        if verifier is None:
            raise ApiError(
                "InvalidParameter.ParamError",
                f"No identity provider {provider_id!r} is registered (ProviderId).",
            )
        # The token first: who holds no valid token learns nothing about the roles.
        claims = await verifier.verify(token)
        subject: str = claims["sub"]
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        provider = verifier.spec
        role = self._role(role_arn)
        duration = self._duration(params.duration_seconds, role)
        if provider.account_id != role.account_id or not any(
            trust.provider_id == provider_id
            and any(fnmatch.fnmatchcase(subject, pattern) for pattern in trust.subjects)
            and (trust.audiences is None or set(trust.audiences).intersection(audiences))
            for trust in role.trust.web_identity
        ):
            shown = subject if len(subject) <= 256 and subject.isprintable() else "(unprintable)"
            raise ApiError(
                "UnauthorizedOperation",
                f"The trust policy of role {role.arn} does not allow subject {shown!r} of "
                f"provider {provider_id} to assume it.",
            )
        return self._identities.issue(role, session_name, duration, role.account_id)

    # ---------------------------------------------------------------------- shared checks

    def _role(self, arn: str) -> RoleSpec:
        if not _ROLE_ARN.fullmatch(arn):
            raise ApiError(
                "InvalidParameter.ParamError",
                "RoleArn must look like qcs::cam::uin/<account>:roleName/<name> or "
                "qcs::cam::uin/<account>:role/<roleId>.",
            )
        role = self._identities.role(arn)
        if role is None:
            raise ApiError("ResourceNotFound.RoleNotFound", f"The role {arn} does not exist.")
        return role

    def _duration(self, asked: int | None, role: RoleSpec) -> int:
        sts = self._config.sts
        duration = sts.default_duration_seconds if asked is None else asked
        longest = min(sts.max_duration_seconds, role.max_session_duration_seconds)
        if duration > longest:
            raise ApiError(
                "InvalidParameter.OverTimeError",
                f"DurationSeconds {duration} exceeds {longest}, the longest session of role "
                f"{role.name}.",
            )
        if duration < sts.min_duration_seconds:
            raise ApiError(
                "InvalidParameter.ParamError",
                f"DurationSeconds must be at least {sts.min_duration_seconds}.",
            )
        return duration


def _required(value: str | None, name: str) -> str:
    if value is None or value == "":
        raise ApiError("MissingParameter", f"The request is missing the required parameter {name}.")
    return value


def _session_name(value: str | None) -> str:
    name = _required(value, "RoleSessionName")
    if not _SESSION_NAME.fullmatch(name):
        raise ApiError(
            "InvalidParameter.ParamError",
            "RoleSessionName must be 2 to 128 characters of letters, digits and =,.@_-+.",
        )
    return name


def _check_policy(policy: str | None) -> None:
    """A session policy must be a URL-encoded CAM policy (JSON with version and statement, no
    principal). The simulator checks its form only: the session gets the role's permissions."""
    if policy is None:
        return
    if len(policy) > MAX_POLICY_LENGTH:
        raise ApiError(
            "InvalidParameter.PolicyTooLong", f"Policy exceeds {MAX_POLICY_LENGTH} characters."
        )
    try:
        document: Any = json.loads(unquote(policy))
    except ValueError:
        document = None
    statements = document.get("statement") if isinstance(document, dict) else None
    if not isinstance(statements, list) or "version" not in document:
        raise ApiError(
            "InvalidParameter.StrategyFormatError",
            "Policy must be a URL-encoded CAM policy: {\"version\": \"2.0\", \"statement\": [...]}.",
        )
    if any(isinstance(item, dict) and "principal" in item for item in statements):
        raise ApiError(
            "InvalidParameter.StrategyInvalid", "A session Policy must not have a principal."
        )


def _credentials_fields(session: Session) -> dict[str, Any]:
    return {
        "Credentials": {
            "Token": session.token,
            "TmpSecretId": session.secret_id,
            "TmpSecretKey": session.secret_key,
        },
        "ExpiredTime": int(session.expires_at),
        "Expiration": iso_time(session.expires_at),
    }


def metadata_credentials(session: Session) -> dict[str, Any]:
    """The CVM metadata service's answer for a role, the shape the official SDK's
    CVMRoleCredential reads (`Code: Success`, the three values, `ExpiredTime`)."""
    return {
        "TmpSecretId": session.secret_id,
        "TmpSecretKey": session.secret_key,
        "ExpiredTime": int(session.expires_at),
        "Expiration": iso_time(session.expires_at),
        "Token": session.token,
        "Code": "Success",
    }
