"""The fleet process inventory over HTTP: /api/processes/search and /api/processes/new,
seeded straight into ``process_identities`` and ``servers``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def add_servers(db, *server_ids: str) -> None:
    await db.executemany(
        "INSERT INTO servers (server_id, hostname, os_type, first_seen_at, last_seen_at) "
        "VALUES ($1, $1 || '.example', 'linux', $2, $2)", [(s, T0) for s in server_ids])


async def add_process(db, server_id: str, pid: int, name: str, command: str,
                      first_seen: datetime, last_seen: datetime, user: str = "root") -> None:
    start_time = first_seen - timedelta(seconds=5)
    await db.execute(
        "INSERT INTO process_identities (key, server_id, pid, start_time, first_seen, "
        "last_seen, username, name, command) VALUES (process_key($1, $2, $3), $1, $2, $3, "
        "$4, $5, $6, $7, $8)",
        server_id, pid, start_time, first_seen, last_seen, user, name, command)


def window(start: float, end: float) -> dict[str, str]:
    return {"from": iso(at(start)), "to": iso(at(end))}


@pytest.fixture
async def fleet(db):
    await add_servers(db, "web-01", "web-02")
    await add_process(db, "web-01", 10, "nginx", "nginx: master process", at(0), at(120))
    await add_process(db, "web-02", 11, "NGINX", "/usr/sbin/NGINX -g daemon", at(30), at(90),
                      user="www")
    await add_process(db, "web-01", 12, "python3", "python3 -m job --rate=50%_x", at(0),
                      at(60))
    await add_process(db, "web-01", 13, "python3", "python3 -m job --rate=50xyx", at(0),
                      at(60))
    await add_process(db, "web-02", 14, "sshd", "sshd: back\\slash", at(200), at(260))


async def search(gateway, q: str, params: dict[str, str] | list | None = None) -> list:
    items = list((params or window(0, 300)).items()) if isinstance(params, dict | None) \
        else list(params)
    body = await gateway.get_json("/api/processes/search", [("q", q), *items])
    return body["processes"]


async def test_search_answers_the_documented_fields(query_gateway, fleet):
    body = await query_gateway.get_json("/api/processes/search",
                                        {"q": "nginx", **window(0, 300)})
    assert body["q"] == "nginx" and body["truncated"] is False
    assert body["from"] == iso(at(0)) and body["to"] == iso(at(300))
    first = body["processes"][0]
    assert first == {
        "server_id": "web-01", "hostname": "web-01.example", "pid": 10,
        "start_time": iso(at(0) - timedelta(seconds=5)), "name": "nginx",
        "command": "nginx: master process", "user": "root",
        "first_seen": iso(at(0)), "last_seen": iso(at(120))}


async def test_search_is_case_insensitive_newest_last_seen_first(query_gateway, fleet):
    found = await search(query_gateway, "NgInX")
    assert [(p["server_id"], p["pid"]) for p in found] == [("web-01", 10), ("web-02", 11)]


async def test_search_matches_the_command_line_too(query_gateway, fleet):
    assert [p["pid"] for p in await search(query_gateway, "DAEMON")] == [11]


async def test_percent_underscore_and_backslash_are_literal(query_gateway, fleet):
    # As LIKE wildcards "50%_x" would also match "50xyx" (pid 13).
    assert [p["pid"] for p in await search(query_gateway, "50%_x")] == [12]
    assert [p["pid"] for p in await search(query_gateway, "%")] == [12]
    assert [p["pid"] for p in await search(query_gateway, "_")] == [12]
    assert [p["pid"] for p in await search(query_gateway, "k\\s")] == [14]


async def test_search_keeps_processes_live_in_the_window(query_gateway, fleet):
    # [100, 150]: nginx (0-120) only; NGINX ended at 90, sshd starts at 200.
    assert [p["pid"] for p in await search(query_gateway, "nginx", window(100, 150))] == [10]
    # Touching bounds count: last_seen == from, first_seen == to.
    assert [p["pid"] for p in await search(query_gateway, "nginx", window(90, 95))] == [10, 11]
    assert [p["pid"] for p in await search(query_gateway, "sshd", window(150, 200))] == [14]
    assert await search(query_gateway, "sshd", window(261, 300)) == []


async def test_search_filters_servers_and_limits(query_gateway, fleet):
    found = await search(query_gateway, "nginx",
                         [*window(0, 300).items(), ("server_ids[]", "web-02")])
    assert [p["pid"] for p in found] == [11]
    body = await query_gateway.get_json("/api/processes/search",
                                        {"q": "python3", "limit": "1", **window(0, 300)})
    assert len(body["processes"]) == 1 and body["truncated"] is True


async def test_search_hours_ends_now(query_gateway, db):
    now = await db.fetchval("SELECT now()")
    await add_servers(db, "web-03")
    await add_process(db, "web-03", 20, "recent", "recent --x", now - timedelta(hours=30),
                      now - timedelta(minutes=1))
    await add_process(db, "web-03", 21, "recent", "recent --old", now - timedelta(hours=30),
                      now - timedelta(hours=3))
    body = await query_gateway.get_json("/api/processes/search", {"q": "recent", "hours": "2"})
    assert [p["pid"] for p in body["processes"]] == [20]
    body = await query_gateway.get_json("/api/processes/search", {"q": "recent", "hours": "4"})
    assert [p["pid"] for p in body["processes"]] == [20, 21]


@pytest.fixture
async def history(db):
    """web-01 ran ``cron`` before since; after since: cron restarts on web-01 (not new),
    starts on web-02 (new there); ``agentx`` starts on both; ``once`` on web-02 only."""
    await add_servers(db, "web-01", "web-02")
    await add_process(db, "web-01", 1, "cron", "/usr/sbin/cron -f", at(-600), at(-10))
    await add_process(db, "web-01", 2, "cron", "/usr/sbin/cron -f", at(20), at(30))
    await add_process(db, "web-02", 3, "cron", "/usr/sbin/cron -f -x", at(40), at(50))
    await add_process(db, "web-01", 4, "agentx", "agentx --v1", at(15), at(50))
    await add_process(db, "web-02", 5, "agentx", "agentx --v2", at(5), at(50))
    await add_process(db, "web-02", 6, "agentx", "agentx --v3", at(25), at(50))
    await add_process(db, "web-02", 7, "once", "once --now", at(60), at(61))
    await add_process(db, "web-01", 8, "later", "later", at(500), at(501))


async def test_new_counts_servers_where_a_name_is_new(query_gateway, history):
    body = await query_gateway.get_json("/api/processes/new",
                                        {"since": iso(at(0)), "until": iso(at(100))})
    assert body["since"] == iso(at(0)) and body["until"] == iso(at(100))
    assert body["names"] == [
        {"name": "agentx", "servers": 2, "first_seen": iso(at(5)),
         "example_command": "agentx --v2"},
        {"name": "cron", "servers": 1, "first_seen": iso(at(40)),
         "example_command": "/usr/sbin/cron -f -x"},
        {"name": "once", "servers": 1, "first_seen": iso(at(60)),
         "example_command": "once --now"},
    ]


async def test_a_restart_where_the_name_ran_before_is_not_new(query_gateway, history):
    body = await query_gateway.get_json("/api/processes/new", [
        ("since", iso(at(0))), ("until", iso(at(100))), ("server_ids[]", "web-01")])
    assert [(n["name"], n["servers"]) for n in body["names"]] == [("agentx", 1)]


async def test_new_until_defaults_to_now_and_limit_cuts(query_gateway, history):
    body = await query_gateway.get_json("/api/processes/new", {"since": iso(at(0))})
    assert [n["name"] for n in body["names"]] == ["agentx", "cron", "once", "later"]
    body = await query_gateway.get_json("/api/processes/new",
                                        {"since": iso(at(0)), "limit": "1"})
    assert [n["name"] for n in body["names"]] == ["agentx"] and body["truncated"] is True


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/api/processes/search", {}, "q"),
    ("/api/processes/search", {"q": ""}, "q"),
    ("/api/processes/search", {"q": "   "}, "q"),
    ("/api/processes/search", {"q": "x" * 257}, "q"),
    ("/api/processes/search", [("q", "a"), ("q", "b")], "q"),
    ("/api/processes/search", {"q": "a", "hours": "0"}, "hours"),
    ("/api/processes/search", {"q": "a", "hours": "169"}, "hours"),
    ("/api/processes/search", {"q": "a", "from": "2026-01-01T00:00:00Z"}, "to"),
    ("/api/processes/search", {"q": "a", "limit": "0"}, "limit"),
    ("/api/processes/search", {"q": "a", "limit": "1001"}, "limit"),
    ("/api/processes/search", {"q": "a", "server_ids[]": "x" * 129}, "server_ids[]"),
    ("/api/processes/new", {}, "since"),
    ("/api/processes/new", {"since": "yesterday"}, "since"),
    ("/api/processes/new", {"since": "2026-01-01T00:00:00"}, "since"),
    ("/api/processes/new", {"since": "2026-01-02T00:00:00Z",
                            "until": "2026-01-01T00:00:00Z"}, "since"),
    ("/api/processes/new", {"since": "2026-01-01T00:00:00Z", "until": "soon"}, "until"),
    ("/api/processes/new", {"since": "2026-01-01T00:00:00Z", "limit": "x"}, "limit"),
])
async def test_bad_values_get_400_naming_the_parameter(query_gateway, path, params, field):
    response = await query_gateway.get(path, params)
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["field"] == field and body["error"]["reason"]


async def test_tokens_are_required_and_need_the_read_scope(query_gateway, fleet):
    for path, params in (("/api/processes/search", {"q": "nginx"}),
                         ("/api/processes/new", {"since": iso(at(0))})):
        anonymous = await query_gateway.client.get(path, params=params)
        assert anonymous.status == 401, path
        ingest_only = await query_gateway.get(path, params, token=query_gateway.ingest_token)
        assert ingest_only.status == 403, path


async def test_openapi_documents_both_routes(query_gateway):
    doc = await query_gateway.get_json("/api/openapi.json")
    search_doc = doc["paths"]["/api/processes/search"]["get"]
    assert {p["name"] for p in search_doc["parameters"]} == {
        "q", "hours", "from", "to", "server_ids[]", "limit"}
    new_doc = doc["paths"]["/api/processes/new"]["get"]
    assert {p["name"] for p in new_doc["parameters"]} == {
        "since", "until", "server_ids[]", "limit"}
    schema = new_doc["responses"]["200"]["content"]["application/json"]["schema"]
    assert "example_command" in schema["properties"]["names"]["items"]["properties"]


async def new_names(gateway, since: float, until: float, *servers: str) -> list:
    params = [("since", iso(at(since))), ("until", iso(at(until)))]
    params += [("server_ids[]", s) for s in servers]
    body = await gateway.get_json("/api/processes/new", params)
    return [(n["name"], n["servers"], n["first_seen"], n["example_command"])
            for n in body["names"]]


async def test_a_late_identity_older_than_the_known_first_seen_makes_a_name_not_new(
        query_gateway, db):
    await add_servers(db, "web-01")
    await add_process(db, "web-01", 1, "relay", "relay --v2", at(30), at(40))
    assert await new_names(query_gateway, 0, 100) == [
        ("relay", 1, iso(at(30)), "relay --v2")]
    # a replayed spool brings an older process of that name (a new identity) ...
    await add_process(db, "web-01", 2, "relay", "relay --v1", at(-30), at(-20))
    assert await new_names(query_gateway, 0, 100) == []
    assert await new_names(query_gateway, -60, 100) == [
        ("relay", 1, iso(at(-30)), "relay --v1")]
    # ... or an older sample of a known identity (the writer's upsert moves first_seen back)
    await add_process(db, "web-01", 3, "probe", "probe --a", at(50), at(60))
    await db.execute(
        "INSERT INTO process_identities AS t (key, server_id, pid, start_time, first_seen, "
        "last_seen, name, command) SELECT key, server_id, pid, start_time, $1, $1, name, "
        "command FROM process_identities WHERE pid = 3 "
        "ON CONFLICT (key) DO UPDATE SET first_seen = least(t.first_seen, EXCLUDED.first_seen)",
        at(-5))
    assert await new_names(query_gateway, 0, 100) == []
    assert [n[0] for n in await new_names(query_gateway, -10, 100)] == ["probe"]


async def test_old_style_inserts_into_the_samples_view_note_names(query_gateway, db):
    await add_servers(db, "web-01", "web-02")
    rows = [(server, at(minute), pid, at(minute) - timedelta(seconds=1), "tool",
             f"/usr/bin/tool --{server}")
            for server, pid, minute in (("web-01", 7, 20), ("web-01", 7, 21),
                                        ("web-02", 9, 10), ("web-01", 8, -50))]
    await db.executemany(
        "INSERT INTO process_samples (server_id, ts, pid, start_time, name, command) "
        "VALUES ($1, $2, $3, $4, $5, $6)", rows)
    # web-01 ran tool at -50: new on web-02 only
    assert await new_names(query_gateway, 0, 100) == [
        ("tool", 1, iso(at(10)), "/usr/bin/tool --web-02")]


async def test_forget_drops_names_whose_history_expired_and_they_are_new_again(
        query_gateway, db):
    await add_servers(db, "web-01")
    await add_process(db, "web-01", 1, "cron", "cron -f --old", at(-600), at(-500))
    await add_process(db, "web-01", 2, "cron", "cron -f", at(-400), at(-300))
    await add_process(db, "web-01", 3, "gone", "gone", at(-700), at(-650))
    await add_process(db, "web-01", 4, "cron", "cron -f", at(20), at(30))
    assert await new_names(query_gateway, -450, 100) == []
    # retention deletes what was last seen before -450 (cron's oldest, gone), then forgets
    await db.execute("DELETE FROM process_identities WHERE last_seen < $1", at(-450))
    assert await db.fetchval("SELECT process_names_forget($1)", at(-450)) == 2
    rows = await db.fetch("SELECT name, first_seen, command FROM process_names")
    assert [tuple(r) for r in rows] == [("cron", at(-400), "cron -f")]
    assert await new_names(query_gateway, -450, 100) == [("cron", 1, iso(at(-400)), "cron -f")]
    assert await db.fetchval("SELECT process_names_forget($1)", at(-450)) == 0
    # a name whose whole history expired is new when it comes back
    await add_process(db, "web-01", 5, "gone", "gone --again", at(50), at(60))
    assert [n[0] for n in await new_names(query_gateway, 0, 100)] == ["gone"]


async def test_a_process_that_execs_is_found_by_its_new_command_on_the_index_path(
        query_gateway, fleet, db, monkeypatch):
    from ingest_gateway.query import inventory
    monkeypatch.setattr(inventory, "WALK_ROWS", 1)
    await db.execute("UPDATE process_identities SET name = 'gunicorn', "
                     "command = 'gunicorn app:wsgi --workers 4' WHERE pid = 13")

    assert [p["pid"] for p in await search(query_gateway, "app:wsgi")] == [13]
    assert [p["pid"] for p in await search(query_gateway, "gunicorn")] == [13]
    assert [p["pid"] for p in await search(query_gateway, "50xyx")] == []


async def test_short_and_long_texts_find_the_same_processes_with_or_without_trigrams(
        query_gateway, fleet):
    # 1–2 characters have no trigram: the search walks the window instead of the GIN index
    assert [p["pid"] for p in await search(query_gateway, "gi")] == [10, 11]
    assert [p["pid"] for p in await search(query_gateway, "ON")] == [11, 12, 13]
    assert [p["pid"] for p in await search(query_gateway, "nginx: master")] == [10]
    assert [p["pid"] for p in await search(query_gateway, "-g daemon")] == [11]


@pytest.mark.parametrize("walk_rows", [1, 2, 10_000])
async def test_the_walk_and_the_index_path_give_the_same_answers(query_gateway, fleet,
                                                                  monkeypatch, walk_rows):
    # walk_rows 1 and 2: the walk finds too few matches without covering the window, so
    # the second path (process_texts: its trigram index, or a scan of it for 1–2
    # characters, then the identities by hash) answers
    from ingest_gateway.query import inventory
    monkeypatch.setattr(inventory, "WALK_ROWS", walk_rows)
    assert [p["pid"] for p in await search(query_gateway, "nginx")] == [10, 11]
    assert [p["pid"] for p in await search(query_gateway, "ON")] == [11, 12, 13]
    assert [p["pid"] for p in await search(query_gateway, "50%_x")] == [12]
    assert [p["pid"] for p in await search(query_gateway, "python3",
                                           [*window(0, 300).items(),
                                            ("server_ids[]", "web-01")])] == [12, 13]
    body = await query_gateway.get_json("/api/processes/search",
                                        {"q": "python3", "limit": "1", **window(0, 300)})
    assert len(body["processes"]) == 1 and body["truncated"] is True
