"""Credential providers that renew temporary credentials: TKE pod identity (web identity), the CVM
instance role, and a role assumed on top of another provider.

Every provider is explicit about its source, and behaves the same way, which the official SDK's
providers do not (its CVM role provider reads the metadata service with no timeout and swallows
every error; its default chain keeps the first source that answered forever):

- **Renewal before expiry.** `current()` answers the cached credentials until less than
  `refresh_margin` (at most half their lifetime) is left, then renews them: in the background
  while the cached ones are still good (callers are not held up by a slow STS), awaited when
  nothing valid is left. Concurrent callers share one renewal (single flight): a hundred pools
  waking at once make one STS call.
- **Timeouts and bounded retries.** Each attempt has a deadline (`timeout` per network step,
  `deadline` for the whole exchange); transient failures (no answer, throttling, STS internal
  errors) are retried up to `max_attempts` times with full-jitter exponential backoff. After a
  failed renewal, the next one waits `failure_backoff` (doubling up to `failure_backoff_cap`), so
  a dead STS is not hammered by every call; meanwhile callers get the last error at once.
- **No failed call when renewal fails early.** Credentials that are still valid (more than
  `min_validity` left) are answered while the renewal fails; `last_error` says it failed, so the
  operator can report it before the credentials run out. With nothing valid left, `current()`
  raises `CredentialError`, which names the source, carries the STS code when there was one, and
  never holds a token or key.

Providers use the event loop they are first called on (like httpx clients); `aclose()` releases
their HTTP connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from spotpool.flight import Flight

from .client import CvmClient
from .credentials import CREDENTIALS_UNAVAILABLE, CredentialError, CredentialProvider
from .errors import INVALID_RESPONSE, SIGNATURE_EXPIRED, CloudError, ErrorCategory, valid_code
from .models import Credentials
from .ratelimit import RateLimiterRegistry, Sleep

log = logging.getLogger(__name__)

DEFAULT_STS_ENDPOINT = "https://sts.tencentcloudapi.com"
DEFAULT_STS_REGION = "ap-guangzhou"  # what the official SDK's STSAssumeRoleCredential uses
DEFAULT_METADATA_ENDPOINT = "http://metadata.tencentyun.com"
METADATA_ROLE_PATH = "/latest/meta-data/cam/security-credentials/"
DEFAULT_DURATION_SECONDS = 7200  # STS's default; at most 43200
MAX_DURATION_SECONDS = 43200
DEFAULT_SESSION_NAME = "spotpool"

MAX_TOKEN_FILE_BYTES = 64 * 1024  # a projected ServiceAccount token is about 1 KiB
MAX_METADATA_BYTES = 64 * 1024
# Documented bounds of STS credentials (Credentials model: 1024 bytes each, the token 4096),
# with room to spare: past these an answer is not credentials.
MAX_SECRET_LENGTH = 1024
MAX_TOKEN_LENGTH = 16 * 1024
_SECRET_SHAPE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no blanks
_SESSION_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{2,128}")
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9_+=,.@:/-]{2,128}")
_ROLE_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{1,128}")
_ROLE_ARN = re.compile(r"qcs::cam::uin/[0-9]{1,20}:(roleName/[A-Za-z0-9_+=,.@-]{1,128}|role/[0-9]{1,20})")

#: TKE pod identity: what the pod-identity webhook injects into a pod.
TKE_ENV = ("TKE_REGION", "TKE_PROVIDER_ID", "TKE_ROLE_ARN", "TKE_WEB_IDENTITY_TOKEN_FILE")


class RenewingProvider(ABC):
    """The renewal, single flight, retries and backoff every temporary-credential provider
    shares; a subclass only says how to fetch once (`_fetch`) and where from (`source`).

    `refresh_margin`: renew when less than this is left (at most half the credentials' lifetime,
    so short test durations still renew ahead). `min_validity`: credentials with less than this
    left are not answered while a renewal fails. `max_attempts`, `backoff_base`, `backoff_cap`:
    the retries of one renewal. `failure_backoff`, `failure_backoff_cap`: the wait after a failed
    renewal before the next one. `clock` is Unix seconds (what STS's ExpiredTime is in); `sleep`
    and `rng` exist so tests can replace time and chance.
    """

    def __init__(
        self,
        *,
        refresh_margin: float = 300.0,
        min_validity: float = 5.0,
        max_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 4.0,
        failure_backoff: float = 1.0,
        failure_backoff_cap: float = 30.0,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if refresh_margin < 0 or min_validity < 0:
            raise ValueError("refresh_margin and min_validity must not be negative")
        self._refresh_margin = refresh_margin
        self._min_validity = min_validity
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._failure_backoff = failure_backoff
        self._failure_backoff_cap = failure_backoff_cap
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._cached: Credentials | None = None
        self._obtained_at = 0.0
        self._renewal: Flight[Credentials] = Flight()
        self._last_error: CredentialError | None = None
        self._failures = 0
        self._retry_at = float("-inf")
        self.renewals = 0  # successful fetches, for tests and metrics

    # ------------------------------------------------------------------- the protocol

    @property
    @abstractmethod
    def source(self) -> str:
        """Where the credentials come from (no secret in it)."""

    @property
    def rate_limit_key(self) -> str:
        return f"provider:{self.source}"

    async def current(self) -> Credentials:
        """Credentials valid now. Once less than the margin is left a renewal starts; the cached
        credentials are answered meanwhile if they have more than `min_validity` left, else the
        caller waits for the renewal.

        Raises CredentialError only when no credentials with more than `min_validity` left can
        be had; a renewal that fails while the cached ones are still good is recorded in
        `last_error` and tried again after the failure backoff.
        """
        now = self._clock()
        cached = self._cached
        if cached is not None and not self._due(cached, now):
            return cached
        usable = self._usable(cached, now)
        if not self._renewal.running:
            if now < self._retry_at:  # a renewal failed lately: not again before the backoff
                if usable:
                    assert cached is not None
                    return cached
                assert self._last_error is not None
                raise self._last_error
            self._start_renewal(force=False)
        if usable:
            assert cached is not None
            return cached
        # One caller giving up (a cancelled pass) never cancels everyone's renewal (`Flight`).
        return await self._renewal.join(lambda: self._renew(force=False))

    async def refresh(self) -> Credentials:
        """Renew now, whatever is left (joins a renewal already under way)."""
        return await self._renewal.join(lambda: self._renew(force=True))

    async def settle(self) -> None:
        """Wait for a renewal under way, if any (its outcome is in `expires_at`/`last_error`):
        for tests, and for a caller that wants fresh credentials before a long operation."""
        await self._renewal.wait()

    @property
    def expires_at(self) -> float | None:
        """When the cached credentials expire (None: none yet)."""
        return None if self._cached is None else self._cached.expires_at

    @property
    def last_error(self) -> CredentialError | None:
        """The failure of the latest renewal; None once one succeeds."""
        return self._last_error

    async def aclose(self) -> None:
        """Stop a renewal under way and release network resources (subclasses close their
        clients after this)."""
        await self._renewal.cancel()

    # ------------------------------------------------------------------- renewal

    def _due(self, credentials: Credentials, now: float) -> bool:
        expires = credentials.expires_at
        if expires is None:
            return False
        lifetime = max(expires - self._obtained_at, 0.0)
        return expires - now <= min(self._refresh_margin, lifetime / 2)

    def _usable(self, credentials: Credentials | None, now: float) -> bool:
        if credentials is None:
            return False
        return credentials.expires_at is None or credentials.expires_at - now > self._min_validity

    def _start_renewal(self, force: bool) -> None:
        self._renewal.start(lambda: self._renew(force))

    async def _renew(self, force: bool) -> Credentials:
        try:
            credentials = await self._fetch_with_retries()
        except CredentialError as err:
            self._last_error = err
            self._failures += 1
            backoff = min(self._failure_backoff * 2 ** (self._failures - 1), self._failure_backoff_cap)
            self._retry_at = self._clock() + backoff
            cached = self._cached
            if not force and self._usable(cached, self._clock()):
                assert cached is not None and cached.expires_at is not None
                log.warning("renewing credentials from %s failed (%s); the current ones are good "
                            "for %.0f s more", self.source, err.code,
                            cached.expires_at - self._clock())
                return cached
            raise
        self._cached = credentials
        self._obtained_at = self._clock()
        self._last_error = None
        self._failures = 0
        self._retry_at = float("-inf")
        self.renewals += 1
        return credentials

    async def _fetch_with_retries(self) -> Credentials:
        attempt = 0
        while True:
            attempt += 1
            try:
                credentials = await self._fetch()
            except CredentialError as err:
                retry = err.transient or err.code == SIGNATURE_EXPIRED
                if attempt >= self._max_attempts or not retry:
                    raise
                ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
                delay = self._rng.uniform(0.0, ceiling)
                log.debug("credentials from %s: attempt %d failed (%s); again in %.2f s",
                          self.source, attempt, err.code, delay)
                await self._sleep(delay)
                continue
            if credentials.expires_at is not None and credentials.expires_at <= self._clock():
                raise self._error(INVALID_RESPONSE, "the answer holds credentials that have "
                                  "already expired (is the clock right?)", category=ErrorCategory.UNKNOWN)
            return credentials

    @abstractmethod
    async def _fetch(self) -> Credentials:
        """One fetch of new credentials; CredentialError (transient or not) on failure."""

    def _error(
        self,
        code: str,
        message: str,
        *,
        action: str = "credentials",
        category: ErrorCategory | None = None,
        request_id: str | None = None,
        secrets: tuple[str | None, ...] = (),
    ) -> CredentialError:
        return CredentialError(code, message, source=self.source, action=action,
                               category=category, request_id=request_id, secrets=secrets)


# --------------------------------------------------------------------------- STS providers


class _StsProvider(RenewingProvider):
    """What the two STS providers share: one STS client, and reading an answer's credentials."""

    _action = ""

    def __init__(
        self,
        *,
        role_arn: str,
        session_name: str,
        duration_seconds: int,
        region: str,
        endpoint: str,
        timeout: float,
        deadline: float,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: RateLimiterRegistry | None = None,
        **renewal: Any,
    ) -> None:
        super().__init__(**renewal)
        if not _ROLE_ARN.fullmatch(role_arn):
            raise ValueError(
                "role_arn must look like qcs::cam::uin/<account>:roleName/<name> (or :role/<id>)"
            )
        if not _SESSION_NAME.fullmatch(session_name):
            raise ValueError("session_name must be 2 to 128 letters, digits or +=,.@_-")
        if not 1 <= duration_seconds <= MAX_DURATION_SECONDS:
            raise ValueError(f"duration_seconds must be 1..{MAX_DURATION_SECONDS}")
        self.role_arn = role_arn
        self.session_name = session_name
        self.duration_seconds = duration_seconds
        self.region = region
        self.endpoint = endpoint
        self._timeout = timeout
        self._deadline = deadline
        self._transport = transport
        self._limiter = limiter
        self._client: CvmClient | None = None

    def _sts(self, signer: CredentialProvider | None) -> CvmClient:
        """The STS client (made on first use, in the loop that uses it). One attempt per fetch:
        this provider retries itself, with its own error."""
        if self._client is None:
            self._client = CvmClient(
                signer, self.region, self.endpoint, service="sts", timeout=self._timeout,
                deadline=self._deadline, max_attempts=1, transport=self._transport,
                clock=self._clock, limiter=self._limiter,
            )
        return self._client

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(
        self, signer: CredentialProvider | None, params: dict[str, Any], secrets: tuple[str, ...]
    ) -> Credentials:
        try:
            response = await self._sts(signer).call(self._action, params)
        except CredentialError as err:  # the signer's own credentials could not be had
            raise self._error(
                err.code, f"the credentials to sign with ({err.source}) are unavailable: "
                f"{err.message}", action=self._action, category=err.category, secrets=secrets,
            ) from None
        except CloudError as err:
            raise self._error(
                err.code, f"STS {self._action} refused: {err.message}" if err.message else
                f"STS {self._action} refused", action=self._action, category=err.category,
                request_id=err.request_id, secrets=secrets,
            ) from None
        return self._credentials_of(response, secrets)

    def _credentials_of(self, response: Mapping[str, Any], secrets: tuple[str, ...]) -> Credentials:
        """The answer's Credentials and expiry, checked against the documented shape."""
        raw = response.get("Credentials")
        if not isinstance(raw, dict):
            raise self._invalid("the answer has no Credentials object", secrets)
        secret_id = raw.get("TmpSecretId")
        secret_key = raw.get("TmpSecretKey")
        token = raw.get("Token")
        for name, value, limit in (("TmpSecretId", secret_id, MAX_SECRET_LENGTH),
                                   ("TmpSecretKey", secret_key, MAX_SECRET_LENGTH),
                                   ("Token", token, MAX_TOKEN_LENGTH)):
            if not isinstance(value, str) or len(value) > limit or not _SECRET_SHAPE.fullmatch(value):
                raise self._invalid(f"Credentials.{name} is not a string of at most {limit} "
                                    "printable characters", secrets)
        assert isinstance(secret_id, str) and isinstance(secret_key, str) and isinstance(token, str)
        expires_at = _expiry(response)
        if expires_at is None:
            raise self._invalid("the answer has neither a valid ExpiredTime nor Expiration", secrets)
        return Credentials(secret_id, secret_key, token, expires_at)

    def _invalid(self, message: str, secrets: tuple[str, ...]) -> CredentialError:
        return self._error(INVALID_RESPONSE, message, action=self._action,
                           category=ErrorCategory.UNKNOWN, secrets=secrets)


class WebIdentityProvider(_StsProvider):
    """TKE pod identity: a projected ServiceAccount token exchanged for a role's credentials.

    Each renewal reads `token_file` again (the kubelet rotates it) and sends STS
    `AssumeRoleWithWebIdentity` (ProviderId, WebIdentityToken, RoleArn, RoleSessionName,
    DurationSeconds) unsigned, as the official SDK does. `from_environment()` takes what TKE's
    pod-identity webhook injects (TKE_REGION, TKE_PROVIDER_ID, TKE_ROLE_ARN,
    TKE_WEB_IDENTITY_TOKEN_FILE). The token is a credential: it is never logged, and any echo of it
    in an STS message is redacted.
    """

    _action = "AssumeRoleWithWebIdentity"

    def __init__(
        self,
        *,
        token_file: str | os.PathLike[str],
        role_arn: str,
        provider_id: str,
        region: str,
        session_name: str = DEFAULT_SESSION_NAME,
        duration_seconds: int = DEFAULT_DURATION_SECONDS,
        endpoint: str = DEFAULT_STS_ENDPOINT,
        timeout: float = 5.0,
        deadline: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        **renewal: Any,
    ) -> None:
        super().__init__(role_arn=role_arn, session_name=session_name,
                         duration_seconds=duration_seconds, region=region, endpoint=endpoint,
                         timeout=timeout, deadline=deadline, transport=transport, **renewal)
        if not provider_id or len(provider_id) > 128 or not provider_id.isprintable():
            raise ValueError("provider_id must be 1 to 128 printable characters")
        self.token_file = Path(token_file)
        self.provider_id = provider_id

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, **kwargs: Any
    ) -> WebIdentityProvider:
        """The provider TKE's pod identity configures: ValueError naming any TKE_* variable that
        is missing (the webhook did not run, or the ServiceAccount has no role annotation)."""
        env = os.environ if environ is None else environ
        missing = [name for name in TKE_ENV if not env.get(name)]
        if missing:
            raise ValueError(
                f"pod identity is not configured: {', '.join(missing)} not set (is the "
                "ServiceAccount annotated with tke.cloud.tencent.com/role-arn?)"
            )
        return cls(token_file=env["TKE_WEB_IDENTITY_TOKEN_FILE"], role_arn=env["TKE_ROLE_ARN"],
                   provider_id=env["TKE_PROVIDER_ID"], region=env["TKE_REGION"], **kwargs)

    @property
    def source(self) -> str:
        return (f"web identity (role {self.role_arn}, provider {self.provider_id}, "
                f"token file {self.token_file})")

    async def _fetch(self) -> Credentials:
        token = self._read_token()
        return await self._call(None, {
            "ProviderId": self.provider_id,
            "WebIdentityToken": token,
            "RoleArn": self.role_arn,
            "RoleSessionName": self.session_name,
            "DurationSeconds": self.duration_seconds,
        }, (token,))

    def _read_token(self) -> str:
        try:
            with self.token_file.open("rb") as handle:
                raw = handle.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            # Missing or unreadable: the kubelet may not have written it yet, so try again later.
            raise self._error(CREDENTIALS_UNAVAILABLE, f"cannot read the token file "
                              f"({exc.strerror or type(exc).__name__})", action=self._action,
                              category=ErrorCategory.TRANSIENT) from None
        if len(raw) > MAX_TOKEN_FILE_BYTES:
            raise self._error(CREDENTIALS_UNAVAILABLE,
                              f"the token file holds more than {MAX_TOKEN_FILE_BYTES} bytes",
                              action=self._action)
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
        if not token or not token.isprintable():
            raise self._error(CREDENTIALS_UNAVAILABLE,
                              "the token file is empty or not a printable ASCII token",
                              action=self._action, category=ErrorCategory.TRANSIENT)
        return token


