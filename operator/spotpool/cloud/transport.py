"""One signed CVM exchange and its retries: what every action of the client goes through.

The client (`client.CvmClient`) knows the actions: which parameters each takes and what its answer
means. This room knows how any action travels, the way httpx's client hands each request to a
transport: the request is rate limited, checked against the caller's guard, signed, sent, read
within bounds and unwrapped from its envelope (`wire.parse_envelope`), and retried when that is
safe. Keeping it apart means the hostile-endpoint bounds and the retry rules are in one place,
and no action can send a request around them.

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
  unbounded: replies are streamed and abandoned past `max_reply_bytes` (compressed ones too), a
  whole exchange has a deadline however slowly bytes drip, redirects are not followed, and a
  reply that is not a CVM envelope is reported by HTTP status and content type only, never by
  its body. docs/security.md lists every hostile answer tried and what the caller sees.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
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
    SERVER_NETWORK_ERROR,
    SIGNATURE_EXPIRED,
    CloudError,
    CloudNetworkError,
    ErrorCategory,
    clean_message,
    code_label,
)
from .models import Credentials
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
UNSIGNED = "SKIP"  # the Authorization of an unsigned STS call, as the official SDK sends it
_REDACTED_CREDENTIALS = 4  # the last credentials used whose secrets messages are cleaned of

# Bounds on what a server can make one exchange hold or take (see the module docstring).
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024  # a real page of 100 instances is a few hundred KiB
DEFAULT_DEADLINE = 60.0  # seconds for one whole exchange: connect, send, every byte of the reply
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

CallObserver = Callable[[str, float, str | None], None]
"""Told of every HTTP attempt (action, seconds, Tencent error code or None): the API metrics. Named
apart from `controller.observer.Observer`, which sweeps an account's instances."""


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


def _media_type(header: str | None) -> str:
    """The media type of a Content-Type header, lower-cased, for parsing and for messages.

    A header that is not a plausible `type/subtype` is named by a fixed phrase instead, so a
    message never quotes what a server put there.
    """
    if not header:
        return "(none)"
    media = header.split(";", 1)[0].strip().lower()
    return media if _MEDIA_TYPE_SHAPE.fullmatch(media) else "(malformed)"


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


class Transport:
    """Signed exchanges with one endpoint, for one account (or unsigned, for STS) and region.

    Holds what every attempt needs: the HTTP connection pool, the credentials (and the last few
    used, to redact), the process-wide rate limiter's bucket key, the retry policy and the bounds.
    Arguments are taken as the client checked them (`CvmClient.__init__` names each one).
    """

    def __init__(
        self,
        credentials: Credentials | CredentialProvider | None,
        *,
        service: str,
        region: str,
        url: httpx.URL,
        timeout: float,
        rate_limits: Mapping[str, float],
        max_attempts: int,
        backoff_base: float,
        backoff_cap: float,
        http_transport: httpx.AsyncBaseTransport | None,
        observer: CallObserver | None,
        clock: Callable[[], float],
        limiter: RateLimiterRegistry | None,
        sleep: Sleep,
        rng: random.Random | None,
        max_reply_bytes: int,
        deadline: float,
    ) -> None:
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
        self._rate_limits = dict(rate_limits)
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
        self.bucket_account = (
            "(unsigned)" if self._provider is None else self._provider.rate_limit_key
        )
        self._max_reply_bytes = max_reply_bytes
        self._deadline = deadline
        # Redirects are never followed: the signed request (and its token) goes to the configured
        # host only, and a redirect is an answer like any other non-200 one.
        self._http = httpx.AsyncClient(
            transport=http_transport, timeout=timeout, verify=tls_context(), follow_redirects=False
        )

    @property
    def url(self) -> httpx.URL:
        return self._url

    @property
    def service(self) -> str:
        return self._service

    @property
    def source(self) -> str:
        """Where the credentials come from (the provider's `source`), for messages."""
        return "unsigned" if self._provider is None else self._provider.source

    @property
    def static_secret_id(self) -> str | None:
        """The SecretId of a static key pair once known (a repr may show it), else None."""
        if isinstance(self._provider, StaticCredentials) and self._credentials is not None:
            return self._credentials.secret_id
        return None

    async def close(self) -> None:
        await self._http.aclose()

    def clean(self, text: str) -> str:
        """A server message made safe: see `errors.clean_message`; the secret keys and tokens
        of the last credentials used (a renewal may land while a call is on the wire) are
        redacted."""
        return clean_message(text, self._secrets())

    def _secrets(self) -> Iterator[str | None]:
        for credentials in self._recent:
            yield credentials.secret_key
            yield credentials.token

    # ------------------------------------------------------------------ one call, retried

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
                self._host, self.bucket_account, action, self._rate_limits
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

    # ------------------------------------------------------------------ one attempt

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
            result = wire.parse_envelope(action, status, content_type, data, self._secrets())
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
        return wire.invalid_response(
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
