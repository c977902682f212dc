"""`procfleet export` against a real PostgreSQL: files read back (pyarrow / csv) give the
query API's numbers for the same window; empty windows, bad ranges, per-day files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
from collections import defaultdict
from datetime import datetime, timedelta

import pyarrow.parquet as pq
import pytest

from digest_worker.compaction import run_storage_upkeep
from digest_worker.rollup import roll_minutes
from procfleet.cli import build_parser
from procfleet.commands.export import main
from procfleet.export.files import arrow_schema
from procfleet.export.run import Progress
from procfleet.export.sources import GROUP_COLUMNS, PROCESS_COLUMNS, ROLLUP_COLUMNS
from tests.query.query_seed import (
    MIB,
    base_time,
    insert_groups,
    insert_processes,
    steady_group,
    steady_process,
)

pytestmark = pytest.mark.integration


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["export", *argv])


async def run_export(database_url: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out):
        code = await asyncio.to_thread(main, parse(*argv), {"DATABASE_URL": database_url},
                                       err=err)
    return code, out.getvalue(), err.getvalue()


def read_rows(path, file_format: str) -> list[dict]:
    if file_format == "parquet":
        return pq.read_table(path).to_pylist()
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(value) -> float | None:
    return None if value in (None, "") else float(value)


def minute_of(value) -> str:
    text = value.isoformat() if isinstance(value, datetime) else value
    return text[:16].replace(" ", "T")


def api_numbers(rows: list[dict], memory_column: str, window_s: float) -> dict[str, dict]:
    """avg CPU % and avg memory MB per name, computed from exported rows the way the API
    defines them (README "## API"): CPU-seconds / window; per-minute average memory of each
    series summed, averaged over the window's minutes."""
    cpu: dict[str, float] = defaultdict(float)
    memory: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        cpu[row["name"]] += number(row["cpu_seconds"]) or 0.0
        series = (row["server_id"], row.get("pid"), str(row.get("start_time")), row["name"])
        memory[(series, minute_of(row["ts"]))].append(number(row[memory_column]))
    byte_minutes: dict[str, float] = defaultdict(float)
    for (series, _), values in memory.items():
        byte_minutes[series[3]] += sum(values) / len(values)
    minutes = window_s / 60
    return {name: {"avg_cpu_percent": 100 * cpu[name] / window_s,
                   "avg_memory_mb": byte_minutes[name] / minutes / MIB} for name in cpu}


@pytest.fixture
async def seeded(db):
    """Groups and processes on two servers around a window [base+5m, base+35m), with a
    counter reset, a gap, and a process that starts inside the window."""
    base = base_time()
    groups = (steady_group("web-01", "nginx", base, 40, cores=0.5, memory_mb=120)
              + steady_group("web-02", "nginx", base, 40, cores=0.25, memory_mb=80,
                             skip=(base + timedelta(minutes=12), base + timedelta(minutes=16)))
              + steady_group("db-01", "postgres", base, 40, cores=1.5, memory_mb=2048))
    for row in groups:  # exporter restart on db-01 at +20 min: counters start over
        if row["server_id"] == "db-01" and row["ts"] >= base + timedelta(minutes=20):
            row["cpu_user_seconds_total"] -= 2000
            row["cpu_system_seconds_total"] -= 500
    await insert_groups(db, groups)
    await insert_processes(db, steady_process("web-01", "python3", 4242, base, 40, cores=0.2)
                           + steady_process("web-01", "make", 777, base + timedelta(minutes=10),
                                            10, cores=1.0, rss_mb=300,
                                            start_time=base + timedelta(minutes=9, seconds=50),
                                            counter_start=10.0)
                           + steady_process("web-02", "python3", 99, base, 40, cores=0.1))
    return base


@pytest.mark.parametrize("source, file_format, memory_column", [
    ("groups", "parquet", "memory_resident_bytes"), ("groups", "csv", "memory_resident_bytes"),
    ("processes", "parquet", "rss_bytes"), ("processes", "csv", "rss_bytes")])
async def test_exported_window_gives_the_apis_numbers(seeded, query_gateway, database_url,
                                                      tmp_path, source, file_format,
                                                      memory_column):
    start, end = seeded + timedelta(minutes=5), seeded + timedelta(minutes=35)
    out = tmp_path / f"export.{file_format}"
    code, stdout, err = await run_export(database_url, "--from", iso(start), "--to", iso(end),
                                         "--source", source, "--format", file_format,
                                         "--out", str(out))
    assert code == 0, err
    assert stdout.strip() == str(out)
    rows = read_rows(out, file_format)
    assert rows and all(start <= _moment(r["ts"]) < end for r in rows)
    api = await query_gateway.get_json("/api/processes/top", {
        "from": iso(start), "to": iso(end), "source": source, "limit": "50"})
    assert api["path"] == "raw" and api["from"] == iso(start) and api["to"] == iso(end)
    ours = api_numbers(rows, memory_column, (end - start).total_seconds())
    assert set(ours) == {p["name"] for p in api["processes"]}
    for process in api["processes"]:
        mine = ours[process["name"]]
        assert mine["avg_cpu_percent"] == pytest.approx(process["avg_cpu_percent"], abs=2e-3)
        assert mine["avg_memory_mb"] == pytest.approx(process["avg_memory_mb"], abs=2e-3)


