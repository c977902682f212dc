"""The top query against a plain-Python reference (tests/query/query_reference.py), on seeded
data with known answers: the raw LAG path, the rollup path and the reference must agree."""

from __future__ import annotations

from datetime import timedelta

import pytest

from digest_worker.compaction import run_storage_upkeep
from digest_worker.rollup import refresh_rollups
from ingest_gateway.query.params import TimeRange, TopParams
from ingest_gateway.query.top import top_processes
from tests.query.query_reference import top as reference_top
from tests.query.query_seed import (
    base_time,
    insert_groups,
    insert_processes,
    insert_servers,
    steady_group,
    steady_process,
)

pytestmark = pytest.mark.integration

def near(value: float):
    """Responses carry 3 decimals."""
    return pytest.approx(value, abs=1e-3)


FIELDS = ("avg_cpu_percent", "peak_cpu_percent", "avg_memory_mb", "peak_memory_mb",
          "avg_num_procs")


def assert_same(actual: list[dict], expected: list[dict], label: str) -> None:
    assert [p["name"] for p in actual] == [p["name"] for p in expected], label
    for got, want in zip(actual, expected, strict=True):
        assert got["servers"] == want["servers"], (label, got, want)
        for field in FIELDS:
            assert got[field] == pytest.approx(want[field], abs=2e-3), (label, field, got, want)


async def check_all_paths(db, samples: list[dict], source: str, start, end, **options):
    """Raw, rollup and reference agree; returns the raw answer (list of processes)."""
    params = TopParams(time_range=TimeRange(start, end), source=source,
                       metric=options.get("metric", "cpu"), limit=options.get("limit", 10),
                       server_ids=options.get("server_ids"))
    raw = await top_processes(db, params, path="raw")
    # Compact every hour (nothing hot is left): the raw path reads the compacted history and
    # must give the same numbers, and the rollups below are built from it.
    await run_storage_upkeep(db, now=end + timedelta(days=1), older_than=timedelta(0))
    hot, history = (("process_points", "process_history") if source == "processes"
                    else ("process_group_points", "process_group_history"))
    assert await db.fetchval(f"SELECT count(*) FROM {hot}") == 0
    assert await db.fetchval(f"SELECT count(*) FROM {history}") > 0
    compacted = await top_processes(db, params, path="raw")
    assert compacted.processes == raw.processes
    await refresh_rollups(db, now=end + timedelta(hours=1, minutes=2), retention_days=2,
                          max_chunks=200)
    rolled = await top_processes(db, params, path="rollup")
    assert raw.plan.path == "raw" and rolled.plan.path == "rollup"
    assert rolled.plan.start == raw.plan.start and rolled.plan.end == raw.plan.end
    expected = reference_top(samples, source, raw.plan.start, raw.plan.end,
                             metric=params.metric, limit=params.limit,
                             server_ids=params.server_ids)
    assert_same(raw.processes, expected, "raw vs reference")
    assert_same(rolled.processes, expected, "rollup vs reference")
    return raw.processes


def by_name(processes: list[dict]) -> dict[str, dict]:
    return {p["name"]: p for p in processes}


async def test_steady_counters_give_the_configured_cores(db):
    base = base_time()
    samples = (steady_group("web-01", "nginx", base - timedelta(minutes=5), 70, cores=0.5)
               + steady_group("web-01", "postgres", base - timedelta(minutes=5), 70,
                              cores=1.5, memory_mb=2048, num_procs=12)
               + steady_group("web-01", "cron", base - timedelta(minutes=5), 70, cores=0.0))
    await insert_groups(db, samples)
    top = await check_all_paths(db, samples, "groups", base, base + timedelta(hours=1))
    assert [p["name"] for p in top] == ["postgres", "nginx", "cron"]
    pg = by_name(top)["postgres"]
    assert pg["avg_cpu_percent"] == near(150.0)
    assert pg["peak_cpu_percent"] == near(150.0)
    assert pg["avg_memory_mb"] == near(2048.0)
    assert pg["peak_memory_mb"] == near(2048.0)
    assert pg["avg_num_procs"] == near(12.0)
    assert pg["servers"] == 1
    assert by_name(top)["cron"]["avg_cpu_percent"] == 0.0


