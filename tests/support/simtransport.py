"""An httpx transport that hands each request to an in-process `Simulator`, with no socket.

Unit tests drive spotpool's CvmClient and credential providers against the real simulator code
(signature checks, STS, the metadata service, accounts) under fake clocks on both sides, without
the network; tests/integration does the same over loopback TCP and with Tencent's SDK.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import httpx
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from spotpool.simulator.server import Simulator


class SimulatorTransport(httpx.AsyncBaseTransport):
    """Dispatches through the simulator app's router, as aiohttp would; `peer` is the client
    address the app sees (loopback by default: the control API and metadata service answer it).
    `requests` counts the requests seen, by path."""

    def __init__(self, simulator: Simulator, peer: str = "127.0.0.1") -> None:
        self.simulator = simulator
        self.peer = peer
        self.requests: list[httpx.Request] = []
        self.fail_with: type[httpx.HTTPError] | None = None  # raise this instead of answering

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with("simulated transport failure", request=request)
        body = await request.aread()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        headers["Content-Length"] = str(len(body))
        path = request.url.raw_path.decode("ascii")
        app = self.simulator.app
        probe = make_mocked_request(request.method, path, headers=headers, app=app)
        match = await app.router.resolve(probe)
        match.add_app(app)
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None: (
            (self.peer, 40000) if name == "peername" else default
        )
        payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
        payload.feed_data(body)
        payload.feed_eof()
        web_request = make_mocked_request(
            request.method, path, headers=headers, app=app, match_info=match,
            transport=transport, payload=payload,
        )
        response = await match.handler(web_request)
        raw = response.body if isinstance(response.body, bytes) else b""
        return httpx.Response(
            response.status,
            headers={"Content-Type": response.headers.get("Content-Type", "")},
            content=raw,
        )
