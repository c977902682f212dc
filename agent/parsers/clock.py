"""Times as ``ps`` prints them: cumulative CPU time and the many forms of a start time.

CPU time (``TIME``), every form seen in ps outputs::

    0:07  1234:56        procps ``ps aux`` (bsdtime) and BusyBox: minutes may pass 59
    1h05  3d04  123d     BusyBox ``format_time`` (procps/ps.c): hours and minutes from one
                         hour, days and hours from one day, days alone from 100 days on;
                         read as the lower bound of what was printed (seconds, minutes or
                         hours below the last unit are cut, not rounded)
    00:01:02  3-04:05:06 procps ``ps -ef`` / ``-o time``: [DD-]HH:MM:SS
    58:12.34             macOS / BSD: minutes, seconds and hundredths
    4711                 procps ``-o cputimes``: plain seconds

Start time (``START`` / ``STIME`` / ``STARTED``), read relative to a :class:`Clock`::

    09:41   9:41        started today (procps) or within 24 h (BSD, 24-hour locale)
    9:41AM              BSD, within 24 h
    09:41:02            procps ``-o start``, within 24 h
    Jan05   Jan 05      procps: this year (last year when that would be in the future)
    Tue02PM  Tue14      BSD, 1 to 7 days ago: the latest such weekday and hour >= 24 h ago
    26Jan25             BSD, older than a week
    2024                procps, an earlier year: January 1st of it (a lower bound)
    Tue Jan 27 09:41:02 2026   ``lstart`` (procps and BSD): exact to the second

The forms are disjoint, so one reader serves every flavour. Every reader raises ``ValueError``
(naming the bad text) for anything else: the caller rejects the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
WEEKDAYS = {d: i for i, d in enumerate(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"))}
LSTART_TOKENS = 5

# A start printed "today" may look a little later than ``now`` when ``now`` was taken before
# ps ran; only beyond this skew is it read as belonging to the previous day.
CLOCK_SKEW = timedelta(minutes=5)

_CPU_TIME = re.compile(r"(?:(?:(\d+)-)?(\d+):)?(\d+):([0-5]\d)(?:\.(\d{1,6}))?")
# BusyBox: "%2uh%02u" (hours < 24), "%2ud%02u" (days < 100), "%4lud" (more days).
_BUSYBOX_CPU_TIME = re.compile(r"(\d+)(?:h([0-5]\d)|d([01]\d|2[0-3])?)")
_HH_MM = re.compile(r"(\d{1,2}):([0-5]\d)(?::([0-5]\d))?")
_HH_MM_AMPM = re.compile(r"(\d{1,2}):([0-5]\d)([AP]M)")
_NAME_NUMBER = re.compile(r"([A-Z][a-z]{2})(\d{2})([AP]M)?")  # Jan05 / Tue02PM / Tue14
_DAY_MON_YY = re.compile(r"(\d{1,2})([A-Z][a-z]{2})(\d{2})")
_YEAR = re.compile(r"(19|20)\d\d")


def parse_cpu_seconds(text: str) -> float:
    """``TIME`` of any ps flavour -> cumulative CPU seconds."""
    if text.isdigit():
        return float(text)
    match = _CPU_TIME.fullmatch(text)
    if match is None and (busybox := _BUSYBOX_CPU_TIME.fullmatch(text)):
        count, minutes_after_hours, hours_after_days = busybox.groups()
        if minutes_after_hours is not None:
            return float(int(count) * 3600 + int(minutes_after_hours) * 60)
        return float(int(count) * 86400 + int(hours_after_days or 0) * 3600)
    if match is None:
        raise ValueError(f"bad CPU time {text!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    if hours is not None and int(minutes) > 59:
        raise ValueError(f"bad CPU time {text!r}: minutes past 59 with hours")
    total = int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
    return total + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


@dataclass(frozen=True)
class Clock:
    """``now`` in the zone the output was printed in. ``tz=None`` means the system's local
    zone, with the daylight-saving offset of each date (not of today)."""

    now: datetime
    tz: tzinfo | None

    @classmethod
    def make(cls, now: datetime | None = None, tz: tzinfo | None = None) -> Clock:
        """``now`` defaults to the current time; a naive ``now`` is taken to be in ``tz``."""
        if now is None:
            now = datetime.now(tz) if tz is not None else datetime.now().astimezone()
        elif now.tzinfo is None or now.utcoffset() is None:
            now = _localize(now, tz)
        else:
            now = now.astimezone(tz) if tz is not None else now.astimezone()
        return cls(now=now, tz=tz)

    def at(self, day: date, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
        """An aware wall-clock time in this clock's zone."""
        return _localize(datetime.combine(day, time(hour, minute, second)), self.tz)


def _localize(naive: datetime, tz: tzinfo | None) -> datetime:
    if tz is not None:
        return naive.replace(tzinfo=tz)
    try:
        return naive.astimezone()  # the system zone, with that date's DST offset
    except (OverflowError, OSError) as exc:
        raise ValueError(f"time out of range: {naive}") from exc


