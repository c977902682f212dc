"""``POST /v1/enroll``: a host trades the fleet's ``enroll`` token for its own host token.

Steps, cheapest refusal first: token + rate (401/403/429) → body (415/413/400) → fields (422)
→ enrollment (409 already enrolled, 503 Redis down) → ``201 {"token", "server_id"}``. The host
token is shown in this answer only; Redis keeps its hash (``ingest_gateway/enrollment.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from redis.exceptions import RedisError

from agent.contract import Identifier
from ingest_gateway.app_state import LOG_KV, OPENAPI_PATHS, SETTINGS, STATE
from ingest_gateway.enrollment import AlreadyEnrolled, HostEnrollment
from ingest_gateway.errors import Conflict, Unavailable, json_response
from ingest_gateway.guards import require_scope
from ingest_gateway.ingest.body import read_body, validation_error

ENROLL_SCOPE = "enroll"
ENROLL_PATH = "/v1/enroll"
MAX_ENROLL_BODY_BYTES = 4096  # two short fields


class EnrollBody(BaseModel):
    """What a host sends to enroll (unknown fields are rejected)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    server_id: Identifier
    # Shown by `procfleet token list` in a terminal: no control characters (escape sequences).
    hostname: Annotated[str, StringConstraints(min_length=1, max_length=253,
                                               pattern=r"^[^\x00-\x1f\x7f]+$")]


async def post_enroll(request: web.Request) -> web.Response:
    """Bind a new host token to the body's ``server_id``, once."""
    app = request.app
    settings, state = app[SETTINGS], app[STATE]
    await require_scope(request, ENROLL_SCOPE)
    body = await read_body(request, min(settings.max_body_bytes, MAX_ENROLL_BODY_BYTES),
                           settings.body_timeout_s)
    try:
        enroll = EnrollBody.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, body) from None
    request[LOG_KV]["server_id"] = enroll.server_id
    assert state.redis is not None and state.tokens is not None, "gateway not started"
    try:
        record, token = await HostEnrollment(state.redis).enroll(enroll.server_id,
                                                                 enroll.hostname)
    except AlreadyEnrolled as exc:
        raise Conflict("server_id", f"server_id {exc.server_id!r} already has a host token; "
                       f"an operator must run `procfleet host reset {exc.server_id}` before "
                       f"it can enroll again", kind="enrolled", value=exc.server_id) from None
    except (RedisError, OSError) as exc:
        raise Unavailable("redis", f"cannot enroll now: {exc}", kind="redis",
                          retry_after_s=settings.retry_after_s) from None
    state.tokens.add(record)
    request[LOG_KV]["host_token_id"] = record.token_id
    return json_response({"token": token, "server_id": enroll.server_id}, status=201)


def _openapi() -> dict[str, Any]:
    def err(text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}

    return {ENROLL_PATH: {"post": {
        "summary": "Enroll a host: an enroll token buys one host token bound to a server_id",
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": EnrollBody.model_json_schema()}}},
        "responses": {
            "201": {"description": "the host token (shown once), bound to server_id",
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["token", "server_id"],
                        "properties": {"token": {"type": "string"},
                                       "server_id": {"type": "string"}}}}}},
            "400": err("malformed JSON"),
            "401": err("missing, invalid or revoked token"),
            "403": err("token without the enroll scope"),
            "409": err("server_id already enrolled: `procfleet host reset ID` first"),
            "413": err("body over the size limit"),
            "415": err("not application/json"),
            "422": err("server_id or hostname missing or invalid"),
            "429": err("token over its rate limit (Retry-After)"),
            "503": err("Redis unavailable (Retry-After)"),
        },
    }}}


def setup(app: web.Application) -> None:
    """Register ``POST /v1/enroll`` and its OpenAPI path."""
    app.router.add_post(ENROLL_PATH, post_enroll)
    app[OPENAPI_PATHS].update(_openapi())
