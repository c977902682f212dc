"""CPU time in clock ticks from /proc/<pid>/stat for the processes ps listed (issue: ps's whole
seconds move a 15 s counter in 6.7 % steps; a process at 3 % showed 0). A fake /proc under
tests/fixtures/proc, and this machine's real one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import contract
from agent.collectors.proc_stat import ProcStat, tick_cpu
from agent.collectors.process_table import collect_process_table, run_command
from agent.rows import Host, Report

FIXTURES = Path(__file__).parents[1] / "fixtures"
PS_OUTPUT = (FIXTURES / "ps" / "collector_procps.txt").read_text()


def scripted(text: str):
    async def runner(argv: Sequence[str]) -> str:
        return text
    return runner


async def collect(proc_root: Path | None):
    return await collect_process_table(os_type="linux", runner=scripted(PS_OUTPUT),
                                       proc_root=proc_root)


async def test_cpu_comes_from_proc_in_clock_ticks_matched_by_pid_and_start_time():
    table = await collect(FIXTURES / "proc")
    cpu = {p.pid: p.cpu_seconds_total for p in table.processes}
    assert cpu[1] == pytest.approx(754.17)  # ps: 00:12:34
    assert cpu[2] == pytest.approx(0.03)  # ps: 00:00:00
    assert cpu[812] == pytest.approx(1.42)  # ps: 00:00:01
    assert cpu[4242] == pytest.approx(785.40)  # comm "Web) Content": fields after the last ")"
    # listed by ps but gone from /proc (4501: ps itself), or the pid now names a process that
    # started later (4300): no value rather than ps's whole seconds
    assert cpu[4501] is None and cpu[4300] is None and cpu[1301] is None
    # identity stays ps's
    assert {p.pid: p.name for p in table.processes}[4242] == "Web Content"
    # the report says which source the CPU came from, and for how many processes
    assert [s.source for s in table.snapshots] == ["ps", "proc_stat"]
    assert table.cpu_snapshot.process_count == 5


async def test_a_process_at_3_percent_moves_at_15_s(tmp_path):
    proc = tmp_path / "proc"
    shutil.copytree(FIXTURES / "proc", proc)
    first = await collect(proc)
    # 15 s later systemd-timesyncd used 0.45 s (3 % of a core); ps still prints 00:00:01
    stat = proc / "812" / "stat"
    fields = stat.read_text().split()
    fields[13] = str(int(fields[13]) + 30)  # utime
    fields[14] = str(int(fields[14]) + 15)  # stime
    stat.write_text(" ".join(fields) + "\n")
    second = await collect(proc)
    before, after = ({p.pid: p for p in t.processes}[812] for t in (first, second))
    assert after.cpu_seconds_total - before.cpu_seconds_total == pytest.approx(0.45)
    assert 100 * (after.cpu_seconds_total - before.cpu_seconds_total) / 15 == pytest.approx(3.0)
    # what ps alone reports: the same whole second twice, a delta of 0
    ps_only = [{p.pid: p for p in (await collect(None)).processes}[812] for _ in range(2)]
    assert ps_only[0].cpu_seconds_total == ps_only[1].cpu_seconds_total == 1.0


async def test_without_a_usable_proc_ps_values_stand(tmp_path):
    table = await collect(tmp_path / "no-proc")
    assert {p.pid: p.cpu_seconds_total for p in table.processes}[1] == 754.0
    assert table.cpu_snapshot is None and [s.source for s in table.snapshots] == ["ps"]


def test_rows_without_a_start_time_are_left_to_ps():
    ticks = tick_cpu([(1, None), (812, None)], ProcStat(root=FIXTURES / "proc"))
    assert ticks is not None and ticks.cpu_s == {} and ticks.matched == 0


async def test_other_systems_and_busybox_keep_ps_values():
    bsd = (FIXTURES / "ps" / "collector_bsd.txt").read_text()
    table = await collect_process_table(os_type="darwin", runner=scripted(bsd),
                                        proc_root=FIXTURES / "proc")
    assert table.cpu_snapshot is None


async def test_the_proc_stat_snapshot_passes_the_contract_and_keeps_raw_on_request():
    table = await collect_process_table(os_type="linux", runner=scripted(PS_OUTPUT),
                                        proc_root=FIXTURES / "proc", keep_raw=True)
    assert table.cpu_snapshot.raw_output.startswith("1 (systemd) S 0 1 1")
    report = Report(report_id="r" * 16, collected_at=datetime(2026, 3, 12, 19, 30, tzinfo=UTC),
                    host=Host(server_id="h", hostname="h", os_type="linux"),
                    snapshots=table.snapshots)
    checked = contract.Report.model_validate_json(report.model_dump_json())
    assert checked.model_dump(mode="json") == report.model_dump(mode="json")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the real /proc")
async def test_real_host_reports_fractions_of_a_second_for_a_light_process():
    # A child that burns ~0.35 s of CPU and then sleeps: ps prints 00:00:00 for it.
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "end = time.process_time() + 0.35\n"
         "while time.process_time() < end: pass\n"
         "print('ready', flush=True)\n"
         "time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        hertz = os.sysconf("SC_CLK_TCK")

        def proc_cpu_s() -> float:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / hertz

        low = proc_cpu_s()
        table = await collect_process_table(os_type="linux", runner=run_command)
        high = proc_cpu_s()
        row = {p.pid: p for p in table.processes}[child.pid]
        assert low <= row.cpu_seconds_total <= high
        assert row.cpu_seconds_total >= 0.3  # ps's whole seconds: 0
        assert table.cpu_snapshot is not None and table.cpu_snapshot.process_count > 1
    finally:
        child.kill()
        child.wait()
