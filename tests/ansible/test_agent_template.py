"""The role's agent.toml: an enroll token takes the place of the fleet-wide ingest token, and
the agent accepts what the role renders. Rendered by Ansible's own template module, locally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.ansible.ansible_harness import ANSIBLE_DIR, VENV_BIN, ansible_env

pytestmark = pytest.mark.ansible

ROLE = ANSIBLE_DIR / "roles/procfleet_agent"
ENROLL_TOKEN = "pf_enr0ll_EnrollSecretForTheFleet"
INGEST_TOKEN = "pf_1ngest_SharedIngestSecret"


def render(tmp_path, **overrides: object) -> dict:
    variables = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    variables.update(procfleet_agent_gateway_url="https://procfleet.example.net",
                     procfleet_agent_server_id="web-01",
                     procfleet_agent_spool_dir=str(tmp_path / "spool"), **overrides)
    variables_file = tmp_path / "vars.json"
    variables_file.write_text(json.dumps(variables))
    dest = tmp_path / "agent.toml"
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "localhost", "-c", "local", "-i", "localhost,",
         "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{variables_file}",
         "-m", "ansible.builtin.template",
         "-a", f"src={ROLE / 'templates/agent.toml.j2'} dest={dest} mode=0600"],
        env=ansible_env(tmp_path / "ansible-home"), capture_output=True, text=True,
        timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tomllib.loads(dest.read_text())


def test_an_enroll_token_replaces_the_shared_ingest_token(tmp_path):
    config = render(tmp_path, procfleet_agent_enroll_token=ENROLL_TOKEN,
                    procfleet_agent_token=INGEST_TOKEN)

    assert config["enroll_token"] == ENROLL_TOKEN
    assert "token" not in config and INGEST_TOKEN not in json.dumps(config)
    # The agent takes the rendered file as it is: enroll_token alone is enough to deliver.
    check = subprocess.run(
        [str(VENV_BIN / "procfleet"), "agent", "--config", str(tmp_path / "agent.toml"),
         "--check"],
        env={k: v for k, v in os.environ.items() if not k.startswith("PROCFLEET_")},
        capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "enroll_token = ***" in check.stdout and ENROLL_TOKEN not in check.stdout


def test_without_an_enroll_token_the_ingest_token_is_written(tmp_path):
    config = render(tmp_path, procfleet_agent_token=INGEST_TOKEN)

    assert config["token"] == INGEST_TOKEN and "enroll_token" not in config


def test_argument_specs_declare_the_enroll_token_secret_and_optional():
    specs = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]

    for name in ("procfleet_agent_enroll_token", "procfleet_agent_token"):
        assert options[name]["no_log"] is True
        assert options[name].get("required", False) is False and options[name]["default"] == ""
