"""The agent's own process-table collector: the commands it runs, how it falls back, what it
reports -- with scripted runners, and against this machine's real ps and BusyBox."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.collectors.process_table import (
    BSD_PLAN,
    BUSYBOX_PLANS,
    PROCPS_PLAN,
    TASKLIST_PLAN,
    CommandFailed,
    ProcessTable,
    collect_process_table,
    run_command,
)
from agent.errors import CollectError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ps"
NOW = datetime(2026, 3, 12, 19, 30, tzinfo=UTC)
KIB, MIB = 1024, 1024**2


class ScriptedRunner:
    """Answers each command with the next scripted output (or raises the scripted error)."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, ...]] = []

    async def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(tuple(argv))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def refused(plan_argv: Sequence[str], message: str) -> CommandFailed:
    return CommandFailed(plan_argv, "exited with 1", message)


def by_pid(table: ProcessTable) -> dict:
    return {p.pid: p for p in table.processes}


async def test_linux_runs_procps_with_exact_fields_in_c_locale_and_utc() -> None:
    runner = ScriptedRunner(fixture("collector_procps.txt"))
    table = await collect_process_table(os_type="linux", runner=runner, now=NOW)
    assert runner.calls == [(
        "env", "LC_ALL=C", "TZ=UTC0", "ps", "-e", "-ww", "-o",
        "comm:64,pid,ppid,user:64,lstart,time,rss,vsz,stat,tty,%cpu,%mem,args",
    )]
    rows = by_pid(table)
    assert len(rows) == 9
    web = rows[4242]
    assert (web.name, web.user, web.ppid, web.tty, web.state) == (
        "Web Content", "averyveryverylongusername123", 4100, "pts/0", "Sl+")
    assert web.start_time == datetime(2026, 3, 12, 14, 41, 7, tzinfo=UTC)
    assert (web.cpu_seconds_total, web.rss_bytes, web.vsz_bytes) == (785.0, 278900 * KIB,
                                                                     12345678 * KIB)
    assert (web.cpu_percent, web.memory_percent) == (1.2, 3.4)
    assert web.command == "/usr/lib/firefox/firefox -contentproc -childID 3 -isForBrowser"


async def test_linux_names_come_from_comm_in_full() -> None:
    rows = by_pid(await collect_process_table(
        os_type="linux", runner=ScriptedRunner(fixture("collector_procps.txt")), now=NOW))
    assert rows[12].name == "kworker/u8:0-ext4-rsv-conversion-with-a-very-long-workqueue-name"
    assert rows[812].user == "systemd-timesync"  # not cut to systemd+
    assert (rows[4300].name, rows[4300].state, rows[4300].command) == ("sh", "Z",
                                                                       "[sh] <defunct>")
    assert rows[1402].cpu_seconds_total == 3 * 86400 + 4 * 3600 + 5 * 60 + 6
    assert rows[1].start_time == datetime(2026, 2, 2, 8, 0, 1, tzinfo=UTC)


async def test_scrub_reaches_every_command_and_the_raw_output() -> None:
    text = fixture("collector_procps.txt")
    table = await collect_process_table(
        os_type="linux", runner=ScriptedRunner(text), now=NOW, keep_raw=True,
        scrub=lambda s: s.replace("hunter2", "*****"),
    )
    assert by_pid(table)[1301].command == "/usr/sbin/mysqld --user=mysql --password=*****"
    snapshot = table.snapshot
    assert "hunter2" not in snapshot.model_dump_json()
    assert snapshot.raw_output == text.replace("hunter2", "*****")
    assert snapshot.sha256 == hashlib.sha256(snapshot.raw_output.encode()).hexdigest()
    assert (snapshot.source, snapshot.process_count, snapshot.unparsed_lines) == ("ps", 9, 0)