async def test_counter_reset_counts_new_value_as_delta(db):
    base = base_time()
    before = steady_group("web-01", "worker", base - timedelta(minutes=5), 35, cores=0.5,
                          counter_start=5000.0)
    # The process restarted right after the last sample: its counter starts again from 0.
    restart = before[-1]["ts"] + timedelta(seconds=15)
    after = steady_group("web-01", "worker", restart, 40, cores=0.5, counter_start=7.5)
    samples = before + after
    await insert_groups(db, samples)
    top = await check_all_paths(db, samples, "groups", base, base + timedelta(hours=1))
    assert by_name(top)["worker"]["avg_cpu_percent"] == near(50.0)
    assert by_name(top)["worker"]["peak_cpu_percent"] == near(50.0)


async def test_exporter_restart_resets_every_group_of_a_host(db):
    base = base_time()
    restart = base + timedelta(minutes=30)
    samples = []
    for name, cores in (("api", 1.0), ("db", 0.5)):
        samples += steady_group("db-01", name, base - timedelta(minutes=5), 34.9, cores=cores,
                                counter_start=90_000.0)
        # process_exporter restarted 10 s before this sample and counts from its start.
        samples += steady_group("db-01", name, restart, 35, cores=cores,
                                counter_start=cores * 10)
    await insert_groups(db, samples)
    top = await check_all_paths(db, samples, "groups", base, base + timedelta(hours=1))
    # One 15 s interval counts 10 s instead of 15 s: never a spike, never a negative rate.
    assert by_name(top)["api"]["avg_cpu_percent"] == near(100 * (3600 - 5) / 3600)
    assert by_name(top)["api"]["peak_cpu_percent"] <= 100.0 + 1e-6


async def test_pid_reuse_is_a_new_series_counted_from_its_start(db):
    base = base_time()
    old = steady_process("app-01", "java", 4242, base - timedelta(minutes=5), 34.75, cores=1.0)
    reuse_at = base + timedelta(minutes=30)
    # Same pid, a new process that started 5 s before its first sample, with its own counter.
    new = steady_process("app-01", "java", 4242, reuse_at, 40, cores=0.5,
                         start_time=reuse_at - timedelta(seconds=5), counter_start=2.5)
    samples = old + new
    await insert_processes(db, samples)
    top = await check_all_paths(db, samples, "processes", base, base + timedelta(hours=1))
    # Old: 1 core for 120 intervals; new: 0.5 core from its start, 5 s + 119 intervals.
    assert by_name(top)["java"]["avg_cpu_percent"] == near(
        100 * (1800 + 0.5 * (5 + 119 * 15)) / 3600)
    assert by_name(top)["java"]["avg_num_procs"] == near(1.0)


async def test_gap_longer_than_two_minutes_yields_no_rate(db):
    base = base_time()
    outage = (base + timedelta(minutes=20), base + timedelta(minutes=30))
    samples = steady_group("web-02", "nginx", base - timedelta(minutes=5), 70, cores=0.5,
                           skip=outage)
    await insert_groups(db, samples)
    top = await check_all_paths(db, samples, "groups", base, base + timedelta(hours=1))
    nginx = by_name(top)["nginx"]
    # 40 missing samples, and the first one after the outage has no rate: 41 intervals lost.
    assert nginx["avg_cpu_percent"] == near(100 * (240 - 41) * 7.5 / 3600)
    assert nginx["peak_cpu_percent"] == near(50.0)
    assert nginx["avg_memory_mb"] == near(100.0 * 50 / 60)


