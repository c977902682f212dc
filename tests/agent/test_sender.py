"""Sender: gzip POST with bearer token; retries with backoff + Retry-After; 4xx not retried."""

from __future__ import annotations

import gzip
import json
import logging
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx
from prometheus_client import REGISTRY

from agent.errors import DeliveryError, ReportRejected
from agent.sender import GatewayAuthError, Sender, gzip_body, parse_retry_after

GATEWAY = "https://gw.test"
TOKEN = "pf_ingest_VerySecretTokenValue"
REPORT = json.dumps({"report_id": "0123456789abcdef", "processes": []}).encode()


class Sleeps:
    """Injected sleep: records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
async def client():
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def sender(client, sleeps):
    def make(**kw) -> Sender:
        kw.setdefault("rng", random.Random(7))
        return Sender(client, GATEWAY + "/", TOKEN, sleep=sleeps, **kw)

    return make


@pytest.fixture
def gateway():
    with respx.mock(base_url=GATEWAY, assert_all_called=False) as mock:
        yield mock.post("/v1/reports")


def attempts(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "procfleet_agent_send_attempts_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_posts_gzip_json_with_bearer_token(gateway, sender):
    gateway.respond(202, json={"accepted": True})
    result = await sender().send(REPORT, report_id="0123456789abcdef")
    assert (result.status, result.duplicate, result.attempts) == (202, False, 1)
    request = gateway.calls.last.request
    assert request.url == f"{GATEWAY}/v1/reports"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert gzip.decompress(request.content) == REPORT


async def test_200_duplicate_is_success(gateway, sender):
    gateway.respond(200, json={"duplicate": True})
    result = await sender().send(REPORT)
    assert (result.status, result.duplicate) == (200, True)


async def test_503_retry_after_seconds_is_honoured(gateway, sender, sleeps):
    gateway.side_effect = [
        httpx.Response(503, headers={"Retry-After": "7"}),
        httpx.Response(202),
    ]
    result = await sender(retry_budget_s=30).send(REPORT)
    assert result.attempts == 2
    assert sleeps.delays == [7.0]


async def test_retry_after_http_date_is_honoured(gateway, sender, sleeps):
    when = datetime.now(UTC) + timedelta(seconds=20)
    gateway.side_effect = [
        httpx.Response(429, headers={"Retry-After": format_datetime(when, usegmt=True)}),
        httpx.Response(202),
    ]
    await sender(retry_budget_s=60).send(REPORT)
    assert len(sleeps.delays) == 1 and 17.0 <= sleeps.delays[0] <= 20.0


async def test_transport_errors_and_5xx_back_off_with_full_jitter(gateway, sender, sleeps):
    gateway.side_effect = [
        httpx.ConnectError("connection refused"),
        httpx.Response(500),
        httpx.ReadTimeout("slow"),
        httpx.Response(502),
        httpx.Response(202),
    ]
    s = sender(max_attempts=5, backoff_base_s=1.0, backoff_max_s=3.0, retry_budget_s=100)
    result = await s.send(REPORT)
    assert result.attempts == 5
    caps = [1.0, 2.0, 3.0, 3.0]  # base * 2**(n-1), capped
    assert len(sleeps.delays) == 4
    assert all(0.0 <= d <= cap for d, cap in zip(sleeps.delays, caps, strict=True))
    assert len(set(sleeps.delays)) == 4  # jittered, not a fixed ladder


async def test_every_attempt_sends_the_same_bytes(gateway, sender):
    gateway.side_effect = [httpx.Response(503), httpx.Response(503), httpx.Response(202)]
    body = gzip_body(REPORT)
    await sender().send_gzip(body, report_id="0123456789abcdef")
    assert [call.request.content for call in gateway.calls] == [body] * 3


async def test_gives_up_after_max_attempts_so_the_caller_can_spool(gateway, sender, sleeps):
    gateway.side_effect = httpx.ConnectError("connection refused")
    with pytest.raises(DeliveryError) as info:
        await sender(max_attempts=3).send(REPORT, report_id="abcdefgh12345678")
    assert not isinstance(info.value, ReportRejected)
    assert gateway.call_count == 3 and len(sleeps.delays) == 2
    assert "abcdefgh12345678" in str(info.value) and "3 attempt" in str(info.value)


async def test_retry_after_beyond_the_budget_fails_fast(gateway, sender, sleeps):
    gateway.respond(503, headers={"Retry-After": "120"})
    with pytest.raises(DeliveryError):
        await sender(retry_budget_s=10).send(REPORT)
    assert gateway.call_count == 1 and sleeps.delays == []


async def test_sleep_budget_bounds_total_backoff(gateway, sender, sleeps):
    gateway.side_effect = [httpx.Response(503, headers={"Retry-After": "4"})] * 10
    with pytest.raises(DeliveryError):
        await sender(max_attempts=10, retry_budget_s=10).send(REPORT)
    assert sleeps.delays == [4.0, 4.0]  # a third 4 s wait would pass the 10 s budget


async def test_each_retry_is_logged_with_the_next_delay(gateway, sender, caplog):
    gateway.side_effect = [httpx.Response(503, headers={"Retry-After": "2"}), httpx.Response(202)]
    with caplog.at_level(logging.WARNING, logger="agent.sender"):
        await sender().send(REPORT, report_id="0123456789abcdef")
    (record,) = [r for r in caplog.records if r.msg == "send failed, retrying"]
    assert record.kv["next_delay_s"] == 2.0
    assert record.kv["attempt"] == 1 and record.kv["report_id"] == "0123456789abcdef"
    assert "503" in record.kv["error"]


@pytest.mark.parametrize("status", [400, 413, 415, 422])
async def test_4xx_is_rejected_once_logged_with_body_and_counted(
    gateway, sender, sleeps, caplog, status
):
    detail = {"error": "validation failed", "field": "processes.0.pid", "pad": "x" * 2000}
    gateway.respond(status, json=detail)
    before = attempts("rejected")
    with (
        caplog.at_level(logging.ERROR, logger="agent.sender"),
        pytest.raises(ReportRejected) as info,
    ):
        await sender().send(REPORT, report_id="0123456789abcdef")
    assert info.value.status == status
    assert gateway.call_count == 1 and sleeps.delays == []
    assert attempts("rejected") - before == 1
    (record,) = [r for r in caplog.records if r.msg == "gateway rejected report"]
    assert "processes.0.pid" in record.kv["body"]
    assert len(record.kv["body"]) <= 500  # truncated


async def test_401_is_an_auth_error_not_a_rejection(gateway, sender, sleeps):
    gateway.respond(401, json={"error": "invalid token"})
    with pytest.raises(GatewayAuthError) as info:
        await sender().send(REPORT)
    assert isinstance(info.value, DeliveryError) and not isinstance(info.value, ReportRejected)
    assert gateway.call_count == 1 and sleeps.delays == []


async def test_token_never_appears_in_logs_or_errors(gateway, sender, caplog):
    gateway.side_effect = [
        httpx.ConnectError("refused"),
        httpx.Response(503),
        httpx.Response(401, text="bad token"),
    ]
    s = sender(max_attempts=5)
    with caplog.at_level(logging.DEBUG), pytest.raises(GatewayAuthError) as info:
        await s.send(REPORT)
    logged = caplog.text + " ".join(str(getattr(r, "kv", "")) for r in caplog.records)
    assert "send failed, retrying" in caplog.text
    assert TOKEN not in logged
    assert TOKEN not in str(info.value) and TOKEN not in repr(s)


def test_parse_retry_after_forms():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("5", now=now) == 5.0
    assert parse_retry_after("1.5", now=now) == 1.5
    assert parse_retry_after("-3", now=now) == 0.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:59:00 GMT", now=now) == 0.0
    assert parse_retry_after("999999", now=now) == 600.0  # capped
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None
