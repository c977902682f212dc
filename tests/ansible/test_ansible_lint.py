"""The roles and playbooks pass ansible-lint (production profile) and a syntax check."""

from __future__ import annotations

import subprocess

import pytest

from tests.ansible.ansible_harness import ANSIBLE_DIR, VENV_BIN, ansible_env

pytestmark = pytest.mark.ansible

PLAYBOOKS = ("site.yml", "deploy-agent.yml", "deploy-process-exporter.yml")


def test_ansible_lint_passes_the_production_profile(tmp_path):
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_passes_syntax_check(playbook, tmp_path):
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            "inventory/example/hosts.yml",
            playbook,
        ],
        cwd=ANSIBLE_DIR,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"playbook: {playbook}" in proc.stdout
