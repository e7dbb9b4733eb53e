"""The async CVM API client: signed requests, process-wide rate limits, retries, typed results.

Behaviour that the operator relies on, and why:

- Bodies are `json.dumps` with Python defaults, exactly as the official SDK sends them, and are
  signed over the very bytes sent; the server hashes what it receives, so nothing re-serialises.
- Only THROTTLED and TRANSIENT failures are retried here (full-jitter exponential backoff, capped).
  Capacity, price and quota refusals go straight back to the planner, which knows about other
  pools. A RunInstances without a ClientToken is never retried: a lost answer may still have
  bought instances, and only the token makes a repeat safe.
- `AuthFailure.SignatureExpire` gets one more attempt with a fresh timestamp (the first may have
  waited long in the rate limiter); a wrong clock still fails, on the second try.
- The secret key is only ever handed to `signing.sign`: it is not logged, not in any repr, and
  an echo of it (or of the session token) in a server message is redacted before an exception
  carries it. Request headers and bodies are never logged (UserData may hold secrets too).
- Credentials come from a provider (`credentials.CredentialProvider`; plain `Credentials` are
  wrapped in a static one) asked right before each attempt is signed, so temporary credentials are
  renewed under a long-lived client. A purchase (`RunInstances` without DryRun) is not sent when
  the credentials would expire before the attempt's deadline: it would be refused half-way, or
  worse, answered after the caller gave up. Other calls (releases above all) still try. Messages
  are cleaned of the keys and tokens of the last few credentials used, renewed ones included.
- The endpoint may be hostile (a pool author can name one), so nothing it says reaches a caller
  unbounded or unfiltered: replies are streamed and abandoned past `max_reply_bytes` (compressed
  ones too), a whole exchange has a deadline however slowly bytes drip, redirects are not
  followed, a reply that is not a CVM envelope (HTML, another Content-Type, not JSON) is reported
  by HTTP status and content type only, never by its body, error codes must have the documented
  shape, messages are clipped and stripped of control characters, and a listing is bounded in
  instances, pages, retained bytes and concurrent page reads whatever `TotalCount` claims.
  docs/security.md lists every hostile answer tried and what the caller sees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import random
import re
import ssl
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol

import httpx

from spotpool import __version__

from . import wire
from .credentials import (
    CREDENTIALS_EXPIRING,
    CredentialError,
    CredentialProvider,
    StaticCredentials,
)
from .errors import (
    CLIENT_NETWORK_ERROR,
    DRY_RUN_PASSED,
    INVALID_RESPONSE,
    SERVER_NETWORK_ERROR,
    SIGNATURE_EXPIRED,
    CloudError,
    CloudNetworkError,
    ErrorCategory,
    clean_message,
    code_label,
    valid_code,
    valid_request_id,
)
from .models import (  # issue 11
    CHARGE_TYPES,
    SPOTPAID,
    TERMINATING,
    AccountQuota,
    CallerIdentity,
    Credentials,
    Instance,
    Offer,
    PriceQuote,
    RunInstancesRequest,
    SpotOffer,
)
from .ratelimit import RateLimiterRegistry, Sleep, default_registry
from .signing import sign

log = logging.getLogger(__name__)

API_VERSION = "2017-03-12"
SERVICE = "cvm"
STS_API_VERSION = "2018-08-13"
TAG_SERVICE = "tag"
TAG_API_VERSION = "2018-08-13"  # the tag service's version (the same date as STS's, by chance)
API_VERSIONS = {SERVICE: API_VERSION, "sts": STS_API_VERSION, TAG_SERVICE: TAG_API_VERSION}
CONTENT_TYPE = "application/json"
REQUEST_CLIENT = f"spotpool/{__version__}"
DEFAULT_ENDPOINT = "https://cvm.tencentcloudapi.com"
UNSIGNED = "SKIP"  # the Authorization of an unsigned STS call, as the official SDK sends it
_REDACTED_CREDENTIALS = 4  # the last credentials used whose secrets messages are cleaned of

Observer = Callable[[str, float, str | None], None]


class CallGuard(Protocol):
    """Who may still spend: checked right before each attempt of a call is signed (after every
    wait: the rate limiter, a retry's backoff), and bounding each attempt to the time left.

    `check` raises (the caller's own exception, e.g. the controller's NotLeader) once the caller
    may no longer act; `remaining` is how many seconds it may still act (None: unbounded). The
    client knows nothing of leader election: it only refuses to send what the guard forbids.
    """

    def check(self) -> None: ...

    def remaining(self) -> float | None: ...


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context (the CA bundle, loaded once) for every client of the process: httpx would
    otherwise build one per client, 20 to 40 ms of CPU each, on the event loop."""
    return httpx.create_ssl_context()


def warm_up() -> None:
    """Do at start what the first CvmClient and its first request would otherwise do on the event
    loop, on the way to an environment's first purchase: load the CA bundle, and import what httpx
    imports lazily on its first request."""
    tls_context()
    import anyio._backends._asyncio  # noqa: F401
    import h11  # noqa: F401
    import httpcore  # noqa: F401


# Instances in these states need no TerminateInstances (absent ones neither).
_GONE_STATES = frozenset({TERMINATING})
# TerminateInstances' refusals of a batch mixing charge types (spot and pay-as-you-go): the batch is
# split by charge type and sent again.
_MIXED_CHARGE_CODES = frozenset(
    {"UnsupportedOperation.InstanceMixedPricingModel",
     "InvalidParameterValue.InstanceNotSupportedMixPricingModel"}
)
_LISTING_ATTEMPTS = 3  # reads of a listing whose set keeps changing under it

# Bounds on what a server can make the client hold or do (see the module docstring).
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024  # a real page of 100 instances is a few hundred KiB
DEFAULT_MAX_LISTING = 50_000  # instances in one listing
DEFAULT_MAX_LISTING_BYTES = 64 * 1024 * 1024  # characters one listing may retain, all instances
DEFAULT_DEADLINE = 60.0  # seconds for one whole exchange: connect, send, every byte of the reply
PAGE_CONCURRENCY = 4  # DescribeInstances pages read at once, whatever TotalCount says
_EXTRA_PAGES = 10  # page reads allowed beyond what max_listing needs at full pages
_INSTANCE_OVERHEAD = 512  # bytes charged per instance against the listing budget
# Media types whose bodies are parsed (the official Python SDK parses errors in both).
_PARSED_MEDIA_TYPES = frozenset({"application/json", "text/plain"})
_MEDIA_TYPE_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9!#$&^_.+-]{1,64}")
_ZLIB_ENCODINGS = frozenset({"gzip", "x-gzip", "deflate"})
# Fixed descriptions of transport failures: an httpx/h11 message may quote what the server sent
# (an "illegal status line" holds the first bytes of whatever answered), so none is passed on.
_TRANSPORT_FAILURES: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.ConnectTimeout, "connecting timed out"),
    (httpx.ConnectError, "could not connect"),
    (httpx.ReadTimeout, "reading the reply timed out"),
    (httpx.WriteTimeout, "sending the request timed out"),
    (httpx.PoolTimeout, "no free connection in time"),
    (httpx.RemoteProtocolError, "the server broke the HTTP protocol"),
    (httpx.ReadError, "the connection failed while reading the reply"),
    (httpx.WriteError, "the connection failed while sending the request"),
)


