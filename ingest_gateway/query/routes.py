"""Query routes (``read`` scope) and the dashboard, registered by ``app.create_app``.

    GET /api/processes/top                 top process names by CPU / memory
    GET /api/processes/search              processes by name/command text (inventory)
    GET /api/processes/new                 names new on a server since a moment
    GET /api/processes/{name}/series       one name over time
    GET /api/servers                       known servers
    GET /api/servers/{server_id}/processes latest snapshot of one host
    GET /api/database                      primary or replica, and the replica's lag
    GET /                                  the dashboard (static files under /static/)

PostgreSQL is reached through ``QueryDatabase``, whose pool is created on first use: the
gateway starts and ingests while PostgreSQL is down, and these routes answer 503 meanwhile.
It reads ``PROCFLEET_QUERY_DATABASE_URL`` (a streaming replica, say), else ``DATABASE_URL``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from ingest_gateway.app_state import LOG_KV, OPENAPI_PATHS, SETTINGS
from ingest_gateway.errors import GatewayError, json_response
from ingest_gateway.guards import require_scope
from ingest_gateway.query import openapi_paths
from ingest_gateway.query.database import QueryDatabase
from ingest_gateway.query.inventory import (
    new_processes,
    parse_new,
    parse_search,
    search_processes,
)
from ingest_gateway.query.params import parse_series, parse_top
from ingest_gateway.query.replication import replication_status
from ingest_gateway.query.series import process_series
from ingest_gateway.query.servers import host_snapshot, list_servers, parse_snapshot
from ingest_gateway.query.top import top_processes

READ_SCOPE = "read"
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8",
                "chart.js": "text/javascript; charset=utf-8",
                "inventory.js": "text/javascript; charset=utf-8",
                "app.css": "text/css; charset=utf-8"}
QUERY_DB = web.AppKey("procfleet_query_db", QueryDatabase)
# The page may load only its own files: no CDN, no third-party anything. No other site may
# frame it (clickjacking): frame-ancestors for today's browsers, X-Frame-Options for older ones.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


class NotFound(GatewayError):
    status = 404


def _now() -> datetime:
    return datetime.now(UTC)


def _note(request: web.Request, started_s: float, **kv: object) -> None:
    request[LOG_KV].update(query_ms=round((time.monotonic() - started_s) * 1000, 2), **kv)


def _retention(request: web.Request) -> dict[str, Any]:
    """Each tier's retention, for the query's data start (window.plan_query)."""
    settings = request.app[SETTINGS]
    return {"retention_days": settings.retention_days,
            "rollup_retention_days": (settings.rollup_minute_retention_days,
                                      settings.rollup_hour_retention_days)}


async def top(request: web.Request) -> web.Response:
    await require_scope(request, READ_SCOPE)
    params = parse_top(request.query, _now())
    started_s = time.monotonic()
    async with request.app[QUERY_DB].connection() as conn:
        result = await top_processes(
            conn, params, path=params.path,
            **_retention(request))
    _note(request, started_s, query_path=result.plan.path, source=result.plan.source,
          rows=len(result.processes))
    return json_response(result.as_json())


async def series(request: web.Request) -> web.Response:
    await require_scope(request, READ_SCOPE)
    params = parse_series(request.match_info["name"], request.query, _now())
    started_s = time.monotonic()
    async with request.app[QUERY_DB].connection() as conn:
        result = await process_series(
            conn, params, path=params.path,
            **_retention(request))
    _note(request, started_s, query_path=result.plan.path, points=len(result.points))
    return json_response(result.as_json())


async def search(request: web.Request) -> web.Response:
    await require_scope(request, READ_SCOPE)
    params = parse_search(request.query, _now())
    started_s = time.monotonic()
    async with request.app[QUERY_DB].connection() as conn:
        body = await search_processes(conn, params)
    _note(request, started_s, rows=len(body["processes"]))
    return json_response(body)


async def new(request: web.Request) -> web.Response:
    await require_scope(request, READ_SCOPE)
    params = parse_new(request.query, _now())
    started_s = time.monotonic()
    async with request.app[QUERY_DB].connection() as conn:
        body = await new_processes(conn, params)
    _note(request, started_s, rows=len(body["names"]))
    return json_response(body)


async def servers(request: web.Request) -> web.Response:
    await require_scope(request, READ_SCOPE)
    async with request.app[QUERY_DB].connection() as conn:
        return json_response(await list_servers(conn, _now()))


async def server_processes(request: web.Request) -> web.Response:
    await require_scope(request, READ_SCOPE)
    params = parse_snapshot(request.match_info["server_id"], request.query)
    async with request.app[QUERY_DB].connection() as conn:
        snapshot = await host_snapshot(conn, params)
    if snapshot is None:
        raise NotFound("server_id", "no such server", kind="not_found", value=params.server_id)
    return json_response(snapshot)


async def database(request: web.Request) -> web.Response:
    """Whether the query API reads a replica, and how far behind it is."""
    await require_scope(request, READ_SCOPE)
    async with request.app[QUERY_DB].connection() as conn:
        status = await replication_status(conn)
    _note(request, time.monotonic(), role=status["role"], lag_s=status["lag_s"])
    return json_response(status)


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=DASHBOARD_HEADERS)


async def static_file(request: web.Request) -> web.FileResponse:
    """One of the dashboard's files; nothing else on disk is reachable."""
    name = request.match_info["file"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC_DIR / name, headers={
        "Content-Type": content_type, "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff"})


async def _database(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[QUERY_DB].close()


def setup(app: web.Application) -> None:
    """Register the query routes, the dashboard and their OpenAPI path items."""
    settings = app[SETTINGS]
    app[QUERY_DB] = QueryDatabase(settings.effective_query_database_url,
                                  retry_after_s=settings.retry_after_s)
    app.cleanup_ctx.append(_database)
    app.router.add_get("/api/processes/top", top)
    app.router.add_get("/api/processes/search", search)
    app.router.add_get("/api/processes/new", new)
    # Names may contain "/" (kworker/0:1): the client percent-encodes it.
    app.router.add_get("/api/processes/{name:.+}/series", series)
    app.router.add_get("/api/servers", servers)
    app.router.add_get("/api/servers/{server_id}/processes", server_processes)
    app.router.add_get("/api/database", database)
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{file}", static_file)
    app[OPENAPI_PATHS].update(openapi_paths.PATHS)
