"""Host enrollment: an enroll token buys one host token per server_id, and a host token writes
only its own server (the osquery/Fleet model)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from agent.contract import Report
from agent.enroll import EnrollingSender, HostTokenFile
from agent.report import new_report_id
from agent.sender import Sender, gzip_body
from ingest_gateway import stream
from ingest_gateway.app_state import STATE
from ingest_gateway.auth import TokenStore, hash_token
from ingest_gateway.errors import Forbidden
from procfleet.cli import build_parser
from tests.support.reports import report_doc, total_messages

pytestmark = pytest.mark.integration


async def _token(redis, scope: str) -> str:
    _, token = await TokenStore(redis).create(scope, f"tests-{scope}")
    return token


async def _enroll(gateway, token: str, server_id: str = "web-01", hostname: str = "web-01.lan"):
    return await gateway.post("/v1/enroll", {"server_id": server_id, "hostname": hostname},
                              headers=gateway.headers(token))


def _commands_doc(machine_id: str) -> dict:
    return {"timestamp": report_doc()["collected_at"], "machine_name": f"{machine_id}.lan",
            "machine_id": machine_id, "os_type": "linux", "command": "ps",
            "output": "  PID  PPID USER     %CPU %MEM    RSS    VSZ     TIME COMMAND\n"
                      "    1     0 root      0.0  0.1   9000  17000 00:00:02 /sbin/init\n"}


@pytest.fixture
async def enroll_token(gateway, redis) -> str:
    token = await _token(redis, "enroll")
    await gateway.refresh_tokens()
    return token


async def test_enroll_answers_201_with_a_host_token_bound_to_the_server_stored_hashed(
        gateway, redis, enroll_token):
    response = await _enroll(gateway, enroll_token, "web-01", "web-01.lan")

    assert response.status == 201
    body = await response.json()
    assert set(body) == {"token", "server_id"} and body["server_id"] == "web-01"
    token_id = body["token"].split("_", 2)[1]
    stored = orjson.loads(await redis.hget(stream.TOKENS_KEY, token_id))
    assert stored["scope"] == "host" and stored["server_id"] == "web-01"
    assert stored["sha256"] == hash_token(body["token"]) and stored["name"] == "web-01.lan"
    assert body["token"].encode() not in b"".join(await redis.hvals(stream.TOKENS_KEY))
    assert await redis.hget(stream.HOSTS_KEY, "web-01") == token_id.encode()


async def test_enrolling_twice_is_409_until_host_reset_then_201(gateway, redis, enroll_token,
                                                               monkeypatch, redis_url):
    first = await (await _enroll(gateway, enroll_token)).json()

    again = await _enroll(gateway, enroll_token)
    assert again.status == 409
    error = (await again.json())["error"]
    assert error["field"] == "server_id" and "procfleet host reset web-01" in error["reason"]
    # ingest, read, enroll and one host token: the refused attempt left no record behind
    assert len(await TokenStore(redis).load()) == 4
    assert await redis.hlen(stream.HOSTS_KEY) == 1

    monkeypatch.setenv("REDIS_URL", redis_url)
    args = build_parser().parse_args(["host", "reset", "web-01"])
    assert await asyncio.to_thread(args._run, args) == 0

    await gateway.refresh_tokens()
    old = await gateway.post_report(report_doc(server_id="web-01"),
                                    headers=gateway.headers(first["token"]))
    assert old.status == 401 and "revoked" in (await old.json())["error"]["reason"]
    renewed = await _enroll(gateway, enroll_token)
    assert renewed.status == 201
    new_token = (await renewed.json())["token"]
    assert new_token != first["token"]
    accepted = await gateway.post_report(report_doc(server_id="web-01"),
                                         headers=gateway.headers(new_token))
    assert accepted.status == 202


async def test_two_hosts_racing_for_one_server_id_get_one_201_and_one_409(gateway,
                                                                        enroll_token):
    answers = await asyncio.gather(*(_enroll(gateway, enroll_token) for _ in range(2)))

    assert sorted(r.status for r in answers) == [201, 409]


async def test_host_token_writing_another_server_is_403_and_enqueues_nothing(
        gateway, redis, enroll_token):
    host_token = (await (await _enroll(gateway, enroll_token, "web-01")).json())["token"]
    before = await total_messages(redis, 4)

    forged = await gateway.post_report(report_doc(server_id="db-07"),
                                       headers=gateway.headers(host_token))
    forged_commands = await gateway.post("/v1/commands", _commands_doc("db-07"),
                                         headers=gateway.headers(host_token))

    assert forged.status == 403
    error = (await forged.json())["error"]
    assert error["field"] == "host.server_id" and error["value"] == "db-07"
    assert "bound to server_id 'web-01'" in error["reason"]
    assert forged_commands.status == 403
    assert (await forged_commands.json())["error"]["field"] == "machine_id"
    assert await total_messages(redis, 4) == before
    own = await gateway.post_report(report_doc(server_id="web-01"),
                                    headers=gateway.headers(host_token))
    own_commands = await gateway.post("/v1/commands", _commands_doc("web-01"),
                                      headers=gateway.headers(host_token))
    assert own.status == 202 and own_commands.status == 202
    assert await total_messages(redis, 4) > before


async def test_ingest_token_stays_fleet_wide(gateway):
    for server_id in ("web-01", "db-07"):
        response = await gateway.post_report(report_doc(server_id=server_id))
        assert response.status == 202


async def test_each_scope_does_only_its_job(gateway, redis, enroll_token):
    host_token = (await (await _enroll(gateway, enroll_token)).json())["token"]
    before = await total_messages(redis, 4)

    enroll_ingests = await gateway.post_report(report_doc(server_id="web-01"),
                                               headers=gateway.headers(enroll_token))
    read_ingests = await gateway.post_report(report_doc(), headers=gateway.headers(
        gateway.read_token))
    refused_enrollers = [await _enroll(gateway, token, "db-07")
                         for token in (gateway.read_token, gateway.ingest_token, host_token)]

    assert enroll_ingests.status == 403 and read_ingests.status == 403
    assert [r.status for r in refused_enrollers] == [403, 403, 403]
    assert await total_messages(redis, 4) == before
    assert await redis.hget(stream.HOSTS_KEY, "db-07") is None
    with pytest.raises(Forbidden):  # the guard of the read routes refuses a host token too
        await gateway.app[STATE].tokens.authenticate(f"Bearer {host_token}", "read", 1)


@pytest.mark.parametrize(("doc", "status", "field"), [
    ({"server_id": "web 01", "hostname": "web"}, 422, "server_id"),
    ({"server_id": "", "hostname": "web"}, 422, "server_id"),
    ({"server_id": "web-01"}, 422, "hostname"),
    ({"server_id": "web-01", "hostname": "web", "admin": True}, 422, "admin"),
    ({"server_id": 7, "hostname": "web"}, 422, "server_id"),
    ({"server_id": "web-01", "hostname": "web\x1b]0;owned\x07"}, 422, "hostname"),
])
async def test_bad_enroll_body_names_the_field_and_enrolls_nothing(gateway, redis, enroll_token,
                                                                    doc, status, field):
    response = await gateway.post("/v1/enroll", doc, headers=gateway.headers(enroll_token))

    assert response.status == status
    assert (await response.json())["error"]["field"] == field
    assert await redis.hlen(stream.HOSTS_KEY) == 0


async def test_malformed_enroll_json_is_400(gateway, redis, enroll_token):
    response = await gateway.post("/v1/enroll", data=b'{"server_id": ',
                                  headers=gateway.headers(enroll_token))

    assert response.status == 400
    assert (await response.json())["error"]["field"] == "body"
    assert await redis.hlen(stream.HOSTS_KEY) == 0


async def test_the_agent_enrolls_with_the_real_gateway_once_and_its_reports_land(
        gateway, redis, enroll_token, tmp_path):
    url = str(gateway.client.make_url("/")).rstrip("/")

    def report() -> bytes:
        doc = report_doc(server_id="agent-host", report_id=new_report_id())
        return gzip_body(Report.model_validate_json(orjson.dumps(doc)).model_dump_json().encode())

    async with httpx.AsyncClient() as http:
        def agent_sender() -> EnrollingSender:  # a fresh one per agent start
            return EnrollingSender(lambda path, token: Sender(http, url, token, path=path),
                                   enroll_token, server_id="agent-host",
                                   hostname="agent-host.lan", token_file=HostTokenFile(tmp_path))

        first = await agent_sender().send_gzip(report())
        after_restart = await agent_sender().send_gzip(report())

    assert first.status == after_restart.status == 202
    assert await redis.hlen(stream.HOSTS_KEY) == 1
    stored = HostTokenFile(tmp_path).read()
    record = orjson.loads(await redis.hget(stream.TOKENS_KEY, stored.token.split("_", 2)[1]))
    assert (record["scope"], record["server_id"]) == ("host", "agent-host")
    assert await total_messages(redis, 4) == 2 * (1 + 1 + 3)  # host + group + 3 processes
