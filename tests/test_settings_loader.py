"""The one settings loader: sources in order, every value checked, errors that name the
variable (or key, or option) and the value, secrets never shown."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent.errors import ConfigError
from agent.settings_loader import (
    BOOLEAN,
    SECRET,
    Secret,
    Settings,
    integer,
    number,
    setting,
    url,
)
from digest_worker.settings import WorkerSettings
from ingest_gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Demo(Settings):
    size: int = setting(10, "DEMO_SIZE", integer(1, 100))
    ratio_s: float = setting(1.5, "DEMO_RATIO_S", number(0, 60, above=True))
    on: bool = setting(False, "DEMO_ON", BOOLEAN)
    server: str = setting("redis://127.0.0.1:6379/0", "DEMO_URL", url("redis", "rediss"))
    feed: str | None = setting("http://127.0.0.1/x", "DEMO_FEED",
                               url("http", blank_is_none=True))
    token: Secret | None = setting(None, "DEMO_TOKEN", SECRET)
    option: int | None = setting(None, kind=integer(0, 5))

    def check_together(self) -> None:
        if self.on and self.size < 5:
            raise self.invalid("size", "must be at least 5 when DEMO_ON")


def test_sources_in_order_defaults_file_environment_options():
    assert Demo.load({}).size == 10
    assert Demo.load({}, file_values={"size": 20}).size == 20
    assert Demo.load({"DEMO_SIZE": "30"}, file_values={"size": 20}).size == 30
    assert Demo.load({"DEMO_SIZE": "30"}, size=40).size == 40
    assert Demo.load({"DEMO_SIZE": "30"}, size=None).size == 30  # option not given


def test_a_blank_variable_is_not_set_unless_blank_turns_the_setting_off():
    assert Demo.load({"DEMO_SIZE": "  "}).size == 10
    assert Demo.load({"DEMO_FEED": ""}).feed is None


@pytest.mark.parametrize(("env", "reason"), [
    ({"DEMO_SIZE": "0"}, "between 1 and 100"),
    ({"DEMO_SIZE": "ten"}, "whole number"),
    ({"DEMO_RATIO_S": "nan"}, "finite"),
    ({"DEMO_RATIO_S": "inf"}, "finite"),
    ({"DEMO_RATIO_S": "0"}, "above 0"),
    ({"DEMO_ON": "maybe"}, "true or false"),
    ({"DEMO_URL": "http://cache"}, "scheme"),
])
def test_a_bad_variable_is_named_with_its_text(env, reason):
    [(name, text)] = env.items()
    with pytest.raises(ConfigError) as info:
        Demo.load(env)
    assert (info.value.key, info.value.value) == (name, text)
    assert reason in info.value.reason


def test_a_bad_file_value_names_the_key_and_a_bad_option_the_option():
    with pytest.raises(ConfigError) as info:
        Demo.load({}, file_values={"size": 500})
    assert (info.value.key, info.value.value) == ("size", 500)
    with pytest.raises(ConfigError) as info:
        Demo.load({}, file_values={"sizes": 5})
    assert info.value.key == "sizes" and "unknown key" in info.value.reason
    with pytest.raises(ConfigError) as info:
        Demo.load({}, option=9)
    assert (info.value.key, info.value.value) == ("option", 9)


def test_direct_construction_is_checked_and_names_the_variable():
    with pytest.raises(ConfigError) as info:
        Demo(ratio_s=float("nan"))
    assert info.value.key == "DEMO_RATIO_S"
    with pytest.raises(ConfigError, match="DEMO_SIZE.*at least 5 when DEMO_ON"):
        Demo(on=True, size=2)


def test_secrets_and_url_passwords_never_show():
    settings = Demo.load({"DEMO_TOKEN": "pf_s3cret", "DEMO_URL": "redis://u:hunter2@c:6379/0"})
    assert settings.token.get_secret_value() == "pf_s3cret"
    assert "pf_s3cret" not in str(settings.describe()) + repr(settings)
    assert "hunter2" not in str(settings.describe())
    assert settings.describe()["token"] == "***"
    with pytest.raises(ConfigError) as info:
        Demo.load({"DEMO_TOKEN": "pf_s3cret with space"})
    assert "pf_s3cret" not in str(info.value)


@pytest.mark.parametrize("cls", [GatewaySettings, WorkerSettings])
def test_the_programs_refuse_numbers_that_are_not_finite(cls):
    for name, spec in cls.__dataclass_fields__.items():
        if spec.type == "float" and cls.env_name(name) != name:
            for text in ("nan", "inf", "-inf"):
                with pytest.raises(ConfigError) as info:
                    cls.load({cls.env_name(name): text})
                assert info.value.key == cls.env_name(name), name


@pytest.mark.parametrize("cls", [GatewaySettings, WorkerSettings])
def test_the_retention_tiers_nest_and_share_their_defaults(cls):
    defaults = cls()
    assert (defaults.retention_days, defaults.rollup_minute_retention_days,
            defaults.rollup_hour_retention_days) == (14, 30, 400)
    assert cls.load({"PROCFLEET_RETENTION_DAYS": "30"}).retention_days == 30  # equal is fine
    with pytest.raises(ConfigError) as info:
        cls.load({"PROCFLEET_RETENTION_DAYS": "31"})
    assert info.value.key == "PROCFLEET_ROLLUP_MINUTE_RETENTION_DAYS"
    assert "30" in str(info.value) and "PROCFLEET_RETENTION_DAYS=31" in str(info.value)
    with pytest.raises(ConfigError) as info:
        cls.load({"PROCFLEET_ROLLUP_HOUR_RETENTION_DAYS": "20"})
    assert info.value.key == "PROCFLEET_ROLLUP_HOUR_RETENTION_DAYS"
    assert "20" in str(info.value)
