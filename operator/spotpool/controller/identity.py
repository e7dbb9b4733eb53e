"""Where a pool's CVM credentials come from (`spec.credentials`), and who may use which.

Three sources (docs/security.md, docs/trust-and-credentials.md):

- `Secret`: a key pair in a Secret of the pool's namespace (`spec.credentialsSecretRef`), as
  before. The administrator may switch Secrets off altogether (`--no-secret-credentials`); the
  chart then grants no access to Secrets at all.
- `OperatorIdentity`: the operator's own identity, temporary credentials renewed before they
  expire: TKE pod identity (a projected ServiceAccount token exchanged with STS
  `AssumeRoleWithWebIdentity`) or the CAM role of the CVM the operator runs on.
- `Role`: a CAM role assumed (STS `AssumeRole`) from the operator's identity, so that each team's
  pools act in that team's role, in its own account if it has one.

The administrator says which namespaces may use which (`CredentialPolicy`): a pool author must not
be able to name another team's role (the confused deputy), so a role is usable only where a
`--allow-role NAMESPACE_GLOB=ROLE_ARN_GLOB` entry says so, and the operator's own identity only in
the namespaces `--allow-operator-identity` lists. Both default to nothing.

`Identities` holds the operator's provider (one per process) and one `AssumeRoleProvider` per
(role, ExternalId), shared by every pool naming them: a hundred pools of one team renew one
session. Each provider is wrapped so that the temporary secret key and session token it hands out
are registered for log redaction (`controller.redaction`) as they change.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from spotpool.api.spec import CredentialSource, EnvironmentSpec
from spotpool.cloud.credentials import CredentialError, CredentialProvider
from spotpool.cloud.models import Credentials
from spotpool.cloud.providers import (
    DEFAULT_METADATA_ENDPOINT,
    DEFAULT_STS_ENDPOINT,
    AssumeRoleProvider,
    CvmRoleProvider,
    WebIdentityProvider,
)
from spotpool.controller.redaction import REDACTOR

log = logging.getLogger(__name__)

SECRETS_FLAG = "--no-secret-credentials"
OPERATOR_IDENTITY_FLAG = "--allow-operator-identity"
ROLE_FLAG = "--allow-role"
IDENTITY_FLAG = "--operator-identity"

MAX_ROLES = 1024
"""Assumed-role providers kept (least recently used dropped, and closed, past it)."""


class CredentialPolicyError(ValueError):
    """An allow-list entry the administrator gave is unusable (a startup error)."""


@dataclass(frozen=True)
class CredentialPolicy:
    """Which credential sources pools may use, by namespace.

    `secrets`: whether `Secret` is allowed at all. `operator_identity`: namespace globs that may
    use `OperatorIdentity`. `roles`: (namespace glob, role ARN glob) pairs; a pool may assume a
    role when one pair matches both. Globs are fnmatch patterns, case-sensitive (ARNs and
    namespace names are)."""

    secrets: bool = True
    operator_identity: tuple[str, ...] = ()
    roles: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for pattern in (*self.operator_identity, *(p for pair in self.roles for p in pair)):
            if not pattern or any(c.isspace() for c in pattern):
                raise CredentialPolicyError(f"{pattern!r} is not a glob")

    @classmethod
    def parse_roles(cls, entries: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """`NAMESPACE_GLOB=ROLE_ARN_GLOB` entries (`--allow-role`)."""
        pairs = []
        for entry in entries:
            namespace, sep, arn = entry.partition("=")
            if not sep or not namespace or not arn:
                raise CredentialPolicyError(f"{ROLE_FLAG} {entry!r}: expected NAMESPACE_GLOB=ROLE_ARN_GLOB")
            pairs.append((namespace, arn))
        return tuple(pairs)

    def refusal(self, namespace: str, spec: EnvironmentSpec) -> str | None:
        """Why this pool may not use the credential source it names, naming the field, or None."""
        source = spec.credential_source
        if source is CredentialSource.SECRET:
            if self.secrets:
                return None
            return (f"spec.credentialsSecretRef: the operator's administrator allows no key pairs from Secrets "
                    f"({SECRETS_FLAG}); use spec.credentials.source Role (or OperatorIdentity) where allowed")
        if source is CredentialSource.OPERATOR_IDENTITY:
            if any(fnmatchcase(namespace, glob) for glob in self.operator_identity):
                return None
            return (f"spec.credentials.source OperatorIdentity: namespace {namespace} may not act as the operator "
                    f"itself ({OPERATOR_IDENTITY_FLAG} allows {', '.join(self.operator_identity) or 'no namespace'})")
        arn = spec.credentials.role_arn if spec.credentials is not None else None
        if arn is not None and any(fnmatchcase(namespace, ns) and fnmatchcase(arn, role) for ns, role in self.roles):
            return None
        allowed = [role for ns, role in self.roles if fnmatchcase(namespace, ns)]
        return (f"spec.credentials.roleArn {arn} is not a role namespace {namespace} may assume (the operator's "
                f"administrator allows {', '.join(allowed) or 'none'} here: {ROLE_FLAG})")


RoleFactory = Callable[[CredentialProvider, str, str | None, str], CredentialProvider]
"""(base, role ARN, ExternalId, session name) -> an AssumeRoleProvider chained on `base`."""


class Identities:
    """The operator's own provider and the roles assumed from it, each made once and shared."""

    def __init__(self, base: CredentialProvider | None = None, *, assume: RoleFactory | None = None,
                 max_roles: int = MAX_ROLES) -> None:
        self._base = _Redacting(base) if base is not None else None
        self._assume = assume
        self._max_roles = max_roles
        self._roles: OrderedDict[tuple[str, str | None], _Redacting] = OrderedDict()

    @property
    def configured(self) -> bool:
        return self._base is not None

    def operator(self) -> CredentialProvider | None:
        return self._base

    def role(self, role_arn: str, external_id: str | None) -> CredentialProvider | None:
        """The provider of `role_arn` assumed from the operator's identity (None without one)."""
        if self._base is None or self._assume is None:
            return None
        key = (role_arn, external_id)
        provider = self._roles.get(key)
        if provider is None:
            provider = self._roles[key] = _Redacting(self._assume(self._base, role_arn, external_id, "spotpool"))
            while len(self._roles) > self._max_roles:
                _, dropped = self._roles.popitem(last=False)
                dropped.retire()
        self._roles.move_to_end(key)
        return provider

    async def aclose(self) -> None:
        for provider in [*self._roles.values(), *([self._base] if self._base else [])]:
            await provider.aclose()
        self._roles.clear()


