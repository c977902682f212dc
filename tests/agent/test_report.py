"""Report assembly: host + exporter groups + scrubbed process table; one failing collector
costs its part only; the optional max_processes cap."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from datetime import UTC, datetime

import httpx
import pytest
import respx

from agent import contract
from agent.config import AgentSettings
from agent.errors import CollectError
from agent.report import build_report, cap_processes, new_report_id
from agent.rows import ProcessSample, Report

EXPORTER = "http://exporter.test/metrics"
EXPOSITION = """\
# TYPE namedprocess_namegroup_num_procs gauge
namedprocess_namegroup_num_procs{groupname="postgres"} 7
# TYPE namedprocess_namegroup_cpu_seconds_total counter
namedprocess_namegroup_cpu_seconds_total{groupname="postgres",mode="system"} 12.5
namedprocess_namegroup_cpu_seconds_total{groupname="postgres",mode="user"} 1.234e+06
# TYPE namedprocess_namegroup_memory_bytes gauge
namedprocess_namegroup_memory_bytes{groupname="postgres",memtype="resident"} 2.68435456e+08
"""
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def settings(tmp_path, **kw) -> AgentSettings:
    kw.setdefault("process_exporter_url", EXPORTER)
    return AgentSettings(server_id="report-test", spool_dir=tmp_path / "spool", **kw)


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def exporter():
    with respx.mock(assert_all_called=False) as mock:
        yield mock.get(EXPORTER)


async def failing_runner(argv):
    raise CollectError(f"{argv[0]}: not found")


async def test_report_has_host_groups_processes_and_snapshots(tmp_path, http, exporter):
    exporter.respond(200, text=EXPOSITION)
    report = await build_report(settings(tmp_path), http=http, now=lambda: NOW)
    assert isinstance(report, Report)
    assert report.collected_at == NOW
    assert report.host.server_id == "report-test" and report.host.agent_version
    (group,) = report.process_groups
    assert (group.name, group.num_procs, group.cpu_user_seconds_total) == ("postgres", 7, 1.234e6)
    assert len(report.processes) > 5  # this machine's real ps
    # this Linux machine's CPU times come from /proc in clock ticks, and the report says so
    assert {s.source for s in report.snapshots} == {"process_exporter", "ps", "proc_stat"}
    by_source = {s.source: s for s in report.snapshots}
    assert 0 < by_source["proc_stat"].process_count <= by_source["ps"].process_count
    assert all(s.raw_output is None for s in report.snapshots)  # keep_raw_output off
    assert re.fullmatch(r"[0-9a-f]{32}", report.report_id)
    # the light report's JSON is valid by the contract and reads back to the same values
    checked = contract.Report.model_validate_json(report.model_dump_json())
    assert checked.model_dump(mode="json") == report.model_dump(mode="json")


async def test_unreachable_exporter_is_one_warning_and_the_report_still_goes_out(
    tmp_path, http, exporter, caplog
):
    exporter.mock(side_effect=httpx.ConnectError("connection refused"))
    with caplog.at_level(logging.WARNING, logger="agent.report"):
        report = await build_report(settings(tmp_path), http=http)
    assert report.process_groups == [] and report.processes
    assert [s.source for s in report.snapshots] == ["ps", "proc_stat"]
    warnings = [r for r in caplog.records if r.name == "agent.report"]
    assert len(warnings) == 1 and "process_exporter unreachable" in warnings[0].msg


async def test_failed_process_table_still_sends_the_groups(tmp_path, http, exporter, caplog):
    exporter.respond(200, text=EXPOSITION)
    with caplog.at_level(logging.WARNING, logger="agent.report"):
        report = await build_report(settings(tmp_path), http=http, runner=failing_runner)
    assert report.processes == [] and len(report.process_groups) == 1
    assert "process table not collected" in caplog.text


async def test_exporter_disabled_is_not_scraped(tmp_path, http, exporter):
    report = await build_report(settings(tmp_path, process_exporter_url=None), http=http)
    assert exporter.call_count == 0 and report.process_groups == []


async def test_keep_raw_output_puts_the_scrubbed_text_in_the_snapshot(tmp_path, http, exporter):
    exporter.respond(200, text=EXPOSITION)
    report = await build_report(settings(tmp_path, keep_raw_output=True), http=http)
    raws = {s.source: s.raw_output for s in report.snapshots}
    assert "namedprocess_namegroup_num_procs" in raws["process_exporter"]
    assert "PID" in raws["ps"]


async def test_secrets_in_command_lines_never_leave_the_host(tmp_path, http, exporter):
    exporter.respond(200, text=EXPOSITION)
    secret, custom = "Hunter2SecretValue", "ZanzibarValue"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)",
        f"--password={secret}", "--db-token", secret, f"--zanzibar={custom}",
    )
    try:
        default = await build_report(settings(tmp_path), http=http)
        extended = await build_report(settings(tmp_path, scrub_words=("zanzibar",)), http=http)
    finally:
        child.kill()
        await child.wait()
    for report in (default, extended):
        (mine,) = [p for p in report.processes if p.pid == child.pid]
        assert secret not in report.model_dump_json()
        assert "--password=********" in mine.command
    assert custom in default.model_dump_json()  # not a default word
    assert custom not in extended.model_dump_json()  # scrub_words adds it


def sample(pid: int, name: str, cpu: float, rss: int) -> ProcessSample:
    return ProcessSample(pid=pid, name=name, cpu_seconds_total=cpu, rss_bytes=rss)


def test_cap_keeps_top_cpu_top_rss_and_pinned_in_original_order():
    procs = [
        sample(1, "idle-a", 0.1, 10),
        sample(2, "cpu-hog", 900.0, 20),
        sample(3, "mem-hog", 1.0, 9_000),
        sample(4, "Postgres", 0.0, 5),
        sample(5, "busy", 500.0, 8_000),
        sample(6, "idle-b", 0.2, 30),
    ]
    kept = cap_processes(procs, 2, ["postgres"])
    assert [p.pid for p in kept] == [2, 3, 4, 5]


def test_cap_zero_or_small_tables_keep_everything():
    procs = [sample(i, f"p{i}", float(i), i) for i in range(1, 6)]
    assert cap_processes(procs, 0) == procs
    assert cap_processes(procs, 10) == procs


def test_cap_treats_missing_counters_as_zero():
    procs = [ProcessSample(pid=1, name="a"), sample(2, "b", 3.0, 3), ProcessSample(pid=3, name="c")]
    assert [p.pid for p in cap_processes(procs, 1)] == [2]


async def test_max_processes_is_applied_to_the_report(tmp_path, http, exporter):
    exporter.respond(200, text=EXPOSITION)
    report = await build_report(settings(tmp_path, max_processes=2), http=http)
    assert 1 <= len(report.processes) <= 4  # top 2 by CPU time plus top 2 by RSS


def test_report_ids_are_unique_valid_and_sort_by_time():
    ids = [new_report_id(now_ms=1_700_000_000_000 + i) for i in range(50)]
    assert len(set(ids)) == 50 and ids == sorted(ids)
    for rid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{8,64}", rid)


async def test_a_given_report_id_is_kept(tmp_path, http, exporter):
    exporter.respond(200, text=EXPOSITION)
    report = await build_report(settings(tmp_path), http=http, report_id="fixedid-1234")
    assert report.report_id == "fixedid-1234"
