"""Request guards shared by every route family (ingest and query)."""

from __future__ import annotations

from aiohttp import web

from ingest_gateway.app_state import LOG_KV, SETTINGS, STATE
from ingest_gateway.auth import TokenRecord
from ingest_gateway.errors import RateLimited, Unauthorized


async def require_scope(request: web.Request, scope: str | tuple[str, ...]) -> TokenRecord:
    """The caller's token if it grants ``scope`` (or one of several) and is within its rate;
    else 401/403/429.

    A source address that spent its burst of failed token attempts (401s) gets 429 before its
    token is looked at, until its bucket refills (``auth_failures_per_s``). The token id (never
    the token) is noted for the access log line."""
    state, settings = request.app[STATE], request.app[SETTINGS]
    assert state.tokens is not None and state.limiter is not None, "gateway not started"
    failures = state.auth_failures
    source = request.remote or "unknown"
    if failures is not None:
        wait_s = failures.blocked_for(source)
        if wait_s is not None:
            raise RateLimited(f"too many failed token attempts from {source}",
                              retry_after_s=wait_s, kind="auth_failures")
    try:
        record = await state.tokens.authenticate(
            request.headers.get("Authorization"), scope, settings.retry_after_s
        )
    except Unauthorized:
        if failures is not None:
            failures.acquire(source)
        raise
    request[LOG_KV]["token_id"] = record.token_id
    wait_s = state.limiter.acquire(record.token_id)
    if wait_s is not None:
        raise RateLimited(f"token {record.token_id} is over {settings.rate_limit_per_s:g} "
                          f"requests/s", retry_after_s=wait_s)
    return record
