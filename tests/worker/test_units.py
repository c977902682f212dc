"""Pure parts of the worker: settings, rows, timestamps, decoding a batch, retries."""

from __future__ import annotations

import asyncio
import logging
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.errors import ConfigError
from digest_worker.batch import MAX_DELIVERIES, UNDECODABLE, decode_batch
from digest_worker.identity import KeyCollisionError, group_key, process_key
from digest_worker.retrying import retry_until_stopped
from digest_worker.rows import TABLE_COLUMNS, build_rows
from digest_worker.settings import WorkerSettings, mask_url
from digest_worker.streams import Entry
from digest_worker.timestamps import (
    UNKNOWN_START_TIME,
    decode_timestamptz,
    encode_timestamptz,
    to_pg_microseconds,
)
from ingest_gateway import stream
from tests.support.worker import forge_keys

# -- settings ----------------------------------------------------------------------------


def test_settings_come_from_the_environment_then_the_command_line():
    settings = WorkerSettings.from_env(
        {"REDIS_URL": "redis://cache:6380/1", "PROCFLEET_WORKER_BATCH_SIZE": "1000",
         "PROCFLEET_RETENTION_DAYS": "14", "PROCFLEET_WORKER_SOCKET_TIMEOUT_S": "20.5"},
        metrics_port=9400, burst=None)
    assert settings.redis_url == "redis://cache:6380/1"
    assert (settings.batch_size, settings.retention_days, settings.socket_timeout_s) == (
        1000, 14, 20.5)
    assert settings.metrics_port == 9400 and settings.burst is False


@pytest.mark.parametrize(("env", "key", "bad"), [
    ({"PROCFLEET_WORKER_BATCH_SIZE": "lots"}, "PROCFLEET_WORKER_BATCH_SIZE", "lots"),
    ({"PROCFLEET_WORKER_BATCH_SIZE": "0"}, "PROCFLEET_WORKER_BATCH_SIZE", "0"),
    ({"PROCFLEET_WORKER_INSERT_METHOD": "magic"}, "PROCFLEET_WORKER_INSERT_METHOD", "magic"),
    ({"PROCFLEET_WORKER_BLOCK_MS": "9000"}, "PROCFLEET_WORKER_BLOCK_MS", 9000),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL", "mysql://x"),
    ({"PROCFLEET_WORKER_SOCKET_TIMEOUT_S": "nan"}, "PROCFLEET_WORKER_SOCKET_TIMEOUT_S", "nan"),
    ({"PROCFLEET_WORKER_RETRY_MAX_DELAY_S": "inf"}, "PROCFLEET_WORKER_RETRY_MAX_DELAY_S",
     "inf"),
    ({"PROCFLEET_HOT_WINDOW_H": "-1"}, "PROCFLEET_HOT_WINDOW_H", "-1"),
    ({"PROCFLEET_HOT_WINDOW_H": "inf"}, "PROCFLEET_HOT_WINDOW_H", "inf"),
    ({"PROCFLEET_COMPACT_INTERVAL_S": "0"}, "PROCFLEET_COMPACT_INTERVAL_S", "0"),
])
def test_invalid_settings_name_the_variable_and_the_value(env, key, bad):
    with pytest.raises(ConfigError) as caught:
        WorkerSettings.from_env(env)
    assert caught.value.key == key and caught.value.value == bad


def test_the_hot_window_and_compaction_interval_come_from_the_environment():
    settings = WorkerSettings.from_env({"PROCFLEET_HOT_WINDOW_H": "0.5",
                                        "PROCFLEET_COMPACT_INTERVAL_S": "60"})
    assert (settings.hot_window_h, settings.compact_interval_s) == (0.5, 60.0)
    assert (WorkerSettings().hot_window_h, WorkerSettings().compact_interval_s) == (2.0, 300.0)


def test_block_time_must_stay_well_under_the_socket_timeout():
    WorkerSettings(block_ms=5000, socket_timeout_s=10)
    with pytest.raises(ConfigError, match="half of socket_timeout_s"):
        WorkerSettings(block_ms=5001, socket_timeout_s=10)


