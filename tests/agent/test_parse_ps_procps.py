"""procps (Linux) outputs: ps aux / auxf / -ef / -e / -l, with the rows that trip parsers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.parsers.ps import looks_like_ps, parse_ps
from agent.parsers.result import ParseResult
from agent.rows import ProcessSample

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ps"
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 3, 12, 15, 30, tzinfo=NEW_YORK)  # the outputs were "taken" then
KIB = 1024


def parse_fixture(name: str) -> ParseResult:
    return parse_ps((FIXTURES / name).read_text(), now=NOW, tz=NEW_YORK)


def by_pid(result: ParseResult) -> dict[int, ProcessSample]:
    return {p.pid: p for p in result.processes}


@pytest.fixture(scope="module")
def aux() -> ParseResult:
    return parse_fixture("procps_aux.txt")


def test_aux_is_procps_and_every_good_row_is_read(aux: ParseResult) -> None:
    assert aux.format == "ps-procps"
    assert sorted(by_pid(aux)) == [1, 2, 14, 812, 901, 1180, 1185, 1301, 4100, 4242, 4300,
                                   5000, 6000]


def test_aux_row_has_every_field_converted(aux: ParseResult) -> None:
    assert by_pid(aux)[1301] == ProcessSample(
        pid=1301,
        user="mysql",
        name="mysqld",
        command="/usr/sbin/mysqld",
        state="Ssl",
        start_time=datetime(2026, 1, 5, tzinfo=NEW_YORK),
        cpu_seconds_total=1234 * 60 + 56.0,  # TIME 1234:56: minutes past 59
        cpu_percent=12.5,
        memory_percent=18.0,
        rss_bytes=1468320 * KIB,
        vsz_bytes=2451232 * KIB,
        tty=None,
    )


def test_aux_start_forms_resolve_against_now(aux: ParseResult) -> None:
    rows = by_pid(aux)
    assert rows[4242].start_time == datetime(2026, 3, 12, 9, 41, tzinfo=NEW_YORK)  # 09:41
    assert rows[812].start_time == datetime(2026, 2, 27, tzinfo=NEW_YORK)  # Feb27
    assert rows[1].start_time == datetime(2025, 1, 1, tzinfo=NEW_YORK)  # 2025
    assert rows[6000].start_time == datetime(2026, 3, 11, tzinfo=NEW_YORK)  # Mar11


def test_aux_truncated_user_is_kept_as_printed(aux: ParseResult) -> None:
    assert by_pid(aux)[812].user == "systemd+"
    assert by_pid(aux)[812].name == "systemd-timesyncd"


def test_aux_kernel_thread_is_named_by_its_brackets(aux: ParseResult) -> None:
    thread = by_pid(aux)[14]
    assert (thread.name, thread.command, thread.rss_bytes) == (
        "kworker/0:1-events", "[kworker/0:1-events]", 0)


def test_aux_zombie_keeps_its_state_and_name(aux: ParseResult) -> None:
    zombie = by_pid(aux)[4300]
    assert (zombie.name, zombie.state, zombie.command) == ("sh", "Z", "[sh] <defunct>")


def test_aux_names_of_retitled_processes_and_login_shells(aux: ParseResult) -> None:
    rows = by_pid(aux)
    assert rows[1185].name == "postgres"
    assert rows[1185].command == "postgres: 15/main: checkpointer"
    assert rows[6000].name == "nginx"
    assert rows[4100].name == "bash"
    assert rows[901].name == "@dbus-daemon"


def test_aux_overflowing_columns_that_still_have_a_separator_are_read(aux: ParseResult) -> None:
    big = by_pid(aux)[5000]
    assert big.vsz_bytes == 120259101048 * KIB
    assert big.rss_bytes == 13904 * KIB
    assert big.cpu_percent == 102.0


def test_aux_glued_and_cut_rows_are_rejected_not_guessed(aux: ParseResult) -> None:
    assert aux.unparsed_lines == 2
    assert 5001 not in by_pid(aux) and 5002 not in by_pid(aux)
    assert aux.errors[0].startswith("line 14: bad size '?'")
    assert aux.errors[1].startswith("line 15: row ends before the last column")


def test_auxf_tree_drawing_is_not_part_of_the_command() -> None:
    rows = by_pid(parse_fixture("procps_auxf.txt"))
    assert rows[4090].command == "sshd: alice [priv]"
    assert rows[4100].command == "-bash"
    assert rows[4501].name == "ps"
    assert rows[880].command == "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"


def test_ef_reads_ppid_and_day_hour_cpu_time() -> None:
    result = parse_fixture("procps_ef.txt")
    rows = by_pid(result)
    assert (result.format, result.unparsed_lines) == ("ps-procps", 0)
    assert rows[4242].ppid == 4100
    assert rows[1301].cpu_seconds_total == 20 * 3600 + 34 * 60 + 56
    assert rows[1402].cpu_seconds_total == 3 * 86400 + 4 * 3600 + 5 * 60 + 6
    assert rows[4242].start_time == datetime(2026, 3, 12, 9, 41, tzinfo=NEW_YORK)
    assert rows[4242].name == "firefox"


def test_e_prints_the_short_name_under_cmd_which_may_have_spaces() -> None:
    rows = by_pid(parse_fixture("procps_e.txt"))
    assert rows[4242].name == "Web Content"
    assert rows[14].name == "kworker/0:1-events"
    assert (rows[4300].name, rows[4300].command) == ("sh", "sh <defunct>")


def test_long_format_reads_numeric_uid_and_state() -> None:
    text = (
        "F S   UID     PID    PPID  C PRI  NI ADDR SZ WCHAN  TTY          TIME CMD\n"
        "4 S     0       1       0  0  80   0 - 42133 -      ?        00:00:01 systemd\n"
        "0 R  1000    4501    4100  0  80   0 -  2804 -      pts/0    00:00:00 ps\n"
    )
    rows = by_pid(parse_ps(text, now=NOW, tz=NEW_YORK))
    assert (rows[1].user, rows[1].state, rows[1].ppid, rows[1].name) == ("0", "S", 0, "systemd")
    assert (rows[4501].user, rows[4501].state, rows[4501].tty) == ("1000", "R", "pts/0")


def test_custom_columns_with_lstart_give_exact_start() -> None:
    text = (
        "    PID    PPID USER                 STARTED     TIME CMD\n"
        "   4242    4100 alice    Thu Mar 12 09:41:07 2026 00:13:05 /usr/lib/firefox/firefox\n"
    )
    row = parse_ps(text, now=NOW, tz=NEW_YORK).processes[0]
    assert row.start_time == datetime(2026, 3, 12, 9, 41, 7, tzinfo=NEW_YORK)
    assert (row.user, row.ppid, row.cpu_seconds_total) == ("alice", 4100, 785.0)


def test_prompt_before_the_header_is_counted_not_parsed() -> None:
    text = "$ ps aux\n" + (FIXTURES / "procps_auxf.txt").read_text()
    result = parse_ps(text, now=NOW, tz=NEW_YORK)
    assert len(result.processes) == 5
    assert result.unparsed_lines == 1
    assert "before the ps header" in result.errors[0]


def test_concatenated_outputs_each_use_their_own_header() -> None:
    text = (FIXTURES / "procps_e.txt").read_text() + (FIXTURES / "procps_ef.txt").read_text()
    result = parse_ps(text, now=NOW, tz=NEW_YORK)
    assert (len(result.processes), result.unparsed_lines) == (5 + 7, 0)
    assert result.processes[5].user == "root"  # the first row of ps -ef


def test_windows_line_endings_and_bom_are_accepted() -> None:
    text = "\ufeff" + (FIXTURES / "procps_ef.txt").read_text().replace("\n", "\r\n")
    result = parse_ps(text, now=NOW, tz=NEW_YORK)
    assert (len(result.processes), result.unparsed_lines) == (7, 0)
    assert result.processes[0].command == "/sbin/init splash"


def test_header_with_the_command_in_the_middle_rejects_rows() -> None:
    text = "  PID COMMAND         TIME CMD\n    1 Web Content 00:00:01 /usr/lib/firefox/firefox\n"
    result = parse_ps(text, now=NOW, tz=NEW_YORK)
    assert result.processes == []
    assert result.unparsed_lines == 2
    assert "command column before the last" in result.errors[0]


def test_text_without_a_header_is_all_unparsed() -> None:
    result = parse_ps("hello\nworld\n")
    assert (result.format, result.processes, result.unparsed_lines) == ("ps", [], 2)


@pytest.mark.parametrize(
    "name", ["procps_aux.txt", "procps_auxf.txt", "procps_ef.txt", "procps_e.txt"]
)
def test_procps_fixtures_look_like_ps(name: str) -> None:
    assert looks_like_ps((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world\n",
        '"Image Name","PID","Session Name","Session#","Mem Usage"\n',
        "Image Name                     PID Session Name        Session#    Mem Usage\n",
        "1 root 0:00 COMMAND\n",
    ],
)
def test_other_texts_do_not_look_like_ps(text: str) -> None:
    assert not looks_like_ps(text)


def test_header_after_blank_lines_is_found() -> None:
    text = "\n" * 30 + (FIXTURES / "procps_ef.txt").read_text()
    assert looks_like_ps(text)
    assert len(parse_ps(text, now=NOW, tz=NEW_YORK).processes) == 7


PLAIN_FIXTURES = sorted(
    p.name for p in FIXTURES.glob("*.txt") if not p.name.startswith("collector")
)


@pytest.mark.parametrize("name", PLAIN_FIXTURES)
def test_auto_detection_calls_every_ps_fixture_ps(name: str) -> None:
    from agent.parsers import detect_format

    assert detect_format((FIXTURES / name).read_text()) == "ps"
