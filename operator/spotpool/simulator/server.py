"""The simulator's HTTP server: the signed CVM, STS and tag APIs at `/`, the CVM metadata service
at `/latest/meta-data/`, and the control API at `/_sim/`.

Every request to `/` gets HTTP 200 and the exact CVM envelope with `Content-Type:
application/json` and no charset (the official Python SDK ignores error bodies otherwise). Checks
run in this order: method, authentication (Authorization, SecretId, timestamp skew, signature,
session token), version, action, region, injected faults, rate limit, parameters, the action
itself. A request of STS's version goes to `sts.py` (its unsigned AssumeRoleWithWebIdentity skips
authentication), unless it is signed for service `tag` (the tag service shares the version date;
an unsigned request by its action), which goes to `tagging.py`. Anything unexpected becomes an
`InternalError` envelope, never a 500 or a stack trace on the wire.

Each call acts in the account of the principal that signed it (`iam.Principal.account_id`): the
market keeps accounts apart, and the rate-limit bucket is the principal's (`rate_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from pydantic import BaseModel

from spotpool.cloud.signing import parse_authorization
from spotpool.simulator.actions import ACTIONS, CallContext
from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.auth import Authenticator
from spotpool.simulator.config import SimulatorConfig
from spotpool.simulator.control import add_control_routes
from spotpool.simulator.faults import FaultDecision, FaultInjector
from spotpool.simulator.iam import Identities, Principal
from spotpool.simulator.ledger import CallLedger, CallRecord, summarize_params
from spotpool.simulator.market import Market
from spotpool.simulator.metadata import add_metadata_routes
from spotpool.simulator.params import parse_form, parse_json
from spotpool.simulator.ratelimit import RateLimiter
from spotpool.simulator.render import error_body
from spotpool.simulator.sts import (
    STS_API_VERSION,
    STS_PARAMS,
    UNSIGNED_ACTIONS,
    StsService,
    unknown_action,
)
from spotpool.simulator.tagging import TAG_API_VERSION, TAG_PARAMS, TagService

log = logging.getLogger(__name__)

API_VERSION = "2017-03-12"
MAX_BODY_BYTES = 1024 * 1024
_JSON_HEADERS = {"Content-Type": "application/json"}
_FORM = "application/x-www-form-urlencoded"


class _Dropped(Exception):
    """The connection was closed on purpose (fault injection): no answer is sent."""


class Simulator:
    """One simulated CVM endpoint: market, ledger, faults, rate limits and the aiohttp app.

    `clock` is the simulator's notion of now (epoch seconds) for everything: lifecycle, signature
    expiry and rate limits, so a test with a fake clock controls all of them at once.
    """

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.market = Market(config, clock)
        self.ledger = CallLedger(config.api.ledger_size)
        self.faults = FaultInjector(None if config.seed is None else config.seed + 1)
        self.limiter = RateLimiter(config.api.rate_limits, clock)
        self.identities = Identities(config, clock)
        self.sts = StsService(config, self.identities, clock)
        self.tags = TagService(self.market)
        self._auth = Authenticator(self.identities, config.api.max_clock_skew_seconds, clock)
        self._install_configured_faults()
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_route("*", "/", self.handle_api)
        add_control_routes(self.app, self)
        add_metadata_routes(self.app, self)

    def reset(self) -> None:
        """Back to the configured state: market, ledger, faults and rate-limit buckets."""
        self.market.reset()
        self.ledger.clear()
        self.faults.clear()
        self._install_configured_faults()
        self.limiter.reset()

    def _install_configured_faults(self) -> None:
        for action, spec in self.config.faults.items():
            self.faults.set(action, spec)

    async def handle_api(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        action = request.headers.get("X-TC-Action", "")
        region = request.headers.get("X-TC-Region")
        call: dict[str, Any] = {"secret_id": None, "account_id": None, "params": {}}
        error_code: str | None = None
        try:
            body = await self._answer(request, action, region, request_id, call)
        except _Dropped:
            self._record(action, region, request_id, call, "(connection dropped)", started)
            raise web.HTTPServiceUnavailable() from None  # the transport is closed: never sent
        except ApiError as exc:
            error_code = exc.code
            body = error_body(exc.code, exc.message, request_id)
        except Exception as exc:  # the wire must never see a 500 or a trace
            log.exception("simulator failure handling %s", action or "a request")
            error_code = "InternalError"
            body = error_body(
                "InternalError",
                f"The simulator failed ({type(exc).__name__}); see its log.",
                request_id,
            )
        self._record(action, region, request_id, call, error_code, started)
        return web.Response(body=body, status=200, headers=_JSON_HEADERS)

    async def _answer(
        self,
        request: web.Request,
        action: str,
        region: str | None,
        request_id: str,
        call: dict[str, Any],
    ) -> bytes:
        method = request.method
        if method not in ("GET", "POST"):
            raise ApiError(
                "UnsupportedProtocol", f"HTTP method {method} is not supported; use POST or GET."
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(
                "RequestSizeLimitExceeded", f"The request body exceeds {MAX_BODY_BYTES} bytes."
            ) from None
        query = request.rel_url.raw_query_string if method == "GET" else ""
        version = request.headers.get("X-TC-Version")
        if version in (STS_API_VERSION, TAG_API_VERSION) and _service_of(request, action) == "tag":
            return await self._answer_tag(request, raw, query, action, region, request_id, call)
        if version == STS_API_VERSION:
            return await self._answer_sts(request, raw, query, action, region, request_id, call)
        principal = self._authenticate(request, raw, query, "cvm", call)
        version = request.headers.get("X-TC-Version")
        if not version:
            raise ApiError("MissingParameter", "The request is missing the header X-TC-Version.")
        if version != API_VERSION:
            raise ApiError(
                "NoSuchVersion", f"The API version {version!r} does not exist; use {API_VERSION}."
            )
        if not action:
            raise ApiError("MissingParameter", "The request is missing the header X-TC-Action.")
        handler = ACTIONS.get(action)
        if handler is None:
            raise ApiError(
                "InvalidAction", f"The action {action!r} does not exist in CVM {API_VERSION}."
            )
        if not region:
            raise ApiError("MissingParameter", "The request is missing the header X-TC-Region.")
        if not self.market.has_region(region):
            raise ApiError(
                "UnsupportedRegion",
                f"The region {region!r} is not supported; "
                f"regions: {', '.join(self.config.regions)}.",
            )
        fault = self.faults.decide(action)
        await self._before(fault, request, action, principal.rate_key)
        params = _parse(handler.params, request, raw)
        call["params"] = summarize_params(params.model_dump(by_alias=True, exclude_none=True))
        context = CallContext(
            self.market,
            region,
            request_id,
            principal.secret_id,
            principal.account_id,
            session_tags=principal.visible_tags if principal.role is not None else None,
        )
        body = handler.handle(context, params)
        if fault.drop_after:
            _drop(request)
        return body

    def _authenticate(
        self, request: web.Request, raw: bytes, query: str, service: str, call: dict[str, Any]
    ) -> Principal:
        principal = self._auth.verify(
            method=request.method, query=query, headers=request.headers, body=raw, service=service
        )
        call["secret_id"] = principal.secret_id
        call["account_id"] = principal.account_id
        return principal

    async def _before(
        self, fault: FaultDecision, request: web.Request, action: str, rate_key: str
    ) -> None:
        """Apply an injected fault's latency, drop, throttle or error, and the rate limit."""
        if fault.latency_seconds:
            await asyncio.sleep(fault.latency_seconds)
        if fault.drop_before:
            _drop(request)
        if fault.throttle or not self.limiter.allow(action, rate_key):
            raise ApiError(
                "RequestLimitExceeded", f"The request rate of {action} exceeds its limit."
            )
        if fault.error_code is not None:
            raise ApiError(
                fault.error_code, f"Injected fault: {fault.error_code} (simulator fault injection)."
            )

    async def _answer_sts(
        self,
        request: web.Request,
        raw: bytes,
        query: str,
        action: str,
        region: str | None,
        request_id: str,
        call: dict[str, Any],
    ) -> bytes:
        """An STS call: signed like CVM's (service `sts`), but AssumeRoleWithWebIdentity is not
        signed at all (its Authorization, `SKIP` from the SDK, is not looked at). Faults apply
        only when named for the STS action (never `*`); rate limits only when configured."""
        principal: Principal | None = None
        if action not in UNSIGNED_ACTIONS:
            principal = self._authenticate(request, raw, query, "sts", call)
        if not region:
            raise ApiError("MissingParameter", "The request is missing the header X-TC-Region.")
        model = STS_PARAMS.get(action)
        if model is None:
            raise unknown_action(action)
        async def handle(params: Any) -> bytes:
            return await self.sts.handle(action, params, principal, request_id)

        return await self._serve_other(request, raw, action, model, principal.rate_key if principal else "(unsigned)",
                                       call, handle)

    async def _answer_tag(
        self,
        request: web.Request,
        raw: bytes,
        query: str,
        action: str,
        region: str | None,
        request_id: str,
        call: dict[str, Any],
    ) -> bytes:
        """A tag service call (TagResources, UnTagResources): signed for service `tag`, in the
        signer's account. The tag service takes no region (its resources name theirs), so
        X-TC-Region is not required. Faults apply only when named for the action (never `*`)."""
        principal = self._authenticate(request, raw, query, "tag", call)
        model = TAG_PARAMS.get(action)
        if model is None:
            raise ApiError(
                "InvalidAction",
                f"The action {action!r} does not exist in the tag service {TAG_API_VERSION} "
                f"(simulated: {', '.join(TAG_PARAMS)}).",
            )
        async def handle(params: Any) -> bytes:
            return self.tags.handle(params, principal, request_id)

        return await self._serve_other(request, raw, action, model, principal.rate_key, call, handle)

    async def _serve_other(
        self,
        request: web.Request,
        raw: bytes,
        action: str,
        model: Any,
        rate_key: str,
        call: dict[str, Any],
        handle: Callable[[Any], Awaitable[bytes]],
    ) -> bytes:
        """The common part of a call to a service beside CVM (STS, the tag service), once it is
        authenticated: faults named for the action only (never `*`), rate limits, the parameters
        parsed and recorded, the answer, and a dropped connection if the fault says so."""
        fault = self.faults.decide(action, wildcard=False)
        await self._before(fault, request, action, rate_key)
        params = _parse(model, request, raw)
        call["params"] = summarize_params(params.model_dump(by_alias=True, exclude_none=True))
        body = await handle(params)
        if fault.drop_after:
            _drop(request)
        return body

    def _record(
        self,
        action: str,
        region: str | None,
        request_id: str,
        call: dict[str, Any],
        error_code: str | None,
        started: float,
    ) -> None:
        self.ledger.record(
            CallRecord(
                time=self.clock(),
                action=action,
                secret_id=call["secret_id"],
                region=region,
                request_id=request_id,
                params=call["params"],
                error_code=error_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                account_id=call["account_id"],
            )
        )