def _media_type(header: str | None) -> str:
    """The media type of a Content-Type header, lower-cased, for parsing and for messages.

    A header that is not a plausible `type/subtype` is named by a fixed phrase instead, so a
    message never quotes what a server put there.
    """
    if not header:
        return "(none)"
    media = header.split(";", 1)[0].strip().lower()
    return media if _MEDIA_TYPE_SHAPE.fullmatch(media) else "(malformed)"


def _identity_text(value: Any, limit: int) -> str:
    """A server-sent identity field shown to users: a string, printable, at most `limit`; else ""."""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        return ""
    return value


def _invalid(action: str, message: str) -> CloudError:
    """InvalidResponse: the server's answer breaks the documented shape or the client's bounds.
    `message` is the client's own words; it never quotes the server."""
    return CloudError(INVALID_RESPONSE, message, action=action, category=ErrorCategory.UNKNOWN)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a (possibly nested) group, for callers that expect CloudError."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it arrives; a response built in memory (an httpx.MockTransport answer in
    tests) is already read, and comes whole."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        async for chunk in response.aiter_raw():
            yield chunk
    else:
        yield content


def _transport_failure(exc: httpx.HTTPError) -> str:
    """A fixed description of a transport failure: the exception's type, never its text."""
    for kind, description in _TRANSPORT_FAILURES:
        if isinstance(exc, kind):
            return f"{type(exc).__name__}: {description}"
    return f"{type(exc).__name__}: the HTTP exchange failed"


class DryRunBought(CloudNetworkError):
    """`check_purchase` got instance ids back: the endpoint bought despite DryRun. A caller must
    not repeat the check on its own (each repeat may buy again)."""


class TagFailure(CloudError):
    """TagResources or UnTagResources answered, but did not change every resource: the tag
    service reports such partial failures in the answer's `FailedResources`, not as an error.

    `failed` maps each resource that was not changed to its (code, cleaned message); every other
    resource of the call was changed. `code` and `category` are those of the first failure, so a
    caller that only looks at the code still sees why.
    """

    def __init__(self, action: str, failed: Mapping[str, tuple[str, str]], request_id: str | None) -> None:
        self.failed = dict(failed)
        first_code = next(iter(self.failed.values()))[0]
        summary = "; ".join(f"{resource}: {code} {message}".rstrip() for resource, (code, message)
                            in list(self.failed.items())[:3])
        more = f" (and {len(self.failed) - 3} more)" if len(self.failed) > 3 else ""
        super().__init__(first_code, f"{len(self.failed)} resource(s) not changed: {summary}{more}",
                         action=action, request_id=request_id)


