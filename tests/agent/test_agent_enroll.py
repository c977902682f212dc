"""The agent enrolls by itself: one POST /v1/enroll, a host token kept 0600 next to the spool,
reused across restarts; a 409 or a gateway that is down costs no report."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import stat
from datetime import UTC, datetime

import httpx
import pytest

from agent.config import load_settings
from agent.enroll import HOST_TOKEN_FILE, EnrollingSender, HostToken, HostTokenFile
from agent.errors import EnrollError, HostAlreadyEnrolled
from agent.rows import Host, ProcessSample, Report
from agent.runner import Agent
from agent.sender import GatewayAuthError, Sender
from agent.spool import Spool

ENROLL_TOKEN = "pf_enroll1_EnrollSecret"
GATEWAY = "https://gw.test"  # https: the agent refuses a token in clear text to another machine


class EnrollingGateway:
    """An HTTP peer: enrolls each server_id once (409 after), takes reports only with the
    host token of the report's server."""

    def __init__(self) -> None:
        self.enrolled: dict[str, str] = {}  # server_id -> host token
        self.enroll_calls = 0
        self.down_for = 0  # answer the next N requests with 503
        self.revoked: set[str] = set()
        self.reports: list[tuple[str, str]] = []  # (server_id, token) of each report taken

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down_for:
            self.down_for -= 1
            return httpx.Response(503, headers={"Retry-After": "1"})
        token = request.headers["Authorization"].removeprefix("Bearer ")
        doc = json.loads(gzip.decompress(request.content))
        if request.url.path == "/v1/enroll":
            self.enroll_calls += 1
            assert token == ENROLL_TOKEN
            if doc["server_id"] in self.enrolled:
                return httpx.Response(409, json={"error": {"status": 409, "field": "server_id",
                                                           "reason": "already enrolled"}})
            host_token = f"pf_host{self.enroll_calls}_{doc['server_id']}Secret"
            self.enrolled[doc["server_id"]] = host_token
            return httpx.Response(201, json={"token": host_token,
                                             "server_id": doc["server_id"]})
        assert request.url.path == "/v1/reports"
        if token in self.revoked:
            return httpx.Response(401, json={"error": {"status": 401, "field": "Authorization",
                                                       "reason": "token revoked"}})
        if self.enrolled.get(doc["host"]["server_id"]) != token:
            return httpx.Response(403, json={"error": {"status": 403, "field": "host.server_id",
                                                       "reason": "not your server"}})
        self.reports.append((doc["host"]["server_id"], token))
        return httpx.Response(202, json={"report_id": doc["report_id"]})


async def no_wait(_seconds: float) -> None:
    return None


def make_report(server_id: str = "web-01", n: int = 0) -> Report:
    return Report(report_id=f"{n:016x}", collected_at=datetime(2026, 1, 1, tzinfo=UTC),
                  host=Host(server_id=server_id, hostname=f"{server_id}.lan", os_type="linux"),
                  processes=[ProcessSample(pid=1, name="init")])


def report_body(server_id: str = "web-01", n: int = 0) -> bytes:
    return gzip.compress(make_report(server_id, n).model_dump_json().encode())


@pytest.fixture
async def peer():
    gateway = EnrollingGateway()
    async with httpx.AsyncClient(transport=httpx.MockTransport(gateway.handle)) as http:
        yield gateway, http


def enrolling_sender(http: httpx.AsyncClient, state_dir, server_id: str = "web-01"):
    def make_sender(path: str, token: str) -> Sender:
        return Sender(http, GATEWAY, token, path=path, max_attempts=4, sleep=no_wait,
                      rng=random.Random(1))

    return EnrollingSender(make_sender, ENROLL_TOKEN, server_id=server_id,
                           hostname=f"{server_id}.lan", token_file=HostTokenFile(state_dir))


async def test_agent_enrolls_once_and_reuses_the_stored_host_token_after_a_restart(peer,
                                                                                   tmp_path):
    gateway, http = peer
    first_run = enrolling_sender(http, tmp_path)
    await first_run.send_gzip(report_body(n=1))
    await first_run.send_gzip(report_body(n=2))
    restarted = enrolling_sender(http, tmp_path)
    await restarted.send_gzip(report_body(n=3))

    host_token = gateway.enrolled["web-01"]
    assert gateway.enroll_calls == 1
    assert gateway.reports == [("web-01", host_token)] * 3
    assert HostTokenFile(tmp_path).read() == HostToken("web-01", host_token)


async def test_host_token_file_is_owner_only_and_written_atomically(peer, tmp_path):
    gateway, http = peer
    os.umask(old := os.umask(0))  # the loosest umask: the mode must not depend on it
    try:
        await enrolling_sender(http, tmp_path).send_gzip(report_body())
    finally:
        os.umask(old)

    path = tmp_path / HOST_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"server_id": "web-01",
                                            "token": gateway.enrolled["web-01"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [HOST_TOKEN_FILE]  # no temp file left


async def test_a_loosened_token_file_is_set_back_to_0600_when_read(tmp_path):
    token_file = HostTokenFile(tmp_path)
    token_file.write(HostToken("web-01", "pf_x_y"))
    token_file.path.chmod(0o644)

    assert token_file.read() == HostToken("web-01", "pf_x_y")
    assert stat.S_IMODE(token_file.path.stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "{", '{"server_id": "web-01"}',
                                     '{"server_id": "web-01", "token": 7}'])
