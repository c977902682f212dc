"""What the MCP tools call: the query API, behind one small interface.

    QueryApi.get(path, params) -> the API's JSON answer, or ApiError(status, field, reason)

Two implementations: ``procfleet mcp`` (stdio) sends the request over HTTP to the gateway
(procfleet/commands/mcp.py); the gateway's ``/mcp`` route uses ``InProcessApi``, which runs the
very functions the query routes run (same parameter parsing and bounds, same SQL, same JSON)
on the gateway's own pool. The caller's token was checked once, on the ``/mcp`` request.

    ProcfleetError
    └── ApiError      the API refused (status, field, reason) or could not be reached (status 0)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote

from agent.errors import ProcfleetError

TOP_PATH = "/api/processes/top"
SERVERS_PATH = "/api/servers"
SEARCH_PATH = "/api/processes/search"
NEW_PATH = "/api/processes/new"
_SERIES_PATH = re.compile(r"/api/processes/(?P<name>.+)/series")
_SNAPSHOT_PATH = re.compile(r"/api/servers/(?P<server_id>[^/]+)/processes")
Params = list[tuple[str, str]]


class ApiError(ProcfleetError):
    """A refusal of the query API: its HTTP status (0: not reached), field and reason."""

    def __init__(self, status: int, field: str, reason: str, value: Any = None) -> None:
        self.status, self.field, self.reason, self.value = status, field, reason, value
        shown = f" (got {value!r})" if value is not None else ""
        where = f"HTTP {status}" if status else "gateway unreachable"
        super().__init__(f"{where}: {field}: {reason}{shown}")


class QueryApi(Protocol):
    async def get(self, path: str, params: Params) -> dict[str, Any]:
        """GET ``path`` with the query ``params``: the JSON answer, or ``ApiError``."""
        ...


class InProcessApi:
    """The query routes' functions called in-process; ``database`` is the routes'
    ``QueryDatabase`` (``connection()`` yields an asyncpg connection or raises 503)."""

    def __init__(self, database: Any, *, now: Callable[[], datetime] | None = None) -> None:
        self.database = database
        self.now = now or (lambda: datetime.now(UTC))

    async def get(self, path: str, params: Params) -> dict[str, Any]:
        # Imported here: `procfleet mcp` (stdio) imports this module without the query stack.
        from multidict import MultiDict

        from ingest_gateway.errors import GatewayError

        query = MultiDict(params)
        try:
            return await self._answer(path, query)
        except GatewayError as exc:
            raise ApiError(exc.status, exc.field, exc.reason, exc.value) from None

    async def _answer(self, path: str, query: Any) -> dict[str, Any]:
        from ingest_gateway.query.params import parse_series, parse_top
        from ingest_gateway.query.series import process_series
        from ingest_gateway.query.servers import host_snapshot, list_servers, parse_snapshot
        from ingest_gateway.query.top import top_processes

        now = self.now()
        if path == TOP_PATH:
            params = parse_top(query, now)
            async with self.database.connection() as conn:
                return (await top_processes(conn, params)).as_json()
        if path == SERVERS_PATH:
            async with self.database.connection() as conn:
                return await list_servers(conn, now)
        if match := _SERIES_PATH.fullmatch(path):
            params = parse_series(unquote(match["name"]), query, now)
            async with self.database.connection() as conn:
                return (await process_series(conn, params)).as_json()
        if match := _SNAPSHOT_PATH.fullmatch(path):
            server_id = unquote(match["server_id"])
            params = parse_snapshot(server_id, query)
            async with self.database.connection() as conn:
                snapshot = await host_snapshot(conn, params)
            if snapshot is None:
                raise ApiError(404, "server_id", "no such server", server_id)
            return snapshot
        if path in (SEARCH_PATH, NEW_PATH):
            from ingest_gateway.query.inventory import (
                new_processes,
                parse_new,
                parse_search,
                search_processes,
            )

            if path == SEARCH_PATH:
                search = parse_search(query, now)
                async with self.database.connection() as conn:
                    return await search_processes(conn, search)
            new = parse_new(query, now)
            async with self.database.connection() as conn:
                return await new_processes(conn, new)
        raise ApiError(404, "path", "no such query route", path)
