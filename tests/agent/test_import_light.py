"""The agent stays light: `pip install procfleet` (no extras) must be enough to run it, so no
agent module and no `procfleet agent` code path may import the server stack."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Server-extra packages: not installed on a host that runs only the agent.
FORBIDDEN = ("aiohttp", "redis", "asyncpg", "hiredis", "orjson", "mcp", "pyarrow")

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import agent
    imported = ["agent"]
    for info in pkgutil.walk_packages(agent.__path__, "agent."):
        importlib.import_module(info.name)
        imported.append(info.name)
    # the `procfleet agent` path: the CLI parser (every subcommand's add_arguments) and
    # the command module's run-time imports
    from procfleet.cli import build_parser
    build_parser().parse_args(["agent", "--check"])
    import procfleet.commands.agent
    import agent.runner, agent.report, agent.config, procfleet.agent_process
    forbidden = %r
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
    print(json.dumps({"imported": imported, "forbidden_loaded": loaded}))
    """
)


def test_agent_and_procfleet_agent_never_import_the_server_stack():
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (FORBIDDEN,)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    # the walk really covered the delivery modules
    for module in ("agent.config", "agent.report", "agent.sender", "agent.spool",
                   "agent.runner", "agent.contract"):
        assert module in result["imported"]
    assert result["forbidden_loaded"] == []


def test_procfleet_agent_check_runs_without_the_server_stack(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        f'gateway_url = "http://127.0.0.1:9"\ntoken = "t0ken"\nspool_dir = "{tmp_path / "s"}"\n'
    )
    probe = (
        "import json, sys\n"
        "from procfleet.cli import main\n"
        f"code = main(['agent', '--config', {str(config)!r}, '--check'])\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(json.dumps({'code': code, 'forbidden_loaded': bad}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "forbidden_loaded": []}


# pydantic and the built contract cost ~10 MB of the agent's RSS (docs/BENCHMARKS.md, "Agent
# footprint"): the agent builds reports with agent.rows and never imports them.
HEAVY = ("pydantic", "pydantic_core", "annotated_types", "msgspec")


def test_a_running_agent_never_imports_pydantic(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        f'gateway_url = "http://127.0.0.1:9"\ntoken = "t0ken"\nspool_dir = "{tmp_path / "s"}"\n'
        'process_exporter_url = ""\nserver_id = "light-host"\n'
    )
    probe = (
        "import io, json, sys, contextlib\n"
        "from procfleet.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    code = main(['agent', '--config', {str(config)!r}, '--dry-run'])\n"
        "import agent.runner, agent.report, agent.sender, agent.spool, agent.hostinfo\n"
        "import procfleet.agent_process\n"
        "import agent.collectors.process_table, agent.collectors.process_exporter\n"
        "import agent.parsers.ps, agent.parsers.tasklist\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "report = json.loads(out.getvalue())\n"
        "print(json.dumps({'code': code, 'heavy': heavy, 'contract': 'agent.contract' in "
        "sys.modules, 'processes': len(report['processes'])}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["processes"] > 1  # a real report was built and printed
    assert {k: result[k] for k in ("code", "heavy", "contract")} == {
        "code": 0, "heavy": [], "contract": False}