class _Redacting:
    """A provider whose every secret key and session token is masked in every log record from the
    moment it is handed out (and for the redactor's retirement time after it is replaced)."""

    def __init__(self, inner: CredentialProvider) -> None:
        self._inner = inner
        self._owner: Hashable = ("credential-provider", id(self))
        self._seen: Credentials | None = None

    @property
    def source(self) -> str:
        return self._inner.source

    @property
    def rate_limit_key(self) -> str:
        return self._inner.rate_limit_key

    @property
    def last_error(self) -> CredentialError | None:
        error = getattr(self._inner, "last_error", None)
        return error if isinstance(error, CredentialError) else None

    async def current(self) -> Credentials:
        credentials = await self._inner.current()
        if credentials is not self._seen:
            REDACTOR.hold(self._owner, tuple(v for v in (credentials.secret_key, credentials.token) if v))
            self._seen = credentials
        return credentials

    def retire(self) -> None:
        REDACTOR.hold(self._owner, ())

    async def aclose(self) -> None:
        self.retire()
        close: Any = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


def identities_from_config(config: Any) -> Identities:
    """The operator's identity as `--operator-identity` says, with roles assumed from it through
    `--sts-endpoint`. Raises `CredentialPolicyError` when pod identity is asked for and the TKE_*
    variables are missing (a startup error that names them)."""
    sts = config.sts_endpoint or DEFAULT_STS_ENDPOINT
    base: CredentialProvider
    if config.operator_identity == "none":
        return Identities()
    if config.operator_identity == "pod-identity":
        try:
            base = WebIdentityProvider.from_environment(endpoint=sts)
        except ValueError as exc:
            raise CredentialPolicyError(f"{IDENTITY_FLAG} pod-identity: {exc}") from None
    elif config.operator_identity == "cvm-role":
        base = CvmRoleProvider(config.cvm_role, endpoint=config.metadata_endpoint or DEFAULT_METADATA_ENDPOINT)
    else:
        raise CredentialPolicyError(f"{IDENTITY_FLAG} {config.operator_identity!r}: none, pod-identity or cvm-role")

    def assume(base: CredentialProvider, role_arn: str, external_id: str | None, session: str) -> CredentialProvider:
        return AssumeRoleProvider(base, role_arn=role_arn, external_id=external_id, session_name=session,
                                  endpoint=sts)

    return Identities(base, assume=assume)
