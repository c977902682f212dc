"""`procfleet top`: a client of GET /api/processes/top (HTTP mocked with httpx.MockTransport,
plus one run against a real gateway)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from datetime import timedelta

import httpx
import pytest

from procfleet.cli import build_parser
from procfleet.commands.top import main
from tests.query.query_seed import base_time, insert_groups, steady_group

ENV = {"PROCFLEET_GATEWAY_URL": "http://gateway.test:8080/", "PROCFLEET_TOKEN": "pf_a_b"}
ANSWER = {
    "metric": "cpu", "time_range_hours": 1.0, "from": "2026-01-01T10:00:00Z",
    "to": "2026-01-01T11:00:00Z", "source": "groups", "step_s": 60, "path": "raw",
    "processes": [
        {"name": "postgres", "avg_cpu_percent": 150.0, "peak_cpu_percent": 212.5,
         "avg_memory_mb": 2048.0, "peak_memory_mb": 2100.0, "avg_num_procs": 12.0,
         "servers": 3},
        {"name": "nginx", "avg_cpu_percent": 4.25, "peak_cpu_percent": 9.0,
         "avg_memory_mb": 95.5, "peak_memory_mb": 101.0, "avg_num_procs": 5.0, "servers": 2},
    ],
}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["top", *argv])


def run(argv: tuple[str, ...], handler, env=ENV, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    code = main(parse(*argv), env, out=out, err=err, transport=httpx.MockTransport(handler),
                **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_prints_a_readable_table_from_the_api():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ANSWER)

    code, out, err = run(("--metric", "memory", "--hours", "24", "--server", "web-01",
                          "--server", "web-02"), handler)
    assert code == 0, err
    request = seen[0]
    assert request.url.path == "/api/processes/top"
    assert request.headers["Authorization"] == "Bearer pf_a_b"
    assert request.url.params.get_list("server_ids[]") == ["web-01", "web-02"]
    assert request.url.params["metric"] == "memory" and request.url.params["hours"] == "24"
    lines = out.splitlines()
    assert lines[0].startswith("top 2 by cpu · groups · 2026-01-01 10:00 UTC")
    assert lines[1].split() == ["#", "NAME", "AVG", "CPU", "PEAK", "CPU", "AVG", "MEM", "PEAK",
                                "MEM", "PROCS", "SERVERS"]
    assert lines[2].split() == ["1", "postgres", "150.0%", "212.5%", "2.00", "GiB", "2.05",
                                "GiB", "12.0", "3"]
    assert lines[3].split()[:3] == ["2", "nginx", "4.2%"]


def test_json_prints_the_answer_as_it_is():
    code, out, _ = run(("--json",), lambda request: httpx.Response(200, json=ANSWER))
    assert code == 0
    assert json.loads(out) == ANSWER


def test_refusal_exits_1_with_the_gateway_reason():
    def handler(request):
        return httpx.Response(403, json={"error": {"status": 403, "field": "Authorization",
                                                   "reason": "token scope 'ingest'"}})

    code, out, err = run((), handler)
    assert code == 1 and out == ""
    assert "403" in err and "token scope 'ingest'" in err


def test_unreachable_gateway_exits_1():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    code, _, err = run((), handler)
    assert code == 1
    assert "cannot reach the gateway" in err


def test_missing_settings_exit_2_naming_them():
    code, _, err = run(("--hours", "500"), lambda r: httpx.Response(200, json=ANSWER), env={})
    assert code == 2
    assert "PROCFLEET_GATEWAY_URL" in err and "PROCFLEET_TOKEN" in err and "--hours" in err


def test_a_bad_gateway_url_names_the_variable_and_the_value():
    env = {"PROCFLEET_GATEWAY_URL": "ftp://gateway.test", "PROCFLEET_TOKEN": "pf_a_b"}
    code, _, err = run((), lambda r: httpx.Response(200, json=ANSWER), env=env)
    assert code == 2
    assert "PROCFLEET_GATEWAY_URL='ftp://gateway.test'" in err and "scheme" in err


def test_watch_redraws_every_n_seconds_and_survives_errors():
    answers = iter([httpx.Response(200, json=ANSWER), httpx.Response(503, json={
        "error": {"status": 503, "field": "database", "reason": "PostgreSQL unreachable"}}),
        httpx.Response(200, json=ANSWER)])
    sleeps = []
    code, out, err = run(("--watch", "2"), lambda r: next(answers), sleep=sleeps.append,
                         max_rounds=3)
    assert code == 0
    assert sleeps == [2.0, 2.0]
    assert out.count("top 2 by cpu") == 2
    assert "PostgreSQL unreachable" in err


def test_empty_answer_says_so():
    empty = {**ANSWER, "processes": []}
    code, out, _ = run((), lambda r: httpx.Response(200, json=empty))
    assert code == 0
    assert "no samples in this window" in out


@pytest.mark.integration
async def test_against_a_running_gateway(query_gateway, db):
    base = base_time()
    await insert_groups(db, steady_group("web-01", "nginx", base - timedelta(minutes=5), 70,
                                         cores=0.5))
    env = {"PROCFLEET_GATEWAY_URL": str(query_gateway.client.make_url("/")),
           "PROCFLEET_TOKEN": query_gateway.read_token}
    args = parse("--json", "--hours", "48")
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, args, env, out=out, err=err)
    assert code == 0, err.getvalue()
    doc = json.loads(out.getvalue())
    assert doc["processes"][0]["name"] == "nginx"
    assert doc["time_range_hours"] >= 48
