"""A real converge of the process_exporter and procfleet_agent roles into this machine, then the
installed agent and exporter run from what the roles rendered."""

from __future__ import annotations

import configparser
import gzip
import json
import pwd
import shlex
import shutil
import stat
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.ansible.ansible_harness import (
    AGENT_USER,
    EXPORTER_BINARY,
    EXPORTER_USER,
    PEER_HOST_TOKEN,
)

# The first test also waits for the session converge (three playbook runs).
pytestmark = [pytest.mark.ansible, pytest.mark.timeout(600)]

EXPORTER_START_TIMEOUT_S = 20
AGENT_ONCE_TIMEOUT_S = 120
RUNUSER = shutil.which("runuser", path="/usr/sbin:/usr/bin:/sbin:/bin") or "runuser"


def unit_path(converged, name: str) -> Path:
    return converged.root / "systemd" / f"{name}.service"


def unit_service(path: Path) -> dict[str, list[str]]:
    """``[Service]`` of a unit file: key -> every value it is given (continuations joined)."""
    text = path.read_text().replace("\\\n", " ")
    values: dict[str, list[str]] = {}
    in_service = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            in_service = line == "[Service]"
        elif in_service and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value.strip())
    return values


def exec_start(path: Path) -> list[str]:
    (command,) = unit_service(path)["ExecStart"]
    return shlex.split(command)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@pytest.fixture(scope="session")
def running_exporter(converged):
    """The package's exporter started as its unit would start it (ExecStart, User); stopped by
    pid after the session."""
    unit = unit_path(converged, "prometheus-process-exporter")
    argv = [RUNUSER, "-u", unit_service(unit)["User"][0], "--", *exec_start(unit)]
    log_path = converged.root / "exporter.log"
    with log_path.open("wb") as log:  # a file, not a pipe: a full pipe would block it
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{converged.exporter_port}/metrics"
    deadline = time.monotonic() + EXPORTER_START_TIMEOUT_S
    body = ""
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = scrape(url)
            except OSError:
                time.sleep(0.2)
                continue
            if "namedprocess_namegroup_" in body:
                break
            time.sleep(0.2)
        yield body, proc, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_first_converge_installs_the_agent_and_the_exporter(converged):
    recap = converged.first.recap()
    assert recap["failed"] == 0 and recap["unreachable"] == 0
    assert recap["changed"] > 0
    root = converged.root
    agent_bin = root / "opt/procfleet/venv/bin/procfleet"
    assert agent_bin.is_file()
    assert [w.name for w in (root / "opt/procfleet/wheels").glob("*.whl")] == [
        Path(str(converged.host_vars["procfleet_agent_wheel_src"])).name
    ]
    archive_binary = root / "archive/bin/process-exporter"
    assert archive_binary.read_bytes() == EXPORTER_BINARY.read_bytes()
    assert stat.S_IMODE(archive_binary.stat().st_mode) == 0o755
    agent_user = pwd.getpwnam(AGENT_USER)
    assert agent_user.pw_shell == "/usr/sbin/nologin"
    assert pwd.getpwnam(EXPORTER_USER).pw_shell == "/usr/sbin/nologin"
    spool = (root / "var/spool").stat()
    assert (spool.st_uid, stat.S_IMODE(spool.st_mode)) == (agent_user.pw_uid, 0o750)
    # The code belongs to root: the agent's user can run it, not rewrite it.
    assert agent_bin.stat().st_uid == 0


def test_second_converge_changes_nothing(converged):
    assert converged.second.returncode == 0, converged.second.output[-6000:]
    recap = converged.second.recap()
    assert recap == {**recap, "changed": 0, "failed": 0, "unreachable": 0}, converged.second.output


def test_dry_run_of_a_converged_host_predicts_no_change(converged):
    assert converged.dry_run.returncode == 0, converged.dry_run.output[-6000:]
    recap = converged.dry_run.recap()
    assert recap == {**recap, "changed": 0, "failed": 0}, converged.dry_run.output


def test_token_never_shows_in_ansible_output_even_with_diff(converged):
    for run in (converged.first, converged.second, converged.dry_run):
        assert converged.token not in run.output


def test_agent_config_holds_every_setting_and_only_the_agent_group_reads_it(converged):
    path = converged.root / "etc/procfleet/agent.toml"
    config = tomllib.loads(path.read_text())
    root = converged.root
    assert config == {
        "gateway_url": converged.peer.url,
        "token": converged.token,
        "server_id": "ansible-test-host",
        "interval_s": 30.0,
        "process_exporter_url": f"http://127.0.0.1:{converged.exporter_port}/metrics",
        "spool_dir": str(root / "var/spool"),
        "spool_max_mb": 5.0,
        "max_processes": 300,
        "scrub_words": ["password", "token", "hunter2"],
        "splay_s": 0,
        "timeout_s": 5,
    }
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (0, pwd.getpwnam(AGENT_USER).pw_gid)
    assert path.read_text().startswith("#")  # the ansible_managed header


