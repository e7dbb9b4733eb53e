"""The metrics port: Prometheus exposition, liveness and readiness."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spotpool.controller.runtime import Runtime


def make_app(runtime: Runtime) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        # Answering at all proves the event loop that runs every reconcile is not stuck.
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if runtime.ready.is_set():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting"}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(runtime: Runtime, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(runtime), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
