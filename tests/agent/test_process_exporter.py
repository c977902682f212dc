"""The process_exporter collector: respx-mocked expositions with exact values, and a real
process_exporter started by the test."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.collectors.process_exporter import (
    ExporterScrape,
    ExporterUnavailable,
    parse_groups,
    scrape_groups,
)
from agent.contract import ProcessGroup
from agent.errors import CollectError
from procfleet.embedded import free_port

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "process_exporter"
URL = "http://exporter.test:9256/metrics"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


async def scrape_mocked(answer, *, assert_all_called: bool = True, **kwargs) -> ExporterScrape:
    """Scrape ``URL`` with respx answering through ``answer(route)`` (it gets the GET route)."""
    with respx.mock(assert_all_called=assert_all_called) as mock:
        answer(mock.get(URL))
        async with httpx.AsyncClient() as client:
            return await scrape_groups(client, URL, **kwargs)


async def scrape_fixture(name: str, **kwargs) -> ExporterScrape:
    content = fixture_bytes(name)
    return await scrape_mocked(lambda route: route.respond(200, content=content), **kwargs)


def by_name(scrape: ExporterScrape) -> dict[str, ProcessGroup]:
    return {g.name: g for g in scrape.groups}


async def test_debian_exposition_maps_every_family_with_exact_values():
    scrape = await scrape_fixture("debian_0.7.10.prom")
    assert scrape.dropped_groups == 0
    assert scrape.groups == [
        ProcessGroup(
            name="nginx",
            num_procs=5,
            cpu_user_seconds_total=2412.3299999999995,
            cpu_system_seconds_total=1834.52,
            memory_resident_bytes=45813760,
            memory_virtual_bytes=70287360,
            memory_swapped_bytes=0,
            num_threads=5,
            open_fds=82,
            read_bytes_total=24576,
            write_bytes_total=1048576,
            major_page_faults_total=12,
            minor_page_faults_total=958211,
            context_switches_voluntary_total=24157831,
            context_switches_nonvoluntary_total=1532,
            oldest_start_time=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        ProcessGroup(
            name="postgres",
            num_procs=23,
            cpu_user_seconds_total=1234567.8,
            cpu_system_seconds_total=40211.15,
            memory_resident_bytes=2147483648,
            memory_virtual_bytes=17179869184,
            memory_swapped_bytes=4096000,
            num_threads=23,
            open_fds=1412,
            read_bytes_total=9876543210123,
            write_bytes_total=4503599627370496,
            major_page_faults_total=4711,
            minor_page_faults_total=123456789,
            context_switches_voluntary_total=3051234,
            context_switches_nonvoluntary_total=88211,
            oldest_start_time=datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=UTC),
        ),
        # Every process of the group exited: the exporter keeps it with Go's zero time.
        ProcessGroup(
            name="sleep",
            num_procs=0,
            cpu_user_seconds_total=0.0,
            cpu_system_seconds_total=0.0,
            memory_resident_bytes=0,
            memory_virtual_bytes=0,
            memory_swapped_bytes=0,
            num_threads=0,
            open_fds=0,
            read_bytes_total=0,
            write_bytes_total=0,
            major_page_faults_total=0,
            minor_page_faults_total=0,
            context_switches_voluntary_total=0,
            context_switches_nonvoluntary_total=0,
            oldest_start_time=None,
        ),
    ]
    postgres = by_name(scrape)["postgres"]
    assert type(postgres.memory_resident_bytes) is int
    assert type(postgres.cpu_user_seconds_total) is float


async def test_snapshot_carries_the_sha256_of_the_raw_exposition():
    scrape = await scrape_fixture("debian_0.7.10.prom")
    raw = fixture_bytes("debian_0.7.10.prom")
    assert scrape.snapshot.source == "process_exporter"
    assert scrape.snapshot.sha256 == hashlib.sha256(raw).hexdigest()
    assert (scrape.snapshot.process_count, scrape.snapshot.unparsed_lines) == (3, 0)
    assert scrape.snapshot.raw_output is None


async def test_keep_raw_puts_the_exposition_in_the_snapshot():
    scrape = await scrape_fixture("debian_0.7.10.prom", keep_raw=True)
    assert scrape.snapshot.raw_output == fixture_bytes("debian_0.7.10.prom").decode()


async def test_the_classic_text_format_is_requested():
    with respx.mock() as mock:
        route = mock.get(URL).respond(200, text="")
        async with httpx.AsyncClient() as client:
            scrape = await scrape_groups(client, URL)
    assert route.calls.last.request.headers["accept"].startswith("text/plain;version=0.0.4")
    assert scrape.groups == [] and scrape.dropped_groups == 0


async def test_missing_families_leave_optional_fields_empty_and_legacy_cpu_names_work():
    scrape = await scrape_fixture("legacy_0.4.prom")
    assert scrape.groups == [
        ProcessGroup(
            name="java",
            num_procs=2,
            cpu_user_seconds_total=86400.5,
            cpu_system_seconds_total=3600.25,
            memory_resident_bytes=4294967296,
            memory_virtual_bytes=8589934592,
        )
    ]
    java = scrape.groups[0]
    assert java.num_threads is None and java.open_fds is None and java.oldest_start_time is None


async def test_nan_is_absent_and_groups_out_of_bounds_are_dropped_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="agent.collectors.process_exporter")
    scrape = await scrape_fixture("nan_and_bounds.prom")
    assert scrape.groups == [
        ProcessGroup(
            name="ok",
            num_procs=1,
            cpu_user_seconds_total=1.5,
            cpu_system_seconds_total=0.25,
            memory_resident_bytes=12345678,
            memory_virtual_bytes=9007199254740993,  # 2**53 + 1: exact, not rounded
        ),
        ProcessGroup(
            name="nan-optional",
            num_procs=1,
            cpu_user_seconds_total=2.0,
            cpu_system_seconds_total=1.0,
            memory_resident_bytes=4096,
        ),
    ]
    dropped = {r.kv["group"]: r.kv["reason"] for r in caplog.records if hasattr(r, "kv")}
    assert set(dropped) == {
        "nan-required",
        "negative",
        "fractional",
        "infinite-cpu",
        "huge-memory",
        "far-future",
        "no-cpu",
    }
    assert scrape.dropped_groups == 7
    assert scrape.snapshot.unparsed_lines == 7
    assert "num_procs=1.5: not an integer" in dropped["fractional"]
    assert "num_procs" in dropped["negative"]
    assert "memory_resident_bytes" in dropped["huge-memory"]
    assert "cpu_user_seconds_total" in dropped["nan-required"]
    assert "not a timestamp" in dropped["far-future"]


async def test_group_names_are_unescaped_and_unusable_ones_dropped():
    scrape = await scrape_fixture("weird_names.prom")
    assert {g.name: (g.num_procs, g.cpu_user_seconds_total) for g in scrape.groups} == {
        'my "quoted" app': (1, 1.5),
        "C:\\Program Files\\App": (2, 2.5),
        "line\nbreak": (3, 3.5),
        "kworker/0:1H-kblockd": (4, 4.5),
        "日本語 ü,={}": (5, 5.5),
    }
    assert by_name(scrape)["日本語 ü,={}"].memory_resident_bytes == 5_000_000
    assert scrape.dropped_groups == 2  # the empty name and the 300-character one


async def test_an_unparseable_exposition_is_a_collect_error():
    with pytest.raises(ExporterUnavailable, match="unreadable exposition"):
        await scrape_fixture("malformed.prom")


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_a_non_200_answer_is_a_collect_error_with_url_and_status(status):
    with pytest.raises(CollectError) as info:
        await scrape_mocked(lambda route: route.respond(status, text="down"))
    assert isinstance(info.value, ExporterUnavailable)
    assert (info.value.url, info.value.reason) == (URL, f"HTTP {status}")
    assert URL in str(info.value)


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("x")],
)
async def test_transport_errors_are_collect_errors(error):
    with pytest.raises(ExporterUnavailable) as info:
        await scrape_mocked(lambda route: route.mock(side_effect=error))
    assert type(error).__name__ in info.value.reason


async def test_a_refused_connection_on_a_real_port_is_a_collect_error():
    url = f"http://127.0.0.1:{free_port()}/metrics"
    async with httpx.AsyncClient() as client:
        with pytest.raises(ExporterUnavailable) as info:
            await scrape_groups(client, url)
    assert info.value.url == url and "ConnectError" in info.value.reason


async def test_timeout_s_bounds_the_whole_request():
    entered = asyncio.Event()

    async def stall(request):
        entered.set()
        await asyncio.sleep(30)

    # A cancelled call is not recorded by respx, hence assert_all_called=False.
    with pytest.raises(ExporterUnavailable, match="no complete answer within 0.05 s"):
        await scrape_mocked(
            lambda route: route.mock(side_effect=stall), assert_all_called=False, timeout_s=0.05
        )
    assert entered.is_set()


async def test_an_oversized_body_is_refused():
    with pytest.raises(ExporterUnavailable, match="larger than 100 bytes"):
        await scrape_fixture("debian_0.7.10.prom", max_body_bytes=100)


async def test_without_a_url_it_scrapes_the_exporters_standard_port():
    content = fixture_bytes("debian_0.7.10.prom")
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get("http://127.0.0.1:9256/metrics").respond(200, content=content)
        async with httpx.AsyncClient() as client:
            scrape = await scrape_groups(client)
    assert route.call_count == 1
    assert {"nginx", "postgres"} <= set(by_name(scrape))


@given(st.text(max_size=400))
def test_arbitrary_text_is_parsed_or_refused_with_value_error(text):
    try:
        groups, dropped = parse_groups(text)
    except ValueError:
        return
    # Nothing is invented: every group, kept or dropped, was named by a sample line.
    assert len(groups) + dropped <= text.count("groupname=")
    assert all(isinstance(g, ProcessGroup) and g.name in text for g in groups)


GROUP_NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                      max_size=40).filter(lambda name: name.strip() == name and name)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@given(st.dictionaries(GROUP_NAMES, st.tuples(st.integers(0, 10_000),
                                                 st.integers(0, 10**9),
                                                 st.integers(0, 2**40)), max_size=8))
def test_generated_expositions_come_back_group_by_group(groups):
    lines = []
    for name, (procs, cpu_ms, rss) in groups.items():
        label = f'groupname="{_label(name)}"'
        cpu = "namedprocess_namegroup_cpu_seconds_total"
        lines += [f"namedprocess_namegroup_num_procs{{{label}}} {procs}",
                  f'{cpu}{{{label},mode="user"}} {cpu_ms / 1000}',
                  f'{cpu}{{{label},mode="system"}} 0',
                  f'namedprocess_namegroup_memory_bytes{{{label},memtype="resident"}} {rss}']

    parsed, dropped = parse_groups("\n".join(lines) + "\n")

    assert dropped == 0
    assert {g.name: (g.num_procs, g.cpu_user_seconds_total, g.memory_resident_bytes)
            for g in parsed} == {name: (procs, cpu_ms / 1000, rss)
                                 for name, (procs, cpu_ms, rss) in groups.items()}


# --- a real process_exporter -----------------------------------------------------------

EXPORTER_BIN = Path("/usr/bin/prometheus-process-exporter")
EXPORTER_CONFIG = """process_names:
  - name: "{{.Comm}}"
    cmdline:
    - '.+'