def _service_of(request: web.Request, action: str) -> str:
    """Which service of API version 2018-08-13 a request is for, STS or the tag service: the one
    its signature's credential scope names (`.../tag/tc3_request`), as Tencent's per-service
    hosts decide it; an unsigned or malformed request by its action (the unsigned STS action,
    or a tag action that authentication will then refuse)."""
    parsed = parse_authorization(request.headers.get("Authorization", ""))
    if parsed is not None and parsed.service in ("sts", "tag"):
        return parsed.service
    return "tag" if action in TAG_PARAMS else "sts"


def _parse(model: type[BaseModel], request: web.Request, raw: bytes) -> BaseModel:
    if request.method == "GET":
        return parse_form(model, dict(request.query))
    content_type = request.content_type
    if content_type == "application/json":
        return parse_json(model, raw)
    if content_type == _FORM:
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(
                "InvalidParameter", "The form body is not valid URL-encoded UTF-8."
            ) from None
        return parse_form(model, dict(pairs))
    raise ApiError(
        "InvalidParameter",
        f"Content-Type {content_type!r} is not supported; use application/json.",
    )


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()
    raise _Dropped()


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator serving on a real port (what `run_simulator` yields)."""

    url: str
    host: str
    port: int
    simulator: Simulator

    @property
    def market(self) -> Market:
        return self.simulator.market

    @property
    def config(self) -> SimulatorConfig:
        return self.simulator.config


@contextlib.asynccontextmanager
async def run_simulator(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator in the running event loop until the block exits (port 0: any free port)."""
    simulator = Simulator(config, clock)
    runner = web.AppRunner(simulator.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        actual_port = int(runner.addresses[0][1])
        url_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if ":" in url_host:
            url_host = f"[{url_host}]"
        yield RunningSimulator(
            url=f"http://{url_host}:{actual_port}", host=host, port=actual_port, simulator=simulator
        )
    finally:
        await runner.cleanup()


def serve(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 9000) -> None:
    """Serve until SIGINT or SIGTERM (the CLI's `spotpool simulator`)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with run_simulator(config, host, port) as running:
            log.info(
                "spotpool CVM simulator listening on %s (control API at %s/_sim/)",
                running.url,
                running.url,
            )
            await stop.wait()

    asyncio.run(main())
