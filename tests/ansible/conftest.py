"""Fixtures for the Ansible tests: one converge of the roles into this machine, run twice
for idempotence.

The converge runs as root against localhost (``ansible_connection=local``); every path the
roles write goes under a scratch directory, except the two system users it creates
(removed afterwards) and the ``prometheus-process-exporter`` package (installed by apt).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from ansible_harness import (
    AGENT_USER,
    EXPORTER_USER,
    Converged,
    FleetPeer,
    build_release_archive,
    build_wheel,
    run_playbook,
    scratch_dir,
    user_exists,
)

from procfleet.embedded import free_port


def _host_vars(
    root: Path, peer_url: str, archive: Path, archive_sha256: str, wheel: Path, exporter_port: int
) -> dict[str, object]:
    """Inventory variables of localhost: every path under ``root``, services not started."""
    return {
        "ansible_connection": "local",
        # The host's own Python, as on a fleet host (not whatever is first on PATH here).
        "ansible_python_interpreter": "/usr/bin/python3",
        "procfleet_test_root": str(root),
        "procfleet_test_archive_url": f"{peer_url}/archives/{archive.name}",
        "procfleet_test_archive_checksum": f"sha256:{archive_sha256}",
        "process_exporter_manage_service": False,
        "process_exporter_system_user": EXPORTER_USER,
        "process_exporter_config_dir": str(root / "etc/process_exporter"),
        "process_exporter_systemd_unit_dir": str(root / "systemd"),
        "process_exporter_web_listen_address": f"127.0.0.1:{exporter_port}",
        "procfleet_agent_manage_service": False,
        "procfleet_agent_install_method": "wheel",
        "procfleet_agent_wheel_src": str(wheel),
        "procfleet_agent_python": "/usr/bin/python3",
        "procfleet_agent_system_user": AGENT_USER,
        "procfleet_agent_install_dir": str(root / "opt/procfleet"),
        "procfleet_agent_config_dir": str(root / "etc/procfleet"),
        "procfleet_agent_systemd_unit_dir": str(root / "systemd"),
        "procfleet_agent_spool_dir": str(root / "var/spool"),
        "procfleet_agent_gateway_url": peer_url,
        "procfleet_agent_token": f"pft_{os.urandom(12).hex()}",
        "procfleet_agent_server_id": "ansible-test-host",
        "procfleet_agent_interval_s": 30,
        "procfleet_agent_process_exporter_url": f"http://127.0.0.1:{exporter_port}/metrics",
        "procfleet_agent_spool_max_mb": 5,
        "procfleet_agent_scrub_words": ["password", "token", "hunter2"],
        "procfleet_agent_max_processes": 300,
        "procfleet_agent_extra_settings": {"splay_s": 0, "timeout_s": 5},
    }


@pytest.fixture(scope="session")
def converged():
    """Converge both roles (plus an archive install of the exporter) twice into a scratch
    prefix on this machine, then dry-run it; yields a ``Converged``."""
    root = scratch_dir("procfleet-ansible-")
    users_before = {name: user_exists(name) for name in (AGENT_USER, EXPORTER_USER)}
    peer: FleetPeer | None = None
    try:
        archive_dir = root / "www"
        archive_dir.mkdir()
        archive, archive_sha256 = build_release_archive(archive_dir)
        peer = FleetPeer(archive_dir)
        threading.Thread(target=peer.serve_forever, daemon=True).start()
        exporter_port = free_port()
        wheel = build_wheel(root / "wheels")
        host_vars = _host_vars(root, peer.url, archive, archive_sha256, wheel, exporter_port)
        inventory = root / "inventory.json"  # JSON is YAML: the yaml inventory plugin reads it
        inventory.write_text(json.dumps({"procfleet_agents": {"hosts": {"localhost": host_vars}}}))
        ansible_home = root / "ansible-home"
        first = run_playbook(inventory, ansible_home)
        assert first.returncode == 0, f"first converge failed:\n{first.output[-6000:]}"
        second = run_playbook(inventory, ansible_home)
        dry_run = run_playbook(inventory, ansible_home, "--check", "--diff")
        yield Converged(root, host_vars, peer, exporter_port, first, second, dry_run)
    finally:
        if peer is not None:
            peer.shutdown()
            peer.server_close()
        for name, existed in users_before.items():
            if not existed and user_exists(name):
                subprocess.run(["userdel", name], check=False, capture_output=True)
                subprocess.run(["groupdel", name], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