def test_passwords_are_masked_in_the_start_line_settings():
    settings = WorkerSettings(redis_url="redis://:s3cret@cache:6379/0",
                              database_url="postgresql://app:hunter2@db:5432/procfleet")
    described = settings.describe()
    assert described["redis_url"] == "redis://:***@cache:6379/0"
    assert described["database_url"] == "postgresql://app:***@db:5432/procfleet"
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_each_worker_gets_a_distinct_consumer_name():
    first, second = WorkerSettings(), WorkerSettings()
    assert first.consumer_name != second.consumer_name
    host, pid, _random = first.consumer_name.rsplit("-", 2)
    assert host and pid.isdigit()


# -- rows --------------------------------------------------------------------------------


def process(server_id="s", ts=100.0, pid=1, start=50.0):
    return ("p", (server_id, ts, pid, start, None, None, "n", "", *[None] * 9))


def test_points_carry_the_key_and_what_moves_and_snapshots_follow_the_stream():
    assert TABLE_COLUMNS["process_samples"][:2] == ("key", "ts")
    assert "command" not in TABLE_COLUMNS["process_samples"]
    assert set(TABLE_COLUMNS["process_group_samples"]) == (
        set(stream.COLUMNS["g"]) - {"server_id", "name"}) | {"key"}
    assert TABLE_COLUMNS["snapshots"] == stream.COLUMNS["s"]


def test_process_without_start_time_gets_the_epoch_sentinel():
    rows = build_rows([process(start=None), process(pid=2)])
    [first, second] = rows.tables["process_samples"]
    assert first[0] == process_key("s", 1, UNKNOWN_START_TIME) and UNKNOWN_START_TIME == 0.0
    assert rows.identities[first[0]][3] == 0.0
    assert second[0] == process_key("s", 2, 50.0)
    assert len(first) == len(TABLE_COLUMNS["process_samples"])


def test_keys_are_stable_and_take_an_instant_in_either_stream_form():
    key = process_key("9f2c1d7e4b8a4c55a1e0d3b6c7f81234", 4242, 1_700_000_000.25)
    assert key == process_key("9f2c1d7e4b8a4c55a1e0d3b6c7f81234", 4242,
                              "2023-11-14T22:13:20.250000+00:00")
    assert -2**63 <= key < 2**63
    # fixed value: the SQL process_key() of migrations/0003 computes the same (tested there)
    assert process_key("srv", 1, 0.0) == process_key("srv", 1, "1970-01-01T00:00:00+00:00")
    assert len({process_key("srv", 1, 50.0), process_key("srv", 2, 50.0),
                process_key("srv", 1, 51.0), process_key("srv2", 1, 50.0)}) == 4
    # the length prefix keeps (server, name) pairs apart that concatenate alike
    assert group_key("a", "bc") != group_key("ab", "c")


def test_identities_are_one_per_process_per_batch_with_first_last_and_newest_values():
    older = ("p", ("s", 100.0, 7, 50.0, 1, "root", "old-name", "old", *[None] * 9))
    newer = ("p", ("s", 130.0, 7, 50.0, 1, "root", "new-name", "new", *[None] * 9))
    middle = ("p", ("s", 115.0, 7, 50.0, 1, "root", "mid-name", "mid", *[None] * 9))
    rows = build_rows([middle, newer, older])
    [identity] = rows.identities.values()
    assert identity[6:8] == [100.0, 130.0]
    assert identity[9:11] == ["new-name", "new"]
    assert len(rows.tables["process_samples"]) == 3


def test_two_identities_with_one_key_in_a_batch_raise_a_poison_error(monkeypatch):
    forge_keys(monkeypatch, {("s", 1, 50.0): 5, ("s", 2, 50.0): 5})
    with pytest.raises(KeyCollisionError) as caught:
        build_rows([process(pid=1), process(pid=2)])
    assert caught.value.key == 5 and isinstance(caught.value, ValueError)


def test_a_bad_pid_is_a_type_error_not_a_crash():
    with pytest.raises(TypeError, match="bad process identity"):
        build_rows([process(pid="12")])


def test_servers_are_seen_once_per_batch_with_first_last_and_newest_metadata():
    host_old = ("h", ("a", 90.0, "r1", "old", "linux", "", None, "1"))
    host_new = ("h", ("a", 120.0, "r2", "new", "linux", "", None, "2"))
    rows = build_rows([process("b", 300.0), host_new, process("a", 100.0), host_old,
                       process("a", 80.0)])
    [a, b] = rows.server_rows()
    assert a == ("a", "new", "linux", "", None, "2", "r2", 120.0, 80.0, 120.0)
    assert b[0] == "b" and b[-3:] == (None, 300.0, 300.0)
    assert rows.host_messages == 2 and len(rows) == 5


