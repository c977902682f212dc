"""The window starts where the data starts: a deployment two minutes old averages over two
minutes (issue: 0.97 % next to an 89.5 % peak, because the hour was the divisor)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_correctness import by_name, check_all_paths

from ingest_gateway.query.params import SeriesParams, TimeRange, TopParams
from ingest_gateway.query.series import process_series
from ingest_gateway.query.top import iso, top_processes
from ingest_gateway.query.window import plan_query
from tests.query.query_reference import top as reference_top
from tests.query.query_seed import (
    base_time,
    insert_groups,
    insert_processes,
    steady_group,
    steady_process,
)

pytestmark = pytest.mark.integration


def burning_a_core(first):
    """Two minutes of one process burning a core, sampled every 15 s from ``first``."""
    return steady_process("new-01", "burner", 777, first, 2, cores=1.0)


async def test_two_minutes_of_a_core_average_about_one_core_not_three_percent(db):
    first = base_time() + timedelta(seconds=45)  # off the minute grid, as a real start is
    samples = burning_a_core(first)
    await insert_processes(db, samples)
    end = first + timedelta(minutes=2, seconds=15)  # "now": 15 s after the last sample
    top = await check_all_paths(db, samples, "processes", end - timedelta(hours=1), end)
    burner = by_name(top)["burner"]
    # 8 intervals of 15 s at one core over the 135 s since the first sample; with the hour as
    # the divisor this was 120 / 3600 = 3.3 %.
    assert burner["avg_cpu_percent"] == pytest.approx(100 * 120 / 135, abs=1e-3)
    assert burner["peak_cpu_percent"] == pytest.approx(100.0, abs=1e-3)
    assert burner["avg_num_procs"] == pytest.approx(1.0, abs=0.34)  # 3 minute slots, 3 cells


async def test_the_answer_says_where_the_window_starts(db):
    first = base_time() + timedelta(seconds=45)
    await insert_processes(db, burning_a_core(first))
    end = first + timedelta(minutes=2, seconds=15)
    result = await top_processes(db, TopParams(time_range=TimeRange(end - timedelta(hours=1),
                                                                    end, 1)), path="raw")
    body = result.as_json()
    assert (body["from"], body["to"]) == (iso(first), iso(end))
    assert body["time_range_hours"] == pytest.approx(135 / 3600, abs=1e-4)
    # the chart's series starts at the first minute holding data, not an hour of nothing
    series = await process_series(db, SeriesParams(
        name="burner", time_range=TimeRange(end - timedelta(hours=1), end, 1)), path="raw")
    doc = series.as_json()
    assert doc["from"] == iso(first.replace(second=0))
    assert [p["ts"] for p in doc["points"]] == [
        iso(first.replace(second=0) + timedelta(minutes=m)) for m in range(3)]
    assert all(p["value"] is not None and p["value"] > 90 for p in doc["points"][1:])


async def test_a_window_entirely_inside_the_data_is_unchanged(db):
    base = base_time()
    samples = steady_group("web-01", "nginx", base - timedelta(minutes=5), 70, cores=0.5)
    await insert_groups(db, samples)
    result = await top_processes(db, TopParams(
        time_range=TimeRange(base, base + timedelta(hours=1)), source="groups"), path="raw")
    assert result.plan.start == base and result.plan.window_s == 3600
    assert by_name(result.processes)["nginx"]["avg_cpu_percent"] == pytest.approx(50.0)


async def test_selected_servers_start_at_their_own_first_sample(db):
    base = base_time()
    old = steady_group("old-01", "nginx", base - timedelta(minutes=5), 70, cores=0.5)
    young_first = base + timedelta(minutes=50)
    young = steady_group("young-01", "nginx", young_first, 10, cores=0.5)
    await insert_groups(db, old + young)
    end = base + timedelta(hours=1)
    fleet = await top_processes(db, TopParams(time_range=TimeRange(base, end), source="groups"),
                                path="raw")
    assert fleet.plan.start == base  # the deployment holds data from before the window
    one = await top_processes(db, TopParams(time_range=TimeRange(base, end), source="groups",
                                            server_ids=("young-01",)), path="raw")
    assert one.plan.start == young_first
    expected = reference_top(young, "groups", young_first, one.plan.end)
    assert by_name(one.processes)["nginx"]["avg_cpu_percent"] == pytest.approx(
        expected[0]["avg_cpu_percent"], abs=2e-3)
    assert expected[0]["avg_cpu_percent"] > 45


async def test_the_retention_horizon_bounds_an_older_first_sample(db):
    base = base_time()
    samples = steady_group("web-01", "nginx", base - timedelta(minutes=5), 70, cores=0.5)
    await insert_groups(db, samples)
    # the host first reported long ago; retention dropped those samples
    await db.execute("UPDATE servers SET first_seen_at = $1", base - timedelta(days=30))
    before = datetime.now(UTC)
    result = await top_processes(db, TopParams(
        time_range=TimeRange(before - timedelta(hours=168), before, 168), source="groups"),
        path="raw", retention_days=2)
    after = datetime.now(UTC)
    # the horizon cuts the requested start, which is then widened to the step (2 days: hours)
    assert result.plan.step_s == 3600
    assert result.plan.start == (before - timedelta(days=2)).replace(
        minute=0, second=0, microsecond=0) or result.plan.start == (
        after - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    assert result.plan.read_start is None
    without = await top_processes(db, TopParams(
        time_range=TimeRange(before - timedelta(hours=168), before, 168), source="groups"),
        path="raw")
    # the first sample is older than the window: the requested start, on the hour grid
    assert without.plan.start == (before - timedelta(hours=168)).replace(
        minute=0, second=0, microsecond=0)


async def test_each_tier_serves_a_window_back_to_its_own_horizon(db):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await db.execute("INSERT INTO rollup_watermarks (source, minute_until) "
                     "VALUES ('processes', $1)", now)
    await db.execute("INSERT INTO servers (server_id, first_seen_at, last_seen_at) "
                     "VALUES ('old-01', $1, $2)", now - timedelta(days=900), now)

    async def plan(days_ago: float, hours: float, **kw):
        start = now - timedelta(days=days_ago)
        return await plan_query(db, TimeRange(start, start + timedelta(hours=hours)),
                                "processes", None, now=now, retention_days=14,
                                rollup_retention_days=(30, 400), **kw)

    # 3 hours 20 days ago: minute cells are kept 30 days
    recent = await plan(20, 3)
    assert (recent.path, recent.step_s, recent.start) == ("rollup", 60, now - timedelta(days=20))
    # 3 hours 40 days ago: only hour cells reach back so far
    old = await plan(40, 3)
    assert (old.path, old.step_s) == ("rollup", 3600)
    assert old.start == (now - timedelta(days=40)).replace(minute=0)  # widened to the hour
    # minute cells asked for (a series step under an hour): cut at the minute horizon
    cut = await plan(31, 48, step_s=60)
    assert (cut.path, cut.start) == ("rollup", now - timedelta(days=30))
    # the raw samples are kept 14 days: a forced raw read starts there
    raw = await plan(15, 48, path="raw")
    assert (raw.path, raw.step_s) == ("raw", 3600)
    assert raw.start == (now - timedelta(days=14)).replace(minute=0)
    # past the hour cells' horizon: the window shrinks to its end (on the grid)
    far = await plan(401, 3)
    assert far.start == (now - timedelta(days=401) + timedelta(hours=3)).replace(minute=0)
