"""The OpenAPI document covers every route and is self-consistent."""

from __future__ import annotations

import pytest
from aiohttp import web

from ingest_gateway.app_state import OPENAPI_PATHS

pytestmark = pytest.mark.integration


def _refs(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


async def test_openapi_document_lists_every_registered_route(gateway):
    response = await gateway.client.get("/api/openapi.json")
    assert response.status == 200
    doc = await response.json()

    routes = {
        (route.resource.canonical, route.method.lower())
        for route in gateway.app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "OPTIONS")
    }
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes == documented
    assert doc["openapi"].startswith("3.1")


async def test_every_schema_reference_resolves(gateway):
    doc = await (await gateway.client.get("/api/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref
    report = schemas["Report"]
    assert report["additionalProperties"] is False
    assert "processes" in report["properties"]


async def test_extra_routes_are_served_and_documented(make_gateway):
    async def probe(request: web.Request) -> web.Response:
        return web.json_response([])

    def setup(app: web.Application) -> None:
        app.router.add_get("/api/test-probe", probe)
        app[OPENAPI_PATHS]["/api/test-probe"] = {"get": {
            "summary": "a test route", "responses": {"200": {"description": "OK"}}}}

    gateway = await make_gateway(extra_routes=[setup])

    assert (await gateway.client.get("/api/test-probe")).status == 200
    doc = await (await gateway.client.get("/api/openapi.json")).json()
    assert "/api/test-probe" in doc["paths"]
    assert "/v1/reports" in doc["paths"]


async def test_every_route_family_is_registered_by_default(make_gateway):
    gateway = await make_gateway()

    # No token: 401 from the route itself (an unregistered route would be 404).
    for path in ("/v1/reports", "/api/processes/top", "/api/servers", "/metrics", "/"):
        method = gateway.client.post if path.startswith("/v1/") else gateway.client.get
        assert (await method(path)).status != 404, path
    assert (await gateway.client.get("/api/processes/top")).status == 401
    doc = await (await gateway.client.get("/api/openapi.json")).json()
    assert {"/v1/reports", "/api/processes/top", "/api/servers"} <= set(doc["paths"])