def _moment(value) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


async def test_parquet_columns_are_typed_with_counters_rates_and_bytes(seeded, database_url,
                                                                       tmp_path):
    out = tmp_path / "groups.parquet"
    start = seeded + timedelta(minutes=5)
    code, _, err = await run_export(database_url, "--from", iso(start), "--to",
                                    iso(seeded + timedelta(minutes=35)), "--source", "groups",
                                    "--server", "db-01", "--out", str(out))
    assert code == 0, err
    table = pq.read_table(out)
    assert table.schema.equals(arrow_schema(GROUP_COLUMNS), check_metadata=False)
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    rows = table.to_pylist()
    assert {r["server_id"] for r in rows} == {"db-01"}
    # the first row's rate comes from the sample before the window (no gap at the start)
    assert rows[0]["ts"] == start and rows[0]["cpu_cores"] == pytest.approx(1.5)
    assert rows[0]["memory_resident_bytes"] == 2048 * MIB
    reset = next(r for r in rows if r["ts"] == seeded + timedelta(minutes=20))
    assert reset["cpu_seconds"] == pytest.approx(reset["cpu_seconds_total"])  # reset rule
    steady = [r for r in rows if r["ts"] != reset["ts"]]
    assert all(r["cpu_cores"] == pytest.approx(1.5) and r["interval_s"] == 15.0 for r in steady)


async def test_processes_keep_the_command_and_rate_a_new_process_from_its_start(
        seeded, database_url, tmp_path):
    out = tmp_path / "p.csv"
    code, _, err = await run_export(database_url, "--from", iso(seeded), "--to",
                                    iso(seeded + timedelta(hours=1)), "--format", "csv",
                                    "--server", "web-01", "--out", str(out))
    assert code == 0, err
    rows = [r for r in read_rows(out, "csv") if r["name"] == "make"]
    assert rows[0]["command"] == "/usr/bin/make" and rows[0]["pid"] == "777"
    # first seen 10 s after it started: its whole counter is its first delta
    assert float(rows[0]["cpu_seconds"]) == pytest.approx(10.0)
    assert float(rows[0]["interval_s"]) == pytest.approx(10.0)
    assert rows[0]["start_time"].endswith("+00")  # UTC


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
async def test_empty_window_gives_an_empty_file_with_the_schema(migrated_database, tmp_path,
                                                                file_format):
    out = tmp_path / f"empty.{file_format}"
    code, _, err = await run_export(migrated_database, "--from", "2026-01-01", "--to",
                                    "2026-01-03", "--format", file_format, "--out", str(out))
    assert code == 0, err
    names = [c.name for c in PROCESS_COLUMNS]
    if file_format == "parquet":
        table = pq.read_table(out)
        assert table.num_rows == 0 and table.schema.names == names
    else:
        assert out.read_text().splitlines() == [",".join(names)]


async def test_per_day_writes_one_file_per_utc_day(seeded, database_url, tmp_path):
    day = seeded.replace(hour=0)
    code, stdout, err = await run_export(
        database_url, "--from", iso(day - timedelta(days=1)), "--to", iso(day + timedelta(days=1)),
        "--source", "groups", "--per-day", "--out", str(tmp_path))
    assert code == 0, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"groups-{(day - timedelta(days=1)).date()}.parquet",
                     f"groups-{day.date()}.parquet"]
    assert stdout.split() == [str(tmp_path / n) for n in names]
    assert pq.read_table(tmp_path / names[0]).num_rows == 0
    assert pq.read_table(tmp_path / names[1]).num_rows == 3 * 161 - 16


async def test_per_day_files_equal_one_file_across_midnight(db, database_url, tmp_path):
    """Each day's statement reads the LAG's lookback before midnight: the first rows of a day
    have their rates, and the days put together are the single file, row for row."""
    midnight = base_time().replace(hour=0)
    await insert_groups(db, steady_group("web-01", "nginx", midnight - timedelta(minutes=10),
                                         20, cores=0.75))
    window = ("--from", iso(midnight - timedelta(hours=1)), "--to",
              iso(midnight + timedelta(hours=1)), "--source", "groups")
    single = tmp_path / "one.parquet"
    days_dir = tmp_path / "days"
    days_dir.mkdir()
    assert (await run_export(database_url, *window, "--out", str(single)))[0] == 0
    assert (await run_export(database_url, *window, "--per-day", "--out", str(days_dir)))[0] == 0
    parts = [pq.read_table(p).to_pylist() for p in sorted(days_dir.iterdir())]
    assert [len(p) for p in parts] == [40, 41]
    assert parts[0] + parts[1] == pq.read_table(single).to_pylist()
    assert parts[1][0]["ts"] == midnight and parts[1][0]["cpu_cores"] == pytest.approx(0.75)


