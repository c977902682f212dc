"""Agent settings: TOML + PROCFLEET_<KEY> overrides, validated once, token never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import DEFAULT_PROCESS_EXPORTER_URL, KEYS, default_spool_dir, load_settings
from agent.errors import ConfigError

SECRET = "pf_ingest_s3cr3t-t0ken"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment(tmp_path):
    settings = load_settings(None, {"HOME": str(tmp_path)})
    assert settings.interval_s == 15.0
    assert settings.effective_splay_s == 15.0
    assert settings.process_exporter_url == DEFAULT_PROCESS_EXPORTER_URL
    assert settings.spool_max_bytes == 100 * 1024 * 1024
    assert settings.max_processes == 0
    assert settings.token is None and settings.gateway_url is None
    assert settings.spool_dir == tmp_path / ".local/state/procfleet/spool"


def test_file_values_are_typed(tmp_path):
    path = write(
        tmp_path,
        f"""
gateway_url = "https://gw.example.com:8443/"
token = "{SECRET}"
server_id = "web-01"
interval_s = 30
splay_s = 5.5
spool_dir = "{tmp_path / "spool"}"
spool_max_mb = 2
scrub_words = ["vault_pass", "dsn"]
max_processes = 50
pinned_names = ["postgres", "nginx"]
keep_raw_output = true
timeout_s = 3
""",
    )
    s = load_settings(path, {})
    assert s.gateway_url == "https://gw.example.com:8443"  # trailing slash dropped
    assert s.token is not None and s.token.get_secret_value() == SECRET
    assert (s.server_id, s.interval_s, s.effective_splay_s) == ("web-01", 30.0, 5.5)
    assert s.spool_dir == tmp_path / "spool"
    assert s.spool_max_bytes == 2 * 1024 * 1024
    assert s.scrub_words == ("vault_pass", "dsn")
    assert s.pinned_names == ("postgres", "nginx")
    assert (s.max_processes, s.keep_raw_output, s.timeout_s) == (50, True, 3.0)


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, 'interval_s = 30\ngateway_url = "http://a.example"\n')
    env = {
        "PROCFLEET_INTERVAL_S": "60",
        "PROCFLEET_GATEWAY_URL": "http://b.example",
        "PROCFLEET_TOKEN": SECRET,
        "PROCFLEET_SCRUB_WORDS": "dsn, vault_pass",
        "PROCFLEET_KEEP_RAW_OUTPUT": "yes",
        "PROCFLEET_PROCESS_EXPORTER_URL": "",  # empty: do not scrape
        "PROCFLEET_LOG_FORMAT": "json",  # another program's variable: ignored, not rejected
    }
    s = load_settings(path, env)
    assert s.interval_s == 60.0 and s.gateway_url == "http://b.example"
    assert s.token.get_secret_value() == SECRET
    assert s.scrub_words == ("dsn", "vault_pass")
    assert s.keep_raw_output is True
    assert s.process_exporter_url is None


def test_agent_table_is_accepted(tmp_path):
    path = write(tmp_path, '[agent]\nserver_id = "db-7"\n')
    assert load_settings(path, {}).server_id == "db-7"


def test_spool_dir_defaults_under_data_dir(tmp_path):
    assert default_spool_dir({"PROCFLEET_DATA_DIR": str(tmp_path)}) == tmp_path / "agent-spool"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("intervall_s = 15", "intervall_s", "unknown key"),
        ("interval_s = 0", "interval_s", "between"),
        ('interval_s = "soon"', "interval_s", "expected a number"),
        ("interval_s = true", "interval_s", "expected a number"),
        ("interval_s = nan", "interval_s", "finite"),
        ("max_processes = -1", "max_processes", "between"),
        ("max_processes = 2.5", "max_processes", "whole number"),
        ('gateway_url = "gw.example.com"', "gateway_url", "http"),
        ('server_id = "web 01"', "server_id", "characters"),
        ('ca_file = "/nonexistent/ca.pem"', "ca_file", "not found"),
        ("scrub_words = [1, 2]", "scrub_words", "list of strings"),
        ('keep_raw_output = "maybe"', "keep_raw_output", "true or false"),
        ("interval_s = 10\nsplay_s = 20", "splay_s", "interval_s"),
    ],
)
def test_invalid_values_name_key_value_and_reason(tmp_path, text, key, reason):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {})
    assert info.value.key == key
    assert reason in info.value.reason
    assert key in str(info.value)


def test_bad_environment_value_names_the_variable_and_its_text():
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"PROCFLEET_TIMEOUT_S": "-3"})
    assert (info.value.key, info.value.value) == ("PROCFLEET_TIMEOUT_S", "-3")
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"PROCFLEET_INTERVAL_S": "inf"})
    assert (info.value.key, info.value.value) == ("PROCFLEET_INTERVAL_S", "inf")


def test_broken_toml_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config"):
        load_settings(write(tmp_path, "interval_s = = 3"), {})
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "missing.toml", {})


def test_token_is_never_in_repr_describe_or_errors(tmp_path, caplog):
    s = load_settings(None, {"PROCFLEET_TOKEN": SECRET, "HOME": str(tmp_path)})
    assert SECRET not in repr(s)
    assert SECRET not in str(s.describe())
    assert s.describe()["token"] == "***"
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"PROCFLEET_TOKEN": SECRET + " with spaces"})
    assert SECRET not in str(info.value)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings", extra={"kv": s.describe()})
    assert SECRET not in caplog.text


def test_require_delivery_names_the_missing_key(tmp_path):
    s = load_settings(None, {"PROCFLEET_GATEWAY_URL": "http://gw", "HOME": str(tmp_path)})
    with pytest.raises(ConfigError) as info:
        s.require_delivery()
    assert info.value.key == "token"
    s = load_settings(None, {"PROCFLEET_TOKEN": SECRET, "HOME": str(tmp_path)})
    with pytest.raises(ConfigError) as info:
        s.require_delivery()
    assert info.value.key == "gateway_url"


def test_every_documented_key_is_known():
    for key in ("gateway_url", "token", "server_id", "interval_s", "process_exporter_url",
                "spool_dir", "spool_max_mb", "ca_file", "scrub_words", "max_processes"):
        assert key in KEYS
