"""The query API's PostgreSQL pool: created lazily, so the gateway starts (and ingests) while
PostgreSQL is down; a query that cannot reach it gets a 503 with a JSON error.

Errors a query may meet, and what the client sees::

    connection refused / timed out / server shutting down   503 field=database kind=database
    schema missing (migrations not applied)                  503 field=database kind=schema
    statement_timeout hit                                    503 field=database kind=timeout
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

import asyncpg

from ingest_gateway.errors import Unavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
STATEMENT_TIMEOUT_MS = 15_000
POOL_MAX_SIZE = 4
CLOSE_TIMEOUT_S = 10.0
# Sorting a window of samples for LAG() fits in memory well past a few hundred thousand rows.
WORK_MEM = "32MB"
# Plans built for the actual values: a NULL server filter then drops out of the raw path's
# SQL (a generic plan keeps "ids IS NULL OR server_id = ANY(ids)" and cannot use the index
# for one server), and partitions are pruned while planning. Planning costs 1–4 ms here.
SERVER_SETTINGS = {"application_name": "procfleet-gateway-query",
                   "statement_timeout": str(STATEMENT_TIMEOUT_MS), "work_mem": WORK_MEM,
                   "plan_cache_mode": "force_custom_plan"}
# OSError covers refused connections and timeouts (TimeoutError is an OSError).
_CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                      asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)


class QueryDatabase:
    """One asyncpg pool for the read routes, created on first use and re-tried on every
    request while PostgreSQL is unreachable."""

    def __init__(self, url: str, *, retry_after_s: int = 5, max_size: int = POOL_MAX_SIZE,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.url = url
        self.retry_after_s = retry_after_s
        self.max_size = max_size
        self.connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._down = False

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                # min_size=0: creating the pool opens no connection, acquire() does.
                self._pool = await asyncpg.create_pool(
                    self.url, min_size=0, max_size=self.max_size,
                    timeout=self.connect_timeout_s, command_timeout=STATEMENT_TIMEOUT_MS / 1000,
                    server_settings=SERVER_SETTINGS)
            return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; PostgreSQL trouble becomes a 503 ``Unavailable``."""
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self.connect_timeout_s) as conn:
                self._note_up()
                yield conn
        except _CONNECTION_ERRORS as exc:
            self._note_down(exc)
            raise self.unavailable(f"PostgreSQL unreachable: {_describe(exc)}",
                                   "database") from None
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
            if not _is_missing_schema(exc):
                raise
            raise self.unavailable(f"database schema missing ({_describe(exc)}): run "
                                   "`procfleet migrate`", "schema") from None
        except asyncpg.QueryCanceledError as exc:
            raise self.unavailable(f"query took too long: {_describe(exc)}", "timeout") from None

    def unavailable(self, reason: str, kind: str) -> Unavailable:
        return Unavailable("database", reason, kind=kind, retry_after_s=self.retry_after_s)

    def _note_down(self, exc: BaseException) -> None:
        if not self._down:  # one line per outage
            log.warning("query database unreachable", extra={"kv": {"error": _describe(exc)}})
        self._down = True

    def _note_up(self) -> None:
        if self._down:
            log.info("query database reachable again")
        self._down = False

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except _CONNECTION_ERRORS:
                pool.terminate()


# The functions our migrations create (tests/query check the list against migrations/):
# a query against a database that predates one of them says "run procfleet migrate".
SCHEMA_FUNCTIONS = frozenset({
    "group_key", "process_key", "process_points_between", "process_group_points_between",
    "process_history_points", "process_group_history_points", "process_samples_insert",
    "process_group_samples_insert", "rollup_group_minutes", "rollup_process_minutes",
    "rollup_late_after", "rollup_max_rate_gap", "rollup_mark_late_groups",
    "rollup_mark_late_processes", "rollup_source_code", "process_names_forget",
    "process_names_note_inserted", "process_names_note_updated", "process_texts_forget"})
_MISSING_FUNCTION = re.compile(r"function (?:public\.)?(\w+)\(")


def _is_missing_schema(exc: BaseException) -> bool:
    """A missing table, or a missing function of one of our migrations (not any operator
    mismatch or a function of our own misspelt, which is a bug and must surface as one)."""
    if isinstance(exc, asyncpg.UndefinedTableError):
        return True
    match = _MISSING_FUNCTION.search(str(exc))
    return match is not None and match[1] in SCHEMA_FUNCTIONS


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