async def test_an_unreadable_token_file_means_enrolling_again(peer, tmp_path, content):
    gateway, http = peer
    (tmp_path / HOST_TOKEN_FILE).write_text(content)

    await enrolling_sender(http, tmp_path).send_gzip(report_body())

    assert gateway.enroll_calls == 1
    assert HostTokenFile(tmp_path).read() == HostToken("web-01", gateway.enrolled["web-01"])


async def test_a_token_that_cannot_be_stored_is_still_used_for_this_run(peer, tmp_path, caplog):
    gateway, http = peer
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    sender = enrolling_sender(http, not_a_directory)

    with caplog.at_level(logging.ERROR):
        await sender.send_gzip(report_body(n=1))
        await sender.send_gzip(report_body(n=2))

    assert gateway.enroll_calls == 1 and len(gateway.reports) == 2
    assert "host token not stored" in caplog.text


async def test_enrollment_is_retried_like_a_send_when_the_gateway_is_down(peer, tmp_path):
    gateway, http = peer
    gateway.down_for = 2

    await enrolling_sender(http, tmp_path).send_gzip(report_body())

    assert gateway.enroll_calls == 1 and len(gateway.reports) == 1


async def test_409_tells_the_operator_to_reset_the_host_and_stores_nothing(peer, tmp_path,
                                                                           caplog):
    gateway, http = peer
    gateway.enrolled["web-01"] = "pf_other_machine"

    with caplog.at_level(logging.ERROR), pytest.raises(HostAlreadyEnrolled) as info:
        await enrolling_sender(http, tmp_path).send_gzip(report_body())

    assert "procfleet host reset web-01" in str(info.value)
    [refused] = [r for r in caplog.records if r.getMessage() == "enrollment refused"]
    assert "procfleet host reset web-01" in refused.kv["error"]
    assert isinstance(info.value, EnrollError) and gateway.reports == []
    assert not (tmp_path / HOST_TOKEN_FILE).exists()


async def test_an_agent_that_cannot_enroll_spools_its_report_and_delivers_it_after_reset(
        peer, tmp_path):
    gateway, http = peer
    gateway.enrolled["web-01"] = "pf_stale_token"
    settings = load_settings(None, {"PROCFLEET_GATEWAY_URL": GATEWAY,
                                    "PROCFLEET_ENROLL_TOKEN": ENROLL_TOKEN,
                                    "PROCFLEET_SPOOL_DIR": str(tmp_path)})
    reports = iter(make_report(n=n) for n in range(2))

    async def build() -> Report:
        return next(reports)

    agent = Agent(settings, build=build, sender=enrolling_sender(http, tmp_path),
                  spool=Spool(tmp_path, 1_000_000), sleep=no_wait)
    assert await agent.tick() == "spooled"
    del gateway.enrolled["web-01"]  # the operator ran `procfleet host reset web-01`
    assert await agent.tick() == "sent"

    assert [server for server, _ in gateway.reports] == ["web-01", "web-01"]
    assert agent.stats.replayed == 1 and agent.stats.rejected == agent.stats.dropped == 0


async def test_a_token_stored_for_another_server_id_is_not_used(peer, tmp_path):
    gateway, http = peer
    HostTokenFile(tmp_path).write(HostToken("old-name", "pf_old_token"))

    await enrolling_sender(http, tmp_path, "new-name").send_gzip(report_body("new-name"))

    assert gateway.reports == [("new-name", gateway.enrolled["new-name"])]
    assert HostTokenFile(tmp_path).read().server_id == "new-name"


async def test_a_revoked_host_token_is_forgotten_and_the_next_send_enrolls_again(peer,
                                                                                 tmp_path):
    gateway, http = peer
    sender = enrolling_sender(http, tmp_path)
    await sender.send_gzip(report_body(n=1))
    gateway.revoked.add(gateway.enrolled.pop("web-01"))  # `procfleet host reset web-01`

    with pytest.raises(GatewayAuthError):
        await sender.send_gzip(report_body(n=2))
    assert not (tmp_path / HOST_TOKEN_FILE).exists()
    await sender.send_gzip(report_body(n=2))

    assert gateway.enroll_calls == 2 and len(gateway.reports) == 2
    assert HostTokenFile(tmp_path).read().token == gateway.enrolled["web-01"]


async def test_a_401_that_is_not_a_revocation_keeps_the_token(tmp_path):
    def unknown_token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"status": 401, "field": "Authorization",
                                                   "reason": "invalid token"}})

    HostTokenFile(tmp_path).write(HostToken("web-01", "pf_fresh_token"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(unknown_token)) as http:
        with pytest.raises(GatewayAuthError):
            await enrolling_sender(http, tmp_path).send_gzip(report_body())

    # A gateway that has not loaded a just-enrolled token yet must not cost us the token.
    assert HostTokenFile(tmp_path).read() == HostToken("web-01", "pf_fresh_token")


def test_enroll_token_comes_from_toml_or_environment_and_is_never_shown(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'gateway_url = "{GATEWAY}"\nenroll_token = "{ENROLL_TOKEN}"\n')

    from_file = load_settings(config, {})
    from_env = load_settings(None, {"PROCFLEET_GATEWAY_URL": GATEWAY,
                                    "PROCFLEET_ENROLL_TOKEN": ENROLL_TOKEN})

    for settings in (from_file, from_env):
        assert settings.enroll_token.get_secret_value() == ENROLL_TOKEN
        settings.require_delivery()  # no ingest token needed
        assert settings.describe()["enroll_token"] == "***"
        assert ENROLL_TOKEN not in repr(settings) + str(settings.describe())
