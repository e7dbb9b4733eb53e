"""Who may read /metrics: a bearer token, checked with the Kubernetes API server.

The metrics port is reachable by anything on the Pod network (a NetworkPolicy helps only where the
CNI enforces it), and the series name every namespace, pool and account the operator serves. So it
asks what kube-rbac-proxy and controller-runtime's `filters.WithAuthenticationAndAuthorization`
(kubebuilder's scaffold since v4) ask, with the operator's own credentials:

1. a TokenReview (authentication.k8s.io/v1): who holds this token? Not valid: 401.
2. a SubjectAccessReview (authorization.k8s.io/v1) for that user, its groups, uid and extra, on the
   non-resource URL `/metrics` with verb `get`: may it read the metrics? No: 403.

A ServiceAccount token bound to a ClusterRole granting `get` on nonResourceURLs ["/metrics"] (the
chart's `<release>-spotpool-metrics-reader`) is what Prometheus scrapes with.

Costs and bounds, since anyone on the network can send tokens:

- A decision is cached by the token's SHA-256 (the token itself is not kept): an allowed one for
  `ALLOW_TTL` seconds (how late a revoked token or binding is noticed), a refusal for `DENY_TTL`
  (how late a new binding is noticed), at most `MAX_ENTRIES` of them, least recently used dropped
  first. A Prometheus scraping every 15 s costs two API calls a minute per replica.
  controller-runtime caches longer (authentication 1 min, an allowed decision 5 min, a denied one
  30 s); API failures are cached by neither.
- A request without a well-formed bearer token (RFC 6750's characters, at most `MAX_TOKEN_LENGTH`)
  is refused with 401 before any API call.
- At most `MAX_IN_FLIGHT` reviews run at once, and at most `MAX_WAITING` requests are in review or
  waiting for one; beyond that the answer is 503 at once. A flood of made-up tokens costs the API server a bounded rate,
  and cannot queue without end; a scraper whose decision is cached is not slowed by it.
- The API server's answer is read up to `MAX_ANSWER_BYTES`, must have the documented shape within
  bounds (else the check failed: 503, nothing cached), and every text from it that reaches a log
  line (user name, reasons, errors) is cleaned of control characters and clipped.
- When the API server cannot be asked (down, or the operator lacks `create` on tokenreviews or
  subjectaccessreviews), the answer is 503, not 401: the caller's token is not at fault. The
  warning is logged at most once per `WARN_INTERVAL` seconds, with the number left out.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import kubernetes
from aiohttp import web

from spotpool.cloud.errors import clean_message

log = logging.getLogger(__name__)

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
METRICS_PATH = "/metrics"
"""The non-resource URL every request to the metrics port is authorized against, whatever path it
asks for: the port serves nothing else, and one decision per token keeps the cache key the token."""

ALLOW_TTL = 60.0
DENY_TTL = 10.0
MAX_ENTRIES = 1024
MAX_TOKEN_LENGTH = 8192  # ServiceAccount tokens are about 1 KiB; aiohttp refuses headers over 8 KiB anyway
MAX_IN_FLIGHT = 4
MAX_WAITING = 64
MAX_ANSWER_BYTES = 64 * 1024
REVIEW_TIMEOUT = 10.0
WARN_INTERVAL = 60.0
LOG_TEXT_LIMIT = 200

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")

# Bounds on a TokenReview's user (the fields go back to the API server verbatim in the
# SubjectAccessReview, so they are checked, not cleaned).
_MAX_NAME = 1024
_MAX_GROUPS = 256
_MAX_EXTRA_KEYS = 64
_MAX_EXTRA_VALUES = 64

AUTHENTICATED_GROUP = "system:authenticated"
ANONYMOUS_USER = "system:anonymous"


class ReviewUnavailable(Exception):
    """The API server could not be asked, or answered something that is not a review. The message
    is the operator's own words (status, reason, a cleaned excerpt), safe for a log line."""