"""
READY_WAIT_S = 30.0


def proc_start_time(pid: int) -> datetime:
    """A process's start time from /proc, independently of the exporter."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    boot_s = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return datetime.fromtimestamp(boot_s + start_ticks / os.sysconf("SC_CLK_TCK"), tz=UTC)


def independent_groups(text: str) -> dict[str, dict[str, float]]:
    """Read the exposition with prometheus-client alone: {group: {field: value}}."""
    fields: dict[tuple[str, str | None], str] = {
        ("namedprocess_namegroup_num_procs", None): "num_procs",
        ("namedprocess_namegroup_cpu_seconds_total", "user"): "cpu_user_seconds_total",
        ("namedprocess_namegroup_cpu_seconds_total", "system"): "cpu_system_seconds_total",
        ("namedprocess_namegroup_memory_bytes", "resident"): "memory_resident_bytes",
        ("namedprocess_namegroup_memory_bytes", "virtual"): "memory_virtual_bytes",
        ("namedprocess_namegroup_memory_bytes", "swapped"): "memory_swapped_bytes",
        ("namedprocess_namegroup_num_threads", None): "num_threads",
        ("namedprocess_namegroup_open_filedesc", None): "open_fds",
        ("namedprocess_namegroup_read_bytes_total", None): "read_bytes_total",
        ("namedprocess_namegroup_write_bytes_total", None): "write_bytes_total",
        ("namedprocess_namegroup_major_page_faults_total", None): "major_page_faults_total",
        ("namedprocess_namegroup_minor_page_faults_total", None): "minor_page_faults_total",
        ("namedprocess_namegroup_context_switches_total", "voluntary"): (
            "context_switches_voluntary_total"
        ),
        ("namedprocess_namegroup_context_switches_total", "nonvoluntary"): (
            "context_switches_nonvoluntary_total"
        ),
        ("namedprocess_namegroup_oldest_start_time_seconds", None): "oldest_start_time",
    }
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            selector = s.labels.get("mode") or s.labels.get("memtype")
            selector = selector or s.labels.get("ctxswitchtype")
            field = fields.get((s.name, selector))
            if field and "threadname" not in s.labels:
                out.setdefault(s.labels["groupname"], {})[field] = s.value
    return out


