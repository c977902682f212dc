"""Serve one aiohttp request with an ASGI application (HTTP only: no websockets, no lifespan).

The ``mcp`` SDK's streamable HTTP transport is an ASGI app; the gateway is aiohttp. Rather
than a second server or an adapter library, this module is the whole bridge: the request's
body (already bounded by the gateway's ``client_max_size``) is the one ``http.request``
message, and the app's ``http.response.*`` messages are written to a ``StreamResponse`` as
they come, so an SSE answer streams too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web

AsgiApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[dict]],
                    Callable[[dict], Awaitable[None]]], Awaitable[None]]


def _address(value: Any) -> list[Any] | None:
    return [value[0], value[1]] if isinstance(value, tuple) and len(value) >= 2 else None


async def serve_asgi(app: AsgiApp, request: web.Request) -> web.StreamResponse:
    """The app's answer to ``request``."""
    body = await request.read()
    transport = request.transport
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method, "scheme": request.scheme, "path": request.path,
        "raw_path": request.raw_path.split("?", 1)[0].encode(),
        "query_string": request.query_string.encode(), "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": _address(transport.get_extra_info("peername")) if transport else None,
        "server": _address(transport.get_extra_info("sockname")) if transport else None,
    }
    finished = asyncio.Event()
    body_sent = False
    response: web.StreamResponse | None = None

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The client is still there as long as we answer: say "disconnect" only after.
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal response
        if message["type"] == "http.response.start":
            response = web.StreamResponse(status=message["status"])
            for name, value in message.get("headers", []):
                response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            return
        if message["type"] != "http.response.body" or response is None:
            return
        if not response.prepared:
            await response.prepare(request)
        chunk = message.get("body", b"")
        if chunk:
            await response.write(chunk)
        if not message.get("more_body", False):
            await response.write_eof()
            finished.set()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    if response is None:
        raise web.HTTPInternalServerError(reason="the MCP transport sent no response")
    if not response.prepared:  # a start without a body
        await response.prepare(request)
        await response.write_eof()
    return response
