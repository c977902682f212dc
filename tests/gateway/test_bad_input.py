"""Bad input: each case gets a JSON error naming the field and the reason, and enqueues nothing."""

from __future__ import annotations

import copy
import gzip
import zlib
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest_gateway import stream
from ingest_gateway.auth import TokenCache, TokenStore
from ingest_gateway.errors import PayloadTooLarge, Unauthorized
from ingest_gateway.ingest.body import _BoundedInflater
from tests.support.reports import iso, report_doc, total_messages

pytestmark = pytest.mark.integration


def mutated(change) -> bytes:
    doc = copy.deepcopy(report_doc(processes=2))
    change(doc)
    return orjson.dumps(doc)


def _set(path: str, value):
    def change(doc):
        target = doc
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return change


def gzip_bomb(inflated_bytes: int) -> bytes:
    """A gzip stream of zeros, built without holding the inflated bytes in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated_bytes >> 20)]
    return b"".join(parts) + compressor.flush()


NOW = datetime.now(UTC)

# (case id, body bytes, extra headers, status, field, words in the reason)
CASES = [
    ("malformed_json", b'{"report_id": "abcdefgh", ', {}, 400, "body", "malformed JSON"),
    ("empty_body", b"", {}, 400, "body", "empty body"),
    ("invalid_utf8", mutated(_set("host.hostname", "HOSTNAME")).replace(b"HOSTNAME", b"h\xff\xfe"),
     {}, 400, "body", "invalid UTF-8"),
    ("deeply_nested", b'{"report_id": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400, "body",
     "recursion limit"),
    ("json_array", b"[1, 2, 3]", {}, 422, "body", "object"),
    ("unknown_field", mutated(_set("bogus", 1)), {}, 422, "bogus", "Extra inputs"),
    ("unknown_nested_field", mutated(_set("processes.0.colour", "red")), {}, 422,
     "processes[0].colour", "Extra inputs"),
    ("wrong_type", mutated(_set("processes.1.pid", "42")), {}, 422, "processes[1].pid",
     "valid integer"),
    ("negative_number", mutated(_set("processes.0.rss_bytes", -5)), {}, 422,
     "processes[0].rss_bytes", "greater than or equal"),
    ("absurd_number", mutated(_set("processes.0.cpu_seconds_total", 1e15)), {}, 422,
     "processes[0].cpu_seconds_total", "less than or equal"),
    ("nan", mutated(_set("processes.0.cpu_percent", "NAN")).replace(b'"NAN"', b"NaN"), {},
     422, "processes[0].cpu_percent", "finite"),
    ("infinity", mutated(_set("processes.0.cpu_percent", "INF")).replace(b'"INF"', b"1e999"),
     {}, 422, "processes[0].cpu_percent", "finite"),
    ("over_long_string", mutated(_set("host.hostname", "h" * 300)), {}, 422, "host.hostname",
     "at most 253"),
    ("missing_field", mutated(lambda d: d["host"].pop("server_id")), {}, 422,
     "host.server_id", "required"),
    ("naive_timestamp", mutated(_set("collected_at", "2026-01-01T00:00:00")), {}, 422,
     "collected_at", "timezone"),
    ("too_many_processes", mutated(_set("processes", [{"pid": i, "name": "x"}
                                                      for i in range(20_001)])),
     {}, 422, "processes", "at most 20000"),
    ("future_timestamp", mutated(_set("collected_at", iso(NOW + timedelta(hours=2)))), {}, 422,
     "collected_at", "in the future"),
    ("older_than_retention", mutated(_set("collected_at", iso(NOW - timedelta(days=31)))), {},
     422, "collected_at", "retention"),
    ("wrong_content_type", mutated(lambda d: None), {"Content-Type": "text/plain"}, 415,
     "Content-Type", "application/json"),
    ("wrong_charset", mutated(lambda d: None),
     {"Content-Type": "application/json; charset=latin-1"}, 415, "Content-Type", "UTF-8"),
    ("wrong_encoding", mutated(lambda d: None), {"Content-Encoding": "br"}, 415,
     "Content-Encoding", "gzip"),
    ("corrupt_gzip", b"\x1f\x8b\x08\x00garbage-not-deflate", {"Content-Encoding": "gzip"}, 400,
     "body", "invalid gzip"),
    ("truncated_gzip", gzip.compress(mutated(lambda d: None))[:-12],
     {"Content-Encoding": "gzip"}, 400, "body", "truncated gzip"),
    ("body_over_limit", b"{" + b" " * 70_000 + b"}", {}, 413, "body", "exceeds the limit"),
    ("gzip_bomb", gzip_bomb(32 << 20), {"Content-Encoding": "gzip"}, 413, "body",
     "inflated body exceeds"),
]


@pytest.mark.parametrize(("body", "headers", "status", "field", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_report_gets_json_error_and_enqueues_nothing(
    make_gateway, redis, body, headers, status, field, reason
):
    gateway = await make_gateway(max_body_bytes=64_000 if status == 413 else 8 << 20)
    response = await gateway.post("/v1/reports", data=body,
                                  headers={**gateway.headers(), **headers})

    assert response.status == status
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert error["status"] == status
    assert error["field"] == field
    assert reason.lower() in error["reason"].lower()
    assert await total_messages(redis, 4) == 0
    assert [k async for k in redis.scan_iter(match=stream.report_seen_key("*"))] == []


async def test_missing_token_is_401_with_www_authenticate(gateway, redis):
    response = await gateway.post_report(report_doc(), headers={
        "Content-Type": "application/json"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"]["field"] == "Authorization"
    assert await total_messages(redis, 4) == 0


@pytest.mark.parametrize("token", [
    "pf_000000000000_not-a-real-secret",  # well-formed, unknown id
    "not-a-procfleet-token",  # malformed
])
async def test_invalid_token_is_401(gateway, redis, token):
    response = await gateway.post_report(report_doc(), headers=gateway.headers(token))
    assert response.status == 401
    assert (await response.json())["error"]["reason"] in ("invalid token", "malformed token")
    assert await total_messages(redis, 4) == 0


async def test_right_id_with_wrong_secret_is_401(gateway, redis):
    prefix, token_id, _ = gateway.ingest_token.split("_", 2)
    forged = f"{prefix}_{token_id}_{'x' * 43}"
    response = await gateway.post_report(report_doc(), headers=gateway.headers(forged))
    assert response.status == 401
    assert await total_messages(redis, 4) == 0


async def test_revoked_token_is_401_after_refresh(gateway, redis):
    token_id = gateway.ingest_token.split("_", 2)[1]
    assert (await gateway.post_report(report_doc(processes=1))).status == 202
    await TokenStore(redis).revoke(token_id)
    await gateway.refresh_tokens()
    before = await total_messages(redis, 4)

    response = await gateway.post_report(report_doc(processes=1))

    assert response.status == 401
    assert (await response.json())["error"]["reason"] == "token revoked"
    assert await total_messages(redis, 4) == before


async def test_read_scope_token_cannot_ingest_403(gateway, redis):
    response = await gateway.post_report(report_doc(), headers=gateway.headers(
        gateway.read_token))
    assert response.status == 403
    error = (await response.json())["error"]
    assert error["field"] == "Authorization" and "ingest" in error["reason"]
    assert await total_messages(redis, 4) == 0


async def test_new_token_is_looked_up_on_a_miss_at_most_once_per_second(redis):
    now_s = [100.0]
    cache = TokenCache(TokenStore(redis), clock=lambda: now_s[0])
    await cache.refresh()
    _, token = await TokenStore(redis).create("ingest", "late")

    now_s[0] += 0.5  # a miss right after a refresh does not hit Redis again
    with pytest.raises(Unauthorized):
        await cache.authenticate(f"Bearer {token}", "ingest", retry_after_s=1)
    now_s[0] += 1.0
    record = await cache.authenticate(f"Bearer {token}", "ingest", retry_after_s=1)

    assert record.name == "late" and record.scope == "ingest"


async def test_rate_limit_answers_429_with_retry_after(make_gateway, redis):
    gateway = await make_gateway(rate_limit_per_s=0.5, rate_limit_burst=2)
    statuses = [(await gateway.post_report(report_doc(processes=1))).status for _ in range(3)]
    response = await gateway.post_report(report_doc(processes=1))

    assert statuses == [202, 202, 429]
    assert response.status == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert await total_messages(redis, 4) == 2 * 3


async def test_unknown_route_and_method_get_json_errors(gateway):
    missing = await gateway.client.get("/v1/nothing")
    wrong_method = await gateway.client.get("/v1/reports")
    assert missing.status == 404
    assert (await missing.json())["error"]["status"] == 404
    assert wrong_method.status == 405
    assert "POST" in wrong_method.headers["Allow"]


def test_gzip_inflater_stops_at_the_limit_instead_of_inflating_the_bomb():
    bomb = gzip_bomb(256 << 20)  # 256 MiB of zeros in ~256 KiB
    inflater = _BoundedInflater(limit=1 << 20)
    with pytest.raises(PayloadTooLarge):
        for start in range(0, len(bomb), 65_536):
            inflater.feed(bomb[start:start + 65_536])
    assert inflater.size <= (1 << 20) + 1
    assert sum(map(len, inflater.parts)) <= 1 << 20


def test_gzip_inflater_rejects_data_after_the_stream():
    inflater = _BoundedInflater(limit=1 << 20)
    with pytest.raises(Exception, match="after the end"):
        inflater.feed(gzip.compress(b"{}") + b"trailing")


async def test_integer_beyond_64_bits_is_a_422_echoing_it_as_text(gateway, redis):
    body = mutated(_set("processes.0.pid", "BIG")).replace(b'"BIG"', b"1" + b"0" * 30)
    response = await gateway.post("/v1/reports", data=body)

    assert response.status == 422
    error = (await response.json())["error"]
    assert error["field"] == "processes[0].pid"
    assert error["value"] == "1" + "0" * 30
    assert await total_messages(redis, 4) == 0
