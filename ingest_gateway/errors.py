"""Errors the gateway answers with, and their JSON body.

Every refusal is one ``GatewayError`` carrying the HTTP status, the field at fault, a reason a
person can act on and a short ``kind`` used as the ``reason`` label of the rejection metric:

    ProcfleetError
    └── GatewayError                 {"error": {"status", "field", "reason"}}
        ├── BadRequest          400  malformed JSON, invalid UTF-8, broken gzip
        ├── Unauthorized        401  missing / unknown / revoked token
        ├── Forbidden           403  token without the scope of the route, or a host token
        │                            writing another server
        ├── Conflict            409  a server_id that is already enrolled
        ├── PayloadTooLarge     413  body (or inflated body) over the limit
        ├── RequestTimeout      408  body not received within body_timeout_s (connection closed)
        ├── UnsupportedMedia    415  content type or encoding we do not read
        ├── Unprocessable       422  valid JSON that breaks the contract
        ├── RateLimited         429  token over its rate, or a source over its failed
        │                            token attempts (Retry-After)
        └── Unavailable         503  backlog over the high-water mark, Redis down (Retry-After)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from aiohttp import web

from agent.errors import ProcfleetError

MAX_ECHOED_VALUE_CHARS = 100


class GatewayError(ProcfleetError):
    """A request the gateway refuses; ``value`` is the offending input (truncated on output)."""

    status: ClassVar[int] = 500

    def __init__(
        self,
        field: str,
        reason: str,
        *,
        kind: str,
        value: Any = None,
        headers: Mapping[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        self.field, self.reason, self.kind, self.value = field, reason, kind, value
        self.headers = dict(headers or {})
        self.details = details or []
        super().__init__(f"HTTP {self.status} {field}: {reason}")

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "field": self.field, "reason": self.reason}
        if self.value is not None:
            error["value"] = echo(self.value)
        if self.details:
            error["details"] = self.details
        return {"error": error}

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status, headers=self.headers)


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401

    def __init__(self, reason: str, *, kind: str = "unauthorized") -> None:
        super().__init__("Authorization", reason, kind=kind,
                         headers={"WWW-Authenticate": 'Bearer realm="procfleet"'})


class Forbidden(GatewayError):
    status = 403


class Conflict(GatewayError):
    status = 409


class PayloadTooLarge(GatewayError):
    status = 413


class RequestTimeout(GatewayError):
    status = 408

    def __init__(self, field: str, reason: str, *, kind: str) -> None:
        super().__init__(field, reason, kind=kind, headers={"Connection": "close"})


class UnsupportedMedia(GatewayError):
    status = 415


class Unprocessable(GatewayError):
    status = 422


class RateLimited(GatewayError):
    status = 429

    def __init__(self, reason: str, *, retry_after_s: int, kind: str = "rate_limit") -> None:
        super().__init__("Authorization", reason, kind=kind,
                         headers={"Retry-After": str(retry_after_s)})


class Unavailable(GatewayError):
    status = 503

    def __init__(self, field: str, reason: str, *, kind: str, retry_after_s: int) -> None:
        super().__init__(field, reason, kind=kind, headers={"Retry-After": str(retry_after_s)})


def echo(value: Any) -> Any:
    """A bad value safe to send back: scalars as they are, anything long cut short."""
    if isinstance(value, bool | float) or value is None:
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:  # what a JSON encoder can write
        return value
    text = value if isinstance(value, str) else repr(value)
    if len(text) > MAX_ECHOED_VALUE_CHARS:
        return text[:MAX_ECHOED_VALUE_CHARS] + "…"
    return text


def json_response(
    doc: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with orjson (NaN-free by construction of our documents)."""
    return web.Response(
        body=orjson.dumps(doc), status=status, headers=headers, content_type="application/json"
    )


def http_exception_response(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (404, 405, ...) in our JSON error shape."""
    body = {"error": {"status": exc.status, "field": "path", "reason": exc.reason}}
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return json_response(body, status=exc.status, headers=headers)
