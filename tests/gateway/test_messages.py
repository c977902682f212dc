"""Report → stream messages: column order, the fast encoders, the RESP framing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from agent.contract import ProcessGroup, ProcessSample, Report
from ingest_gateway import stream
from ingest_gateway.ingest.enqueue import frame_xadds, xadd_prefix
from ingest_gateway.ingest.messages import cap_utf8, report_messages
from ingest_gateway.ingest.resp import pack_command
from tests.support.reports import report_doc


def test_every_stream_column_is_a_model_field_kept_in_its_dict():
    # messages.py reads each column from the model's __dict__ by field name.
    assert set(stream.COLUMNS["p"][2:]) <= set(ProcessSample.model_fields)
    assert set(stream.COLUMNS["g"][2:]) <= set(ProcessGroup.model_fields)
    sample = ProcessSample.model_validate_json(b'{"pid": 1, "name": "x"}')  # defaults too
    assert set(sample.__dict__) == set(ProcessSample.model_fields)


def test_row_encoder_gives_the_bytes_of_encode_data():
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    rest = (42, moment, None, "root", "naïve \"name\"", 1.5, 2**60)
    fast = stream.row_encoder("p", "srv", 1_700_000_000.25)(rest)

    assert fast == stream.encode_data("p", ("srv", 1_700_000_000.25, *rest))
    assert orjson.loads(fast) == [stream.SCHEMA_VERSION, "p", "srv", 1_700_000_000.25, 42,
                                  "2026-03-01T12:30:15.123456+02:00", None, "root",
                                  "naïve \"name\"", 1.5, 2**60]
    assert stream.row_encoder("p", "srv")(()) == b'[%d,"p","srv"]' % stream.SCHEMA_VERSION


def test_encode_data_is_the_one_field_of_encode():
    row = ("srv", 1.5, 7, None, "x")
    assert stream.encode("p", row) == {stream.FIELD_MESSAGE: stream.encode_data("p", row)}


def test_report_messages_decode_back_to_the_report():
    report = Report.model_validate_json(orjson.dumps(report_doc(processes=3, groups=2)))
    messages = report_messages(report, shards=4, max_raw_output_bytes=1000)

    decoded = [stream.decode([stream.FIELD_MESSAGE, data]) for data in messages.payloads]
    assert [kind for kind, _ in decoded] == ["h", "g", "g", "p", "p", "p"]
    assert messages.shard == stream.shard_for(report.host.server_id, 4)
    assert (messages.processes, messages.groups) == (3, 2)
    first_process = dict(zip(stream.COLUMNS["p"], decoded[3][1], strict=True))
    source = report.processes[0]
    assert datetime.fromisoformat(first_process["start_time"]) == source.start_time
    assert first_process["ts"] == report.collected_at.timestamp()
    assert first_process["rss_bytes"] == source.rss_bytes
    first_group = dict(zip(stream.COLUMNS["g"], decoded[1][1], strict=True))
    assert datetime.fromisoformat(first_group["oldest_start_time"]) == \
        report.process_groups[0].oldest_start_time


@pytest.mark.parametrize(("text", "limit", "expected"), [
    (None, 5, None),
    ("short", 100, "short"),
    ("abcdef", 3, "abc"),
    ("ééé", 3, "é"),  # 6 bytes; a cut inside the second character drops it
    ("日本語", 7, "日本"),
])
def test_cap_utf8_never_splits_a_character(text, limit, expected):
    assert cap_utf8(text, limit) == expected


def test_xadd_framing_is_what_redis_expects():
    payloads = [b'[2,"p",1]', b'[2,"p","\\r\\n"]']
    framed = frame_xadds(xadd_prefix(3), payloads)

    expected = b"".join(
        pack_command("XADD", stream.sample_stream(3), "*", stream.FIELD_MESSAGE, data)
        for data in payloads)
    assert framed == expected


def test_datetimes_keep_their_offset_and_microseconds():
    moment = datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))
    (text,) = orjson.loads(stream.encode_data("p", (moment,)))[2:]
    assert datetime.fromisoformat(text) == moment == moment.astimezone(UTC)
    assert datetime.fromisoformat(text).timestamp() == moment.timestamp()


# -- decoding ------------------------------------------------------------------------------


def test_decode_takes_the_flat_field_list_or_a_mapping():
    row = ("srv", 1.5, 7, None, "x", *([None] * 12))
    payload = stream.encode_data("p", row)
    assert stream.decode([stream.FIELD_MESSAGE, payload]) == ("p", list(row))
    assert stream.decode({stream.FIELD_MESSAGE: payload}) == ("p", list(row))
    assert stream.decode([b"trace", b"x", stream.FIELD_MESSAGE, payload]) == ("p", list(row))


@pytest.mark.parametrize(("fields", "reason"), [
    ([b"m", b"{nope"], "unreadable payload"),
    ([b"m", b'["p","srv"]'], "not a schema 2 message"),
    ([b"m", b'[2,"zz",1]'], "unknown message kind 'zz'"),
    ([b"m", b'[2,"h","srv",1.5]'], "kind 'h' has 2 columns, expected 8"),
    ([b"m", b'[1,"p","srv"]'], "not a schema 2 message"),
    ([b"v", b"1", b"d", b'["p",1]'], "no field b'm': not a procfleet message"),
    ([b"other", b"x"], "no field b'm': not a procfleet message"),
])
def test_decode_names_what_is_wrong(fields, reason):
    with pytest.raises(stream.StreamDecodeError, match=reason.replace("(", r"\(")):
        stream.decode(fields)