class AssumeRoleProvider(_StsProvider):
    """A role assumed with STS `AssumeRole`, signed by another provider's credentials: a team's
    role (possibly in another account) assumed from the operator's own identity, or any role
    chain. `external_id` is the role's ExternalId when its trust policy requires one; `policy`
    a session policy (a CAM policy document, URL-encoded here as STS wants it) narrowing what
    the session may do.

    A failure of the base provider is raised as this provider's CredentialError, with the base's
    code and category and both sources named.
    """

    _action = "AssumeRole"

    def __init__(
        self,
        base: CredentialProvider,
        *,
        role_arn: str,
        session_name: str = DEFAULT_SESSION_NAME,
        duration_seconds: int = DEFAULT_DURATION_SECONDS,
        external_id: str | None = None,
        policy: str | None = None,
        region: str = DEFAULT_STS_REGION,
        endpoint: str = DEFAULT_STS_ENDPOINT,
        timeout: float = 5.0,
        deadline: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        **renewal: Any,
    ) -> None:
        super().__init__(role_arn=role_arn, session_name=session_name,
                         duration_seconds=duration_seconds, region=region, endpoint=endpoint,
                         timeout=timeout, deadline=deadline, transport=transport, **renewal)
        if external_id is not None and not _EXTERNAL_ID.fullmatch(external_id):
            raise ValueError("external_id must be 2 to 128 letters, digits or +=,.@:/_-")
        self.base = base
        self.external_id = external_id
        self.policy = policy

    @property
    def source(self) -> str:
        return f"assumed role {self.role_arn} (from {self.base.source})"

    async def _fetch(self) -> Credentials:
        params: dict[str, Any] = {
            "RoleArn": self.role_arn,
            "RoleSessionName": self.session_name,
            "DurationSeconds": self.duration_seconds,
        }
        if self.external_id is not None:
            params["ExternalId"] = self.external_id
        if self.policy is not None:
            params["Policy"] = quote(self.policy, safe="")
        secrets = (self.external_id,) if self.external_id else ()
        return await self._call(self.base, params, secrets)