class ReviewApi(Protocol):
    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to the API server at `path` and return the answer's JSON object; raise
        `ReviewUnavailable` when there is none (network, non-2xx, too large, not a JSON object)."""


def _clean(text: object, limit: int = LOG_TEXT_LIMIT) -> str:
    return clean_message(text, limit=limit) if isinstance(text, str) else ""


class KubeReviewApi:
    """`ReviewApi` over the official client, with the operator's credentials (in-cluster token,
    refreshed by the client, or $KUBECONFIG), on threads of its own: the client is synchronous."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        if api_client is None:
            kubernetes.config.load_config()  # type: ignore[no-untyped-call]
            api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration.get_default_copy())
        self._client = api_client
        self._pool = ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="metrics-review")

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._post, path, body)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = self._client.param_serialize(
            method="POST", resource_path=path, body=body, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/json"})
        try:
            answer = self._client.call_api(*request, _request_timeout=REVIEW_TIMEOUT)
        except Exception as exc:  # urllib3's errors, the client's: the transport failed
            raise ReviewUnavailable(f"{type(exc).__name__}: {_clean(str(exc))}") from None
        raw = answer.response
        try:
            data = raw.read(MAX_ANSWER_BYTES + 1)
        except Exception as exc:
            raise ReviewUnavailable(f"{type(exc).__name__} reading the answer") from None
        finally:
            raw.release_conn()
        if len(data) > MAX_ANSWER_BYTES:
            raise ReviewUnavailable(f"the answer exceeds {MAX_ANSWER_BYTES} bytes")
        try:
            decoded = json.loads(data)
        except (ValueError, RecursionError):
            decoded = None
        if not 200 <= answer.status <= 299:
            # A Status object: its message says which permission is missing, for the administrator.
            message = decoded.get("message") if isinstance(decoded, dict) else None
            raise ReviewUnavailable(f"the API server answered {answer.status} {_clean(answer.reason, 40)}"
                                    + (f": {_clean(message)}" if message else ""))
        if not isinstance(decoded, dict):
            raise ReviewUnavailable("the answer is not a JSON object")
        return decoded


@dataclass(frozen=True)
class User:
    """Who a TokenReview says holds the token, as the SubjectAccessReview needs it."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _bounded_str(value: object, limit: int = _MAX_NAME) -> bool:
    return isinstance(value, str) and len(value) <= limit


def parse_token_review(answer: Mapping[str, Any]) -> User | None:
    """The authenticated user of a TokenReview answer, None when the token is not valid; raises
    `ReviewUnavailable` when the answer is not a TokenReview within bounds."""
    status = answer.get("status")
    if not isinstance(status, dict):
        raise ReviewUnavailable("the TokenReview answer has no status")
    if status.get("authenticated") is not True:
        return None
    user = status.get("user")
    if not isinstance(user, dict):
        raise ReviewUnavailable("the TokenReview answer has no user")
    name, uid = user.get("username"), user.get("uid", "")
    groups, extra = user.get("groups") or [], user.get("extra") or {}
    if not (_bounded_str(name) and name and _bounded_str(uid)):
        raise ReviewUnavailable("the TokenReview answer's username or uid is not a string within bounds")
    if not (isinstance(groups, list) and len(groups) <= _MAX_GROUPS and all(map(_bounded_str, groups))):
        raise ReviewUnavailable(f"the TokenReview answer's groups are not at most {_MAX_GROUPS} strings")
    if not (isinstance(extra, dict) and len(extra) <= _MAX_EXTRA_KEYS and all(
            _bounded_str(key, 256) and isinstance(values, list) and len(values) <= _MAX_EXTRA_VALUES
            and all(map(_bounded_str, values)) for key, values in extra.items())):
        raise ReviewUnavailable("the TokenReview answer's extra is not a map of string lists within bounds")
    # As the API server's own authenticator does (AuthenticatedGroupAdder): every authenticated
    # user is in system:authenticated, whether or not the review says so.
    if name != ANONYMOUS_USER and AUTHENTICATED_GROUP not in groups:
        groups = [*groups, AUTHENTICATED_GROUP]
    return User(name, uid, tuple(groups), {key: tuple(values) for key, values in extra.items()})


def parse_access_review(answer: Mapping[str, Any]) -> tuple[bool, str]:
    """(allowed, the reason, cleaned for a log line) of a SubjectAccessReview answer. Only
    `allowed: true` allows; raises `ReviewUnavailable` when the answer has no status."""
    status = answer.get("status")
    if not isinstance(status, dict):
        raise ReviewUnavailable("the SubjectAccessReview answer has no status")
    reason = _clean(status.get("reason")) or _clean(status.get("evaluationError"))
    return status.get("allowed") is True, reason


def token_review(token: str) -> dict[str, Any]:
    # No audiences: the API server's own (a ServiceAccount token of the cluster passes).
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}


def access_review(user: User, path: str = METRICS_PATH) -> dict[str, Any]:
    spec: dict[str, Any] = {"user": user.name, "groups": list(user.groups),
                            "nonResourceAttributes": {"path": path, "verb": "get"}}
    if user.uid:
        spec["uid"] = user.uid
    if user.extra:
        spec["extra"] = {key: list(values) for key, values in user.extra.items()}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


class Outcome(enum.IntEnum):
    ALLOWED = 200
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    UNAVAILABLE = 503


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    user: str = ""  # cleaned, for messages; empty when nobody was authenticated


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None unless it is well-formed."""
    if header is None or len(header) > MAX_TOKEN_LENGTH + 16:
        return None
    found = _BEARER.fullmatch(header)
    return found.group(1) if found and len(found.group(1)) <= MAX_TOKEN_LENGTH else None


class MetricsAuthorizer:
    """Decides each request to the metrics port (see the module's docstring)."""

    def __init__(self, api: ReviewApi, *, allow_ttl: float = ALLOW_TTL, deny_ttl: float = DENY_TTL,
                 max_entries: int = MAX_ENTRIES, max_in_flight: int = MAX_IN_FLIGHT,
                 max_waiting: int = MAX_WAITING, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._allow_ttl, self._deny_ttl = allow_ttl, deny_ttl
        self._max_entries = max_entries
        self._cache: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting, self._max_waiting = 0, max_waiting
        self._clock = clock
        self._warned_at: float | None = None
        self._unwarned = 0

    async def check(self, authorization: str | None) -> Verdict:
        token = bearer_token(authorization)
        if token is None:
            return Verdict(Outcome.UNAUTHENTICATED)
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cached(key)
        if cached is not None:
            return cached
        if self._waiting >= self._max_waiting:
            self._warn("metrics: %d requests already wait for a token review; answering 503", self._waiting)
            return Verdict(Outcome.UNAVAILABLE)
        self._waiting += 1
        try:
            async with self._slots:
                cached = self._cached(key)  # decided while this one waited (the same scraper again)
                if cached is not None:
                    return cached
                verdict = await self._review(token)
                self._remember(key, verdict)
                return verdict
        except ReviewUnavailable as exc:
            self._warn("metrics: cannot check a scrape's token, answering 503: %s", exc)
            return Verdict(Outcome.UNAVAILABLE)
        finally:
            self._waiting -= 1

    async def _review(self, token: str) -> Verdict:
        user = parse_token_review(await self._api.create(TOKEN_REVIEWS, token_review(token)))
        if user is None:
            log.debug("metrics: refused a scrape: the token is not valid (401)")
            return Verdict(Outcome.UNAUTHENTICATED)
        allowed, reason = parse_access_review(await self._api.create(ACCESS_REVIEWS, access_review(user)))
        name = _clean(user.name, 128)
        if not allowed:
            log.info("metrics: refused a scrape by %s: not allowed to get %s (403)%s", name, METRICS_PATH,
                     f": {reason}" if reason else "")
            return Verdict(Outcome.FORBIDDEN, name)
        log.debug("metrics: %s may get %s", name, METRICS_PATH)
        return Verdict(Outcome.ALLOWED, name)

    def _cached(self, key: bytes) -> Verdict | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, verdict = entry
        if self._clock() >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return verdict

    def _remember(self, key: bytes, verdict: Verdict) -> None:
        ttl = self._allow_ttl if verdict.outcome is Outcome.ALLOWED else self._deny_ttl
        self._cache[key] = (self._clock() + ttl, verdict)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def _warn(self, message: str, *args: object) -> None:
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < WARN_INTERVAL:
            self._unwarned += 1
            return
        if self._unwarned:
            message += f" ({self._unwarned} more since the last warning)"
        log.warning(message, *args)
        self._warned_at, self._unwarned = now, 0


_MESSAGES = {
    Outcome.UNAUTHENTICATED: "Unauthorized: send a bearer token of a ServiceAccount allowed to get the "
                             f"non-resource URL {METRICS_PATH}",
    Outcome.UNAVAILABLE: "Service Unavailable: the token cannot be checked with the API server now",
}


def require_token(authorizer: MetricsAuthorizer) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware: every request to the metrics port passes `authorizer` first."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        verdict = await authorizer.check(request.headers.get("Authorization"))
        if verdict.outcome is Outcome.ALLOWED:
            return await handler(request)
        if verdict.outcome is Outcome.FORBIDDEN:
            text = f"Forbidden: {verdict.user} may not get the non-resource URL {METRICS_PATH}"
        else:
            text = _MESSAGES[verdict.outcome]
        headers = {"WWW-Authenticate": 'Bearer realm="spotpool-metrics"'} \
            if verdict.outcome is Outcome.UNAUTHENTICATED else {}
        return web.Response(status=int(verdict.outcome), text=text + "\n", headers=headers)

    return middleware
