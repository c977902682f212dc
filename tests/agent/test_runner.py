"""The agent loop: drift-free schedule, spool on failure, replay oldest-first, SIGTERM."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import REGISTRY

from agent.config import AgentSettings
from agent.rows import Host, ProcessSample, Report
from agent.runner import Agent
from agent.sender import Sender
from agent.spool import Spool
from procfleet.agent_process import _install_signal_handlers

TOKEN = "pf_ingest_RunnerSecretToken"
HOST = Host(server_id="test-host", hostname="test-host", os_type="linux")


def make_report(n: int) -> Report:
    return Report(
        report_id=f"{n:016x}",
        host=HOST,
        collected_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=15 * n),
        processes=[ProcessSample(pid=1, name="init", cpu_seconds_total=float(n))],
    )


class FakeTime:
    """A clock that only moves when the agent sleeps or a test says work took time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay
        await asyncio.sleep(0)


class Gateway:
    """An HTTP peer for httpx.MockTransport: 'up' (202), 'down' (503) or 'reject' (422)."""

    def __init__(self) -> None:
        self.mode = "up"
        self.received: list[str] = []  # report_ids the gateway took, in order
        self.bodies: dict[str, list[bytes]] = {}  # every body seen per report_id
        self.hold: asyncio.Event | None = None  # set: requests wait for it

    async def handle(self, request: httpx.Request) -> httpx.Response:
        report_id = json.loads(gzip.decompress(request.content))["report_id"]
        self.bodies.setdefault(report_id, []).append(request.content)
        if self.hold is not None:
            await self.hold.wait()
        if self.mode == "down":
            return httpx.Response(503, headers={"Retry-After": "1"})
        if self.mode == "reject":
            return httpx.Response(422, json={"error": "bad field", "field": "host.server_id"})
        self.received.append(report_id)
        return httpx.Response(202, json={"accepted": True})


class Harness:
    def __init__(self, tmp_path, *, interval_s: float = 15.0, splay_s: float = 0.0) -> None:
        self.time = FakeTime()
        self.gateway = Gateway()
        self.settings = AgentSettings(
            gateway_url="http://gw.test", interval_s=interval_s, splay_s=splay_s,
            spool_dir=tmp_path / "spool", timeout_s=1.0,
        )
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.gateway.handle))
        self.sender = Sender(self.http, "http://gw.test", TOKEN, max_attempts=3,
                             retry_budget_s=5, sleep=self.time.sleep, rng=random.Random(1))
        self.spool = Spool(tmp_path / "spool", 1_000_000)
        self.built: list[tuple[float, str]] = []  # (clock at tick start, report_id)
        self.work_s = 0.0  # how long building a report "takes"
        self.stop_after: int | None = None
        self.agent = self.make_agent()

    def make_agent(self, **kw) -> Agent:
        kw = {"clock": self.time.clock, "sleep": self.time.sleep, "rng": random.Random(3), **kw}
        return Agent(self.settings, build=self.build, sender=self.sender, spool=self.spool, **kw)

    async def build(self) -> Report:
        report = make_report(len(self.built))
        self.built.append((self.time.now, report.report_id))
        self.time.now += self.work_s
        if self.stop_after is not None and len(self.built) >= self.stop_after:
            self.agent.request_stop()
        return report


@pytest.fixture
async def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    await h.http.aclose()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_ticks_fall_on_a_fixed_grid_despite_work_time(tmp_path):
    h = Harness(tmp_path, interval_s=15.0, splay_s=10.0)
    h.work_s = 3.7  # sleep(interval) after the work would drift 3.7 s per tick
    h.stop_after = 6
    stats = await h.agent.run()
    starts = [t for t, _ in h.built]
    splay = starts[0] - 1000.0
    assert 0.0 <= splay <= 10.0
    assert starts == pytest.approx([starts[0] + 15.0 * k for k in range(6)])
    assert stats.ticks == 6 and stats.sent == 6 and stats.skipped_ticks == 0
    await h.http.aclose()