def parse_start(tokens: list[str], clock: Clock) -> tuple[datetime, int]:
    """Read a start time from the next ``tokens`` of a row (up to 5 are looked at).

    Returns the aware start time and how many tokens it took (1, 2 or 5).
    """
    if not tokens:
        raise ValueError("missing start time")
    first = tokens[0]
    if first in WEEKDAYS and len(tokens) >= LSTART_TOKENS:
        return _lstart(tokens[:LSTART_TOKENS], clock), LSTART_TOKENS
    if first in MONTHS and len(tokens) >= 2 and tokens[1].isdigit() and len(tokens[1]) <= 2:
        return _month_day(MONTHS[first], int(tokens[1]), clock), 2
    return _single_token_start(first, clock), 1


def _single_token_start(text: str, clock: Clock) -> datetime:
    if match := _HH_MM.fullmatch(text):
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        return _recent(hour, minute, second, clock, text)
    if match := _HH_MM_AMPM.fullmatch(text):
        return _recent(_hour_of(int(match[1]), match[3], text), int(match[2]), 0, clock, text)
    if match := _NAME_NUMBER.fullmatch(text):
        name, number, ampm = match.groups()
        if name in MONTHS and ampm is None:
            return _month_day(MONTHS[name], int(number), clock)
        if name in WEEKDAYS:
            hour = _hour_of(int(number), ampm, text) if ampm else int(number)
            return _last_week(WEEKDAYS[name], hour, clock, text)
    elif match := _DAY_MON_YY.fullmatch(text):
        day, month, year = match.groups()
        if month in MONTHS:
            return _date(2000 + int(year), MONTHS[month], int(day), clock, text)
    elif _YEAR.fullmatch(text):
        return clock.at(date(int(text), 1, 1))
    raise ValueError(f"bad start time {text!r}")


def _hour_of(hour: int, ampm: str, text: str) -> int:
    if not 1 <= hour <= 12:
        raise ValueError(f"bad start time {text!r}: hour {hour}")
    return hour % 12 + (12 if ampm == "PM" else 0)


def _recent(hour: int, minute: int, second: int, clock: Clock, text: str) -> datetime:
    """A time of day printed for a start within the last day: today, or yesterday when
    today's would lie in the future."""
    if hour > 23:
        raise ValueError(f"bad start time {text!r}: hour {hour}")
    today = clock.now.date()
    start = clock.at(today, hour, minute, second)
    if start > clock.now + CLOCK_SKEW:
        start = clock.at(today - timedelta(days=1), hour, minute, second)
    return start


def _month_day(month: int, day: int, clock: Clock) -> datetime:
    """``MonDD`` of the current year, or of the latest earlier year where it is not in the
    future (procps prints it for starts earlier this year)."""
    for year in range(clock.now.year, clock.now.year - 8, -1):
        try:
            start = clock.at(date(year, month, day))
        except ValueError:  # Feb29 of a common year, Apr31: try an earlier year
            continue
        if start <= clock.now + CLOCK_SKEW:
            return start
    raise ValueError(f"bad start date: month {month} day {day}")


def _last_week(weekday: int, hour: int, clock: Clock, text: str) -> datetime:
    """BSD ``%a%I%p``: printed for starts 24 h to 7 days old, truncated to the hour. The
    start is the latest such weekday and hour at least 24 h before now."""
    if hour > 23:
        raise ValueError(f"bad start time {text!r}: hour {hour}")
    latest = clock.now - timedelta(days=1) + CLOCK_SKEW
    day = clock.now.date()
    for _ in range(9):
        if day.weekday() == weekday:
            start = clock.at(day, hour)
            if start <= latest:
                return start
        day -= timedelta(days=1)
    raise ValueError(f"bad start time {text!r}")  # unreachable for a valid weekday


def _date(year: int, month: int, day: int, clock: Clock, text: str) -> datetime:
    try:
        return clock.at(date(year, month, day))
    except ValueError as exc:
        raise ValueError(f"bad start date {text!r}") from exc


def _lstart(tokens: list[str], clock: Clock) -> datetime:
    """``Tue Jan 27 09:41:02 2026`` (ctime / C-locale ``%c``)."""
    _weekday, month, day, clock_time, year = tokens
    text = " ".join(tokens)
    match = _HH_MM.fullmatch(clock_time)
    if month not in MONTHS or not day.isdigit() or not year.isdigit() or not match or \
            match[3] is None or int(match[1]) > 23:
        raise ValueError(f"bad start time {text!r}")
    try:
        day_of = date(int(year), MONTHS[month], int(day))
    except ValueError as exc:
        raise ValueError(f"bad start time {text!r}") from exc
    return clock.at(day_of, int(match[1]), int(match[2]), int(match[3]))
