"""Reading a request body safely: content type, bounded read, bounded gzip inflate, and the
translation of pydantic's errors into our JSON error (field path + reason).

The size limit holds for the bytes on the wire *and* for the inflated body; inflating stops as
soon as the output passes the limit, so a gzip bomb costs at most ``max_body_bytes`` of memory.
"""

from __future__ import annotations

import zlib
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ingest_gateway.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMedia,
)

READ_CHUNK_BYTES = 64 * 1024
MAX_DETAILS = 20
JSON_TYPES = ("application/json",)
GZIP_ENCODINGS = ("gzip", "x-gzip")


def check_content_type(request: web.BaseRequest) -> None:
    """Only JSON in UTF-8 (415 otherwise)."""
    if request.content_type not in JSON_TYPES:
        raise UnsupportedMedia(
            "Content-Type", "expected application/json", kind="content_type",
            value=request.headers.get("Content-Type", ""),
        )
    charset = request.charset
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise UnsupportedMedia("Content-Type", "JSON must be UTF-8", kind="content_type",
                               value=charset)


def _encoding(request: web.BaseRequest) -> str:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return "identity"
    if encoding in GZIP_ENCODINGS:
        return "gzip"
    raise UnsupportedMedia("Content-Encoding", "only gzip or identity", kind="content_encoding",
                           value=encoding)


def _too_large(max_body_bytes: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge("body", f"{what} exceeds the limit of {max_body_bytes} bytes",
                           kind="too_large")


class _BoundedInflater:
    """gzip → bytes, refusing to produce more than ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        while data:
            if self._inflater.eof:
                raise BadRequest("body", "data after the end of the gzip stream", kind="gzip")
            try:
                # max_length bounds the output of this call: never more than limit + 1 bytes.
                out = self._inflater.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise BadRequest("body", f"invalid gzip data: {exc}", kind="gzip") from None
            self.size += len(out)
            if self.size > self.limit:
                raise _too_large(self.limit, "inflated body")
            self.parts.append(out)
            data = self._inflater.unconsumed_tail or self._inflater.unused_data

    def finish(self) -> bytes:
        if not self._inflater.eof:
            raise BadRequest("body", "truncated gzip stream", kind="gzip")
        return b"".join(self.parts)


async def read_body(request: web.BaseRequest, max_body_bytes: int) -> bytes:
    """The request body, inflated if gzip; 413 past ``max_body_bytes``, 415 for other types.

    The app runs with aiohttp's ``auto_decompress`` off so that this is the one place a body is
    inflated, with our bound."""
    check_content_type(request)
    encoding = _encoding(request)
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise _too_large(max_body_bytes, f"body of {request.content_length} bytes")
    inflater = _BoundedInflater(max_body_bytes) if encoding == "gzip" else None
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > max_body_bytes:
            raise _too_large(max_body_bytes, "body")
        if inflater is not None:
            inflater.feed(chunk)
        else:
            parts.append(chunk)
    body = inflater.finish() if inflater is not None else b"".join(parts)
    if not body:
        raise BadRequest("body", "empty body, expected a JSON object", kind="json")
    return body


def check_utf8(body: bytes) -> None:
    """400 naming the byte offset of the first invalid UTF-8 sequence."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("body", f"invalid UTF-8 at byte {exc.start}", kind="utf8") from None


def field_path(loc: tuple[Any, ...]) -> str:
    """``('processes', 3, 'pid')`` → ``processes[3].pid``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def validation_error(exc: ValidationError, body: bytes) -> GatewayError:
    """pydantic's errors → 400 (not JSON at all) or 422 (JSON that breaks the contract).

    pydantic rejects invalid UTF-8 as ``json_invalid``, so ``body`` is decoded only then, to
    name the offset of the bad byte: a valid body is not scanned a second time."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        check_utf8(body)
        reason = str((first.get("ctx") or {}).get("error", first["msg"]))
        return BadRequest("body", f"malformed JSON: {reason}", kind="json")
    details = [
        {"field": field_path(e["loc"]), "reason": e["msg"]} for e in errors[:MAX_DETAILS]
    ]
    value = first.get("input") if first["type"] != "missing" else None
    if isinstance(value, dict | list):
        value = None  # the whole sub-document is not a useful echo
    return Unprocessable(field_path(first["loc"]), first["msg"], kind="schema", value=value,
                         details=details if len(details) > 1 else None)
