"""Ingest routes: ``POST /v1/reports`` and ``POST /v1/commands``.

Both run the same steps, cheapest refusal first:
token + rate (401/403/429) → body (415/413/400) → contract (422) → a host token writing
another server (403) → clock checks (422) → backlog of the shard (503) → dedupe + enqueue
(200 duplicate / 202 / 503).

An ``ingest`` token writes any server (fleet-wide); a ``host`` token (from ``/v1/enroll``)
writes only the ``server_id`` it is bound to.
A 2xx is sent only once every message of the report is in Redis.

A report is checked against the contract by the fast path first (``fast_contract``: msgspec
types derived from the pydantic models); whatever it refuses, pydantic validates again and
either names the field and the reason (422) or accepts.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ingest_gateway.app_state import LOG_KV, METRICS, OPENAPI_PATHS, SETTINGS, STATE
from ingest_gateway.auth import HOST_SCOPE, TokenRecord
from ingest_gateway.errors import Forbidden, Unprocessable, json_response
from ingest_gateway.guards import require_scope
from ingest_gateway.ingest.body import read_body, validation_error
from ingest_gateway.ingest.commands_format import CommandsBody, to_report
from ingest_gateway.ingest.fast_contract import as_struct, validate_report
from ingest_gateway.ingest.messages import report_messages
from ingest_gateway.settings import GatewaySettings

INGEST_SCOPE = "ingest"
WRITE_SCOPES = (INGEST_SCOPE, HOST_SCOPE)
SECONDS_PER_DAY = 86_400
INLINE_PARSE_MAX_CHARS = 256 * 1024  # ~3,000 ps lines, a few ms; bigger outputs use a thread

_M = TypeVar("_M", bound=BaseModel)


def check_timestamp(value_s: float, field: str, settings: GatewaySettings, now_s: float) -> None:
    """422 for a timestamp too far in the future (clock skew) or older than the retention
    (it would land in a partition that is already dropped)."""
    if value_s > now_s + settings.max_future_s:
        raise Unprocessable(field, f"{value_s - now_s:.0f} s in the future (at most "
                            f"{settings.max_future_s:g} s of clock skew allowed)",
                            kind="future", value=value_s)
    if value_s < now_s - settings.retention_days * SECONDS_PER_DAY:
        raise Unprocessable(field, f"older than the retention of {settings.retention_days} days",
                            kind="too_old", value=value_s)


async def _read_body(request: web.Request) -> tuple[TokenRecord, bytes]:
    """Token + rate, then the body."""
    record = await require_scope(request, WRITE_SCOPES)
    settings = request.app[SETTINGS]
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    request.app[METRICS].received_bytes.inc(len(body))
    return record, body


def check_writer(record: TokenRecord, server_id: str, field: str) -> None:
    """403 when a host token writes a server other than its own (an ingest token writes any)."""
    if record.scope == HOST_SCOPE and record.server_id != server_id:
        raise Forbidden(field, f"host token {record.token_id} is bound to server_id "
                        f"{record.server_id!r} and cannot write another server",
                        kind="host_mismatch", value=server_id)


def _validate(model: type[_M], body: bytes) -> _M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, body) from None


def _check_clock(request: web.Request, value: datetime, field: str) -> None:
    check_timestamp(value.timestamp(), field, request.app[SETTINGS], time.time())


async def _enqueue(request: web.Request, report: Any, route: str,
                   extra: dict[str, Any] | None = None) -> web.Response:
    app = request.app
    settings, metrics, state = app[SETTINGS], app[METRICS], app[STATE]
    assert state.monitor is not None and state.enqueuer is not None, "gateway not started"
    messages = report_messages(report, shards=settings.shards,
                               max_raw_output_bytes=settings.max_raw_output_bytes)
    log_kv = request[LOG_KV]
    log_kv.update(report_id=report.report_id, server_id=report.host.server_id,
                  shard=messages.shard, processes=messages.processes, groups=messages.groups)
    state.monitor.check(messages.shard)
    started = time.perf_counter()
    result = await state.enqueuer.enqueue(messages)
    metrics.enqueue_seconds.observe(time.perf_counter() - started)
    if result.duplicate:
        metrics.reports.labels(route, "duplicate").inc()
        state.totals["duplicates"] += 1
        log_kv["duplicate"] = True
        return json_response({"report_id": report.report_id, "duplicate": True}, status=200)
    metrics.reports.labels(route, "enqueued").inc()
    metrics.messages.inc(result.messages)
    metrics.enqueued_bytes.inc(result.payload_bytes)
    state.totals["reports"] += 1
    state.totals["messages"] += result.messages
    body = {"report_id": report.report_id,
            "accepted": {"processes": messages.processes, "groups": messages.groups}}
    return json_response({**body, **(extra or {})}, status=202)


async def post_report(request: web.Request) -> web.Response:
    """Validate a report with the agent's contract and enqueue its messages."""
    token, body = await _read_body(request)
    try:
        report = validate_report(body, request.app[METRICS].count_fallback)
    except ValidationError as exc:
        raise validation_error(exc, body) from None
    check_writer(token, report.host.server_id, "host.server_id")
    _check_clock(request, report.collected_at, "collected_at")
    return await _enqueue(request, report, "reports")


async def post_commands(request: web.Request) -> web.Response:
    """Parse a raw ps / tasklist output into a report and enqueue it."""
    token, body = await _read_body(request)
    commands = _validate(CommandsBody, body)
    check_writer(token, commands.machine_id, "machine_id")
    _check_clock(request, commands.timestamp, "timestamp")
    if len(commands.output) > INLINE_PARSE_MAX_CHARS:
        # A big output takes a while to parse: let the event loop keep serving meanwhile.
        report, unparsed_lines = await asyncio.to_thread(to_report, commands)
    else:
        report, unparsed_lines = to_report(commands)
    return await _enqueue(request, as_struct(report), "commands",
                          {"unparsed_lines": unparsed_lines})


_ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(ok: dict[str, Any]) -> dict[str, Any]:
    def err(text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": _ERROR}}}

    return {
        **ok,
        "200": {"description": "already enqueued once (duplicate report_id)",
                "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Duplicate"}}}},
        "400": err("malformed JSON, invalid UTF-8 or gzip"),
        "401": err("missing, invalid or revoked token"),
        "403": err("token without the ingest or host scope, or a host token writing "
                   "another server"),
        "413": err("body (or inflated body) over the size limit"),
        "408": err("body not received within the body timeout (the connection is closed)"),
        "415": err("not application/json, or an encoding other than gzip"),
        "422": err("valid JSON that breaks the contract"),
        "429": err("token over its rate limit (Retry-After)"),
        "503": err("backlog over the high-water mark or Redis unavailable (Retry-After)"),
    }


def _post(summary: str, schema: str, accepted: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [{"name": "Content-Encoding", "in": "header", "required": False,
                        "schema": {"type": "string", "enum": ["gzip", "identity"]}}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{schema}"}}}},
        "responses": _responses({"202": {
            "description": "every message of the report is in Redis",
            "content": {"application/json": {"schema": {
                "$ref": f"#/components/schemas/{accepted}"}}}}}),
    }}


OPENAPI = {
    "/v1/reports": _post("Ingest one agent report", "Report", "Accepted"),
    "/v1/commands": _post("Ingest one raw ps / tasklist output", "CommandsBody",
                          "CommandsAccepted"),
}


def setup(app: web.Application) -> None:
    """Register the ingest routes and their OpenAPI paths."""
    app.router.add_post("/v1/reports", post_report)
    app.router.add_post("/v1/commands", post_commands)
    app[OPENAPI_PATHS].update(OPENAPI)
