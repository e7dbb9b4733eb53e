"""A CVM endpoint that lies, for proving the client survives whatever an endpoint answers.

A pool author may name any endpoint, so the client must treat the server as hostile. This module
serves, on loopback only, the answers such an endpoint (or an internal service reached through it)
could give: huge TotalCounts, huge or endless bodies, slow drips, HTML pages, other content types,
odd error codes, redirects, compression bombs, and bytes that are not HTTP at all.

`HostileServer` is an aiohttp app whose answer is whatever `behaviour` is at the time of the
request; `RawServer` is a bare TCP server for replies that break HTTP itself. Both count what they
saw (requests, the most requests in flight at once, bytes written before the client hung up), so
tests can assert the client's bounds from the server's side too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Behaviour = Callable[["HostileServer", web.Request], Awaitable[web.StreamResponse]]

PARAMS = web.RequestKey("params", dict)  # the request's JSON body, when it is a JSON object
CHUNK = b"A" * 65536  # one buffer reused for every streamed write: the server allocates ~nothing
MARKER = "INTERNAL-ONLY-7f3a"  # planted in bodies that must never reach the caller


@dataclass
class HostileServer:
    """An HTTP server on 127.0.0.1 answering every request with `behaviour`."""

    behaviour: Behaviour
    url: str = ""
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bytes_written: int = 0
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
        except ConnectionError:  # the client gave up (its deadline) before sending it all
            self.client_gone.set()
            return web.Response(status=400)
        params: Any = None
        with contextlib.suppress(ValueError):
            params = json.loads(raw or b"{}")
        request[PARAMS] = params if isinstance(params, dict) else {}
        self.bodies.append(request[PARAMS])
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.behaviour(self, request)
        finally:
            self.in_flight -= 1

    async def stream(
        self,
        request: web.Request,
        *,
        total: int,
        prefix: bytes = b"",
        suffix: bytes = b"",
        content_type: str = "application/json",
        status: int = 200,
        headers: dict[str, str] | None = None,
        pause: Callable[[], Awaitable[None]] | None = None,
        chunk: bytes = CHUNK,
    ) -> web.StreamResponse:
        """Stream `prefix`, then `chunk` until `total` bytes, then `suffix`; stop quietly when
        the client hangs up (and set `client_gone`)."""
        response = web.StreamResponse(
            status=status, headers={"Content-Type": content_type, **(headers or {})}
        )
        await response.prepare(request)
        try:
            await self._write(response, prefix)
            while self.bytes_written < total:
                if pause is not None:
                    await pause()
                await self._write(response, chunk)
            await self._write(response, suffix)
            await response.write_eof()
        except (ConnectionError, RuntimeError):  # aiohttp: "Cannot write to closing transport"
            self.client_gone.set()
        return response

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        if data:
            await response.write(data)
            self.bytes_written += len(data)


@contextlib.asynccontextmanager
async def serve(behaviour: Behaviour) -> AsyncIterator[HostileServer]:
    """A HostileServer on a free loopback port for the duration of the block."""
    server = HostileServer(behaviour)
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield server
    finally:
        await runner.cleanup()


@dataclass
class RawServer:
    """A TCP server on 127.0.0.1 that reads a request head and answers `reply` bytes verbatim,
    or, when `endless_header` is set, a status line followed by header lines forever."""

    reply: bytes = b""
    endless_header: bool = False
    url: str = ""
    connections: int = 0
    bytes_written: int = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.endless_header:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                line = b"X-Filler: " + b"B" * 1000 + b"\r\n"
                while True:
                    writer.write(line)
                    self.bytes_written += len(line)
                    await writer.drain()
            writer.write(self.reply)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serve_raw(
    reply: bytes = b"", *, endless_header: bool = False
) -> AsyncIterator[RawServer]:
    """A RawServer on a free loopback port for the duration of the block."""
    raw = RawServer(reply, endless_header)
    server = await asyncio.start_server(raw._handle, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield raw
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


# ---------------------------------------------------------------- behaviours


def envelope(fields: dict[str, Any], request_id: str = "hostile-1") -> bytes:
    return json.dumps({"Response": {**fields, "RequestId": request_id}}).encode()


def answer(
    body: bytes | str,
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Behaviour:
    """The same fixed reply to every request."""
    data = body.encode() if isinstance(body, str) else body

    async def behaviour(server: HostileServer, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=data, status=status, headers={"Content-Type": content_type, **(headers or {})}
        )

    return behaviour


def error_code(code: Any, message: Any = "refused", request_id: Any = "hostile-1") -> Behaviour:
    """A CVM error envelope with whatever code, message and RequestId the test chooses."""
    return answer(json.dumps(
        {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id}}
    ))


def instance(n: int, tags: int = 1, tag_size: int = 20) -> dict[str, Any]:
    return {
        "InstanceId": f"ins-{n:08d}",
        "Placement": {"Zone": "ap-guangzhou-3"},
        "InstanceType": "S5.MEDIUM4",
        "InstanceState": "RUNNING",
        "InstanceChargeType": "SPOTPAID",
        "Tags": [{"Key": f"k{t:03d}" + "k" * tag_size, "Value": "v" * tag_size}
                 for t in range(tags)],
    }


def listing(
    total: int,
    *,
    page_size: int = 100,
    tags: int = 1,
    tag_size: int = 20,
    latency: Callable[[], Awaitable[None]] | None = None,
) -> Behaviour:
    """DescribeInstances pages of `page_size` distinct instances that claim `total` in all."""

    async def behaviour(server: HostileServer, request: web.Request) -> web.StreamResponse:
        if latency is not None:
            await latency()
        offset = int(request[PARAMS].get("Offset", 0))
        page = [instance(n, tags, tag_size)
                for n in range(offset, min(offset + page_size, total))]
        return web.Response(
            body=envelope({"TotalCount": total, "InstanceSet": page}),
            headers={"Content-Type": "application/json"},
        )

    return behaviour


def huge_message(total: int) -> Behaviour:
    """A CVM error whose Message is `total` bytes long, streamed (never held by the server)."""

    async def behaviour(server: HostileServer, request: web.Request) -> web.StreamResponse:
        return await server.stream(
            request,
            total=total,
            prefix=b'{"Response": {"RequestId": "r", "Error": '
                   b'{"Code": "InternalError", "Message": "',
            suffix=b'"}}}',
        )

    return behaviour


def drip(interval: float) -> Behaviour:
    """A 200 JSON reply that sends one byte per `interval` seconds, without end."""

    async def pause() -> None:
        await asyncio.sleep(interval)  # the hostile server's pace, not a test waiting

    async def behaviour(server: HostileServer, request: web.Request) -> web.StreamResponse:
        return await server.stream(
            request, total=1 << 40, prefix=b'{"Response": {"Pad": "', pause=pause, chunk=b" "
        )

    return behaviour


_BOMBS: dict[int, bytes] = {}


def gzip_bomb(size: int) -> Behaviour:
    """A 200 JSON reply, gzip-encoded, that inflates to `size` bytes (a few KiB on the wire)."""
    if size not in _BOMBS:
        packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        zeros = b"0" * (1 << 20)
        parts = [packer.compress(b'{"Response": {"Pad": "')]
        parts += [packer.compress(zeros) for _ in range(size >> 20)]
        parts.append(packer.compress(b'"}}') + packer.flush())
        _BOMBS[size] = b"".join(parts)
    return answer(_BOMBS[size], headers={"Content-Encoding": "gzip"})