async def test_rollup_minute_exports_the_stored_cells(seeded, db, database_url, tmp_path):
    start, end = seeded + timedelta(minutes=5), seeded + timedelta(minutes=35)
    await roll_minutes(db, "groups", start, end, None)
    out = tmp_path / "r.parquet"
    code, _, err = await run_export(database_url, "--from", iso(start), "--to", iso(end),
                                    "--source", "rollup-minute", "--out", str(out))
    assert code == 0, err
    table = pq.read_table(out)
    assert table.schema.names == [c.name for c in ROLLUP_COLUMNS]
    stored = await db.fetchval("SELECT count(*) FROM rollup_minute")
    assert table.num_rows == stored == 3 * 30 - 4
    cells = {(r["server_id"], r["ts"]): r for r in table.to_pylist()}
    assert cells[("web-01", start)]["memory_peak_bytes"] == 120 * MIB
    assert cells[("web-01", start)]["cpu_core_minutes"] == pytest.approx(0.5)


@pytest.mark.parametrize("argv, field, value", [
    (("--from", "2026-01-02", "--to", "2026-01-01"), "--to", "2026-01-01"),
    (("--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"), "--to",
     "2026-01-01T00:00:00Z"),
    (("--from", "yesterday", "--to", "2026-01-01"), "--from", "yesterday"),
    (("--from", "2026-01-01T00:00:00", "--to", "2026-01-02"), "--from", "2026-01-01T00:00:00"),
])
async def test_bad_range_exits_2_naming_the_option_and_value(tmp_path, argv, field, value):
    out = tmp_path / "x.parquet"
    code, _, err = await run_export("postgresql://unused", *argv, "--out", str(out))
    assert code == 2
    assert err.startswith(f"procfleet export: {field}: ") and value in err
    assert not out.exists()


async def test_missing_database_url_and_bad_out_exit_2(tmp_path):
    err = io.StringIO()
    args = parse("--from", "2026-01-01", "--to", "2026-01-02", "--out", str(tmp_path / "x"))
    assert main(args, {}, err=err) == 2 and "DATABASE_URL" in err.getvalue()
    code, _, err_text = await run_export("postgresql://unused", "--from", "2026-01-01", "--to",
                                         "2026-01-02", "--out", str(tmp_path / "no" / "x"))
    assert code == 2 and "--out: its directory does not exist" in err_text


def test_progress_is_drawn_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        clock = iter([0.0, 1.0, 2.0]).__next__
        progress = Progress(stream, clock=clock)
        progress.show("processes", 1000, 2_000_000)
        progress.show("processes", 3000, 4_000_000, final=True)
    assert pipe.getvalue() == ""
    assert "\rexport processes: 1,000 rows, 2.0 MB, 1,000 rows/s" in tty.getvalue()
    assert tty.getvalue().endswith("3,000 rows, 4.0 MB, 1,500 rows/s\x1b[K\n")


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
async def test_command_lines_come_back_exactly_as_stored(db, database_url, tmp_path,
                                                         file_format):
    base = base_time()
    rows = steady_process("web-01", "sh", 1, base, 1)
    command = 'sh -c "echo a, b; printf \'%s\'"\n  --next-line ,"'
    for row in rows:
        row["command"] = command
        row["username"] = ""  # an empty string stays one, NULLs stay empty
    await insert_processes(db, rows)
    out = tmp_path / f"c.{file_format}"
    code, _, err = await run_export(database_url, "--from", iso(base), "--to",
                                    iso(base + timedelta(minutes=1)), "--format", file_format,
                                    "--out", str(out))
    assert code == 0, err
    back = read_rows(out, file_format)
    assert [r["command"] for r in back] == [command] * 4  # 0, 15, 30, 45 s
    assert back[0]["user"] == ""
    assert back[0]["tty"] in (None, "") and back[0]["session_id"] in (None, "")


@pytest.mark.parametrize("source", ["processes", "groups"])
@pytest.mark.parametrize("server", [None, "web-01"])
async def test_compacted_hours_export_the_same_rows_as_hot_ones(seeded, db, database_url,
                                                                tmp_path, source, server):
    window = ["--from", iso(seeded), "--to", iso(seeded + timedelta(hours=1)), "--format",
              "csv", "--source", source] + (["--server", server] if server else [])
    hot_file, compacted_file = tmp_path / "hot.csv", tmp_path / "compacted.csv"
    assert (await run_export(database_url, *window, "--out", str(hot_file)))[0] == 0

    await run_storage_upkeep(db, now=seeded + timedelta(days=1), older_than=timedelta(0))
    points = "process_points" if source == "processes" else "process_group_points"
    assert await db.fetchval(f"SELECT count(*) FROM {points}") == 0
    assert (await run_export(database_url, *window, "--out", str(compacted_file)))[0] == 0

    hot, compacted = read_rows(hot_file, "csv"), read_rows(compacted_file, "csv")
    assert hot and compacted == hot
    assert {r["server_id"] for r in hot} == ({server} if server else {"web-01", "web-02",
                                              "db-01"} if source == "groups"
                                             else {"web-01", "web-02"})
