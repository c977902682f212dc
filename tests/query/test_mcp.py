"""The MCP server, driven by the ``mcp`` SDK's own client against a real gateway (Valkey,
PostgreSQL): over streamable HTTP at ``/mcp`` and over stdio (``procfleet mcp`` as a
subprocess). Every tool's answer equals the HTTP API's for the same query, plus units."""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from ingest_gateway.query.mcp.api import ApiError
from ingest_gateway.query.mcp.tools import (
    UNITS_HOST,
    UNITS_NEW,
    UNITS_SEARCH,
    UNITS_SERIES,
    UNITS_SERVERS,
    UNITS_TOP,
)
from procfleet.commands.mcp import HttpApi, http_client
from tests.query.query_seed import (
    base_time,
    insert_groups,
    insert_processes,
    steady_group,
    steady_process,
)

pytestmark = pytest.mark.integration

TOOLS = {"top_processes", "process_series", "list_servers", "host_processes",
         "search_processes", "new_processes"}


def iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def gateway(make_gateway, database_url, db):
    """A gateway with /mcp and a window of seeded groups and processes on two servers."""
    base = base_time()
    await insert_groups(db, steady_group("web-01", "nginx", base, 30, cores=0.5)
                        + steady_group("web-02", "nginx", base, 30, cores=0.25)
                        + steady_group("db-01", "postgres", base, 30, cores=1.5,
                                       memory_mb=2048))
    await insert_processes(db, steady_process("web-01", "python3", 4242, base, 30, cores=0.2))
    gw = await make_gateway(database_url=database_url)
    gw.base = base
    return gw


@asynccontextmanager
async def http_mcp(gw, token: str | None, mode: str = "auto"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers) as http:
        url = str(gw.client.make_url("/mcp"))
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


@asynccontextmanager
async def stdio_mcp(gw):
    env = {"PROCFLEET_GATEWAY_URL": str(gw.client.make_url("/")),
           "PROCFLEET_TOKEN": gw.read_token, "PATH": "/usr/bin:/bin"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "procfleet", "mcp"],
                                   env=env)
    async with Client(params) as client:
        yield client


def calls(gw):
    """(tool, arguments, API path, API params, units) for each tool, on the seeded window."""
    start, end = iso(gw.base), iso(gw.base + timedelta(minutes=30))
    window = {"from_time": start, "to_time": end}
    api_window = {"from": start, "to": end}
    since = iso(gw.base - timedelta(minutes=1))
    return [
        ("top_processes", {**window, "metric": "cpu", "limit": 5},
         "/api/processes/top", {**api_window, "metric": "cpu", "limit": "5"}, UNITS_TOP),
        ("top_processes", {**window, "metric": "memory", "server_ids": ["web-01", "web-02"],
                           "source": "groups"},
         "/api/processes/top", [("from", start), ("to", end), ("metric", "memory"),
                                ("server_ids[]", "web-01"), ("server_ids[]", "web-02"),
                                ("source", "groups")], UNITS_TOP),
        ("process_series", {**window, "name": "nginx", "step_s": 300},
         "/api/processes/nginx/series", {**api_window, "step": "300"}, UNITS_SERIES),
        ("list_servers", {}, "/api/servers", None, UNITS_SERVERS),
        ("host_processes", {"server_id": "web-01", "source": "processes"},
         "/api/servers/web-01/processes", {"source": "processes", "limit": "50"}, UNITS_HOST),
        ("search_processes", {**window, "query": "PYTHON", "server_ids": ["web-01"]},
         "/api/processes/search", [("q", "PYTHON"), ("limit", "100"), ("from", start),
                                   ("to", end), ("server_ids[]", "web-01")], UNITS_SEARCH),
        ("new_processes", {"since": since, "until": end, "limit": 10},
         "/api/processes/new", {"since": since, "until": end, "limit": "10"}, UNITS_NEW),
    ]


async def check_every_tool_equals_the_api(client, gw):
    listed = await client.list_tools()
    assert {tool.name for tool in listed.tools} == TOOLS
    for tool in listed.tools:
        assert tool.description and len(tool.description) > 60
    for name, arguments, path, params, units in calls(gw):
        result = await client.call_tool(name, arguments)
        assert not result.is_error, result.content
        api = await gw.get_json(path, params)
        answer = result.structured_content
        assert answer.pop("units") == units
        assert answer == api, name
        assert json.loads(result.content[0].text) == {**api, "units": units}
    # the seeded numbers, not just two equal empties
    top = (await client.call_tool("top_processes", calls(gw)[0][1])).structured_content
    assert [p["name"] for p in top["processes"]] == ["postgres", "nginx"]
    assert top["processes"][1]["avg_cpu_percent"] == pytest.approx(75, abs=3)
    found = (await client.call_tool("search_processes", calls(gw)[5][1])).structured_content
    assert [(p["server_id"], p["pid"], p["name"]) for p in found["processes"]] == [
        ("web-01", 4242, "python3")]
    new = (await client.call_tool("new_processes", calls(gw)[6][1])).structured_content
    assert [(n["name"], n["servers"]) for n in new["names"]] == [("python3", 1)]


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28, and the initialize era
async def test_http_transport_lists_and_answers_every_tool_like_the_api(gateway, mode):
    async with http_mcp(gateway, gateway.read_token, mode) as client:
        await check_every_tool_equals_the_api(client, gateway)
        assert client.protocol_version.startswith("2026" if mode == "auto" else "2025")