async def test_a_nul_in_a_command_line_is_replaced_so_the_contract_accepts_the_report() -> None:
    text = fixture("collector_procps.txt").replace("--password=hunter2", "--tag=a\x00b")
    table = await collect_process_table(
        os_type="linux", runner=ScriptedRunner(text), now=NOW, keep_raw=True)
    assert by_pid(table)[1301].command == "/usr/sbin/mysqld --user=mysql --tag=a\ufffdb"
    assert "\x00" not in table.snapshot.raw_output
    # What the agent sends is a valid report field by field (no NUL anywhere).
    assert all("\x00" not in p.model_dump_json() for p in table.processes)


async def test_raw_output_is_not_kept_by_default_but_hashed() -> None:
    text = fixture("collector_procps.txt")
    table = await collect_process_table(os_type="linux", runner=ScriptedRunner(text), now=NOW)
    assert table.snapshot.raw_output is None
    assert table.snapshot.sha256 == hashlib.sha256(text.encode()).hexdigest()


async def test_unparsable_rows_are_counted_in_the_snapshot() -> None:
    text = fixture("collector_procps.txt") + "garbage row\n"
    table = await collect_process_table(os_type="linux", runner=ScriptedRunner(text), now=NOW)
    assert (table.snapshot.process_count, table.snapshot.unparsed_lines) == (9, 1)


async def test_busybox_is_used_when_procps_options_are_refused() -> None:
    runner = ScriptedRunner(
        refused(PROCPS_PLAN.argv, "ps: invalid option -- 'w'\nBusyBox v1.36.1 multi-call binary"),
        fixture("collector_busybox.txt"),
    )
    table = await collect_process_table(os_type="linux", runner=runner, now=NOW)
    assert runner.calls == [PROCPS_PLAN.argv, BUSYBOX_PLANS[0].argv]
    assert runner.calls[1][3:] == (
        "ps", "-o", "comm,pid,ppid", "-o", "user=" + "USER".ljust(32), "-o",
        "vsz,rss,stat,time,args")
    rows = by_pid(table)
    assert table.snapshot.source == "ps" and len(rows) == 5
    assert (rows[900].name, rows[900].vsz_bytes, rows[900].rss_bytes) == (
        "Web Content", round(2.1 * 1024 * MIB), 119 * MIB)
    assert (rows[800].user, rows[800].ppid, rows[800].state) == (
        "averyveryverylongusername12", 1, "Sl")
    assert rows[345].cpu_seconds_total == 1234 * 60 + 56
    assert rows[800].start_time is None  # BusyBox prints no start time


async def test_busybox_without_time_support_is_tried_last() -> None:
    runner = ScriptedRunner(
        refused(PROCPS_PLAN.argv, "ps: invalid option -- 'e'"),
        refused(BUSYBOX_PLANS[0].argv, "ps: bad -o argument 'time', supported arguments: user"),
        fixture("collector_busybox_notime.txt"),
    )
    table = await collect_process_table(os_type="linux", runner=runner, now=NOW)
    assert runner.calls[2] == BUSYBOX_PLANS[1].argv
    rows = by_pid(table)
    assert (len(rows), table.snapshot.unparsed_lines) == (5, 0)
    assert (rows[345].name, rows[345].cpu_seconds_total, rows[345].vsz_bytes) == (
        "nginx", None, 12 * MIB)
    assert (rows[400].name, rows[400].command) == ("postgres", "postgres: 15/main: checkpointer")
    assert (rows[700].name, rows[700].state) == ("sh", "Z")


async def test_a_command_printing_another_header_counts_as_failed() -> None:
    runner = ScriptedRunner("  PID TTY          TIME CMD\n    1 ?        00:00:01 init\n",
                            fixture("collector_busybox.txt"))
    table = await collect_process_table(os_type="linux", runner=runner, now=NOW)
    assert len(runner.calls) == 2 and len(table.processes) == 5


async def test_all_commands_failing_raises_with_every_reason() -> None:
    runner = ScriptedRunner(
        refused(PROCPS_PLAN.argv, "ps: command not found"),
        refused(BUSYBOX_PLANS[0].argv, "env: 'ps': No such file or directory"),
        refused(BUSYBOX_PLANS[1].argv, "env: 'ps': No such file or directory"),
    )
    with pytest.raises(CollectError, match="no process-table command worked") as caught:
        await collect_process_table(os_type="linux", runner=runner, now=NOW)
    assert "ps: command not found" in str(caught.value)
    assert "No such file or directory" in str(caught.value)