def test_a_sighting_never_moves_past_the_clock_but_samples_keep_their_ts():
    host_ahead = ("h", ("a", 9_000.0, "r1", "ahead", "linux", "", None, "1"))
    rows = build_rows([process("a", 8_000.0), host_ahead, process("a", 500.0)],
                      clock=lambda: 1_000.0)
    [a] = rows.server_rows()
    assert a[-3:] == (1_000.0, 500.0, 1_000.0)  # metadata_at, first_seen_at, last_seen_at
    assert [row[1] for row in rows.tables["process_samples"]] == [8_000.0, 500.0]


def test_identity_sightings_never_move_past_the_clock_nor_refresh_every_batch():
    from digest_worker.identity import IdentityWriter
    writer = IdentityWriter(refresh_s=45.0)
    rows = build_rows([process("a", 8_000.0), process("a", 500.0, pid=2),
                       ("g", ("a", 9_000.0, "nginx", *[None] * 15))], writer,
                      clock=lambda: 1_000.0)
    assert sorted(row[6:8] for row in rows.identities.values()) == [[500.0, 500.0],
                                                                     [1_000.0, 1_000.0]]
    assert [row[2:4] for row in rows.groups.values()] == [[1_000.0, 1_000.0]]
    writer.remember(rows.identities, rows.groups)
    # the host stays an hour ahead: its identities are due once per refresh window of this
    # worker's clock, not at every sample
    later = [process("a", 8_030.0), ("g", ("a", 9_030.0, "nginx", *[None] * 15))]
    assert build_rows(later, writer, clock=lambda: 1_030.0).identities == {}
    due = build_rows(later, writer, clock=lambda: 1_050.0)
    assert [row[7] for row in due.identities.values()] == [1_050.0]
    assert [row[3] for row in due.groups.values()] == [1_050.0]


def test_points_list_their_server_and_ts_once_for_the_late_marks():
    group = ("g", ("a", 100.0, "nginx", *[None] * 15))
    rows = build_rows([process("a", 100.0), process("a", 100.0, pid=2), group,
                       process("b", 100.0), process("a", 115.0), process("a", 100.0, pid=3)])
    assert rows.late_marks == {"processes": {("a", 100.0), ("b", 100.0), ("a", 115.0)},
                               "groups": {("a", 100.0)}}


@pytest.mark.parametrize("bad", [
    process(ts="yesterday"), process(server_id=7), ("h", (["x"], 1.0, *[None] * 6)),
])
def test_values_that_cannot_be_rows_raise_type_error(bad):
    with pytest.raises(TypeError):
        build_rows([bad])


# -- timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0, 1_790_000_000.123456, 1_790_000_000.9999995, -1.5])
def test_timestamp_codec_matches_datetime_fromtimestamp(seconds):
    moment = datetime.fromtimestamp(seconds, UTC)
    (microseconds,) = struct.unpack("!q", encode_timestamptz(seconds))
    assert datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=microseconds) == moment
    assert decode_timestamptz(encode_timestamptz(seconds)) == moment
    assert encode_timestamptz(moment) == encode_timestamptz(seconds)


@pytest.mark.parametrize("bad", [None, [1.0], b"2026-01-01T00:00:00+00:00"])
def test_timestamp_codec_rejects_what_is_not_a_timestamp(bad):
    with pytest.raises(TypeError):
        encode_timestamptz(bad)


@pytest.mark.parametrize(("text", "reason"), [
    ("2026-01-01", "without a UTC offset"),
    ("2026-01-01T10:00:00", "without a UTC offset"),
    ("yesterday", "not RFC 3339"),
])
def test_timestamp_codec_rejects_text_that_is_not_an_instant(text, reason):
    with pytest.raises(ValueError, match=reason):
        encode_timestamptz(text)


@pytest.mark.parametrize("text", ["2026-03-01T12:30:15.123456+02:00",
                                  "2026-03-01T10:30:15.123456+00:00",
                                  "2026-03-01T10:30:15.123456Z"])
def test_rfc3339_text_and_epoch_seconds_of_one_instant_give_one_key(text):
    # ``ts`` travels as epoch seconds and start times as text: one instant must give one key
    # whichever form reached the codec.
    seconds = datetime(2026, 3, 1, 10, 30, 15, 123456, tzinfo=UTC).timestamp()
    assert encode_timestamptz(text) == encode_timestamptz(seconds)


