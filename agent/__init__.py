"""procfleet host agent: collectors, parsers, the report contract, sender and spool.

In the order data flows:

    settings_loader.py  the one settings loader of every program (stdlib only)
    config.py           AgentSettings: the agent's TOML file and PROCFLEET_<KEY> variables
    hostinfo.py         who a report comes from (server_id, hostname, OS)
    collectors/         process_exporter scrape, the ps / tasklist run, /proc clock ticks
    parsers/            ps and tasklist outputs → process rows
    scrub.py            secrets out of command lines (every path into the database uses it)
    report.py           one report from the host, the groups and the processes
    rows.py             the light rows a running agent builds, checked by contract_spec
    sender.py           POST /v1/reports with retries (httpx)
    enroll.py           an enroll token traded once for this host's own token
    spool.py            reports the gateway could not take yet, bounded, oldest first
    runner.py           the loop: collect, deliver, spool, on a fixed schedule
    errors.py           the error tree's root (ProcfleetError) and the agent's errors

The contract other packages import is ``contract`` (pydantic, the one definition of a report
the gateway validates against); ``contract_spec`` is generated from it by ``contract_spec_gen``
for the agent's rows. Importing this package stays light: a running agent never imports
pydantic, aiohttp, redis or asyncpg (tests/agent/test_import_light.py, .importlinter). The
process around the loop (real collectors, client, signals) is wired in
``procfleet/agent_process.py``.
"""

__version__ = "0.1.0"