async def test_an_overrunning_tick_skips_slots_but_keeps_the_phase(tmp_path):
    h = Harness(tmp_path, interval_s=10.0)
    h.work_s = 25.0
    h.stop_after = 3
    stats = await h.agent.run()
    starts = [t - h.built[0][0] for t, _ in h.built]
    assert starts == pytest.approx([0.0, 30.0, 60.0])
    assert stats.skipped_ticks == 6  # each 25 s tick eats two 10 s slots
    await h.http.aclose()


async def test_once_runs_one_tick_without_splay(tmp_path):
    h = Harness(tmp_path, splay_s=15.0)
    stats = await h.agent.run(once=True)
    assert h.built[0][0] == 1000.0 and stats.ticks == 1
    assert h.gateway.received == [h.built[0][1]]
    await h.http.aclose()


async def test_down_gateway_spools_then_replays_oldest_first_with_same_bytes(harness):
    h = harness
    h.gateway.mode = "down"
    spooled_before = metric("procfleet_agent_reports_spooled_total")
    assert await h.agent.tick() == "spooled"  # tried with retries, then spooled
    assert await h.agent.tick() == "spooled"  # replay probe failed: not tried again
    assert await h.agent.tick() == "spooled"
    ids = [rid for _, rid in h.built]
    assert [e.report_id for e in h.spool] == ids
    # 3 attempts (max_attempts) on the first tick, then one replay probe per later tick;
    # the newer reports were spooled without hammering a gateway that just said no.
    assert len(h.gateway.bodies[ids[0]]) == 5
    assert ids[1] not in h.gateway.bodies and ids[2] not in h.gateway.bodies
    assert metric("procfleet_agent_reports_spooled_total") - spooled_before == 3

    h.gateway.mode = "up"
    assert await h.agent.tick() == "sent"
    ids = [rid for _, rid in h.built]
    assert h.gateway.received == ids  # oldest-first, then the new one
    assert len(h.spool) == 0 and list((h.spool.directory).iterdir()) == []
    for rid in ids[:3]:  # every try and the replay carried the very same bytes
        assert len(set(h.gateway.bodies[rid])) == 1
    assert h.agent.stats.replayed == 3 and h.agent.stats.sent == 1


async def test_replay_survives_an_agent_restart(harness, tmp_path):
    h = harness
    h.gateway.mode = "down"
    await h.agent.tick()
    first_id = h.built[0][1]
    first_body = h.gateway.bodies[first_id][0]
    # a new process: new Spool and Agent on the same directory
    h.spool = Spool(tmp_path / "spool", 1_000_000)
    h.agent = h.make_agent()
    h.gateway.mode = "up"
    await h.agent.tick()
    assert h.gateway.received == [first_id, h.built[1][1]]
    assert h.gateway.bodies[first_id][-1] == first_body


async def test_rejected_report_is_dropped_and_counted_not_spooled(harness):
    h = harness
    h.gateway.mode = "reject"
    before = metric("procfleet_agent_reports_rejected_total")
    assert await h.agent.tick() == "rejected"
    assert len(h.spool) == 0
    assert metric("procfleet_agent_reports_rejected_total") - before == 1
    assert h.agent.stats.rejected == 1
    assert len(h.gateway.bodies[h.built[0][1]]) == 1  # not retried


async def test_a_rejected_spooled_report_is_removed_during_replay(harness):
    h = harness
    h.spool.put("00000000deadbeef", gzip.compress(b'{"report_id": "00000000deadbeef"}'))
    h.gateway.mode = "reject"
    assert await h.agent.tick() == "rejected"
    assert len(h.spool) == 0 and h.agent.stats.rejected == 2