def test_timestamp_out_of_range_is_a_value_error():
    with pytest.raises(ValueError, match="out of range"):
        to_pg_microseconds(1e20)


# -- decoding a batch --------------------------------------------------------------------


def entry(fields, deliveries=1, entry_id=b"1-0"):
    return Entry(0, entry_id, fields, deliveries)


def encoded(kind, row):
    return [x for pair in stream.encode(kind, row).items() for x in pair]


def as_tuples(messages):
    return [(kind, tuple(row)) for kind, row in messages]


def test_decode_batch_sets_aside_undecodable_and_over_delivered_entries():
    good = entry(encoded(*process()), entry_id=b"1-1")
    tired = entry(encoded(*process()), deliveries=6, entry_id=b"1-2")
    garbage = entry([b"v", b"1", b"d", b"not json"], entry_id=b"1-3")
    gone = entry(None, entry_id=b"1-4")  # deleted while pending

    batch = decode_batch([good, tired, garbage, gone], max_deliveries=5)

    assert as_tuples(batch.messages) == [process()] and batch.sources == [good]
    assert [(e, label) for e, label, _reason in batch.dead] == [
        (tired, MAX_DELIVERIES), (garbage, UNDECODABLE)]
    assert batch.dead[0][2] == "delivered 6 times (max_deliveries=5)"
    assert len(batch) == 4


def test_decode_batch_reads_entries_with_extra_fields():
    fields = [b"trace", b"x", *encoded(*process())]
    batch = decode_batch([entry(fields)], max_deliveries=5)
    assert as_tuples(batch.messages) == [process()]


# -- retries -----------------------------------------------------------------------------


async def test_retry_logs_each_attempt_with_the_next_delay_then_succeeds(caplog):
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("down")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="digest_worker"):
        result = await retry_until_stopped("database", flaky, stopping=asyncio.Event(),
                                           max_delay_s=0.01)
    assert result == "ok" and len(calls) == 3
    warnings = [r for r in caplog.records if r.getMessage() == "database unavailable, retrying"]
    assert [r.kv["attempt"] for r in warnings] == [1, 2]
    assert all(r.kv["next_delay_s"] >= 0 and "ConnectionRefusedError" in r.kv["error"]
               for r in warnings)


async def test_retry_gives_up_once_the_worker_is_stopping():
    stopping = asyncio.Event()

    async def always_down() -> None:
        stopping.set()
        raise ConnectionRefusedError("down")

    with pytest.raises(ConnectionRefusedError):
        await retry_until_stopped("redis", always_down, stopping=stopping, max_delay_s=0.01)


async def test_worker_waiting_for_an_unreachable_redis_stops_cleanly(caplog):
    from digest_worker.worker import Worker
    from procfleet.embedded import free_port

    worker = Worker(WorkerSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                   socket_timeout_s=1, block_ms=100, retry_max_delay_s=0.05))
    with caplog.at_level(logging.INFO, logger="digest_worker"):
        task = asyncio.create_task(worker.run())
        while not any(r.getMessage() == "redis unavailable, retrying" for r in caplog.records):
            await asyncio.sleep(0.02)
        worker.stop("sigterm")
        summary = await asyncio.wait_for(task, 10)
    assert summary.rows == 0
    [stopped] = [r for r in caplog.records if r.getMessage() == "worker stopped"]
    assert stopped.kv["reason"] == "sigterm"


