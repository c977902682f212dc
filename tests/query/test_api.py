"""The query routes over HTTP: parameters, errors, auth, injection, PostgreSQL down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from digest_worker.compaction import run_storage_upkeep
from digest_worker.rollup import refresh_rollups
from procfleet.embedded import free_port
from tests.query.query_seed import (
    base_time,
    insert_groups,
    insert_processes,
    insert_servers,
    steady_group,
    steady_process,
)

pytestmark = pytest.mark.integration


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def seeded(db):
    """Two servers with groups and processes over [base - 5 min, base + 65 min)."""
    base = base_time()
    start = base - timedelta(minutes=5)
    await insert_groups(db, steady_group("web-01", "nginx", start, 70, cores=0.5)
                        + steady_group("web-02", "nginx", start, 70, cores=1.0)
                        + steady_group("web-01", "kworker/0:1", start, 70, cores=0.05))
    await insert_processes(db, steady_process("web-01", "postgres", 100, start, 70, cores=0.3)
                           + steady_process("web-01", "sshd", 22, start, 70, cores=0.01,
                                            rss_mb=5))
    await insert_servers(db, ["web-01"], base + timedelta(minutes=65))
    await insert_servers(db, ["web-02"], datetime.now(UTC))
    return base


def window(base: datetime) -> dict[str, str]:
    return {"from": iso(base), "to": iso(base + timedelta(hours=1))}


async def test_top_answers_the_documented_fields(query_gateway, seeded):
    body = await query_gateway.get_json("/api/processes/top", window(seeded))
    assert body["metric"] == "cpu" and body["source"] == "groups"
    assert body["from"] == iso(seeded) and body["to"] == iso(seeded + timedelta(hours=1))
    assert body["time_range_hours"] == 1.0
    assert [p["name"] for p in body["processes"]] == ["nginx", "kworker/0:1"]
    nginx = body["processes"][0]
    assert set(nginx) == {"name", "avg_cpu_percent", "peak_cpu_percent", "avg_memory_mb",
                          "peak_memory_mb", "avg_num_procs", "servers"}
    assert nginx["avg_cpu_percent"] == pytest.approx(150.0)
    assert nginx["servers"] == 2


async def test_top_defaults_to_the_last_hour(query_gateway, db):
    now = await db.fetchval("SELECT now()")
    await insert_groups(db, steady_group("web-01", "recent", now - timedelta(minutes=70), 70,
                                         cores=0.25))
    body = await query_gateway.get_json("/api/processes/top")
    assert body["time_range_hours"] == pytest.approx(1.0, abs=0.02)
    assert body["path"] == "raw"
    assert body["processes"][0]["name"] == "recent"
    assert body["processes"][0]["avg_cpu_percent"] == pytest.approx(25.0, abs=0.5)


async def test_source_processes_and_server_filter(query_gateway, seeded):
    params = [*window(seeded).items(), ("source", "processes"), ("server_ids[]", "web-01"),
              ("metric", "memory"), ("limit", "1")]
    body = await query_gateway.get_json("/api/processes/top", params)
    assert body["source"] == "processes"
    assert [p["name"] for p in body["processes"]] == ["postgres"]
    assert body["processes"][0]["avg_memory_mb"] == pytest.approx(50.0)


async def test_unknown_server_ids_give_an_empty_result(query_gateway, seeded):
    params = [*window(seeded).items(), ("server_ids[]", "nope"), ("server_ids[]", "nope-2")]
    body = await query_gateway.get_json("/api/processes/top", params)
    assert body["processes"] == []


@pytest.mark.parametrize(("params", "field"), [
    ({"metric": "disk"}, "metric"),
    ({"limit": "0"}, "limit"),
    ({"limit": "51"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"hours": "0"}, "hours"),
    ({"hours": "169"}, "hours"),
    ({"hours": "1.5"}, "hours"),
    ({"source": "containers"}, "source"),
    ({"path": "fast"}, "path"),
    ({"from": "2026-01-01T00:00:00Z"}, "to"),
    ({"from": "yesterday", "to": "2026-01-01T00:00:00Z"}, "from"),
    ({"from": "2026-01-01T00:00:00", "to": "2026-01-01T01:00:00Z"}, "from"),
    ({"from": "2026-01-01T01:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-09T00:00:00Z"}, "from"),
    ({"hours": "2", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}, "hours"),
    # Instants Python or PostgreSQL cannot hold (year 10000 / 1 BC in UTC): 400, never 500.
    ({"from": "9999-12-31T00:00:00-23:59", "to": "9999-12-31T23:59:59-23:59"}, "from"),
    ({"from": "0001-01-01T00:00:00+23:59", "to": "0001-01-01T01:00:00+23:59"}, "from"),
    ({"from": "2199-12-31T23:00:00Z", "to": "2200-01-01T00:00:01Z"}, "to"),
    ({"server_ids[]": "x" * 129}, "server_ids[]"),
    ([("metric", "cpu"), ("metric", "memory")], "metric"),
])
async def test_bad_parameters_get_400_naming_the_parameter(query_gateway, params, field):
    response = await query_gateway.get("/api/processes/top", params)
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["field"] == field
    assert body["error"]["reason"]


INJECTIONS = ("'; DROP TABLE servers; --", "1 OR 1=1", "cpu' OR '1'='1",
              "$1); DELETE FROM process_group_samples; --")


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_injection_in_every_parameter_changes_nothing(query_gateway, seeded, db,
                                                            injection):
    counts = {t: await db.fetchval(f"SELECT count(*) FROM {t}")
              for t in ("servers", "process_group_samples", "process_samples")}
    top_params = ("server_ids[]", "metric", "limit", "hours", "from", "to", "source")
    for name in top_params:
        params = {name: injection}
        if name in ("from", "to"):
            params = {**window(seeded), name: injection}
        response = await query_gateway.get("/api/processes/top", params)
        body = await response.json()
        if name == "server_ids[]":  # any text is a (unknown) server id
            assert response.status == 200 and body["processes"] == [], body
        else:
            assert response.status == 400 and body["error"]["field"] == name, body
    for name in ("step", "metric", "source", "hours"):
        response = await query_gateway.get("/api/processes/nginx/series", {name: injection})
        assert response.status == 400, await response.text()
    for name in ("sort", "order", "limit", "source"):
        response = await query_gateway.get("/api/servers/web-01/processes", {name: injection})
        assert response.status == 400, await response.text()
    quoted = injection.replace("/", "%2F")
    series = await query_gateway.get_json(f"/api/processes/{quoted}/series", window(seeded))
    assert all(p["value"] is None for p in series["points"])
    response = await query_gateway.get(f"/api/servers/{quoted}/processes")
    assert response.status == 404
    for table, count in counts.items():
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == count


async def test_tokens_are_required_and_need_the_read_scope(query_gateway, seeded):
    for path in ("/api/processes/top", "/api/servers", "/api/processes/nginx/series",
                 "/api/servers/web-01/processes"):
        anonymous = await query_gateway.client.get(path)
        assert anonymous.status == 401, path
        ingest_only = await query_gateway.get(path, token=query_gateway.ingest_token)
        assert ingest_only.status == 403, path
        assert (await ingest_only.json())["error"]["field"] == "Authorization"


async def test_postgres_down_gives_503_and_ingest_keeps_working(make_gateway):
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    gateway = await make_gateway(database_url=closed)
    for path in ("/api/processes/top", "/api/servers", "/api/processes/x/series",
                 "/api/servers/x/processes"):
        response = await gateway.get(path)
        body = await response.json()
        assert response.status == 503, body
        assert body["error"]["field"] == "database"
        assert "PostgreSQL unreachable" in body["error"]["reason"]
        assert response.headers["Retry-After"] == "3"
    now = datetime.now(UTC)
    report = {"report_id": "query-tests-pg-down", "collected_at": iso(now),
              "host": {"server_id": "web-09", "hostname": "web-09", "os_type": "linux"},
              "process_groups": [{"name": "nginx", "num_procs": 1,
                                  "cpu_user_seconds_total": 1.0,
                                  "cpu_system_seconds_total": 0.5,
                                  "memory_resident_bytes": 1000}]}
    response = await gateway.client.post(
        "/v1/reports", data=orjson.dumps(report),
        headers={**gateway.auth(gateway.ingest_token), "Content-Type": "application/json"})
    assert response.status == 202, await response.text()


async def test_servers_list_has_metadata_and_stale_flag(query_gateway, seeded):
    body = await query_gateway.get_json("/api/servers")
    servers = {s["server_id"]: s for s in body["servers"]}
    assert set(servers) == {"web-01", "web-02"}
    assert servers["web-01"]["stale"] is True and servers["web-02"]["stale"] is False
    assert servers["web-01"]["hostname"] == "web-01.example"
    assert servers["web-01"]["agent_version"] == "0.1.0"
    assert body["stale_after_s"] == 300


async def test_host_snapshot_is_the_latest_collection_sorted(query_gateway, seeded):
    path = "/api/servers/web-01/processes"
    body = await query_gateway.get_json(path)
    assert body["source"] == "processes"
    assert body["ts"] == iso(seeded + timedelta(minutes=65))
    assert [p["name"] for p in body["processes"]] == ["postgres", "sshd"]
    assert body["processes"][0]["cpu_percent"] == pytest.approx(30.0)
    assert body["processes"][0]["pid"] == 100
    by_pid = await query_gateway.get_json(path, {"sort": "pid"})
    assert [p["pid"] for p in by_pid["processes"]] == [22, 100]
    by_memory = await query_gateway.get_json(path, {"sort": "memory", "order": "asc"})
    assert [p["name"] for p in by_memory["processes"]] == ["sshd", "postgres"]
    groups = await query_gateway.get_json(path, {"source": "groups", "sort": "name"})
    assert [p["name"] for p in groups["processes"]] == ["kworker/0:1", "nginx"]
    unknown = await query_gateway.get("/api/servers/nope/processes")
    assert unknown.status == 404
    assert (await unknown.json())["error"]["field"] == "server_id"


async def test_host_snapshot_reads_a_compacted_last_collection(query_gateway, seeded, db):
    path = "/api/servers/web-01/processes"
    hot = await query_gateway.get_json(path, {"sort": "pid"})
    groups_hot = await query_gateway.get_json(path, {"source": "groups", "sort": "name"})
    await run_storage_upkeep(db, now=seeded + timedelta(days=1), older_than=timedelta(0))
    assert await db.fetchval("SELECT count(*) FROM process_points") == 0
    assert await db.fetchval("SELECT count(*) FROM process_group_points") == 0

    assert await query_gateway.get_json(path, {"sort": "pid"}) == hot
    assert await query_gateway.get_json(path, {"source": "groups", "sort": "name"}) == groups_hot
    assert hot["processes"][1]["cpu_percent"] == pytest.approx(30.0)


async def test_series_has_one_point_per_step(query_gateway, seeded):
    body = await query_gateway.get_json("/api/processes/kworker%2F0:1/series",
                                        {**window(seeded), "step": "300"})
    assert body["name"] == "kworker/0:1" and body["step_s"] == 300 and body["unit"] == "percent"
    assert len(body["points"]) == 12
    assert body["points"][0]["ts"] == iso(seeded)
    assert all(p["value"] == pytest.approx(5.0) for p in body["points"])
    memory = await query_gateway.get_json("/api/processes/nginx/series",
                                          {**window(seeded), "metric": "memory"})
    assert memory["step_s"] == 60 and len(memory["points"]) == 60
    assert memory["points"][5]["value"] == pytest.approx(200.0)
    one = await query_gateway.get_json("/api/processes/nginx/series",
                                       [*window(seeded).items(), ("server_ids[]", "web-02")])
    assert one["points"][5]["value"] == pytest.approx(100.0)


async def test_series_step_must_be_whole_minutes(query_gateway, seeded):
    response = await query_gateway.get("/api/processes/nginx/series", {"step": "90"})
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "step"


async def test_openapi_documents_every_query_route(query_gateway):
    doc = await query_gateway.get_json("/api/openapi.json")
    app = query_gateway.client.server.app
    routes = {(route.resource.canonical, route.method.lower())
              for route in app.router.routes()
              if route.resource is not None and route.method not in ("HEAD", "OPTIONS")}
    assert routes == {(path, method) for path, item in doc["paths"].items() for method in item}
    for path in ("/api/processes/top", "/api/processes/{name}/series", "/api/servers",
                 "/api/servers/{server_id}/processes", "/"):
        assert "get" in doc["paths"][path], path
    top = doc["paths"]["/api/processes/top"]["get"]
    assert {p["name"] for p in top["parameters"]} == {
        "server_ids[]", "metric", "limit", "hours", "from", "to", "source", "path"}
    assert "avg_cpu_percent" in top["description"]
    item = top["responses"]["200"]["content"]["application/json"]["schema"]
    assert "peak_memory_mb" in item["properties"]["processes"]["items"]["properties"]


async def test_dashboard_is_served_without_a_token(query_gateway):
    response = await query_gateway.client.get("/")
    assert response.status == 200
    assert "text/html" in response.headers["Content-Type"]
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    html = await response.text()
    # No other site may frame the dashboard (clickjacking).
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "/static/app.js" in html and "/static/app.css" in html
    for asset in ("/static/app.js", "/static/chart.js", "/static/inventory.js",
                  "/static/app.css"):
        assert (await query_gateway.client.get(asset)).status == 200, asset
    for other in ("/static/index.html", "/static/..%2Fsettings.py", "/static/nope.js"):
        assert (await query_gateway.client.get(other)).status == 404, other


async def test_a_fresh_rollup_serves_queries_up_to_its_watermark(query_gateway, db):
    now = await db.fetchval("SELECT now()")
    for n in range(7):
        await insert_groups(db, steady_group(f"web-{n:02d}", "nginx",
                                             now - timedelta(minutes=70), 70, cores=0.5))
    report = await refresh_rollups(db, now=now, retention_days=1, max_chunks=100)
    body = await query_gateway.get_json("/api/processes/top")
    assert body["path"] == "rollup"
    assert body["to"] == iso(report.watermarks["groups"])
    assert body["processes"][0]["avg_cpu_percent"] == pytest.approx(350.0, abs=0.5)
    assert body["processes"][0]["servers"] == 7
    one = await query_gateway.get_json("/api/processes/top", {"server_ids[]": "web-03"})
    assert one["path"] == "rollup" and one["processes"][0]["servers"] == 1


async def test_a_rollup_far_behind_is_not_used(query_gateway, db):
    now = await db.fetchval("SELECT now()")
    for n in range(7):
        await insert_groups(db, steady_group(f"web-{n:02d}", "nginx",
                                             now - timedelta(minutes=70), 70, cores=0.5))
    await refresh_rollups(db, now=now - timedelta(minutes=30), retention_days=1,
                          max_chunks=100)
    body = await query_gateway.get_json("/api/processes/top")
    assert body["path"] == "raw"
    assert body["processes"][0]["avg_cpu_percent"] == pytest.approx(350.0, abs=2.0)


async def test_path_raw_forces_the_per_process_path_over_a_fresh_rollup(query_gateway, db):
    now = await db.fetchval("SELECT now()")
    for n in range(3):
        await insert_processes(db, steady_process(f"web-{n:02d}", "nginx", 100,
                                                  now - timedelta(minutes=70), 70,
                                                  cores=0.5))
    await refresh_rollups(db, now=now, retention_days=1, max_chunks=100)
    rolled = await query_gateway.get_json("/api/processes/top", {"source": "processes"})
    raw = await query_gateway.get_json("/api/processes/top",
                                       {"source": "processes", "path": "raw"})
    assert (rolled["path"], raw["path"]) == ("rollup", "raw")
    assert raw["processes"][0]["avg_cpu_percent"] == pytest.approx(150.0, abs=2.0)
    series = await query_gateway.get_json("/api/processes/nginx/series",
                                          {"source": "processes", "path": "raw"})
    assert series["path"] == "raw"