# --------------------------------------------------------------------------- CVM role


class CvmRoleProvider(RenewingProvider):
    """The CAM role bound to the CVM the operator runs on, read from the metadata service.

    `role_name` None: the bound role is discovered first (`.../security-credentials/` answers its
    name). Short timeouts (the metadata service is local: 1 s by default), and clear errors: no
    answer means "not a CVM, or the metadata service is unreachable from here" (a pod network
    that blocks it), HTTP 404 means no such role is bound.
    """

    def __init__(
        self,
        role_name: str | None = None,
        *,
        endpoint: str = DEFAULT_METADATA_ENDPOINT,
        timeout: float = 1.0,
        deadline: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
        **renewal: Any,
    ) -> None:
        super().__init__(**renewal)
        if role_name is not None and not _ROLE_NAME.fullmatch(role_name):
            raise ValueError("role_name must be 1 to 128 letters, digits or +=,.@_-")
        url = httpx.URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        self.role_name = role_name
        self.endpoint = str(url.copy_with(path="/")).rstrip("/")
        self._timeout = timeout
        self._deadline = deadline
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    @property
    def source(self) -> str:
        return f"CVM role {self.role_name or '(the bound one)'} via {self.endpoint}"

    async def aclose(self) -> None:
        await super().aclose()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _fetch(self) -> Credentials:
        role = self.role_name or await self._discover()
        text = await self._get(METADATA_ROLE_PATH + role, f"role {role!r}")
        try:
            data = _json_object(text)
        except ValueError:
            raise self._error(INVALID_RESPONSE, "the metadata service answered something that "
                              "is not a JSON object", category=ErrorCategory.UNKNOWN) from None
        code = data.get("Code")
        if code != "Success":
            shown = code if valid_code(code) else "(malformed)"
            raise self._error(CREDENTIALS_UNAVAILABLE,
                              f"the metadata service answered Code {shown} for role {role!r}",
                              category=ErrorCategory.TRANSIENT)
        values = [data.get(name) for name in ("TmpSecretId", "TmpSecretKey", "Token")]
        secrets = tuple(v for v in values if isinstance(v, str))
        for name, value, limit in zip(("TmpSecretId", "TmpSecretKey", "Token"), values,
                                      (MAX_SECRET_LENGTH, MAX_SECRET_LENGTH, MAX_TOKEN_LENGTH),
                                      strict=True):
            if not isinstance(value, str) or len(value) > limit or not _SECRET_SHAPE.fullmatch(value):
                raise self._error(INVALID_RESPONSE, f"{name} is not a string of at most {limit} "
                                  "printable characters", category=ErrorCategory.UNKNOWN,
                                  secrets=secrets)
        expires_at = _expiry(data)
        if expires_at is None:
            raise self._error(INVALID_RESPONSE, "the answer has neither a valid ExpiredTime nor "
                              "Expiration", category=ErrorCategory.UNKNOWN, secrets=secrets)
        secret_id, secret_key, token = (str(v) for v in values)
        return Credentials(secret_id, secret_key, token, expires_at)

    async def _discover(self) -> str:
        name = (await self._get(METADATA_ROLE_PATH, "the bound role")).strip()
        if not _ROLE_NAME.fullmatch(name):
            raise self._error(INVALID_RESPONSE, "the metadata service named no valid role",
                              category=ErrorCategory.UNKNOWN)
        return name

    async def _get(self, path: str, what: str) -> str:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False,
                                           transport=self._transport)
        url = self.endpoint + path
        try:
            async with asyncio.timeout(self._deadline):
                async with self._http.stream("GET", url) as response:
                    if response.status_code == 404:
                        raise self._error(CREDENTIALS_UNAVAILABLE, f"no CAM role is bound to this "
                                          f"instance for {what} (HTTP 404)")
                    if response.status_code != 200:
                        raise self._error(CREDENTIALS_UNAVAILABLE, f"the metadata service answered "
                                          f"HTTP {response.status_code} for {what}",
                                          category=ErrorCategory.TRANSIENT)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_METADATA_BYTES:
                            raise self._error(INVALID_RESPONSE, "the metadata answer exceeds "
                                              f"{MAX_METADATA_BYTES} bytes",
                                              category=ErrorCategory.UNKNOWN)
        except httpx.HTTPError as exc:
            raise self._error(CREDENTIALS_UNAVAILABLE, f"the metadata service did not answer "
                              f"({type(exc).__name__}): is this a CVM instance, and can it reach "
                              "the metadata service?", category=ErrorCategory.TRANSIENT) from None
        except TimeoutError:
            raise self._error(CREDENTIALS_UNAVAILABLE, f"the metadata service did not answer "
                              f"within {self._deadline:g} s: is this a CVM instance, and can it "
                              "reach the metadata service?", category=ErrorCategory.TRANSIENT) from None
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise self._error(INVALID_RESPONSE, "the metadata answer is not UTF-8 text",
                              category=ErrorCategory.UNKNOWN) from None


# --------------------------------------------------------------------------- helpers


def _expiry(answer: Mapping[str, Any]) -> float | None:
    """ExpiredTime (Unix seconds), else Expiration (ISO 8601, UTC); None if neither is valid."""
    expired = answer.get("ExpiredTime")
    if isinstance(expired, int) and not isinstance(expired, bool) and 0 < expired < 2**40:
        return float(expired)
    expiration = answer.get("Expiration")
    if isinstance(expiration, str) and len(expiration) <= 40:
        try:
            parsed = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is not None:
            return parsed.timestamp()
    return None


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data
