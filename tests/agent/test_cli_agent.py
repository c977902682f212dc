"""`procfleet agent`: --check exit codes, --dry-run prints a valid report, --once delivers."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import respx

from agent.contract import Report
from agent.spool import spooled_files
from procfleet.cli import build_parser
from procfleet.commands import agent as agent_command
from procfleet.embedded import free_port

TOKEN = "pf_ingest_CliSecretToken123"
GATEWAY = "http://gw.test"
EXPORTER = "http://exporter.test/metrics"
EXPOSITION = """\
# HELP namedprocess_namegroup_num_procs number of processes in this group
# TYPE namedprocess_namegroup_num_procs gauge
namedprocess_namegroup_num_procs{groupname="python"} 2
# HELP namedprocess_namegroup_cpu_seconds_total Cpu user usage in seconds
# TYPE namedprocess_namegroup_cpu_seconds_total counter
namedprocess_namegroup_cpu_seconds_total{groupname="python",mode="system"} 1.5
namedprocess_namegroup_cpu_seconds_total{groupname="python",mode="user"} 4.25
# HELP namedprocess_namegroup_memory_bytes number of bytes of memory in use
# TYPE namedprocess_namegroup_memory_bytes gauge
namedprocess_namegroup_memory_bytes{groupname="python",memtype="resident"} 3.3554432e+07
namedprocess_namegroup_memory_bytes{groupname="python",memtype="virtual"} 1.34217728e+08
"""


def write_config(tmp_path, **extra: object) -> str:
    values = {
        "gateway_url": GATEWAY,
        "token": TOKEN,
        "spool_dir": str(tmp_path / "spool"),
        "process_exporter_url": EXPORTER,
        "server_id": "cli-test-host",
        **extra,
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_cli(*argv: str) -> int:
    """Run the subcommand in-process without touching the test's logging setup."""
    return agent_command.run(build_parser().parse_args(["agent", *argv]))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith("PROCFLEET_"):
            monkeypatch.delenv(key)


def test_check_ok_prints_settings_with_token_masked(tmp_path, capsys):
    assert run_cli("--config", write_config(tmp_path), "--check") == 0
    out = capsys.readouterr().out
    assert "agent settings ok" in out and "token = ***" in out
    assert "server_id = cli-test-host" in out
    assert TOKEN not in out
    assert (tmp_path / "spool").is_dir()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"interval": 15}, "interval"),  # unknown key
        ({"interval_s": -1}, "interval_s"),
        ({"token": ""}, "token"),  # missing token
        ({"scrub_words": ["ok", "not a word"]}, "scrub_words"),
    ],
)
def test_check_fails_with_exit_1_naming_the_key(tmp_path, capsys, extra, needle):
    assert run_cli("--config", write_config(tmp_path, **extra), "--check") == 1
    err = capsys.readouterr().err
    assert needle in err and TOKEN not in err


def test_check_fails_when_the_spool_dir_is_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert run_cli("--config", write_config(tmp_path, spool_dir=str(blocker / "spool")),
                   "--check") == 1
    assert "not writable" in capsys.readouterr().err


def test_environment_overrides_reach_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROCFLEET_INTERVAL_S", "nope")
    assert run_cli("--config", write_config(tmp_path), "--check") == 1
    assert "PROCFLEET_INTERVAL_S='nope'" in capsys.readouterr().err


def test_dry_run_prints_a_valid_report_and_sends_nothing(tmp_path):
    # A real subprocess, real ps; the exporter URL points at a closed port: one warning line,
    # the report still comes out. No gateway or token needed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCFLEET_")}
    env["PROCFLEET_PROCESS_EXPORTER_URL"] = "http://127.0.0.1:9/metrics"
    env["PROCFLEET_SERVER_ID"] = "dry-run-host"
    out = subprocess.run(
        [sys.executable, "-m", "procfleet", "agent", "--dry-run"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = Report.model_validate_json(out.stdout)
    assert report.host.server_id == "dry-run-host"
    assert len(report.processes) > 5
    assert os.getpid() in {p.pid for p in report.processes}  # this test's own process
    assert report.process_groups == []
    assert "process_exporter unreachable" in out.stderr


def test_once_delivers_one_report_with_groups_and_processes(tmp_path, caplog):
    with respx.mock(assert_all_called=False) as mock:
        mock.get(EXPORTER).respond(200, text=EXPOSITION)
        post = mock.post(f"{GATEWAY}/v1/reports").respond(202, json={"accepted": True})
        with caplog.at_level(logging.DEBUG):
            assert run_cli("--config", write_config(tmp_path), "--once") == 0
    assert post.call_count == 1
    request = post.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    report = Report.model_validate_json(gzip.decompress(request.content))
    assert report.host.server_id == "cli-test-host"
    assert [g.name for g in report.process_groups] == ["python"]
    assert report.processes
    logged = caplog.text + " ".join(str(getattr(r, "kv", "")) for r in caplog.records)
    assert "agent starting" in logged and TOKEN not in logged


def test_once_spools_when_the_gateway_is_down_and_replays_next_run(tmp_path):
    config = write_config(tmp_path, process_exporter_url="")
    with respx.mock() as mock:
        mock.post(f"{GATEWAY}/v1/reports").mock(side_effect=httpx.ConnectError("refused"))
        assert run_cli("--config", config, "--once") == 0  # spooled: nothing lost
    spooled = sorted((tmp_path / "spool").iterdir())
    assert len(spooled) == 1
    first_body = spooled[0].read_bytes()
    first_id = json.loads(gzip.decompress(first_body))["report_id"]

    with respx.mock() as mock:
        post = mock.post(f"{GATEWAY}/v1/reports").respond(202)
        assert run_cli("--config", config, "--once") == 0
    ids = [json.loads(gzip.decompress(c.request.content))["report_id"] for c in post.calls]
    assert len(ids) == 2 and ids[0] == first_id and ids[1] != first_id
    assert post.calls[0].request.content == first_body  # the very same bytes
    assert list((tmp_path / "spool").iterdir()) == []


def test_once_exits_1_when_the_report_is_rejected(tmp_path):
    with respx.mock() as mock:
        mock.post(f"{GATEWAY}/v1/reports").respond(422, json={"error": "bad"})
        assert run_cli("--config", write_config(tmp_path, process_exporter_url=""),
                       "--once") == 1
    assert list((tmp_path / "spool").iterdir()) == []


def spooled_count(port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    except httpx.TransportError:
        return 0.0  # not listening yet
    for line in text.splitlines():
        if line.startswith("procfleet_agent_reports_spooled_total "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_stops_the_real_agent_cleanly_with_a_summary_line(tmp_path):
    # The gateway port is closed: every report is refused at connect time and spooled.
    metrics_port = free_port()
    config = write_config(
        tmp_path, gateway_url=f"http://127.0.0.1:{free_port()}", process_exporter_url="",
        interval_s=1, splay_s=0, metrics_port=metrics_port,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCFLEET_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "procfleet", "agent", "--config", config],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while spooled_count(metrics_port) < 1:  # the agent's own /metrics says it spooled
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = [line for line in err.splitlines() if 'msg="agent stopped"' in line]
    assert len(summary) == 1 and "spooled=" in summary[0]
    assert TOKEN not in err
    assert len(spooled_files(tmp_path / "spool")) >= 1
