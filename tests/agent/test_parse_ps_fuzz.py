"""Arbitrary text never crashes parse_ps, and whatever it returns is a valid ProcessSample."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import contract
from agent.parsers.ps import looks_like_ps, parse_ps
from agent.parsers.result import MAX_KEPT_ERRORS, ParseResult
from agent.rows import ProcessSample

NOW = datetime(2026, 3, 12, 15, 30, tzinfo=UTC)
HEADERS = [
    "USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND",
    "USER               PID  %CPU %MEM      VSZ    RSS   TT  STAT STARTED      TIME COMMAND",
    "UID          PID    PPID  C STIME TTY          TIME CMD",
    "    PID TTY          TIME CMD",
    "PID   PPID  USER     VSZ  RSS  STAT TIME   COMMAND",
    "  PID USER       VSZ STAT COMMAND",
    "    PID    PPID USER                 STARTED     TIME CMD",
]
# Tokens that each column accepts somewhere, and near misses, so that random rows get deep
# into the column readers instead of failing on the first token.
TOKENS = [
    "1", "0", "4242", "99999999999", "root", "systemd+", "-", "?", "??", "pts/0", "0:0", "Ss",
    "Z", "S<", "0.0", "12.5", "102", "1,5", "168532", "12m", "2.1g", "1.5q", "09:41", "9:41AM",
    "Tue02PM", "Jan05", "Feb29", "2025", "26Jan25", "Mon", "Feb", "2", "08:00:01", "2026",
    "0:00", "1234:56", "3-04:05:06", "58:12.34", "99:99", "[kworker/0:1]", "[sh]", "<defunct>",
    "{comm}", "(bash)", "-bash", "postgres:", "/Applications/A B.app/Contents/MacOS/A B",
    ".app/Contents/MacOS/", "\\_", "|", "\t", "\x00", "\u2028", "é", "COMMAND", "PID",
]


def assert_valid(result: ParseResult, text: str) -> None:
    assert isinstance(result, ParseResult)
    lines = [line for line in text.lstrip("\ufeff").split("\n") if line.strip()]
    assert len(result.processes) + result.unparsed_lines <= len(lines)
    assert len(result.errors) == min(result.unparsed_lines, MAX_KEPT_ERRORS)
    for process in result.processes:
        assert isinstance(process, ProcessSample)
        # the agent's light row is valid by the contract's pydantic model, with equal values
        checked = contract.ProcessSample.model_validate(process.model_dump())
        assert checked.model_dump(mode="json") == process.model_dump(mode="json")
        assert process.start_time is None or process.start_time.tzinfo is not None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_crashes(text: str) -> None:
    looks_like_ps(text)
    assert_valid(parse_ps(text, now=NOW, tz=UTC), text)


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(HEADERS),
    rows=st.lists(st.lists(st.sampled_from(TOKENS), max_size=16), max_size=12),
    spacing=st.sampled_from([" ", "  ", "\t", " \t "]),
)
def test_token_soup_under_real_headers_never_crashes(
    header: str, rows: list[list[str]], spacing: str
) -> None:
    text = "\n".join([header, *(spacing.join(row) for row in rows)])
    assert_valid(parse_ps(text, now=NOW, tz=UTC), text)


@settings(deadline=None)  # the machine is shared: no per-example time limit
@given(header=st.sampled_from(HEADERS), rows=st.lists(st.text(max_size=200), max_size=8))
def test_arbitrary_rows_under_real_headers_never_crash(header: str, rows: list[str]) -> None:
    text = "\n".join([header, *rows])
    assert_valid(parse_ps(text), text)  # default now and local zone


# One pool per column of ps aux, each mostly valid: most rows parse, so the values that come
# out of every reader combination are checked against the contract.
AUX_POOLS = [
    ["root", "systemd+", "_windowserver", "1000", "-", "x" * 80],
    ["1", "4242", "4294967295", "4294967296", "0"],
    ["0.0", "12.5", "102", "99999.9", "1,5", "-"],
    ["0.0", "18.0", "100.0", "100.1", "-"],
    ["0", "168532", "12m", "2.1g", "1125899906842624", "-"],
    ["0", "13212", "119m", "1.5g", "-"],
    ["?", "??", "pts/0", "s000", "0:0", "-", "tty/" * 20],
    ["Ss", "Z", "S<Ll", "R+", "-", "I" * 17],
    ["09:41", "9:41AM", "12:05PM", "Tue02PM", "Wed14", "Jan05", "Feb29", "2025", "26Jan25",
     "Mon Feb  2 08:00:01 2026", "Jan 05", "23:59:59", "-"],
    ["0:00", "1234:56", "3-04:05:06", "58:12.34", "4711", "-", "999999999999:00"],
    ["/sbin/init splash", "[kworker/0:1]", "[sh] <defunct>", "-bash", "(x)", "{a} b", " ",
     "/Applications/A B.app/Contents/MacOS/A B --x", "\\_ postgres: checkpointer", "x" * 5000],
]


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(*(st.sampled_from(pool) for pool in AUX_POOLS)), max_size=10))
def test_plausible_aux_rows_give_valid_samples(rows: list[tuple[str, ...]]) -> None:
    text = "\n".join([HEADERS[0], *(" ".join(row) for row in rows)])
    result = parse_ps(text, now=NOW, tz=UTC)
    assert_valid(result, text)
    assert len(result.processes) + result.unparsed_lines == len(rows)
