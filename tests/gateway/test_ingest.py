"""POST /v1/reports against a real Redis: what lands where, dedupe, responses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest_gateway import stream
from tests.support.reports import report_doc, stream_entries, total_messages

pytestmark = pytest.mark.integration


async def test_report_is_enqueued_one_message_per_process_on_the_hosts_shard(gateway, redis):
    doc = report_doc(server_id="db-07", processes=5, groups=2,
                     snapshots=[{"source": "ps", "sha256": "a" * 64, "process_count": 5,
                                 "raw_output": "PID CMD\n1 init\n"}])
    response = await gateway.post_report(doc)

    assert response.status == 202
    assert await response.json() == {"report_id": doc["report_id"],
                                     "accepted": {"processes": 5, "groups": 2}}
    entries = await stream_entries(redis, 4)
    shard = stream.shard_for("db-07", 4)
    assert list(entries) == [shard]
    kinds = [kind for kind, _ in entries[shard]]
    assert kinds == ["h", "s", "g", "g", "p", "p", "p", "p", "p"]


async def test_message_columns_carry_the_report_values(gateway, redis):
    collected = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=250000)
    doc = report_doc(server_id="web-01", processes=1, groups=1, collected_at=collected)
    assert (await gateway.post_report(doc)).status == 202

    (messages,) = (await stream_entries(redis, 4)).values()
    rows = {kind: dict(zip(stream.COLUMNS[kind], row, strict=True)) for kind, row in messages}
    ts = collected.timestamp()
    assert rows["h"] == {
        "server_id": "web-01", "ts": ts, "report_id": doc["report_id"],
        "hostname": "web-01.example", "os_type": "linux", "os_version": "6.8",
        "boot_id": None, "agent_version": "0.1.0",
    }
    process = doc["processes"][0]
    assert rows["p"]["server_id"] == "web-01" and rows["p"]["ts"] == ts
    assert rows["p"]["pid"] == process["pid"]
    # start times travel as RFC 3339 text (stream schema 2), ts as epoch seconds
    assert datetime.fromisoformat(rows["p"]["start_time"]) == datetime.fromisoformat(
        process["start_time"])
    assert rows["p"]["cpu_seconds_total"] == process["cpu_seconds_total"]
    assert rows["p"]["command"] == process["command"]
    assert rows["p"]["session_id"] is None
    group = doc["process_groups"][0]
    assert rows["g"]["name"] == group["name"]
    assert rows["g"]["memory_resident_bytes"] == group["memory_resident_bytes"]
    assert datetime.fromisoformat(rows["g"]["oldest_start_time"]) == datetime.fromisoformat(
        group["oldest_start_time"])


async def test_hosts_spread_over_shards_by_stable_hash(make_gateway, redis):
    gateway = await make_gateway(shards=8)
    hosts = [f"host-{i}" for i in range(24)]
    for host in hosts:
        assert (await gateway.post_report(report_doc(server_id=host, processes=1))).status == 202

    entries = await stream_entries(redis, 8)
    for shard, messages in entries.items():
        for _, row in messages:
            assert stream.shard_for(row[0], 8) == shard
    assert {row[0] for msgs in entries.values() for _, row in msgs} == set(hosts)
    assert len(entries) > 1


async def test_same_report_twice_is_a_duplicate_and_enqueues_nothing_more(gateway, redis):
    doc = report_doc(processes=4)
    first = await gateway.post_report(doc)
    messages_after_first = await total_messages(redis, 4)

    second = await gateway.post_report(doc)

    assert first.status == 202
    assert second.status == 200
    assert await second.json() == {"report_id": doc["report_id"], "duplicate": True}
    assert await total_messages(redis, 4) == messages_after_first == 1 + 4 + 1
    ttl = await redis.ttl(stream.report_seen_key(doc["report_id"]))
    assert 0 < ttl <= gateway.settings.dedupe_ttl_s


async def test_gzip_body_is_accepted(gateway, redis):
    response = await gateway.post_report(report_doc(processes=2), gzip_body=True)
    assert response.status == 202
    assert await total_messages(redis, 4) == 1 + 2 + 1


async def test_snapshot_raw_output_is_capped_in_the_message(make_gateway, redis):
    gateway = await make_gateway(max_raw_output_bytes=10)
    raw = "é" * 20  # 40 bytes of UTF-8: the cap must not cut a character in half
    doc = report_doc(processes=0, groups=0, snapshots=[
        {"source": "ps", "sha256": "b" * 64, "raw_output": raw}])
    assert (await gateway.post_report(doc)).status == 202

    (messages,) = (await stream_entries(redis, 4)).values()
    (snapshot,) = [row for kind, row in messages if kind == "s"]
    as_dict = dict(zip(stream.COLUMNS["s"], snapshot, strict=True))
    assert as_dict["raw_output"] == "é" * 5
    assert as_dict["sha256"] == "b" * 64


async def test_stream_entries_have_schema_version_and_no_maxlen_trimming(gateway, redis):
    for _ in range(3):
        assert (await gateway.post_report(report_doc(server_id="same", processes=50))).status \
            == 202
    key = stream.sample_stream(stream.shard_for("same", 4))
    assert await redis.xlen(key) == 3 * 52
    _, fields = (await redis.xrange(key, count=1))[0]
    assert list(fields) == [stream.FIELD_MESSAGE]
    assert orjson.loads(fields[stream.FIELD_MESSAGE])[:2] == [stream.SCHEMA_VERSION, "h"]


async def test_metrics_count_requests_messages_and_rejections(gateway):
    await gateway.post_report(report_doc(processes=3))
    await gateway.post_report({"nope": 1})
    text = await (await gateway.client.get("/metrics")).text()

    assert ('procfleet_gateway_requests_total{method="POST",route="/v1/reports",'
            'status="202"} 1.0') in text
    assert "procfleet_gateway_messages_enqueued_total 5.0" in text
    assert 'procfleet_gateway_rejected_total{reason="schema"} 1.0' in text
    assert "procfleet_gateway_enqueue_seconds_count 1.0" in text
    assert 'procfleet_gateway_backlog_messages{shard="0"}' in text
