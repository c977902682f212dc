"""BusyBox outputs: the default ``PID USER TIME COMMAND``, ``-o`` with shortened sizes
(``9.7m``, ``212m``, ``2.1g``), the non-desktop ``PID USER VSZ STAT COMMAND`` and ``ps l``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.parsers.ps import looks_like_ps, parse_ps
from agent.parsers.ps_columns import kib_to_bytes
from agent.rows import ProcessSample

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ps"
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 3, 12, 15, 30, tzinfo=NEW_YORK)
KIB, MIB, GIB = 1024, 1024**2, 1024**3


def parse_rows(name: str, *, format: str = "ps-busybox", unparsed: int = 0
               ) -> dict[int, ProcessSample]:
    result = parse_ps((FIXTURES / name).read_text(), now=NOW, tz=NEW_YORK)
    assert (result.format, result.unparsed_lines) == (format, unparsed), result.errors
    return {p.pid: p for p in result.processes}


def test_default_columns() -> None:
    rows = parse_rows("busybox_default.txt")
    assert rows[1] == ProcessSample(pid=1, user="root", name="init", command="/sbin/init",
                                    cpu_seconds_total=2.0)
    assert rows[345].cpu_seconds_total == 1234 * 60 + 56
    assert (rows[345].name, rows[400].name) == ("nginx", "postgres")
    assert rows[14].name == "kworker/0:1-eve"  # BusyBox cuts kernel thread names to 15
    assert rows[512].name == "vsock-console"  # {comm} in front of a renamed thread's args
    assert rows[600].user == "1000"  # no passwd entry: the uid
    assert rows[800].user == "averyver"  # BusyBox cuts user names to 8 without a mark


def test_o_columns_with_shortened_sizes() -> None:
    rows = parse_rows("busybox_o.txt", unparsed=1)
    assert (rows[1].vsz_bytes, rows[1].rss_bytes) == (1652 * KIB, 960 * KIB)
    assert rows[90].vsz_bytes == round(9.7 * MIB)
    assert (rows[400].vsz_bytes, rows[400].rss_bytes) == (212 * MIB, 28 * MIB)
    assert (rows[2932].vsz_bytes, rows[2932].rss_bytes) == (round(2.1 * GIB), 119 * MIB)
    assert (rows[3000].vsz_bytes, rows[3000].rss_bytes) == (GIB, round(1.5 * GIB))
    assert (rows[2932].ppid, rows[2932].state, rows[2932].cpu_seconds_total) == (1, "Sl", 4265.0)
    assert (rows[3100].state, rows[3100].name) == ("Z", "huge")


def test_o_row_with_an_unknown_size_suffix_is_rejected() -> None:
    result = parse_ps((FIXTURES / "busybox_o.txt").read_text(), now=NOW, tz=NEW_YORK)
    assert 3200 not in {p.pid for p in result.processes}
    assert result.errors == [
        "line 10: bad size '12q': ' 3200     1 root      12q 4200 S      0:00 /bin/odd'"
    ]


def test_non_desktop_build() -> None:
    rows = parse_rows("busybox_nodesktop.txt")
    assert rows[3456] == ProcessSample(pid=3456, user="root", name="hostapd", state="S<",
                                       vsz_bytes=12345 * KIB,
                                       command="/usr/sbin/hostapd -s -g /var/run/hostapd/global")
    assert rows[2].name == "kthreadd"


def test_long_listing() -> None:
    rows = parse_rows("busybox_long.txt")
    assert rows[1234].start_time == datetime(2026, 3, 12, 14, 59, tzinfo=NEW_YORK)
    assert rows[1].start_time == datetime(2026, 3, 8, tzinfo=NEW_YORK)
    assert rows[1234].cpu_seconds_total == 3723.0
    assert (rows[1234].user, rows[1234].ppid, rows[1234].tty) == ("0", 1, None)  # tty 0:0
    assert (rows[4000].tty, rows[4000].state, rows[4000].rss_bytes) == ("pts0", "R", 700 * KIB)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("9999", 9999 * KIB), ("9.7m", round(9.7 * MIB)), ("12M", 12 * MIB),
     ("1g", GIB), ("1.2t", round(1.2 * 1024**4)), ("512k", 512 * KIB)],
)
def test_sizes(text: str, size: int) -> None:
    assert kib_to_bytes(text) == size


@pytest.mark.parametrize("text", ["", "1.2", "12q", "-1", "1.2.3m", "m", "1e5"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        kib_to_bytes(text)


@pytest.mark.parametrize(
    "name",
    ["busybox_default.txt", "busybox_o.txt", "busybox_nodesktop.txt", "busybox_long.txt",
     "busybox_o_times.txt"],
)
def test_busybox_fixtures_look_like_ps(name: str) -> None:
    assert looks_like_ps((FIXTURES / name).read_text())


def test_every_time_form_of_busybox_format_time() -> None:
    # procps/ps.c format_time: "%2u:%02u" below an hour, "%2uh%02u" below a day, "%2ud%02u"
    # below 100 days, "%4lud" beyond; each is the lower bound of the CPU time it prints.
    rows = parse_rows("busybox_o_times.txt")
    assert {pid: p.cpu_seconds_total for pid, p in rows.items()} == {
        1: 7.0,
        10: 59 * 60 + 59.0,
        20: 3600.0,
        30: 23 * 3600 + 59 * 60.0,
        40: 86400.0,
        50: 99 * 86400 + 23 * 3600.0,
        60: 100 * 86400.0,
        70: 1234 * 86400.0,
    }


@pytest.mark.parametrize("text", ["1h60", "1h5", "3d24", "3d4", "h05", "1x05", "1h05m"])
def test_bad_busybox_time_forms_are_rejected(text: str) -> None:
    from agent.parsers.clock import parse_cpu_seconds

    with pytest.raises(ValueError, match="bad CPU time"):
        parse_cpu_seconds(text)
