"""Gateway settings: parsed once from the environment, validated, secrets masked."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from ingest_gateway import stream
from ingest_gateway.settings import GatewaySettings, mask_url


def test_defaults_without_environment():
    settings = GatewaySettings.from_env({})
    assert settings.shards == stream.DEFAULT_SHARDS
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.wait_aof is False


def test_every_setting_has_an_environment_variable():
    for name in GatewaySettings.__dataclass_fields__:
        assert GatewaySettings.env_name(name).isupper(), name


def test_environment_values_are_parsed_by_type():
    settings = GatewaySettings.from_env({
        "REDIS_URL": "redis://:secret@cache:6380/2",
        "PROCFLEET_SHARDS": "16",
        "PROCFLEET_MAX_BODY_BYTES": "1_048_576",
        "PROCFLEET_WAIT_AOF": "yes",
        "PROCFLEET_RATE_LIMIT_PER_S": "2.5",
        "PROCFLEET_TLS_CERT": "/etc/cert.pem",
        "PROCFLEET_TLS_KEY": "/etc/key.pem",
        "PROCFLEET_RETENTION_DAYS": " ",  # blank = default
    })
    assert settings.shards == 16
    assert settings.max_body_bytes == 1_048_576
    assert settings.wait_aof is True
    assert settings.rate_limit_per_s == 2.5
    assert settings.tls_key_file == "/etc/key.pem"
    assert settings.retention_days == GatewaySettings().retention_days


@pytest.mark.parametrize(("env", "key"), [
    ({"PROCFLEET_SHARDS": "0"}, "PROCFLEET_SHARDS"),
    ({"PROCFLEET_SHARDS": "four"}, "PROCFLEET_SHARDS"),
    ({"PROCFLEET_SHARDS": "5000"}, "PROCFLEET_SHARDS"),
    ({"PROCFLEET_WAIT_AOF": "maybe"}, "PROCFLEET_WAIT_AOF"),
    ({"PROCFLEET_RATE_LIMIT_PER_S": "nan"}, "PROCFLEET_RATE_LIMIT_PER_S"),
    ({"PROCFLEET_RATE_LIMIT_PER_S": "-1"}, "PROCFLEET_RATE_LIMIT_PER_S"),
    ({"PROCFLEET_TLS_CERT": "/only/cert.pem"}, "PROCFLEET_TLS_CERT"),
    ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL"),
    ({"PROCFLEET_REDIS_TIMEOUT_S": "inf"}, "PROCFLEET_REDIS_TIMEOUT_S"),
])
def test_invalid_values_name_the_variable_and_the_value(env, key):
    with pytest.raises(ConfigError) as raised:
        GatewaySettings.from_env(env)
    assert raised.value.key == key
    assert raised.value.value == env[key]


def test_password_is_masked_in_the_startup_settings():
    settings = GatewaySettings(redis_url="redis://user:hunter2@cache:6379/0")
    assert "hunter2" not in str(settings.describe())
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert mask_url("rediss://:pw@cache:6380/1") == "rediss://:***@cache:6380/1"