@pytest.fixture
def exporter(tmp_path):
    """Start the Debian package's process_exporter on a free loopback port; yields its URL
    and the pid of a ``sleep`` copy with a distinctive name that it must report."""
    if not EXPORTER_BIN.exists():
        pytest.fail(
            f"{EXPORTER_BIN} is missing: install the Debian package prometheus-process-exporter "
            "(.ci/run does: apt-get install prometheus-process-exporter)"
        )
    comm = f"pf{uuid.uuid4().hex[:10]}"  # <= 15 characters: the kernel's comm length
    sleeper_bin = tmp_path / comm
    shutil.copy(shutil.which("sleep") or "/bin/sleep", sleeper_bin)
    sleeper = subprocess.Popen(
        [str(sleeper_bin), "600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = tmp_path / "process-exporter.yml"
    config.write_text(EXPORTER_CONFIG)
    port = free_port()
    log = (tmp_path / "exporter.log").open("wb")
    proc = subprocess.Popen(
        [
            str(EXPORTER_BIN),
            "-web.listen-address",
            f"127.0.0.1:{port}",
            "-config.path",
            str(config),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + READY_WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"process_exporter exited: {(tmp_path / 'exporter.log').read_text()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"process_exporter did not answer on {url} in {READY_WAIT_S} s")
            time.sleep(0.1)
        yield url, comm, sleeper.pid
    finally:
        for child in (proc, sleeper):
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log.close()


@pytest.mark.exporter
async def test_real_process_exporter_groups_match_its_own_output(exporter):
    url, comm, sleeper_pid = exporter
    async with httpx.AsyncClient() as client:
        scrape = await scrape_groups(client, url, keep_raw=True)

    raw = scrape.snapshot.raw_output
    assert raw is not None
    assert scrape.snapshot.sha256 == hashlib.sha256(raw.encode()).hexdigest()
    expected = independent_groups(raw)
    assert len(expected[comm]) == 15  # every mapped field is in the exporter's output
    assert scrape.dropped_groups == 0
    assert {g.name for g in scrape.groups} == set(expected)
    for group in scrape.groups:
        want = expected[group.name]
        for field, value in want.items():
            got = getattr(group, field)
            if field == "oldest_start_time":
                assert got == (None if value <= 0 else datetime.fromtimestamp(value, tz=UTC)), (
                    group.name
                )
            elif math.isnan(value):
                assert got is None, (group.name, field)
            else:
                assert got == value, (group.name, field)
                assert type(got) is (float if "seconds" in field else int), (group.name, field)

    # The process this test started is its own group, with values /proc agrees with.
    mine = next(g for g in scrape.groups if g.name == comm)
    assert (mine.num_procs, mine.num_threads, mine.open_fds) == (1, 1, 3)
    assert mine.memory_resident_bytes > 0
    assert mine.memory_virtual_bytes >= mine.memory_resident_bytes
    assert mine.oldest_start_time is not None
    drift_s = abs((mine.oldest_start_time - proc_start_time(sleeper_pid)).total_seconds())
    assert drift_s < 1.0