async def test_several_servers_add_up_and_filter(db):
    base = base_time()
    samples = []
    for server_id, cores in (("web-01", 0.5), ("web-02", 1.0), ("web-03", 0.25)):
        samples += steady_group(server_id, "nginx", base - timedelta(minutes=5), 70,
                                cores=cores, memory_mb=100)
        samples += steady_group(server_id, f"local-{server_id}", base - timedelta(minutes=5),
                                70, cores=0.1)
    await insert_groups(db, samples)
    await insert_servers(db, ["web-01", "web-02", "web-03"], base + timedelta(hours=1))
    start, end = base, base + timedelta(hours=1)
    top = await check_all_paths(db, samples, "groups", start, end)
    nginx = by_name(top)["nginx"]
    assert nginx["avg_cpu_percent"] == near(175.0)
    assert nginx["avg_memory_mb"] == near(300.0)
    assert nginx["servers"] == 3
    subset = await check_all_paths(db, samples, "groups", start, end,
                                   server_ids=("web-01", "web-03", "nope"))
    assert by_name(subset)["nginx"]["avg_cpu_percent"] == near(75.0)
    assert by_name(subset)["nginx"]["servers"] == 2
    assert "local-web-02" not in by_name(subset)


async def test_process_appearing_mid_window_counts_from_its_start(db):
    base = base_time()
    appear = base + timedelta(minutes=30)
    samples = (steady_process("app-01", "batch", 777, appear, 30, cores=0.25,
                              start_time=appear - timedelta(seconds=5), counter_start=1.25)
               + steady_process("app-01", "sshd", 22, base - timedelta(minutes=5), 70,
                                cores=0.01))
    await insert_processes(db, samples)
    top = await check_all_paths(db, samples, "processes", base, base + timedelta(hours=1))
    batch = by_name(top)["batch"]
    # 0.25 core from its start (5 s before its first sample) to its last sample in the window.
    assert batch["avg_cpu_percent"] == near(100 * 0.25 * (5 + 119 * 15) / 3600)
    assert batch["avg_num_procs"] == near(0.5)
    assert batch["avg_memory_mb"] == near(25.0)


async def test_long_window_uses_hour_steps_and_rounds_start_to_the_hour(db):
    base = base_time()
    samples = []
    for server_id in ("web-01", "web-02"):
        samples += steady_group(server_id, "nginx", base - timedelta(hours=9), 9 * 60 + 10,
                                cores=0.5, interval_s=30)
    # A burst of one extra core during one hour on one server.
    samples += steady_group("web-01", "burst", base - timedelta(hours=4), 60, cores=1.0,
                            interval_s=30, memory_mb=500)
    await insert_groups(db, samples)
    start = base - timedelta(hours=8, minutes=20)
    top = await check_all_paths(db, samples, "groups", start, base + timedelta(minutes=1),
                                metric="memory")
    assert [p["name"] for p in top] == ["nginx", "burst"]
    burst = by_name(top)["burst"]
    assert burst["peak_cpu_percent"] == near(100.0)
    assert burst["peak_memory_mb"] == near(500.0)


async def test_memory_metric_ranks_by_average_memory(db):
    base = base_time()
    samples = (steady_group("web-01", "small-busy", base - timedelta(minutes=5), 70,
                            cores=2.0, memory_mb=10)
               + steady_group("web-01", "big-idle", base - timedelta(minutes=5), 70,
                              cores=0.0, memory_mb=4096))
    await insert_groups(db, samples)
    top = await check_all_paths(db, samples, "groups", base, base + timedelta(hours=1),
                                metric="memory", limit=1)
    assert [p["name"] for p in top] == ["big-idle"]


async def test_a_server_filter_finds_series_whose_identity_last_seen_lags(db):
    base = base_time()
    samples = (steady_process("web-01", "nginx", 10, base - timedelta(minutes=5), 70, cores=0.5)
               + steady_process("web-02", "nginx", 10, base - timedelta(minutes=5), 70,
                                cores=1.0))
    await insert_processes(db, samples)
    # The writer refreshes last_seen every ~45 s, the views' insert path every 10 minutes:
    # make every identity lag its newest sample by 9 minutes.
    await db.execute("UPDATE process_identities SET last_seen = last_seen - interval '9 min'")
    start = base + timedelta(minutes=55)
    top = await check_all_paths(db, samples, "processes", start, start + timedelta(minutes=5),
                                server_ids=("web-02",))
    assert by_name(top)["nginx"]["avg_cpu_percent"] == near(100.0)