class CvmClient:
    """One account (key pair) in one region, over one HTTP connection pool to one endpoint.

    Safe to share between many pools and tasks: rate limits are process-wide, not per client.
    """

    def __init__(
        self,
        credentials: Credentials | CredentialProvider | None,
        region: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 10.0,
        rate_limits: dict[str, float] | None = None,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiterRegistry | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_listing: int = DEFAULT_MAX_LISTING,
        max_listing_bytes: int = DEFAULT_MAX_LISTING_BYTES,
        deadline: float = DEFAULT_DEADLINE,
        service: str = SERVICE,
    ) -> None:
        """`credentials`: a key pair (`Credentials`), or a `CredentialProvider` asked before each
        attempt (temporary credentials renewed as they near expiry), or None for an unsigned STS
        client (`AssumeRoleWithWebIdentity` only, which takes no signature).

        `service` is `cvm`, or `sts` for `get_caller_identity`, or `tag` for `tag_resources` and
        `untag_resources` (each its own API version and signing scope; Tencent serves each at its
        own host, see `api.names.service_endpoint`).
        `clock` gives request timestamps; `limiter`, `sleep` (backoff) and `rng` (jitter)
        exist so tests can replace time and chance.

        `timeout` bounds each network operation (connect, each read); `deadline` bounds a whole
        exchange, so a server that drips one byte at a time cannot hold a call forever.
        `max_reply_bytes` bounds one reply (decompressed); `max_listing` and `max_listing_bytes`
        bound the instances, and the characters they retain, of one DescribeInstances listing.
        """
        if not region:
            raise ValueError("region is required (it is the X-TC-Region header)")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if min(max_reply_bytes, max_listing, max_listing_bytes) < 1 or deadline <= 0:
            raise ValueError("reply, listing and deadline bounds must be positive")
        url = httpx.URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host or url.userinfo:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        if url.path not in ("", "/") or url.query:
            raise ValueError(f"endpoint must not carry a path or query (CVM uses /): {endpoint!r}")
        if service not in API_VERSIONS:
            raise ValueError(f"service must be one of {', '.join(API_VERSIONS)}, got {service!r}")
        if credentials is None and service != "sts":
            raise ValueError("unsigned calls (credentials=None) are for STS only")
        self._service = service
        self._provider: CredentialProvider | None = (
            StaticCredentials(credentials) if isinstance(credentials, Credentials) else credentials
        )
        # The credentials of the latest attempt (a static client's from the start), and the last
        # few used, whose secrets server messages are cleaned of.
        self._credentials = credentials if isinstance(credentials, Credentials) else None
        self._recent: deque[Credentials] = deque(maxlen=_REDACTED_CREDENTIALS)
        if self._credentials is not None:
            self._recent.append(self._credentials)
        self._region = region
        # Signed verbatim: host plus the port when it is not the scheme's default.
        self._host = url.netloc.decode("ascii")
        self._url = url.copy_with(path="/")
        self._rate_limits = dict(rate_limits or {})
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._observer = observer
        self._clock = clock
        self._limiter = limiter if limiter is not None else default_registry()
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        # Per account AND key: a caller who knows another team's SecretId but not its key gets
        # buckets of its own, so its refused requests cannot use up that team's request budget.
        # A provider names its own stable key (temporary keys change at every renewal).
        self._bucket_account = (
            "(unsigned)" if self._provider is None else self._provider.rate_limit_key
        )
        self._max_reply_bytes = max_reply_bytes
        self._max_listing = max_listing
        self._max_listing_bytes = max_listing_bytes
        self._deadline = deadline
        # Redirects are never followed: the signed request (and its token) goes to the configured
        # host only, and a redirect is an answer like any other non-200 one.
        self._http = httpx.AsyncClient(
            transport=transport, timeout=timeout, verify=tls_context(), follow_redirects=False
        )

    def __repr__(self) -> str:
        if isinstance(self._provider, StaticCredentials) and self._credentials is not None:
            who = f"secret_id={self._credentials.secret_id!r}"
        else:
            who = f"source={self.source!r}"
        return f"CvmClient(endpoint={str(self._url)!r}, region={self._region!r}, {who})"

    @property
    def source(self) -> str:
        """Where the client's credentials come from (the provider's `source`), for messages."""
        return "unsigned" if self._provider is None else self._provider.source

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> CvmClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ generic call

    async def call(
        self, action: str, params: Mapping[str, Any], *, guard: CallGuard | None = None
    ) -> dict[str, Any]:
        """Run one API action and return its `Response` object; raise CloudError on failure.

        With a `guard`, every attempt (retries included) is checked right before it is signed and
        bounded by the time the guard has left: a call that waited in the rate limiter past its
        caller's term is never sent."""
        # The SDK's serialisation: default ", " / ": " separators, non-ASCII as \uXXXX escapes.
        body = json.dumps(params).encode("ascii")
        may_retry = action != "RunInstances" or bool(params.get("ClientToken"))
        spending = action == "RunInstances" and not params.get("DryRun")
        fresh_timestamp_tried = False
        attempt = 0
        while True:
            attempt += 1
            await self._limiter.acquire(
                self._host, self._bucket_account, action, self._rate_limits
            )
            try:
                return await self._guarded_attempt(action, body, guard, spending)
            except CloudError as err:
                # A provider retries its own fetches (and then backs off): not again here.
                if attempt >= self._max_attempts or isinstance(err, CredentialError):
                    raise
                if err.code == SIGNATURE_EXPIRED and not fresh_timestamp_tried:
                    fresh_timestamp_tried = True
                    log.debug("CVM %s: signature expired, retrying with a fresh timestamp", action)
                    continue
                if not (err.retryable and may_retry):
                    raise
                delay = self._backoff(attempt)
                log.debug("CVM %s attempt %d failed with %s; retrying in %.2fs",
                          action, attempt, err.code, delay)
                await self._sleep(delay)

    async def _guarded_attempt(
        self, action: str, body: bytes, guard: CallGuard | None, spending: bool = False
    ) -> dict[str, Any]:
        if guard is None:
            return await self._attempt(action, body, spending)
        guard.check()
        left = guard.remaining()
        if left is None:
            return await self._attempt(action, body, spending)
        try:
            async with asyncio.timeout(max(left, 0.0)):
                return await self._attempt(action, body, spending, min(left, self._deadline))
        except TimeoutError:
            guard.check()  # the time ran out with the caller's term: its own exception says so
            raise CloudNetworkError(
                SERVER_NETWORK_ERROR, f"no answer within the {left:.1f} s its caller may still act",
                action=action,
            ) from None

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform over [0, min(cap, base * 2**(attempt-1))]."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0.0, ceiling)

    async def _attempt(
        self, action: str, body: bytes, spending: bool = False, window: float | None = None
    ) -> dict[str, Any]:
        """One signed exchange. A `spending` attempt is refused (CredentialError
        `CredentialsExpiring`, nothing sent) when the credentials expire within `window` seconds
        (the attempt's deadline: the client's, or less when a guard bounds it)."""
        credentials = await self._signing_credentials(action, spending, window)
        headers = self._headers(action, body, int(self._clock()), credentials)
        started = time.monotonic()
        try:
            status, content_type, data = await self._exchange(action, body, headers)
            result = self._parse(action, status, content_type, data)
        except CloudError as err:
            self._observe(action, time.monotonic() - started, err.code)
            raise
        self._observe(action, time.monotonic() - started, None)
        return result

    async def _exchange(
        self, action: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, bytes | None]:
        """(status, media type, body) of one POST, within the deadline and the size bound.

        The body is read only for a 200 reply of a media type that is parsed; any other reply is
        judged by its status and type alone, so an HTML page or a 200 MB error is never read.
        """
        try:
            async with asyncio.timeout(self._deadline):
                async with self._http.stream(
                    "POST", self._url, content=body, headers=headers
                ) as response:
                    content_type = _media_type(response.headers.get("Content-Type"))
                    if response.status_code != 200 or content_type not in _PARSED_MEDIA_TYPES:
                        return response.status_code, content_type, None
                    return 200, content_type, await self._read_capped(action, response)
        except httpx.HTTPError as exc:
            # from None: the httpx exception holds the request, headers and token included.
            raise CloudNetworkError(
                CLIENT_NETWORK_ERROR, _transport_failure(exc), action=action
            ) from None
        except TimeoutError:
            raise CloudNetworkError(
                CLIENT_NETWORK_ERROR,
                f"no complete reply within {self._deadline:g} s",
                action=action,
            ) from None

    async def _read_capped(self, action: str, response: httpx.Response) -> bytes:
        """The reply body, decompressed, or InvalidResponse as soon as it passes the bound.

        Reading stops at the first byte too many (the connection is then dropped), and gzip or
        deflate is inflated a bounded slice at a time, so a small compressed bomb cannot expand
        in memory either.
        """
        limit = self._max_reply_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and len(declared) < 20 and int(declared) > limit:
            raise self._too_large(action)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in _ZLIB_ENCODINGS and encoding not in ("", "identity"):
            raise CloudNetworkError(
                SERVER_NETWORK_ERROR,
                "HTTP 200 with an unsupported Content-Encoding; not a CVM reply",
                action=action,
                http_status=200,
            )
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding in _ZLIB_ENCODINGS else None
        buffer = bytearray()
        async for chunk in _raw_chunks(response):
            pending = chunk
            while pending:
                if inflater is None:
                    buffer += pending
                    pending = b""
                else:
                    try:
                        # max_length is at least 1 here (0 would mean "no limit").
                        buffer += inflater.decompress(pending, limit + 1 - len(buffer))
                    except zlib.error:
                        raise CloudNetworkError(
                            SERVER_NETWORK_ERROR,
                            "HTTP 200 with a corrupt compressed body; not a CVM reply",
                            action=action,
                            http_status=200,
                        ) from None
                    pending = inflater.unconsumed_tail
                if len(buffer) > limit:
                    raise self._too_large(action)
        return bytes(buffer)

    def _too_large(self, action: str) -> CloudError:
        return _invalid(
            action, f"the reply exceeds {self._max_reply_bytes} bytes; reading stopped there"
        )

    async def _signing_credentials(
        self, action: str, spending: bool, window: float | None
    ) -> Credentials | None:
        """The provider's current credentials (None: unsigned), remembered for redaction."""
        if self._provider is None:
            return None
        credentials = await self._provider.current()
        if credentials is not self._credentials:
            self._credentials = credentials
            if credentials not in self._recent:
                self._recent.append(credentials)
        if spending and credentials.expires_at is not None:
            left = credentials.expires_at - self._clock()
            needed = self._deadline if window is None else window
            if left <= needed:
                raise CredentialError(
                    CREDENTIALS_EXPIRING,
                    f"the credentials expire in {max(left, 0.0):.0f} s, within the {needed:.0f} s "
                    "a purchase attempt may take, and were not renewed; the purchase was not sent",
                    source=self._provider.source,
                    action=action,
                    category=ErrorCategory.AUTH,
                )
        return credentials

    def _headers(
        self, action: str, body: bytes, timestamp: int, credentials: Credentials | None = None
    ) -> dict[str, str]:
        """Headers in the order the official SDK emits them; only content-type;host are signed.
        Without credentials the request is unsigned (`Authorization: SKIP`, as the SDK sends
        AssumeRoleWithWebIdentity)."""
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Host": self._host,
            "X-TC-Action": action,
            "X-TC-RequestClient": REQUEST_CLIENT,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Version": API_VERSIONS[self._service],
            "X-TC-Region": self._region,
        }
        if credentials is None:
            headers["Authorization"] = UNSIGNED
            return headers
        if credentials.token:
            headers["X-TC-Token"] = credentials.token
        headers["Authorization"] = sign(
            secret_id=credentials.secret_id,
            secret_key=credentials.secret_key,
            service=self._service,
            host=self._host,
            content_type=CONTENT_TYPE,
            payload=body,
            timestamp=timestamp,
        ).authorization
        return headers

    def _parse(
        self, action: str, status: int, content_type: str, data: bytes | None
    ) -> dict[str, Any]:
        """The `Response` object of a CVM envelope, or CloudError.

        Nothing of a non-CVM reply is quoted (its body may be an internal service's answer): the
        message names the HTTP status and the media type only. A CVM error's code must have the
        documented shape, its message is cleaned and clipped, its RequestId checked.
        """
        if data is None:
            what = "redirect, not followed" if 300 <= status < 400 else "not a CVM reply"
            raise CloudNetworkError(
                SERVER_NETWORK_ERROR,
                f"HTTP {status} with Content-Type {content_type} ({what})",
                action=action,
                http_status=status,
            )
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
            payload = None
        envelope = payload.get("Response") if isinstance(payload, dict) else None
        if not isinstance(envelope, dict):
            raise CloudNetworkError(
                SERVER_NETWORK_ERROR,
                f"HTTP 200 with Content-Type {content_type}, but not a CVM reply "
                "(no JSON Response object)",
                action=action,
                http_status=200,
            )
        request_id = valid_request_id(envelope.get("RequestId"))
        error = envelope.get("Error")
        if error is None:
            return envelope
        if not isinstance(error, dict) or not error.get("Code"):
            raise CloudNetworkError(
                SERVER_NETWORK_ERROR,
                "HTTP 200 with a malformed Error object (no Code); not a CVM reply",
                action=action,
                request_id=request_id,
                http_status=200,
            )
        code = error["Code"]
        if not valid_code(code):
            raise CloudError(
                INVALID_RESPONSE,
                "the server answered with an error code that is not of the documented shape",
                action=action,
                request_id=request_id,
                category=ErrorCategory.UNKNOWN,
            )
        message = error.get("Message")
        raise CloudError(
            code,
            self._clean(message if isinstance(message, str) else ""),
            action=action,
            request_id=request_id,
        )

    def _clean(self, text: str) -> str:
        """A server message made safe: see `errors.clean_message`; the secret keys and tokens
        of the last credentials used (a renewal may land while a call is on the wire) are
        redacted."""
        secrets: list[str | None] = []
        for credentials in self._recent:
            secrets += (credentials.secret_key, credentials.token)
        return clean_message(text, secrets)

    def _observe(self, action: str, seconds: float, error_code: str | None) -> None:
        """Tell the observer (metrics) about one attempt. The code it gets is a bounded label:
        catalogued codes as they are, any other `Other`, so a server inventing codes cannot
        grow the number of metric series."""
        log.debug("CVM %s -> %s in %.3fs", action, error_code or "OK", seconds)
        if self._observer is None:
            return
        try:
            self._observer(action, seconds, None if error_code is None else code_label(error_code))
        except Exception:  # a metrics bug must not fail a cloud call
            log.exception("CVM client observer failed")

    # ------------------------------------------------------------------ typed actions

    async def run_instances(
        self, request: RunInstancesRequest, *, guard: CallGuard | None = None
    ) -> list[str]:
        """Buy `request.count` one-time spot instances at most at `max_price`, or pay-as-you-go
        ones with `charge_type=POSTPAID_BY_HOUR`; returns their ids (they start PENDING).

        `client_token` makes the call idempotent, so a replay after a crash or a lost answer
        returns the ids of the first call instead of buying twice. With `dry_run` the API only
        validates (stock included) and the result is `[]`; a failed check raises as usual.
        """
        params = wire.run_instances_params(request)
        dry_run, count = request.dry_run, request.count
        try:
            response = await self.call("RunInstances", params, guard=guard)
        except CloudError as err:
            # The reference cannot say how a passed dry run answers: success or DryRunOperation.
            if dry_run and err.code == DRY_RUN_PASSED:
                return []
            raise
        ids = response.get("InstanceIdSet") or []
        # At most `count` ids of the documented shape: anything else would be stored and acted on.
        if not isinstance(ids, list) or len(ids) > count or not all(
            isinstance(instance_id, str) and wire.valid_instance_id(instance_id)
            for instance_id in ids
        ):
            raise _invalid("RunInstances", "InstanceIdSet is not a list of at most "
                           f"{count} instance ids")
        return list(ids)

    async def tag_resources(
        self, resources: Sequence[str], tags: Mapping[str, str], *, guard: CallGuard | None = None
    ) -> None:
        """Set `tags` on every resource (tag service TagResources; a client made with service
        `tag`). `resources` are six-segment names (`wire.instance_resource`); a key already on a
        resource takes the new value, other keys are left alone.

        At most 10 resources and 10 tags per call, keys of 1..127 and values of 1..255
        characters: ValueError beyond, before anything is sent (the caller batches, knowing which
        resources go together). Setting the same tags again changes nothing, so the call is
        retried like a read. Raises `TagFailure` when the answer lists resources it did not
        change (the others were changed). The tag service's filters of DescribeInstances may see
        the change late (its index is eventually consistent); a look-up by id shows it. A name
        that names nothing (an instance already gone) may well be answered as a success that
        changed nothing, as users report the real service does: success is no proof the
        instance exists.
        """
        params = wire.tag_resources_params(resources, tags)
        await self._tag_call("TagResources", params, guard)

    async def untag_resources(
        self, resources: Sequence[str], keys: Sequence[str], *, guard: CallGuard | None = None
    ) -> None:
        """Remove the tag `keys` from every resource (tag service UnTagResources). A key a
        resource does not carry is no error in the simulator (production does not document it).
        Bounded and checked like `tag_resources`."""
        params = wire.untag_resources_params(resources, keys)
        await self._tag_call("UnTagResources", params, guard)

    async def _tag_call(self, action: str, params: dict[str, Any], guard: CallGuard | None) -> None:
        if self._service != TAG_SERVICE:
            raise ValueError(f"{action} is a tag service action: make the client with service='tag'")
        response = await self.call(action, params, guard=guard)
        request_id = valid_request_id(response.get("RequestId"))
        try:
            failed = wire.parse_failed_resources(response, params["ResourceList"])
        except ValueError as exc:  # wire's own words, no server data in them
            raise _invalid(action, str(exc)) from None
        if failed:
            raise TagFailure(
                action,
                {resource: (code, self._clean(message)) for resource, (code, message) in failed.items()},
                request_id,
            )

    async def get_caller_identity(self) -> CallerIdentity:
        """Who the key pair belongs to (STS `GetCallerIdentity`; a client made with service `sts`)."""
        if self._service != "sts":
            raise ValueError("GetCallerIdentity is an STS action: make the client with service='sts'")
        response = await self.call("GetCallerIdentity", {})
        account = response.get("AccountId")
        # ASCII digits only: str.isdigit() alone also takes "²" and other scripts' digits.
        if not isinstance(account, str) or not account.isascii() or not account.isdigit() or len(account) > 20:
            raise CloudNetworkError(SERVER_NETWORK_ERROR, "GetCallerIdentity answered without a valid AccountId",
                                    action="GetCallerIdentity",
                                    request_id=valid_request_id(response.get("RequestId")))
        return CallerIdentity(
            account_id=account,
            arn=_identity_text(response.get("Arn"), 256),
            user_id=_identity_text(response.get("UserId"), 256),
            principal_id=_identity_text(response.get("PrincipalId"), 64),
            type=_identity_text(response.get("Type"), 64),
        )

    async def describe_instances(
        self,
        *,
        instance_ids: Sequence[str] | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
    ) -> list[Instance]:
        """Every instance matching the ids or the filters (not both), all pages read.

        Filters are ANDed, values within one filter ORed (at most 10 filters, 5 values each).
        With neither argument, every instance in the region. An empty id list matches nothing.
        Pages are read by offset, so an instance created or deleted meanwhile may shift the
        pages; duplicates are dropped, but such an instance may be missed until the next call.
        """
        if instance_ids is not None and filters is not None:
            raise ValueError("instance_ids and filters are mutually exclusive in DescribeInstances")
        if instance_ids is not None:
            found: list[Instance] = []
            for batch in wire.chunks(wire.unique(instance_ids), wire.MAX_IDS_PER_CALL):
                # Asked for these ids, a server that lists more is lying.
                found += await self._describe_pages({"InstanceIds": batch}, len(batch))
            return found
        base: dict[str, Any] = {}
        if filters:
            base["Filters"] = wire.filters_param(filters)
        return await self._describe_pages(base)

    async def describe_by_tag(self, key: str, value: str) -> list[Instance]:
        """Every instance carrying tag `key` = `value` (filter `tag:<key>`)."""
        return await self.describe_instances(filters={f"tag:{key}": [value]})

    async def _describe_pages(
        self, base: dict[str, Any], max_instances: int | None = None
    ) -> list[Instance]:
        """Every page of a listing, read again when it does not hold together.

        Paging is by offset: an instance that disappears between two page reads shifts a later one
        onto a page already read, and the listing misses it. A caller that counts instances would
        then buy a replacement for one that still runs. A listing is distrusted, and read again,
        when its pages disagree on TotalCount, when one instance shows on two pages, or when it
        holds fewer instances than TotalCount says (the freshest read is kept if the set never
        holds still). Callers still never act on an absence alone: they look up by id what they
        knew and the listing lacks.
        """
        limit = self._max_listing
        if max_instances is not None:
            limit = min(max_instances, limit)
        for _ in range(_LISTING_ATTEMPTS):
            found, totals, repeated = await self._read_listing(base, limit)
            if len(totals) == 1 and not repeated and len(found) >= min(totals):
                break
        return found

    async def _read_listing(
        self, base: dict[str, Any], max_instances: int
    ) -> tuple[list[Instance], set[int], bool]:
        """The first page alone (it gives TotalCount and the page size), then the rest by
        PAGE_CONCURRENCY readers (the rate limiter spaces them), then on one by one if the set grew
        meanwhile. Returns the instances, every TotalCount the pages reported, and whether an
        instance showed on more than one page.

        Whatever the server claims, a listing holds at most `max_instances` instances and
        `max_listing_bytes` characters, and takes at most `max_instances / PAGE_LIMIT` + 10 page
        reads: a TotalCount beyond that, or pages too small to reach it in that many reads, is
        refused before they are read.
        """
        found: dict[str, Instance] = {}
        totals: set[int] = set()
        max_pages = -(-max_instances // wire.PAGE_LIMIT) + _EXTRA_PAGES
        pages_read = 0
        retained = 0
        repeated = False

        async def read(offset: int) -> tuple[int, int]:
            nonlocal pages_read, retained, repeated
            pages_read += 1
            if pages_read > max_pages:
                raise _invalid("DescribeInstances",
                               f"the listing needs more than {max_pages} pages")
            response = await self.call(
                "DescribeInstances", {**base, "Offset": offset, "Limit": wire.PAGE_LIMIT}
            )
            page, total = self._listing_page(response, max_instances)
            for instance in page:
                if instance.instance_id not in found:
                    retained += _INSTANCE_OVERHEAD + wire.retained_size(instance)
                else:
                    repeated = True
                found[instance.instance_id] = instance
            if len(found) > max_instances or retained > self._max_listing_bytes:
                raise _invalid("DescribeInstances",
                               f"the listing exceeds {max_instances} instances or "
                               f"{self._max_listing_bytes} bytes")
            totals.add(total)
            return len(page), total

        size, total = await read(0)
        # TotalCount, not a short page, ends the listing: a server may cap pages below Limit.
        if not size or size >= total:
            return list(found.values()), totals, repeated
        offsets = range(size, total, size)
        if len(offsets) + pages_read > max_pages:
            raise _invalid("DescribeInstances", f"the listing needs more than {max_pages} pages")
        pages: dict[int, tuple[int, int]] = {}
        pending = iter(offsets)

        async def reader() -> None:
            for offset in pending:  # the readers share one iterator: each offset is read once
                pages[offset] = await read(offset)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(PAGE_CONCURRENCY, len(offsets))):
                    group.create_task(reader())
        except BaseExceptionGroup as failed:  # the first failure, as a plain CloudError
            raise _first_leaf(failed) from None
        offset = offsets[-1] + pages[offsets[-1]][0]
        total = max(t for _, t in pages.values())
        while offset < total:
            size, total = await read(offset)
            if not size:
                break
            offset += size
        return list(found.values()), totals, repeated

    def _listing_page(
        self, response: dict[str, Any], max_instances: int
    ) -> tuple[list[Instance], int]:
        """One DescribeInstances page, checked: TotalCount a count within the listing's bound,
        InstanceSet a list of at most PAGE_LIMIT well-formed instances."""
        total = response.get("TotalCount")
        if total is None:
            total = 0
        if type(total) is not int or total < 0:
            raise _invalid("DescribeInstances", "TotalCount is not a non-negative integer")
        if total > max_instances:
            raise _invalid("DescribeInstances",
                           f"TotalCount exceeds {max_instances}, the most one listing may hold")
        raw_page = response.get("InstanceSet")
        if raw_page is None:
            raw_page = []
        if not isinstance(raw_page, list) or len(raw_page) > wire.PAGE_LIMIT:
            raise _invalid("DescribeInstances",
                           f"InstanceSet is not a list of at most {wire.PAGE_LIMIT} instances")
        try:
            return [wire.parse_instance(raw) for raw in raw_page], total
        except ValueError as exc:  # messages of wire's own making: they quote no server data
            raise _invalid("DescribeInstances", f"malformed instance: {exc}") from None

    async def terminate_instances(
        self, instance_ids: Sequence[str], *, guard: CallGuard | None = None
    ) -> None:
        """Release instances, in batches of 100; instances already gone count as released.

        TerminateInstances refuses a whole batch when one id is already terminated, terminating
        or unknown. Such a refusal is not taken as "the batch is done": the batch's ids are
        described again and those still there are terminated, until every id is released or
        proven gone. Each round strictly shrinks the set (down to one id per call, where the
        refusal itself proves the id gone), so this always ends.
        """
        for batch in wire.chunks(wire.unique(instance_ids), wire.MAX_IDS_PER_CALL):
            await self._terminate_batch(batch, guard)

    async def _terminate_batch(self, ids: list[str], guard: CallGuard | None = None) -> None:
        try:
            await self.call("TerminateInstances", {"InstanceIds": ids}, guard=guard)
            return
        except CloudError as err:
            if err.code in _MIXED_CHARGE_CODES and len(ids) > 1:
                await self._terminate_by_charge_type(ids, guard)
                return
            if not err.already_gone:
                raise
            if len(ids) == 1:
                return
            log.debug("TerminateInstances refused a batch of %d (%s); re-describing it",
                      len(ids), err.code)
        survivors = [
            instance.instance_id
            for instance in await self.describe_instances(instance_ids=ids)
            if instance.state not in _GONE_STATES
        ]
        if len(survivors) < len(ids):
            if survivors:
                await self._terminate_batch(survivors, guard)
            return
        # DescribeInstances still shows every id alive: find the gone one(s) one id at a time.
        for instance_id in ids:
            await self._terminate_batch([instance_id], guard)

    async def _terminate_by_charge_type(self, ids: list[str], guard: CallGuard | None = None) -> None:
        """TerminateInstances takes one charge type per batch, so a pool holding spot and
        pay-as-you-go instances has its batch split by the charge types DescribeInstances gives.

        Ids not described (gone) or already going are done. Each group is smaller than the batch,
        so this ends; should the server describe them all as one charge type and still refuse,
        they are terminated one id at a time, which no mix can refuse.
        """
        groups: dict[str, list[str]] = {}
        for instance in await self.describe_instances(instance_ids=ids):
            if instance.instance_id in ids and instance.state not in _GONE_STATES:
                groups.setdefault(instance.charge_type, []).append(instance.instance_id)
        log.debug("TerminateInstances refused a batch mixing charge types; splitting it in %d",
                  len(groups))
        if len(groups) == 1:
            for instance_id in next(iter(groups.values())):
                await self._terminate_batch([instance_id], guard)
            return
        for group in groups.values():
            await self._terminate_batch(group, guard)

    async def describe_spot_offers(
        self, *, zones: Sequence[str], instance_types: Sequence[str]
    ) -> list[SpotOffer]:
        """The spot market for every requested zone x instance type the API reports (the SPOTPAID
        items of `describe_offers`). Pools the API does not list are absent."""
        offers = await self.describe_offers(zones=zones, instance_types=instance_types, charge_types=(SPOTPAID,))
        return [offer.as_spot() for offer in offers]

    # ------------------------------------------- on-demand, stock, quota and price (issue 11)

    async def check_purchase(
        self, request: RunInstancesRequest, *, guard: CallGuard | None = None
    ) -> None:
        """RunInstances with DryRun: returns when `request` would pass now, raises the CloudError
        the purchase would get otherwise (a bad image, subnet or type, sold out, quota). Nothing
        is bought.

        The request is sent as given (the same one a purchase would send) but with `dry_run` set
        and a fresh `dryrun-<uuid>` ClientToken, so the check may be retried like any idempotent
        purchase and never collides with a real purchase's token. CVM checks stock too, so a pass
        says nothing about later. An answer that carries instance ids means the server bought
        despite DryRun: that is raised (`DryRunBought`), never ignored. `guard`: as for a purchase
        (a server that bought despite DryRun would have bought outside the caller's term).
        """
        if request.charge_type == SPOTPAID and request.max_price is None:
            raise ValueError("a spot purchase check needs max_price (its bid)")
        ids = await self.run_instances(
            dataclasses.replace(request, dry_run=True, client_token=f"dryrun-{uuid.uuid4()}"),
            guard=guard,
        )
        if ids:
            raise DryRunBought(
                SERVER_NETWORK_ERROR,
                f"RunInstances with DryRun answered {len(ids)} instance ids: "
                f"{', '.join(ids[:10])}",
                action="RunInstances",
            )

    async def describe_offers(
        self,
        *,
        zones: Sequence[str],
        instance_types: Sequence[str],
        charge_types: Sequence[str] = CHARGE_TYPES,
    ) -> list[Offer]:
        """Every requested zone x instance type x charge type the API reports, with its price,
        list price, sold-out flag and StatusCategory (DescribeZoneInstanceConfigInfos).

        Values are sent at most 5 per filter (the older, stricter SDK limit; the newer one says
        100), so many zones or types take several calls. Items of charge types
        or pools that were not asked for are dropped; pools the API does not list are absent.
        """
        for charge in charge_types:
            if charge not in CHARGE_TYPES:
                raise ValueError(
                    f"charge_types: {charge!r} is not one of {', '.join(CHARGE_TYPES)}"
                )
        wanted_charges = wire.unique(charge_types)
        offers: dict[tuple[str, str, str], Offer] = {}
        for zone_batch in wire.chunks(wire.unique(zones), wire.MAX_FILTER_VALUES):
            for type_batch in wire.chunks(wire.unique(instance_types), wire.MAX_FILTER_VALUES):
                filters = wire.filters_param(
                    {
                        "zone": zone_batch,
                        "instance-type": type_batch,
                        "instance-charge-type": wanted_charges,
                    }
                )
                response = await self.call("DescribeZoneInstanceConfigInfos", {"Filters": filters})
                items = response.get("InstanceTypeQuotaSet") or []
                if not isinstance(items, list):
                    raise _invalid(
                        "DescribeZoneInstanceConfigInfos", "InstanceTypeQuotaSet is not a list"
                    )
                for raw in items:
                    try:
                        offer = wire.parse_config_item(raw)
                    except ValueError as exc:  # wire's own words, no server data in them
                        raise _invalid("DescribeZoneInstanceConfigInfos", str(exc)) from None
                    if (
                        offer.zone in zone_batch
                        and offer.instance_type in type_batch
                        and offer.charge_type in wanted_charges
                    ):
                        offers[(offer.zone, offer.instance_type, offer.charge_type)] = offer
        return list(offers.values())

    async def describe_account_quota(self, *, zones: Sequence[str] = ()) -> AccountQuota:
        """The spot and pay-as-you-go vCPU quotas of the region, by zone (DescribeAccountQuota).

        With `zones`, only those (batched 5 per call); without, every zone the API reports.
        """
        wanted = wire.unique(zones)
        batches: list[list[str]] = list(wire.chunks(wanted, wire.MAX_FILTER_VALUES)) or [[]]
        merged: AccountQuota | None = None
        for batch in batches:
            response = await self.call(
                "DescribeAccountQuota", {"Filters": wire.account_quota_filters(batch)}
            )
            try:
                quota = wire.parse_account_quota(response)
            except ValueError as exc:  # wire's own words, no server data in them
                raise _invalid("DescribeAccountQuota", str(exc)) from None
            if batch:  # a server that ignores the filter must not widen the answer
                quota = AccountQuota(
                    region=quota.region,
                    spot={z: q for z, q in quota.spot.items() if z in batch},
                    on_demand={z: q for z, q in quota.on_demand.items() if z in batch},
                    app_id=quota.app_id,
                )
            merged = quota if merged is None else AccountQuota(
                region=merged.region or quota.region,
                spot={**merged.spot, **quota.spot},
                on_demand={**merged.on_demand, **quota.on_demand},
                app_id=merged.app_id if merged.app_id is not None else quota.app_id,
            )
        assert merged is not None  # at least one batch always runs
        return merged

    async def inquiry_price(
        self,
        *,
        zone: str,
        instance_type: str,
        image_id: str,
        count: int = 1,
        charge_type: str = SPOTPAID,
        max_price: Decimal | str | None = None,
    ) -> PriceQuote:
        """The hourly price of buying `count` instances (InquiryPriceRunInstances); raises the
        refusal the purchase itself would get (sold out, bid too low, quota). For spot, the bid
        is optional: without one the API prices at the market."""
        params = wire.inquiry_price_params(
            zone=zone,
            instance_type=instance_type,
            image_id=image_id,
            count=count,
            charge_type=charge_type,
            max_price=max_price,
        )
        response = await self.call("InquiryPriceRunInstances", params)
        try:
            return wire.parse_price_quote(response, charge_type)
        except ValueError as exc:  # wire's own words, no server data in them
            raise _invalid("InquiryPriceRunInstances", str(exc)) from None
