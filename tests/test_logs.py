"""The log line formats operators tail: logfmt by default, JSON on request."""

import json
import logging

import pytest

from procfleet.logs import JsonFormatter, LogfmtFormatter, setup_logging


def _record(msg: str = "batch", **kv) -> logging.LogRecord:
    record = logging.LogRecord("digest_worker.worker", logging.INFO, __file__, 1, msg, (), None)
    record.kv = kv
    return record


def test_logfmt_line_has_fixed_keys_then_pairs_in_order():
    line = LogfmtFormatter().format(_record(rows=1000, inserted=998, insert_ms=7.1))
    assert line.split(" ", 1)[1] == (
        "level=info logger=digest_worker.worker msg=batch rows=1000 inserted=998 insert_ms=7.1"
    )
    assert line.startswith("ts=") and line.split(" ", 1)[0].endswith("Z")


def test_logfmt_quotes_values_with_spaces_quotes_equals_or_control_characters():
    line = LogfmtFormatter().format(
        _record("gateway stopping", reason='a "b"', empty="", expr="a=b", nl="x\ny")
    )
    assert 'msg="gateway stopping"' in line
    assert r'reason="a \"b\""' in line
    assert 'empty=""' in line and 'expr="a=b"' in line and r'nl="x\ny"' in line


def test_json_line_carries_the_same_keys():
    doc = json.loads(JsonFormatter().format(_record(rows=3, server_id="srv-1")))
    assert {k: doc[k] for k in ("level", "logger", "msg", "rows", "server_id")} == {
        "level": "info", "logger": "digest_worker.worker", "msg": "batch", "rows": 3,
        "server_id": "srv-1",
    }


def test_exception_traceback_is_one_quoted_value():
    try:
        raise ValueError("bad value 42")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = LogfmtFormatter().format(record)
    assert "\n" not in line and "bad value 42" in line


def test_unknown_log_format_is_refused_with_the_bad_value():
    with pytest.raises(SystemExit, match="'xml'"):
        setup_logging("xml")