def test_a_worker_process_collects_on_a_timer_and_never_walks_its_start_up_objects():
    probe = ("import gc; from digest_worker.worker import tune_gc; "
             "tune_gc(); print(gc.isenabled(), gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "True"]


# -- run totals --------------------------------------------------------------------------


def test_run_totals_add_batches_and_the_summary_rate_covers_one_window():
    from digest_worker.monitor import WorkerSummary

    totals = WorkerSummary(window_started_s=100.0)
    totals.add_batch(rows=300, inserted=290, duplicates=10, dead_lettered=0, done_s=101.0)
    totals.add_batch(rows=100, inserted=99, duplicates=0, dead_lettered=1, done_s=102.0)

    assert (totals.batches, totals.rows, totals.inserted, totals.duplicates,
            totals.dead_lettered) == (2, 400, 389, 10, 1)
    assert totals.take_window_rate(now_s=104.0) == 100.0  # 400 rows in 4 s
    assert totals.take_window_rate(now_s=106.0) == 0.0  # a new window, nothing since
    assert totals.rows == 400  # the run's totals stay


def test_samples_of_identities_written_within_the_refresh_window_add_no_identity_row():
    from digest_worker.identity import IdentityWriter
    writer = IdentityWriter(refresh_s=45.0)
    clock = lambda: 200.0  # noqa: E731
    first = build_rows([process(ts=100.0)], writer, clock=clock)
    writer.remember(first.identities, first.groups)  # as after COMMIT
    assert build_rows([process(ts=140.0)], writer, clock=clock).identities == {}
    due = build_rows([process(ts=150.0)], writer, clock=clock)  # > last_seen + refresh_s
    assert [row[7] for row in due.identities.values()] == [150.0]
    older = build_rows([process(ts=90.0)], writer, clock=clock)  # before first_seen
    assert [row[6] for row in older.identities.values()] == [90.0]
    # without a writer, every identity is there
    assert len(build_rows([process(ts=140.0)], clock=clock).identities) == 1


def test_an_identity_written_longer_ago_than_the_trust_window_is_written_again():
    # The retention may have expired it since: a replayed sample must bring it back.
    from digest_worker.identity import IdentityWriter
    writer = IdentityWriter(refresh_s=45.0, trust_s=3600.0)
    first = build_rows([process(ts=100.0)], writer, clock=lambda: 200.0)
    writer.remember(first.identities, first.groups)
    stale = build_rows([process(ts=120.0)], writer, clock=lambda: 100.0 + 3601.0)
    assert [row[7] for row in stale.identities.values()] == [120.0]
    group = ("g", ("s", 100.0, "nginx", *[None] * 15))
    first = build_rows([group], writer, clock=lambda: 200.0)
    writer.remember(first.identities, first.groups)
    assert build_rows([group], writer, clock=lambda: 200.0).groups == {}
    assert len(build_rows([group], writer, clock=lambda: 100.0 + 3601.0).groups) == 1


def test_the_identity_memo_is_bounded():
    from digest_worker.identity import IdentityWriter
    writer = IdentityWriter(max_entries=3)
    rows = build_rows([process(pid=pid) for pid in (1, 2)], writer)
    writer.remember(rows.identities, rows.groups)
    assert len(writer.processes["s"]) == 2
    rows = build_rows([process(pid=pid) for pid in (3, 4)], writer)
    writer.remember(rows.identities, rows.groups)  # 4 entries > 3: all but this batch's go
    assert sorted(writer.processes["s"]) == [3, 4] and writer.entries == 2
    assert len(build_rows([process(pid=1)], writer).identities) == 1  # due again


def test_a_known_key_with_another_identity_is_not_skipped(monkeypatch):
    from digest_worker.identity import IdentityWriter
    writer = IdentityWriter()
    first = build_rows([process(pid=1)], writer)
    writer.remember(first.identities, first.groups)
    [key] = first.identities
    forge_keys(monkeypatch, {("s", 2, 50.0): key})  # a collision
    rows = build_rows([process(pid=2)], writer)
    assert list(rows.identities) == [key] and rows.identities[key][2] == 2


def test_identity_rows_of_one_key_merge_to_the_widest_span_and_newest_values():
    from digest_worker.identity import FIRST, G_FIRST, merge_rows
    older = [7, "s", 1, 50.0, 1, 10, 100.0, 100.0, "root", "old", "old -x", None, None]
    newer = [7, "s", 1, 50.0, 2, 11, 130.0, 130.0, "root", "new", "new -y", None, None]
    merged = merge_rows([newer, older], FIRST)
    assert merged == {7: [7, "s", 1, 50.0, 2, 11, 100.0, 130.0, "root", "new", "new -y",
                          None, None]}
    assert older[6:8] == [100.0, 100.0]  # the rows themselves are left alone
    groups = merge_rows([[9, "s", 120.0, 125.0, "nginx"], [9, "s", 100.0, 110.0, "nginx"]],
                        G_FIRST)
    assert groups == {9: [9, "s", 100.0, 125.0, "nginx"]}
    with pytest.raises(KeyCollisionError):
        merge_rows([older, [7, "s", 2, 50.0, *older[4:]]], FIRST)
    with pytest.raises(KeyCollisionError):
        merge_rows([[9, "s", 1.0, 1.0, "a"], [9, "s", 1.0, 1.0, "b"]], G_FIRST)
