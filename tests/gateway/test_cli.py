"""`procfleet token` and `procfleet gateway` as users run them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis as redis_sync

from ingest_gateway import stream
from ingest_gateway.auth import hash_token
from procfleet.cli import build_parser
from procfleet.embedded import free_port
from tests.support.reports import report_doc

pytestmark = pytest.mark.integration


@pytest.fixture
def sync_redis(redis_url, monkeypatch) -> Iterator[redis_sync.Redis]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    client = redis_sync.Redis.from_url(redis_url, protocol=2)
    client.delete(stream.TOKENS_KEY)
    yield client
    keys = list(client.scan_iter(match=f"{stream.KEY_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def procfleet(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return args._run(args)


def test_token_create_prints_the_token_alone_and_stores_only_its_hash(sync_redis, capsys):
    assert procfleet("token", "create", "--scope", "ingest", "--name", "web fleet") == 0
    out = capsys.readouterr().out

    token = out.strip()
    assert out == token + "\n"
    token_id = token.split("_", 2)[1]
    stored = orjson.loads(sync_redis.hget(stream.TOKENS_KEY, token_id))
    assert stored["sha256"] == hash_token(token)
    assert token.encode() not in b"".join(sync_redis.hvals(stream.TOKENS_KEY))
    assert stored["scope"] == "ingest" and stored["name"] == "web fleet"
    assert stored["revoked"] is False


def test_token_list_shows_ids_scopes_and_names_never_secrets(sync_redis, capsys):
    procfleet("token", "create", "--scope", "ingest", "--name", "agents")
    procfleet("token", "create", "--scope", "read", "--name", "grafana")
    tokens = capsys.readouterr().out.split()

    assert procfleet("token", "list") == 0
    table = capsys.readouterr().out
    assert procfleet("token", "list", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert table.splitlines()[0].split() == ["ID", "SCOPE", "CREATED", "REVOKED", "NAME"]
    assert {(r["scope"], r["name"], r["revoked"]) for r in rows} == {
        ("ingest", "agents", False), ("read", "grafana", False)}
    for token in tokens:
        assert token not in table
        assert token.split("_", 2)[1] in table


def test_token_revoke_marks_it_revoked_and_unknown_id_fails(sync_redis, capsys):
    procfleet("token", "create", "--scope", "ingest")
    token_id = capsys.readouterr().out.strip().split("_", 2)[1]

    assert procfleet("token", "revoke", token_id) == 0
    assert procfleet("token", "revoke", "doesnotexist") == 1

    assert orjson.loads(sync_redis.hget(stream.TOKENS_KEY, token_id))["revoked"] is True
    assert "no token with id 'doesnotexist'" in capsys.readouterr().err


def test_enroll_token_is_created_like_the_others_and_host_tokens_cannot_be(sync_redis,
                                                                          capsys):
    assert procfleet("token", "create", "--scope", "enroll", "--name", "fleet") == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n"
    stored = orjson.loads(sync_redis.hget(stream.TOKENS_KEY, token.split("_", 2)[1]))
    assert stored["scope"] == "enroll" and stored["sha256"] == hash_token(token)
    with pytest.raises(SystemExit):  # host tokens come from POST /v1/enroll only
        procfleet("token", "create", "--scope", "host")


def test_host_list_and_reset_revoke_the_bound_token(sync_redis, capsys):
    from ingest_gateway.enrollment import HostEnrollment

    async def enroll() -> str:
        from redis.asyncio import Redis

        client = Redis.from_url(os.environ["REDIS_URL"], protocol=2)
        try:
            record, _ = await HostEnrollment(client).enroll("web-01", "web-01.lan")
        finally:
            await client.aclose()
        return record.token_id

    token_id = asyncio.run(enroll())
    assert procfleet("host", "list", "--json") == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"server_id": "web-01", "token_id": token_id}]
    assert procfleet("token", "list") == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if token_id in line]
    assert row.split()[1] == "host" and row.endswith("web-01.lan  server_id=web-01")

    assert procfleet("host", "reset", "web-01") == 0
    assert f"host token {token_id} revoked" in capsys.readouterr().err
    assert orjson.loads(sync_redis.hget(stream.TOKENS_KEY, token_id))["revoked"] is True
    assert sync_redis.hlen(stream.HOSTS_KEY) == 0
    assert procfleet("host", "reset", "web-01") == 1
    assert "server_id 'web-01' is not enrolled" in capsys.readouterr().err


def test_token_command_reports_unreachable_redis(monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert procfleet("token", "list") == 2
    assert "cannot reach Redis" in capsys.readouterr().err


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("gateway did not become healthy")


def _wait_until_in_flight(url: str, requests: int) -> None:
    for _ in range(400):
        text = httpx.get(url + "/metrics", timeout=5).text
        if f"procfleet_gateway_requests_in_flight {float(requests)}" in text:
            return
        time.sleep(0.025)
    raise AssertionError("the request never reached its handler")


def _wait_until_refusing(port: int) -> None:
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.025)
    raise AssertionError("the gateway kept accepting connections after SIGTERM")


def test_gateway_finishes_in_flight_request_on_sigterm_then_exits(sync_redis, redis_url, capsys):
    procfleet("token", "create", "--scope", "ingest")
    token = capsys.readouterr().out.strip()
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PROCFLEET_SHUTDOWN_TIMEOUT_S": "20"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "procfleet", "gateway", "--port", str(port)],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        body = orjson.dumps(report_doc(server_id="sigterm", processes=3))
        head = (f"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(head + body[:20])  # the request is in flight: body half sent
            _wait_until_in_flight(f"http://127.0.0.1:{port}", requests=2)  # ours + /metrics
            proc.send_signal(signal.SIGTERM)
            _wait_until_refusing(port)  # the gateway is stopping: no new connections
            sock.sendall(body[20:])
            response = sock.recv(65_536).decode()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode()

    assert response.startswith("HTTP/1.1 202"), response
    assert sync_redis.xlen(stream.sample_stream(stream.shard_for("sigterm", 4))) == 5
    assert 'msg="gateway stopping' in stderr
    assert 'msg="gateway stopped" reports=1' in stderr
    assert "path=/v1/reports status=202" in stderr  # the access log line
    assert token not in stderr and token.split("_", 2)[2] not in stderr


def test_token_store_finds_a_token_only_with_its_secret(sync_redis, capsys):
    import asyncio

    from redis.asyncio import Redis

    from ingest_gateway.auth import TokenStore

    procfleet("token", "create", "--scope", "read", "--name", "dash")
    token = capsys.readouterr().out.strip()
    prefix, token_id, _ = token.split("_", 2)

    async def lookups():
        client = Redis.from_url(os.environ["REDIS_URL"], protocol=2)
        store = TokenStore(client)
        try:
            return (await store.find(token), await store.find(f"{prefix}_{token_id}_wrong"),
                    await store.find("garbage"))
        finally:
            await client.aclose()

    found, wrong_secret, garbage = asyncio.run(lookups())
    assert found is not None and found.name == "dash" and found.token_id == token_id
    assert wrong_secret is None and garbage is None
