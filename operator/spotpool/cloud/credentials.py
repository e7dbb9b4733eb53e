"""Where a CvmClient's credentials come from: the provider protocol, a static key pair, and the
typed error every provider raises.

A client signs each attempt with what its provider's `current()` answers right then, so temporary
credentials (STS sessions, which expire) are renewed under a long-lived client without anyone
rebuilding it. The source is always explicit: the official SDK's default chain tries environment,
profile, CVM role and OIDC and keeps the first hit forever, so a pod on a node with a CVM role
silently acts as the node; spotpool picks one provider per pool and names it in every error.

The renewing providers (web identity, CVM role, assumed role) are in `providers.py`; this module
has no I/O so that the transport (`transport.py`) can depend on it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .errors import CloudError, ErrorCategory, clean_message
from .models import Credentials
from .ratelimit import account_key

#: Client-side codes of credential failures (never sent by a server).
CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"
CREDENTIALS_EXPIRING = "CredentialsExpiring"
MAX_SOURCE_LENGTH = 200


@runtime_checkable
class CredentialProvider(Protocol):
    """A source of credentials for a CvmClient.

    `current()` answers credentials valid now (renewing them first when they are close to their
    expiry) or raises `CredentialError`; it is called before every signed attempt, so it must be
    cheap when nothing is due. `source` names where they come from, for messages and status (never
    a secret). `rate_limit_key` is the client-side rate-limit identity: stable across renewals,
    so a renewal does not hand out a fresh bucket.
    """

    @property
    def source(self) -> str: ...

    @property
    def rate_limit_key(self) -> str: ...

    async def current(self) -> Credentials: ...


class CredentialError(CloudError):
    """Credentials could not be had, or not for long enough, from one source.

    `source` names it (`web identity (role qcs::..., token file /var/run/...)`); `code` is the
    Tencent code when STS or the metadata service refused (`InvalidParameter.WebIdentityTokenError`,
    `UnauthorizedOperation`, ...), else a client-side one: `CredentialsUnavailable` (no answer, an
    unreadable token file, a malformed answer) or `CredentialsExpiring` (a purchase refused because
    the credentials would expire before it could finish). `category` is TRANSIENT when trying
    again later may work (network, throttling, an STS internal error), else AUTH or what the code
    says. The message is cleaned like any server message: bounded, no control characters, and
    neither the token, the web identity token nor any secret key in it.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        source: str,
        action: str,
        category: ErrorCategory | None = None,
        request_id: str | None = None,
        secrets: tuple[str | None, ...] = (),
    ) -> None:
        self.source = clean_message(source, secrets, MAX_SOURCE_LENGTH)
        super().__init__(
            code,
            clean_message(message, secrets),
            action=action,
            request_id=request_id,
            category=category,
        )

    @property
    def transient(self) -> bool:
        """Whether asking the source again later may succeed."""
        return self.category in (ErrorCategory.TRANSIENT, ErrorCategory.THROTTLED)

    def __str__(self) -> str:
        text = f"credentials from {self.source}: {self.code}: {self.message}"
        if self.request_id:
            text += f" (RequestId {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"CredentialError(code={self.code!r}, source={self.source!r}, "
            f"category={self.category.value!r})"
        )


class StaticCredentials:
    """A key pair (today's Secret), or temporary credentials someone else renews: `current()`
    answers them as they are. A CvmClient given plain `Credentials` wraps them in this, with the
    rate-limit bucket it always had (SecretId plus a salted digest of the key)."""

    def __init__(self, credentials: Credentials, source: str | None = None) -> None:
        self._credentials = credentials
        self._source = source or f"key pair {credentials.secret_id}"
        self._rate_limit_key = account_key(credentials.secret_id, credentials.secret_key)

    @property
    def source(self) -> str:
        return self._source

    @property
    def rate_limit_key(self) -> str:
        return self._rate_limit_key

    async def current(self) -> Credentials:
        return self._credentials

    def __repr__(self) -> str:
        return f"StaticCredentials(source={self._source!r})"
