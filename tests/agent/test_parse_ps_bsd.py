"""macOS / FreeBSD outputs: STARTED as 9:41AM / Tue02PM / 26Jan25, TIME with hundredths,
app bundles whose paths have spaces."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.parsers.ps import looks_like_ps, name_of, parse_ps
from agent.parsers.result import ParseResult
from agent.rows import ProcessSample

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ps"
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 3, 12, 15, 30, tzinfo=NEW_YORK)  # Thursday
KIB = 1024


def parse_fixture(name: str) -> ParseResult:
    return parse_ps((FIXTURES / name).read_text(), now=NOW, tz=NEW_YORK)


@pytest.fixture(scope="module")
def mac() -> dict[int, ProcessSample]:
    result = parse_fixture("bsd_macos_aux.txt")
    assert (result.format, result.unparsed_lines) == ("ps-bsd", 0)
    return {p.pid: p for p in result.processes}


def test_macos_row_has_every_field_converted(mac: dict[int, ProcessSample]) -> None:
    assert mac[153] == ProcessSample(
        pid=153,
        user="_windowserver",
        name="WindowServer",
        command="/System/Library/PrivateFrameworks/SkyLight.framework/Resources/WindowServer"
        " -daemon",
        state="Ss",
        start_time=datetime(2026, 3, 12, 9, 41, tzinfo=NEW_YORK),
        cpu_seconds_total=58 * 60 + 12.34,
        cpu_percent=12.3,
        memory_percent=0.9,
        rss_bytes=150000 * KIB,
        vsz_bytes=412345680 * KIB,
        tty=None,  # "??"
    )


def test_macos_started_forms(mac: dict[int, ProcessSample]) -> None:
    assert mac[12345].start_time == datetime(2026, 3, 10, 14, tzinfo=NEW_YORK)  # Tue02PM
    assert mac[5555].start_time == datetime(2026, 3, 9, 11, tzinfo=NEW_YORK)  # Mon11AM
    assert mac[1].start_time == datetime(2025, 1, 26, tzinfo=NEW_YORK)  # 26Jan25
    assert mac[444].start_time == datetime(2026, 3, 5, tzinfo=NEW_YORK)  # " 5Mar26"
    assert mac[22222].start_time == datetime(2026, 3, 12, 15, 15, tzinfo=NEW_YORK)  # 3:15PM
    assert mac[22400].start_time == datetime(2026, 3, 12, 12, 5, tzinfo=NEW_YORK)  # 12:05PM


def test_macos_cpu_time_with_minutes_past_59(mac: dict[int, ProcessSample]) -> None:
    assert mac[1].cpu_seconds_total == pytest.approx(1234 * 60 + 56.78)
    assert mac[22400].cpu_percent == 100.0


def test_app_bundle_executable_is_named_in_full(mac: dict[int, ProcessSample]) -> None:
    assert mac[987].name == "Google Chrome"
    assert mac[12345].name == "Google Chrome Helper (Renderer)"
    assert mac[12345].command.endswith("--type=renderer --lang=en-US --num-raster-threads=4")
    assert mac[5555].name == "Electron"  # executable named differently from its bundle


def test_application_support_path_keeps_its_space(mac: dict[int, ProcessSample]) -> None:
    assert mac[22400].name == "helper"


def test_long_user_name_shifts_the_row_but_is_read(mac: dict[int, ProcessSample]) -> None:
    row = mac[613]
    assert (row.user, row.name, row.rss_bytes) == ("verylongusername_for_ci", "ci-agent",
                                                   9000 * KIB)


def test_unreadable_arguments_and_zombies(mac: dict[int, ProcessSample]) -> None:
    assert (mac[444].name, mac[444].command) == ("mds_stores", "(mds_stores)")
    assert (mac[22300].state, mac[22300].name) == ("Z", "<defunct>")
    assert (mac[22222].name, mac[22222].tty) == ("zsh", "s000")


def test_freebsd_aux() -> None:
    result = parse_fixture("bsd_freebsd_aux.txt")
    rows = {p.pid: p for p in result.processes}
    assert (result.format, result.unparsed_lines, len(rows)) == ("ps-bsd", 0, 5)
    assert (rows[11].name, rows[11].cpu_percent) == ("idle", 399.0)
    assert rows[11].cpu_seconds_total == pytest.approx(8245 * 60 + 31.96)
    assert rows[11].start_time == datetime(2026, 3, 9, 8, tzinfo=NEW_YORK)  # Mon08
    assert rows[812].start_time == datetime(2026, 3, 12, 13, 7, tzinfo=NEW_YORK)
    assert (rows[812].name, rows[901].name, rows[901].tty) == ("nginx", "sh", "v0")
    assert rows[0].tty is None  # "-"


def test_macos_ef_is_detected_as_bsd_by_its_cpu_times() -> None:
    result = parse_fixture("bsd_macos_ef.txt")
    rows = {p.pid: p for p in result.processes}
    assert result.format == "ps-bsd"
    assert rows[987].name == "Google Chrome"  # CMD is the full command on BSD
    assert (rows[987].user, rows[987].ppid) == ("501", 1)
    assert rows[22222].start_time == datetime(2026, 3, 12, 15, 15, tzinfo=NEW_YORK)


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("/Applications/Slack.app/Contents/MacOS/Slack", "Slack"),
        ("/Applications/Foo Bar.app/Contents/MacOS/Foo Bar -psn_0_123", "Foo Bar"),
        ("/Applications/Foo Bar.app/Contents/MacOS/foo-helper --x", "foo-helper"),
        ("/Applications/Foo Bar.app/Contents/MacOS/foo helper", "foo helper"),
        ("/Library/Application Support/Acme/acme-agent -d", "acme-agent"),
        ("/usr/bin/python3 scripts/run.py", "python3"),
        ("[kworker/0:1]", "kworker/0:1"),
        ("{vsock-console} /process_api", "vsock-console"),
        ("(sd-pam)", "sd-pam"),
        ("-bash", "bash"),
        ("-", "-"),
        ("sshd: alice@pts/0", "sshd"),
        ("/", "/"),
        ("[] x", "[]"),
    ],
)
def test_name_rules(command: str, name: str) -> None:
    assert name_of(command) == name


def test_name_from_comm_drops_the_defunct_mark() -> None:
    assert name_of("[sh] <defunct>", "sh <defunct>") == "sh"


@pytest.mark.parametrize("name", ["bsd_macos_aux.txt", "bsd_freebsd_aux.txt", "bsd_macos_ef.txt"])
def test_bsd_fixtures_look_like_ps(name: str) -> None:
    assert looks_like_ps((FIXTURES / name).read_text())
