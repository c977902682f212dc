"""The OpenAPI 3.1 document of the gateway, served at ``/api/openapi.json``.

Request schemas come from the pydantic models themselves (the contract is the single source);
each route module contributes the path items of the routes it registers (``OPENAPI_PATHS``),
so a route family added later (query API, dashboard) documents itself the same way.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from agent.contract import Report
from ingest_gateway.app_state import OPENAPI_PATHS
from ingest_gateway.errors import json_response
from ingest_gateway.ingest.commands_format import CommandsBody

TITLE = "procfleet gateway"
OPENAPI_ROUTE = "/api/openapi.json"

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["status", "field", "reason"],
        "properties": {
            "status": {"type": "integer"},
            "field": {"type": "string", "description": "the field at fault, e.g. "
                      "processes[3].pid, or body / Authorization / Content-Type"},
            "reason": {"type": "string"},
            "value": {"description": "the offending value, shortened"},
            "details": {"type": "array", "items": {"type": "object"}},
        },
    }},
}
_ACCEPTED_COUNTS = {
    "type": "object",
    "required": ["processes", "groups"],
    "properties": {"processes": {"type": "integer"}, "groups": {"type": "integer"}},
}


def components() -> dict[str, Any]:
    """Schemas of the request bodies (from pydantic) and of our responses."""
    _, top = models_json_schema(
        [(Report, "validation"), (CommandsBody, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["Error"] = _ERROR_SCHEMA
    schemas["Accepted"] = {
        "type": "object", "required": ["report_id", "accepted"],
        "properties": {"report_id": {"type": "string"}, "accepted": _ACCEPTED_COUNTS},
    }
    schemas["CommandsAccepted"] = {
        "type": "object", "required": ["report_id", "accepted", "unparsed_lines"],
        "properties": {"report_id": {"type": "string"}, "accepted": _ACCEPTED_COUNTS,
                       "unparsed_lines": {"type": "integer"}},
    }
    schemas["Duplicate"] = {
        "type": "object", "required": ["report_id", "duplicate"],
        "properties": {"report_id": {"type": "string"}, "duplicate": {"const": True}},
    }
    return {
        "schemas": schemas,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "procfleet token (pf_<id>_<secret>)"}},
    }


def build_document(paths: dict[str, Any], version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": version},
        "paths": dict(sorted(paths.items())),
        "components": components(),
    }


def package_version() -> str:
    try:
        return importlib.metadata.version("procfleet")
    except importlib.metadata.PackageNotFoundError:
        return "0"


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(build_document(request.app[OPENAPI_PATHS], package_version()))


OPENAPI = {OPENAPI_ROUTE: {"get": {"summary": "This document", "responses": {
    "200": {"description": "OpenAPI 3.1", "content": {"application/json": {
        "schema": {"type": "object"}}}}}}}}


def setup(app: web.Application) -> None:
    app.router.add_get(OPENAPI_ROUTE, openapi_json)
    app[OPENAPI_PATHS].update(OPENAPI)