async def test_single_command_failing_raises_its_own_error() -> None:
    error = refused(BSD_PLAN.argv, "ps: illegal option -- w")
    with pytest.raises(CommandFailed) as caught:
        await collect_process_table(os_type="darwin", runner=ScriptedRunner(error), now=NOW)
    assert caught.value is error
    assert caught.value.argv == list(BSD_PLAN.argv)
    assert caught.value.stderr_tail == "ps: illegal option -- w"


async def test_darwin_runs_bsd_ps_and_names_app_bundles() -> None:
    runner = ScriptedRunner(fixture("collector_bsd.txt"))
    table = await collect_process_table(os_type="darwin", runner=runner, now=NOW)
    assert runner.calls == [(
        "env", "LC_ALL=C", "TZ=UTC0", "ps", "-axww", "-o",
        "pid,ppid,user,lstart,time,rss,vsz,stat,tty,%cpu,%mem,args",
    )]
    rows = by_pid(table)
    assert table.processes[0].model_dump(exclude_none=True) == {
        "pid": 1, "ppid": 0, "user": "root", "name": "launchd", "command": "/sbin/launchd",
        "state": "Ss", "start_time": datetime(2026, 1, 26, 9, 12, 44, tzinfo=UTC),
        "cpu_seconds_total": pytest.approx(74096.78), "cpu_percent": 0.0,
        "memory_percent": 0.1, "rss_bytes": 12000 * KIB, "vsz_bytes": 410000000 * KIB,
    }
    assert rows[12345].name == "Google Chrome Helper (Renderer)"
    assert (rows[22222].name, rows[22222].tty) == ("zsh", "ttys000")


@pytest.mark.parametrize("os_type", ["freebsd", "openbsd", "netbsd"])
async def test_other_bsds_use_the_bsd_command(os_type: str) -> None:
    runner = ScriptedRunner(fixture("collector_bsd.txt"))
    await collect_process_table(os_type=os_type, runner=runner, now=NOW)
    assert runner.calls == [BSD_PLAN.argv]


async def test_unknown_os_tries_procps_then_bsd() -> None:
    runner = ScriptedRunner(refused(PROCPS_PLAN.argv, "ps: illegal option -- e"),
                            fixture("collector_bsd.txt"))
    table = await collect_process_table(os_type="other", runner=runner, now=NOW)
    assert runner.calls == [PROCPS_PLAN.argv, BSD_PLAN.argv]
    assert len(table.processes) == 4


async def test_windows_runs_tasklist_and_scrubs_its_commands() -> None:
    runner = ScriptedRunner(fixture("collector_tasklist.csv"))
    table = await collect_process_table(
        os_type="windows", runner=runner, now=NOW, scrub=lambda s: s.upper())
    assert runner.calls == [("tasklist", "/v", "/fo", "csv")] == [TASKLIST_PLAN.argv]
    rows = by_pid(table)
    assert table.snapshot.source == "tasklist"
    assert (table.snapshot.process_count, table.snapshot.unparsed_lines) == (4, 0)
    assert rows[8812].name == "chrome.exe"
    assert rows[8812].command == "CHROME.EXE"
    assert rows[8812].rss_bytes == 312004 * KIB
    assert rows[8812].cpu_seconds_total == 14 * 60 + 3


# -- the default runner, for real ----------------------------------------------------------


async def test_run_command_returns_stdout() -> None:
    assert await run_command(["sh", "-c", "echo out; echo err >&2"]) == "out\n"


async def test_run_command_failure_carries_command_and_stderr_tail() -> None:
    with pytest.raises(CommandFailed) as caught:
        await run_command(["sh", "-c", "echo progress; echo 'ps: bad option' >&2; exit 3"])
    assert caught.value.stderr_tail == "ps: bad option"
    assert "exited with 3" in str(caught.value) and "echo progress" in str(caught.value)


