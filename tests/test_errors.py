"""Every error procfleet raises on purpose derives from one root (agent/errors.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from agent.errors import ProcfleetError

PACKAGES = ("agent", "ingest_gateway", "digest_worker", "migrations", "procfleet")

# Signals caught inside the module that raises them; they never reach a caller of ours.
INTERNAL_SIGNALS = {
    "agent.parsers.tasklist_fields.RowError": "one bad line, counted by the tasklist parser",
    "ingest_gateway.ingest.fast_contract.FastPathRefused": "the gateway then asks pydantic",
}


def _modules():
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        yield package
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if not info.name.endswith(".__main__"):  # running it would start the CLI
                yield importlib.import_module(info.name)


def _public_exceptions():
    seen = {}
    for module in _modules():
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException)
                    and value.__module__ == module.__name__ and not name.startswith("_")):
                seen[f"{value.__module__}.{name}"] = value
    return seen


def test_the_walk_finds_the_errors_it_is_meant_to_check():
    found = _public_exceptions()
    for name in ("ingest_gateway.stream.StreamDecodeError",
                 "ingest_gateway.ingest.resp.RespConnectionError",
                 "procfleet.commands.top.TopError", "agent.errors.ConfigError"):
        assert name in found


@pytest.mark.parametrize("name", sorted(set(_public_exceptions()) - set(INTERNAL_SIGNALS)))
def test_every_public_error_joins_the_procfleet_root(name):
    assert issubclass(_public_exceptions()[name], ProcfleetError), name


def test_an_unknown_token_scope_is_a_config_error_naming_the_scope():
    import asyncio

    from agent.errors import ConfigError
    from ingest_gateway.auth import TokenStore

    with pytest.raises(ConfigError, match="scope='root'"):
        asyncio.run(TokenStore(redis=None).create("root"))
