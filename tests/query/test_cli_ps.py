"""`procfleet ps`: a client of GET /api/processes/search (HTTP mocked with
httpx.MockTransport, plus one run against a real gateway)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from datetime import timedelta

import httpx
import pytest

from procfleet.cli import build_parser
from procfleet.commands.ps import main

ENV = {"PROCFLEET_GATEWAY_URL": "http://gateway.test:8080/", "PROCFLEET_TOKEN": "pf_a_b"}
LONG_COMMAND = "/usr/bin/java -Xmx4g -jar /opt/app/server.jar " + "--flag=value " * 20
ANSWER = {
    "q": "java", "from": "2026-01-01T10:00:00Z", "to": "2026-01-01T11:00:00Z",
    "truncated": False,
    "processes": [
        {"server_id": "id-1", "hostname": "web-01.example", "pid": 4242,
         "start_time": "2026-01-01T08:30:00Z", "name": "java", "command": LONG_COMMAND,
         "user": "app", "first_seen": "2026-01-01T08:30:10Z",
         "last_seen": "2026-01-01T10:59:50Z"},
        {"server_id": "id-2", "hostname": None, "pid": 7, "start_time": None,
         "name": "java", "command": "java -version", "user": None,
         "first_seen": "2026-01-01T10:00:10Z", "last_seen": "2026-01-01T10:00:20Z"},
    ],
}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["ps", *argv])


def run(argv: tuple[str, ...], handler, env=ENV):
    out, err = io.StringIO(), io.StringIO()
    code = main(parse(*argv), env, out=out, err=err, transport=httpx.MockTransport(handler))
    return code, out.getvalue(), err.getvalue()


def test_prints_host_pid_started_name_and_a_cut_command():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ANSWER)

    code, out, err = run(("java", "--hours", "24", "--server", "id-1"), handler)
    assert code == 0, err
    request = seen[0]
    assert request.url.path == "/api/processes/search"
    assert request.headers["Authorization"] == "Bearer pf_a_b"
    assert request.url.params["q"] == "java" and request.url.params["hours"] == "24"
    assert request.url.params.get_list("server_ids[]") == ["id-1"]
    lines = out.splitlines()
    assert lines[0].startswith("2 processes matching 'java'")
    assert lines[1].split() == ["HOST", "PID", "STARTED", "NAME", "COMMAND"]
    assert lines[2].split()[:5] == ["web-01.example", "4242", "2026-01-01", "08:30", "java"]
    assert LONG_COMMAND not in out and "/usr/bin/java -Xmx4g" in lines[2]
    assert lines[2].endswith("…")
    # no hostname: the server id; no start time: "?"
    assert lines[3].split() == ["id-2", "7", "?", "java", "java", "-version"]


def test_json_prints_the_answer_as_it_is():
    code, out, _ = run(("java", "--json"), lambda request: httpx.Response(200, json=ANSWER))
    assert code == 0
    assert json.loads(out) == ANSWER


def test_no_match_says_so():
    code, out, _ = run(("nothing",), lambda r: httpx.Response(200, json={
        **ANSWER, "q": "nothing", "processes": []}))
    assert code == 0 and "no process matched" in out


def test_refusal_exits_1_with_the_gateway_reason():
    def handler(request):
        return httpx.Response(400, json={"error": {"status": 400, "field": "q",
                                                   "reason": "must not be blank"}})

    code, out, err = run(("x",), handler)
    assert code == 1 and out == ""
    assert "400" in err and "q: must not be blank" in err


def test_unreachable_gateway_exits_1():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    code, _, err = run(("x",), handler)
    assert code == 1 and "cannot reach the gateway" in err


def test_bad_usage_exits_2_without_a_request():
    def handler(request):  # pragma: no cover - must not be called
        raise AssertionError("no request expected")

    code, _, err = run(("  ", "--hours", "0"), handler, env={})
    assert code == 2
    for name in ("PROCFLEET_GATEWAY_URL", "PROCFLEET_TOKEN", "QUERY", "--hours"):
        assert name in err


@pytest.mark.integration
async def test_against_a_running_gateway(query_gateway, db):
    now = await db.fetchval("SELECT now()")
    await db.execute(
        "INSERT INTO servers (server_id, hostname, os_type, first_seen_at, last_seen_at) "
        "VALUES ('web-01', 'web-01.example', 'linux', $1, $1)", now)
    await db.execute(
        "INSERT INTO process_identities (key, server_id, pid, start_time, first_seen, "
        "last_seen, username, name, command) VALUES (process_key('web-01', 99, $1), "
        "'web-01', 99, $1, $1, $2, 'app', 'redis-server', 'redis-server *:6379')",
        now - timedelta(hours=3), now - timedelta(minutes=1))
    env = {"PROCFLEET_GATEWAY_URL": str(query_gateway.client.make_url("/")),
           "PROCFLEET_TOKEN": query_gateway.read_token}
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, parse("REDIS", "--hours", "2"), env, out=out,
                                   err=err)
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[2].split()[:2] == ["web-01.example", "99"]
    assert lines[2].split()[-2:] == ["redis-server", "*:6379"]