async def test_stdio_server_lists_and_answers_every_tool_like_the_api(gateway):
    async with stdio_mcp(gateway) as client:
        await check_every_tool_equals_the_api(client, gateway)


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_bad_arguments_are_tool_errors_naming_the_argument_or_api_reason(gateway,
                                                                               transport):
    session = (http_mcp(gateway, gateway.read_token) if transport == "http"
               else stdio_mcp(gateway))
    async with session as client:
        result = await client.call_tool("top_processes", {"limit": 500})
        assert result.is_error and "limit" in result.content[0].text
        result = await client.call_tool("process_series", {"name": "nginx", "step_s": 90})
        assert result.is_error and "step_s" in result.content[0].text
        # valid for the schema, refused by the API: its field and reason come back
        result = await client.call_tool("top_processes", {
            "from_time": "2026-01-02T00:00:00Z", "to_time": "2026-01-01T00:00:00Z"})
        assert result.is_error
        assert "HTTP 400" in result.content[0].text
        assert "to: must be at least one minute after from" in result.content[0].text
        result = await client.call_tool("host_processes", {"server_id": "nope"})
        assert result.is_error and "HTTP 404: server_id: no such server" in (
            result.content[0].text)
        result = await client.call_tool("search_processes", {"query": "x" * 257})
        assert result.is_error and "query" in result.content[0].text
        result = await client.call_tool("new_processes", {"since": "yesterday"})
        assert result.is_error and "HTTP 400: since: must be an RFC 3339" in (
            result.content[0].text)
        # the server is still answering after the errors
        assert not (await client.call_tool("list_servers", {})).is_error


async def test_database_down_is_a_tool_error_with_the_apis_503_reason(make_gateway):
    """The in-process path (/mcp) answers an outage as the API does: 503, field database."""
    down = "postgresql://procfleet@127.0.0.1:1/procfleet"  # nothing listens on port 1
    gw = await make_gateway(database_url=down)
    api = await gw.get("/api/servers")
    assert api.status == 503
    async with http_mcp(gw, gw.read_token) as client:
        result = await client.call_tool("list_servers", {})
    assert result.is_error
    assert "HTTP 503: database: " in result.content[0].text
    assert (await api.json())["error"]["reason"] in result.content[0].text


async def test_mcp_requests_count_against_the_tokens_rate_limit(make_gateway,
                                                               database_url):
    gw = await make_gateway(database_url=database_url, rate_limit_per_s=0.01, rate_limit_burst=3)
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
    headers = {**gw.auth(), "Accept": "application/json, text/event-stream"}
    statuses = [(await gw.client.post("/mcp", json=body, headers=headers)).status
                for _ in range(3)]
    assert statuses == [200, 200, 200]
    # one bucket per token: the burst spent on /mcp is spent for /api/... too
    assert (await gw.get("/api/servers")).status == 429
    response = await gw.client.post("/mcp", json=body, headers=headers)
    assert response.status == 429 and "Retry-After" in response.headers


@pytest.mark.parametrize("token, status", [(None, 401), ("ingest", 403), ("bogus", 401)])
async def test_http_transport_refuses_a_missing_ingest_or_unknown_token(gateway, token, status):
    header = {"ingest": gateway.ingest_token, "bogus": "pf_abc_def"}.get(token)
    headers = {"Authorization": f"Bearer {header}"} if header else {}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    response = await gateway.client.post("/mcp", json=body, headers={
        **headers, "Accept": "application/json, text/event-stream"})
    assert response.status == status
    assert (await response.json())["error"]["field"] == "Authorization"
    with pytest.raises(Exception):  # noqa: B017 - the SDK's client fails to connect
        async with http_mcp(gateway, header):
            pass


async def test_http_api_raises_the_gateway_reason_and_unreachable():
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"status": 503, "field": "database",
                                                   "reason": "PostgreSQL unreachable"}})

    async with http_client("http://gw.test", "pf_a_b", httpx.MockTransport(refuse)) as client:
        with pytest.raises(ApiError, match="HTTP 503: database: PostgreSQL unreachable"):
            await HttpApi(client).get("/api/servers", [])

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with http_client("http://gw.test", "pf_a_b", httpx.MockTransport(down)) as client:
        with pytest.raises(ApiError, match="cannot reach the gateway"):
            await HttpApi(client).get("/api/servers", [])


def test_procfleet_mcp_without_settings_exits_2_naming_them():
    import io

    from procfleet.cli import build_parser
    from procfleet.commands.mcp import main

    err = io.StringIO()
    assert main(build_parser().parse_args(["mcp"]), {}, err=err) == 2
    assert "PROCFLEET_GATEWAY_URL" in err.getvalue() and "PROCFLEET_TOKEN" in err.getvalue()
