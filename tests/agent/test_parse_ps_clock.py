"""The time forms of ps: cumulative CPU time and start times relative to "now"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from agent.parsers.clock import Clock, parse_cpu_seconds, parse_start

NEW_YORK = ZoneInfo("America/New_York")  # DST from 2026-03-08: offsets differ within the year
NOW = datetime(2026, 3, 12, 15, 30, tzinfo=NEW_YORK)  # a Thursday
CLOCK = Clock.make(NOW, NEW_YORK)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:00", 0.0),
        ("0:07", 7.0),
        ("12:34", 754.0),
        ("1234:56", 74096.0),  # procps bsdtime / BusyBox: minutes past 59
        ("00:01:02", 62.0),
        ("20:34:56", 74096.0),
        ("3-04:05:06", 3 * 86400 + 4 * 3600 + 5 * 60 + 6.0),
        ("58:12.34", 3492.34),  # BSD hundredths
        ("1234:56.78", 74096.78),
        ("4711", 4711.0),  # procps cputimes
    ],
)
def test_cpu_time_forms_give_seconds(text: str, seconds: float) -> None:
    assert parse_cpu_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "1:2", "1:60", "1:75:00", "-1:00", "1-2:3", "a:bc", "1:00:00:00"]
)
def test_cpu_time_rejects_what_no_ps_prints(text: str) -> None:
    with pytest.raises(ValueError, match="CPU time"):
        parse_cpu_seconds(text)


def _start(text: str, clock: Clock = CLOCK) -> tuple[datetime, int]:
    return parse_start(text.split(), clock)


def test_hh_mm_is_today_in_the_zone_with_its_dst_offset() -> None:
    start, used = _start("09:41 0:00 /bin/sh")
    assert (start, used) == (datetime(2026, 3, 12, 9, 41, tzinfo=NEW_YORK), 1)
    assert start.utcoffset() == timedelta(hours=-4)


def test_hh_mm_later_than_now_is_yesterday() -> None:
    assert _start("23:50")[0] == datetime(2026, 3, 11, 23, 50, tzinfo=NEW_YORK)


def test_hh_mm_a_few_seconds_ahead_of_now_stays_today() -> None:
    # ``now`` taken just before ps ran: a process started in that instant is not yesterday's
    assert _start("15:31")[0] == datetime(2026, 3, 12, 15, 31, tzinfo=NEW_YORK)


def test_month_day_is_this_year_with_that_dates_offset() -> None:
    start = _start("Feb27")[0]
    assert start == datetime(2026, 2, 27, tzinfo=NEW_YORK)
    assert start.utcoffset() == timedelta(hours=-5)  # EST, though "now" is EDT


def test_month_day_in_the_future_is_last_year() -> None:
    assert _start("Dec24")[0] == datetime(2025, 12, 24, tzinfo=NEW_YORK)


def test_feb_29_goes_back_to_the_last_leap_year() -> None:
    assert _start("Feb29")[0] == datetime(2024, 2, 29, tzinfo=NEW_YORK)


def test_year_is_new_year_of_that_year() -> None:
    assert _start("2025")[0] == datetime(2025, 1, 1, tzinfo=NEW_YORK)


def test_procps_start_column_forms() -> None:
    assert _start("09:41:02")[0] == datetime(2026, 3, 12, 9, 41, 2, tzinfo=NEW_YORK)
    assert _start("Jan 05 00:03 cmd") == (datetime(2026, 1, 5, tzinfo=NEW_YORK), 2)


def test_bsd_am_pm_within_a_day() -> None:
    assert _start("9:41AM")[0] == datetime(2026, 3, 12, 9, 41, tzinfo=NEW_YORK)
    assert _start("12:05AM")[0] == datetime(2026, 3, 12, 0, 5, tzinfo=NEW_YORK)
    assert _start("12:05PM")[0] == datetime(2026, 3, 12, 12, 5, tzinfo=NEW_YORK)
    assert _start("11:59PM")[0] == datetime(2026, 3, 11, 23, 59, tzinfo=NEW_YORK)


def test_bsd_weekday_hour_is_the_latest_at_least_a_day_ago() -> None:
    assert _start("Tue02PM")[0] == datetime(2026, 3, 10, 14, tzinfo=NEW_YORK)
    assert _start("Mon11AM")[0] == datetime(2026, 3, 9, 11, tzinfo=NEW_YORK)
    # Thursday 16:00 is less than a day ago only if today: so it is last Thursday's
    assert _start("Thu04PM")[0] == datetime(2026, 3, 5, 16, tzinfo=NEW_YORK)
    assert _start("Wed14")[0] == datetime(2026, 3, 11, 14, tzinfo=NEW_YORK)  # 24-hour locale


def test_bsd_day_month_year() -> None:
    assert _start("26Jan25")[0] == datetime(2025, 1, 26, tzinfo=NEW_YORK)
    assert _start("5Mar26")[0] == datetime(2026, 3, 5, tzinfo=NEW_YORK)


def test_lstart_is_exact_and_takes_five_tokens() -> None:
    start, used = _start("Mon Feb  2 08:00:01 2026 00:12:34 13212")
    assert (start, used) == (datetime(2026, 2, 2, 8, 0, 1, tzinfo=NEW_YORK), 5)


@pytest.mark.parametrize(
    "text",
    ["", "25:00", "13:05PM", "0:05AM", "Foo12", "Jan32", "31Feb25", "1899", "Tue25",
     "Mon Foo 2 08:00:01 2026", "Mon Feb 2 8:00 2026", "Mon Feb 30 08:00:01 2026"],
)
def test_unknown_start_forms_are_errors(text: str) -> None:
    with pytest.raises(ValueError, match="start"):
        _start(text)


def test_naive_now_is_taken_in_the_given_zone() -> None:
    clock = Clock.make(datetime(2026, 3, 12, 15, 30), timezone(timedelta(hours=2)))
    assert clock.now == datetime(2026, 3, 12, 13, 30, tzinfo=UTC)


def test_aware_now_is_converted_to_the_given_zone() -> None:
    clock = Clock.make(datetime(2026, 3, 12, 2, 0, tzinfo=UTC), NEW_YORK)
    # 22:00 on the 11th in New York: "09:41" is the 11th's
    assert _start("09:41", clock)[0] == datetime(2026, 3, 11, 9, 41, tzinfo=NEW_YORK)


def test_default_zone_is_the_system_local_zone() -> None:
    clock = Clock.make(datetime(2026, 3, 12, 15, 30))
    start = _start("09:41", clock)[0]
    assert start.utcoffset() is not None
    assert start == datetime(2026, 3, 12, 9, 41).astimezone()