async def test_run_command_missing_program() -> None:
    with pytest.raises(CommandFailed, match="cannot start"):
        await run_command(["procfleet-no-such-program-xyz"])


async def test_run_command_kills_a_command_that_outlives_its_timeout() -> None:
    with pytest.raises(CommandFailed, match="timed out after 0.2 s"):
        await run_command(["sleep", "30"], timeout_s=0.2)


# -- this machine: the collector's real output against /proc --------------------------------


def _proc_identity(pid: int) -> tuple[int, int] | None:
    """(ppid, start ticks) of a live process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _identities() -> dict[int, tuple[int, int] | None]:
    return {int(d): _proc_identity(int(d)) for d in os.listdir("/proc") if d.isdigit()}


def _boot_time() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    raise AssertionError("no btime in /proc/stat")


async def test_real_procps_collector_matches_proc() -> None:
    before = _identities()
    table = await collect_process_table(os_type="linux", keep_raw=True)
    after = _identities()
    rows = by_pid(table)
    assert table.snapshot.unparsed_lines == 0, table.snapshot.raw_output
    assert table.snapshot.raw_output.startswith("COMMAND")
    hertz, boot_time = os.sysconf("SC_CLK_TCK"), _boot_time()
    stable = {pid: ident for pid, ident in before.items() if ident and after.get(pid) == ident}
    assert set(stable) <= set(rows)
    for pid, (ppid, start_ticks) in stable.items():
        expected_start = datetime.fromtimestamp(boot_time + start_ticks // hertz, UTC)
        assert rows[pid].ppid == ppid
        assert abs((rows[pid].start_time - expected_start).total_seconds()) <= 1, pid
    me = rows[os.getpid()]
    assert me.ppid == os.getppid()
    assert me.user == pwd.getpwuid(os.getuid()).pw_name
    assert me.name == Path("/proc/self/comm").read_text().strip()
    cmdline = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    assert me.command == " ".join(arg.decode() for arg in cmdline)[:4096]
    assert me.rss_bytes > 0 and me.vsz_bytes >= me.rss_bytes
    assert me.cpu_seconds_total <= sum(os.times()[:2]) + 1


@pytest.fixture(scope="module")
def busybox() -> str:
    path = shutil.which("busybox")
    assert path, "busybox is not installed (scripts/system-deps installs it)"
    return path


async def test_real_busybox_collector_matches_proc(busybox: str) -> None:
    calls: list[Sequence[str]] = []

    async def via_busybox(argv: Sequence[str]) -> str:
        calls.append(argv)
        at = list(argv).index("ps")
        return await run_command([*argv[:at], busybox, *argv[at:]])

    table = await collect_process_table(os_type="linux", runner=via_busybox)
    # procps' options are refused by BusyBox, so a BusyBox command produced this
    assert calls[0] == PROCPS_PLAN.argv and calls[-1] in [p.argv for p in BUSYBOX_PLANS]
    assert table.snapshot.unparsed_lines == 0
    rows = by_pid(table)
    me = rows[os.getpid()]
    assert me.ppid == os.getppid()
    assert me.user == pwd.getpwuid(os.getuid()).pw_name[:27]
    assert me.name == Path("/proc/self/comm").read_text().strip()[:16]
    assert me.rss_bytes > 0
    assert rows[1].ppid == 0


async def test_real_plain_ps_outputs_parse_completely() -> None:
    from agent.parsers.ps import parse_ps

    before = _identities()
    outputs = {args: await run_command(["ps", *args.split()]) for args in ("aux", "-ef", "-e")}
    after = _identities()
    stable = {pid for pid, ident in before.items() if ident and after.get(pid) == ident}
    for args, text in outputs.items():
        result = parse_ps(text)
        assert (result.format, result.unparsed_lines) == ("ps-procps", 0), (args, result.errors)
        assert stable <= {p.pid for p in result.processes}, args
    ef = {p.pid: p for p in parse_ps(outputs["-ef"]).processes}
    assert ef[os.getpid()].ppid == os.getppid()