def test_agent_unit_is_hardened_and_writes_only_the_spool(converged):
    service = unit_service(unit_path(converged, "procfleet-agent"))
    root = converged.root
    assert service["User"] == [AGENT_USER]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ReadWritePaths"] == [str(root / "var/spool")]
    assert service["ProtectHome"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"]
    assert service["Restart"] == ["on-failure"]
    assert exec_start(unit_path(converged, "procfleet-agent")) == [
        str(root / "opt/procfleet/venv/bin/procfleet"),
        "--log-format",
        "logfmt",
        "--log-level",
        "INFO",
        "agent",
        "--config",
        str(root / "etc/procfleet/agent.toml"),
    ]


def test_exporter_units_override_the_package_and_listen_where_configured(converged):
    package_unit = unit_path(converged, "prometheus-process-exporter")
    argv = exec_start(package_unit)
    assert argv[0] == str(EXPORTER_BINARY)
    assert f"-web.listen-address=127.0.0.1:{converged.exporter_port}" in argv
    assert f"-config.path={converged.root}/etc/process_exporter/config.yml" in argv
    assert unit_service(package_unit)["User"] == [EXPORTER_USER]
    archive_argv = exec_start(converged.root / "archive/systemd/process_exporter.service")
    assert archive_argv[0] == str(converged.root / "archive/bin/process-exporter")
    assert f"-web.listen-address=127.0.0.1:{converged.exporter_port}" in archive_argv


def test_rendered_units_pass_systemd_analyze_verify(converged):
    units = sorted((converged.root / "systemd").glob("*.service"))
    units += sorted((converged.root / "archive/systemd").glob("*.service"))
    assert [u.name for u in units] == [
        "procfleet-agent.service",
        "prometheus-process-exporter.service",
        "process_exporter.service",
    ]
    analyze = shutil.which("systemd-analyze")
    for unit in units:
        if analyze is None:  # no systemd tools on this machine: the unit must still parse
            parser = configparser.ConfigParser(strict=False, interpolation=None)
            parser.read_string(unit.read_text())
            assert {"Unit", "Service", "Install"} <= set(parser.sections())
            continue
        proc = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "Unknown" not in proc.stderr and "Invalid" not in proc.stderr, proc.stderr


def test_exporter_config_groups_by_command_name_unless_overridden(converged):
    default = yaml.safe_load((converged.root / "etc/process_exporter/config.yml").read_text())
    assert default == {"process_names": [{"name": "{{.Comm}}", "cmdline": [".+"]}]}
    override = yaml.safe_load((converged.root / "archive/etc/config.yml").read_text())
    assert override == {
        "process_names": [{"name": "{{.ExeBase}}:{{.Username}}", "exe": ["/usr/bin/python3"]}]
    }


def test_installed_exporter_answers_with_process_groups(running_exporter):
    body, proc, log_path = running_exporter
    assert proc.poll() is None, log_path.read_text()
    assert 'namedprocess_namegroup_num_procs{groupname="' in body, body[:2000]


def test_installed_agent_delivers_one_report_to_the_gateway(converged, running_exporter):
    converged.peer.posts.clear()
    argv = exec_start(unit_path(converged, "procfleet-agent")) + ["--once"]
    proc = subprocess.run(
        [RUNUSER, "-u", AGENT_USER, "--", *argv],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=AGENT_ONCE_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = [post for post in converged.peer.posts if post[0] == "/v1/reports"]
    assert len(reports) == 1, converged.peer.posts
    _, headers, body = reports[0]
    assert headers["Authorization"] == f"Bearer {converged.token}"
    report = json.loads(gzip.decompress(body))
    assert report["report_id"]
    assert report["host"]["server_id"] == "ansible-test-host"
    assert any(p["pid"] > 0 for p in report["processes"])
    assert report["process_groups"], "the agent did not scrape the installed exporter"
    assert converged.token not in proc.stdout + proc.stderr


def test_installed_agent_enrolls_once_and_keeps_its_host_token_owner_only(converged,
                                                                           running_exporter):
    converged.peer.posts.clear()
    enroll_token = "pf_enrollfleet_EnrollTokenOfTheFleet"
    token_file = converged.root / "var/spool/host-token"
    argv = exec_start(unit_path(converged, "procfleet-agent")) + ["--once"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "PROCFLEET_ENROLL_TOKEN": enroll_token}
    try:
        for _ in range(2):  # a second start reuses the stored host token
            proc = subprocess.run([RUNUSER, "-u", AGENT_USER, "--", *argv], env=env,
                                  capture_output=True, text=True, timeout=AGENT_ONCE_TIMEOUT_S)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert enroll_token not in proc.stdout + proc.stderr
            assert PEER_HOST_TOKEN not in proc.stdout + proc.stderr
        info = token_file.stat()
        stored = json.loads(token_file.read_text())
    finally:
        token_file.unlink(missing_ok=True)

    enrolls = [post for post in converged.peer.posts if post[0] == "/v1/enroll"]
    reports = [post for post in converged.peer.posts if post[0] == "/v1/reports"]
    assert len(enrolls) == 1 and len(reports) == 2, converged.peer.posts
    assert enrolls[0][1]["Authorization"] == f"Bearer {enroll_token}"
    assert json.loads(gzip.decompress(enrolls[0][2]))["server_id"] == "ansible-test-host"
    assert {headers["Authorization"] for _, headers, _ in reports} == {
        f"Bearer {PEER_HOST_TOKEN}"}
    assert stored == {"server_id": "ansible-test-host", "token": PEER_HOST_TOKEN}
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (pwd.getpwnam(AGENT_USER).pw_uid, 0o600)
