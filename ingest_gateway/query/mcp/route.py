"""``POST /mcp``: the MCP tools over streamable HTTP, behind a ``read`` token.

The SDK's ``StreamableHTTPSessionManager`` serves the transport (both protocol eras: the
2026-07-28 single-exchange POST and the handshake era's ``initialize``), stateless and in
JSON-response mode: every POST carries its bearer token, is checked and rate-limited like any
query request, and is answered in one JSON body, so no session outlives a request and any
gateway behind a load balancer can answer. The tools run the query routes' own functions
in-process (``InProcessApi``): the same parameter bounds, SQL and JSON as
``/api/...``, on the same pool, without a loopback HTTP hop (and its TLS) per tool call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ingest_gateway.app_state import OPENAPI_PATHS
from ingest_gateway.guards import require_scope
from ingest_gateway.query.mcp.api import InProcessApi
from ingest_gateway.query.mcp.asgi import serve_asgi
from ingest_gateway.query.mcp.tools import build_server

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
READ_SCOPE = "read"


@dataclass
class McpTransport:
    """The SDK's session manager, running (in its own task) while the app runs."""

    manager: Any = None


MCP_TRANSPORT = web.AppKey("procfleet_mcp_transport", McpTransport)


async def mcp_endpoint(request: web.Request) -> web.StreamResponse:
    await require_scope(request, READ_SCOPE)
    manager = request.app[MCP_TRANSPORT].manager
    if manager is None:
        raise web.HTTPServiceUnavailable(reason="the MCP transport is not running")
    return await serve_asgi(manager.handle_request, request)


def _transport_ctx(database: Any):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        server = build_server(InProcessApi(database))
        # streamable_http_app() builds the session manager (its Starlette app is not used).
        server.streamable_http_app(stateless_http=True, json_response=True)
        manager = server.session_manager
        started, stopping = asyncio.Event(), asyncio.Event()

        # anyio's task group must be entered and left in one task: run it in its own.
        async def run() -> None:
            async with manager.run():
                started.set()
                await stopping.wait()

        task = asyncio.create_task(run(), name="mcp-transport")
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # raises what stopped it
        app[MCP_TRANSPORT].manager = manager
        log.info("mcp transport started", extra={"kv": {"path": MCP_PATH}})
        try:
            yield
        finally:
            app[MCP_TRANSPORT].manager = None
            stopping.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(task, 10)

    return ctx


OPENAPI_PATH_ITEM = {"post": {
    "summary": "Model Context Protocol (streamable HTTP, stateless, JSON responses)",
    "description": "The MCP tools of `procfleet mcp` (top_processes, process_series, "
                   "list_servers, host_processes) for LLM clients. Needs a `read` token.",
    "security": [{"bearer": []}],
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "description": "a JSON-RPC 2.0 message"}}}},
    "responses": {"200": {"description": "the JSON-RPC answer"},
                  "202": {"description": "a notification, accepted"},
                  "401": {"description": "missing or invalid token"},
                  "403": {"description": "token without the read scope"}},
}}


def setup(app: web.Application) -> None:
    """Register ``POST /mcp``; needs the query routes (``query.routes.setup``) first."""
    from ingest_gateway.query.routes import QUERY_DB

    if QUERY_DB not in app:
        raise RuntimeError("register query.routes before the MCP route: it reads its pool")
    app[MCP_TRANSPORT] = McpTransport()
    app.cleanup_ctx.append(_transport_ctx(app[QUERY_DB]))
    app.router.add_post(MCP_PATH, mcp_endpoint)
    app[OPENAPI_PATHS][MCP_PATH] = OPENAPI_PATH_ITEM
