"""The operator's two ports: health for the kubelet, metrics for Prometheus.

- The health port (`--health-port`, 8081) answers /healthz and /readyz over plain HTTP without
  authentication: the kubelet's probes send no token and verify no certificate, and the answers
  say nothing but "ok" and "ready".
- The metrics port (`--metrics-port`, 8443) answers /metrics. By default over HTTPS (a certificate
  from files or self-signed: `servingcert.py`) and only to a bearer token the API server says may
  get the non-resource URL /metrics (`metricsauth.py`): 401 without a valid token, 403 without the
  permission. `--no-metrics-secure` serves it over plain HTTP to anyone, for a development machine
  (the demo, the e2e tests' harness), where the port is on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spotpool.controller.config import OperatorConfig
from spotpool.controller.metricsauth import KubeReviewApi, MetricsAuthorizer, ReviewApi, require_token
from spotpool.controller.runtime import Runtime
from spotpool.controller.servingcert import ServingCertificate

log = logging.getLogger(__name__)


def make_health_app(runtime: Runtime) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        # Answering at all proves the event loop that runs every reconcile is not stuck.
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if runtime.ready.is_set():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting"}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def make_metrics_app(runtime: Runtime, authorizer: MetricsAuthorizer | None) -> web.Application:
    """/metrics, behind `authorizer` when given (every request, whatever its path: an unknown path
    is a 404 only to a caller allowed to read the metrics)."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[require_token(authorizer)] if authorizer is not None else [])
    app.router.add_get("/metrics", metrics)
    return app


@dataclass
class Serving:
    """The running ports; `cleanup` stops them."""

    health: web.AppRunner
    metrics: web.AppRunner
    certificate: ServingCertificate | None
    watcher: asyncio.Task[None] | None

    @staticmethod
    def _port(runner: web.AppRunner) -> int:
        return int(runner.addresses[0][1]) if runner.addresses else 0

    @property
    def health_port(self) -> int:
        return self._port(self.health)

    @property
    def metrics_port(self) -> int:
        return self._port(self.metrics)

    async def cleanup(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        await self.metrics.cleanup()
        await self.health.cleanup()


async def _start(app: web.Application, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve(runtime: Runtime, config: OperatorConfig, reviews: ReviewApi | None = None) -> Serving:
    """Start both ports as `config` says. `reviews` answers the token and access reviews (default:
    the API server, with the operator's credentials)."""
    health = await _start(make_health_app(runtime), config.health_host, config.health_port)
    try:
        if not config.metrics_secure:
            metrics = await _start(make_metrics_app(runtime, None), config.metrics_host, config.metrics_port)
            return Serving(health, metrics, None, None)
        certificate = ServingCertificate(
            Path(config.metrics_cert_file) if config.metrics_cert_file else None,
            Path(config.metrics_key_file) if config.metrics_key_file else None)
        authorizer = MetricsAuthorizer(reviews if reviews is not None else KubeReviewApi())
        metrics = await _start(make_metrics_app(runtime, authorizer), config.metrics_host, config.metrics_port,
                               certificate.context)
    except BaseException:
        await health.cleanup()
        raise
    watcher = asyncio.get_running_loop().create_task(certificate.watch()) if certificate.files else None
    return Serving(health, metrics, certificate, watcher)


def describe(serving: Serving, config: OperatorConfig) -> str:
    """The start-up log line: where each port is, and how /metrics is protected."""
    health = f"health on http://{config.health_host}:{serving.health_port} (/healthz, /readyz)"
    if serving.certificate is None:
        return (f"{health}; metrics on http://{config.metrics_host}:{serving.metrics_port}/metrics WITHOUT "
                "authentication (--no-metrics-secure: for development only)")
    return (f"{health}; metrics on https://{config.metrics_host}:{serving.metrics_port}/metrics for bearer "
            f"tokens allowed to get /metrics (TokenReview + SubjectAccessReview), certificate "
            f"{serving.certificate.source} (SHA-256 {serving.certificate.fingerprint})")