async def test_replay_stops_at_the_first_refusal_and_keeps_order(harness):
    h = harness
    for n in range(3):
        h.spool.put(f"spooled{n:08d}", gzip.compress(b'{"report_id": "spooled%08d"}' % n))
    calls = 0

    async def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            return httpx.Response(503)
        return await h.gateway.handle(request)

    h.sender._client = httpx.AsyncClient(transport=httpx.MockTransport(flaky))
    assert await h.agent.tick() == "spooled"
    assert h.gateway.received == ["spooled00000000"]
    assert [e.report_id for e in h.spool] == ["spooled00000001", "spooled00000002",
                                              h.built[0][1]]
    await h.sender._client.aclose()


async def test_a_failing_build_is_logged_and_the_loop_goes_on(harness, caplog):
    h = harness
    calls = 0

    async def build() -> Report:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("collector bug")
        if calls == 3:
            h.agent.request_stop()
        return make_report(calls)

    h.build = build
    h.agent = h.make_agent()
    with caplog.at_level(logging.ERROR, logger="agent.runner"):
        stats = await h.agent.run()
    assert (stats.ticks, stats.failed_ticks, stats.sent) == (3, 1, 2)
    assert "tick failed" in caplog.text


async def test_stop_while_idle_returns_promptly_with_a_summary_line(tmp_path, caplog):
    h = Harness(tmp_path, interval_s=3600.0)
    h.agent = h.make_agent(clock=time.monotonic, sleep=asyncio.sleep)
    with caplog.at_level(logging.INFO, logger="agent.runner"):
        task = asyncio.ensure_future(h.agent.run(once=False))
        await asyncio.sleep(0.05)
        h.agent.request_stop()
        stats = await asyncio.wait_for(task, 5)
    assert stats.ticks == 1  # the first tick, then stopped during the hour-long wait
    (summary,) = [r for r in caplog.records if r.msg == "agent stopped"]
    assert summary.kv["ticks"] == 1 and summary.kv["sent"] == 1
    assert summary.kv["spool_reports"] == 0
    await h.http.aclose()


async def _run_until_sigterm(h: Harness) -> None:
    """Run the agent with real signal handlers; SIGTERM arrives while a send is in flight."""
    loop = asyncio.get_running_loop()
    h.gateway.hold = asyncio.Event()
    h.stop_after = None
    h.agent = h.make_agent(stop_grace_s=0.2, clock=time.monotonic, sleep=asyncio.sleep)
    _install_signal_handlers(h.agent)
    try:
        task = asyncio.ensure_future(h.agent.run(once=False))
        while not any(h.gateway.bodies.values()):  # wait until the POST is in flight
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(task, 10)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def test_sigterm_during_a_hung_send_spools_the_report_and_exits(harness, caplog):
    h = harness
    with caplog.at_level(logging.INFO, logger="agent.runner"):
        stats = await _run_until_sigterm(h)
    assert (stats.ticks, stats.sent, stats.spooled) == (1, 0, 1)
    assert [e.report_id for e in h.spool] == [h.built[0][1]]
    (summary,) = [r for r in caplog.records if r.msg == "agent stopped"]
    assert summary.kv["spooled"] == 1 and summary.kv["spool_reports"] == 1


async def test_sigterm_lets_a_send_that_finishes_within_the_grace_complete(harness):
    h = harness

    async def release_soon() -> None:
        while not any(h.gateway.bodies.values()):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # well within the 0.2 s grace
        h.gateway.hold.set()

    releaser = asyncio.ensure_future(release_soon())
    stats = await _run_until_sigterm(h)
    await releaser
    assert (stats.sent, stats.spooled) == (1, 0)
    assert h.gateway.received == [h.built[0][1]] and len(h.spool) == 0


async def test_token_never_appears_in_agent_logs(harness, caplog):
    h = harness
    h.gateway.mode = "down"
    with caplog.at_level(logging.DEBUG):
        await h.agent.tick()
        h.gateway.mode = "reject"
        await h.agent.tick()
    text = caplog.text + " ".join(str(getattr(r, "kv", "")) for r in caplog.records)
    assert "tick" in text and TOKEN not in text
