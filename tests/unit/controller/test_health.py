"""The operator's two ports (controller/health.py), as `spotpool operator` starts them: health plain
for the kubelet, metrics over HTTPS behind a token by default, plain with --no-metrics-secure."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from spotpool.controller.cli import parse
from spotpool.controller.health import Serving, describe, serve
from spotpool.controller.runtime import Runtime
from tests.unit.controller.test_metricsauth import FakeApi

LOOPBACK = ["--metrics-host=127.0.0.1", "--metrics-port=0", "--health-host=127.0.0.1", "--health-port=0"]


@pytest.fixture
async def runtime() -> Runtime:
    runtime = Runtime()
    runtime.ready.set()
    return runtime


@pytest.fixture
async def secure(runtime: Runtime) -> AsyncIterator[Serving]:
    serving = await serve(runtime, parse(LOOPBACK), reviews=FakeApi())
    yield serving
    await serving.cleanup()


async def test_by_default_metrics_need_https_and_a_token_while_health_stays_plain(secure: Serving) -> None:
    async with httpx.AsyncClient(verify=False, timeout=10) as client:
        health = f"http://127.0.0.1:{secure.health_port}"
        assert (await client.get(f"{health}/healthz")).json() == {"status": "ok"}
        assert (await client.get(f"{health}/readyz")).status_code == 200
        assert (await client.get(f"{health}/metrics")).status_code == 404, "no metrics on the plain port"

        metrics = f"https://127.0.0.1:{secure.metrics_port}/metrics"
        assert (await client.get(metrics)).status_code == 401
        assert (await client.get(metrics, headers={"Authorization": "Bearer stranger-token"})).status_code == 403
        allowed = await client.get(metrics, headers={"Authorization": "Bearer reader-token"})
        assert allowed.status_code == 200 and "spotpool_build_info" in allowed.text
        healthz = await client.get(f"https://127.0.0.1:{secure.metrics_port}/healthz")
        assert healthz.status_code == 401, "the metrics port serves nothing without a token"
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the metrics port
            await client.get(f"http://127.0.0.1:{secure.metrics_port}/metrics")
    assert secure.certificate is not None and secure.certificate.source == "self-signed"


async def test_no_metrics_secure_serves_metrics_plainly_to_anyone(runtime: Runtime) -> None:
    config = parse([*LOOPBACK, "--no-metrics-secure"])
    serving = await serve(runtime, config, reviews=FakeApi())
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = await client.get(f"http://127.0.0.1:{serving.metrics_port}/metrics")
            assert metrics.status_code == 200 and "spotpool_build_info" in metrics.text
            assert (await client.get(f"http://127.0.0.1:{serving.metrics_port}/healthz")).status_code == 404
            assert (await client.get(f"http://127.0.0.1:{serving.health_port}/healthz")).status_code == 200
        assert "WITHOUT authentication" in describe(serving, config)
    finally:
        await serving.cleanup()


async def test_readyz_is_503_until_the_operator_started(runtime: Runtime, secure: Serving) -> None:
    runtime.ready.clear()
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"http://127.0.0.1:{secure.health_port}/readyz")).status_code == 503
        assert (await client.get(f"http://127.0.0.1:{secure.health_port}/healthz")).status_code == 200
