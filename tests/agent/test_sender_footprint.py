"""What keeps the sender light: tenacity only once a send has to be retried, one SSL context
(one CA bundle load) per client whatever the proxy environment. See docs/BENCHMARKS.md,
"Agent footprint"."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from agent.errors import DeliveryError
from agent.sender import Sender, build_client

REPORT = json.dumps({"report_id": "0123456789abcdef", "processes": []}).encode()

PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    import httpx
    import agent.runner, procfleet.commands.agent
    from agent.sender import Sender

    answers = iter(sys.argv[1].split(","))

    def gateway(request):
        return httpx.Response(int(next(answers)))

    async def main():
        async def no_wait(delay):
            pass

        async with httpx.AsyncClient(transport=httpx.MockTransport(gateway)) as http:
            sender = Sender(http, "http://gw.test", "t0ken", sleep=no_wait)
            result = await sender.send(b"{}")
        return result.attempts

    attempts = asyncio.run(main())
    print(json.dumps({"attempts": attempts, "tenacity": "tenacity" in sys.modules}))
    """
)


def probe(answers: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, answers], capture_output=True, text=True, timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_a_report_taken_at_once_never_loads_tenacity():
    assert probe("202") == {"attempts": 1, "tenacity": False}


def test_a_retried_report_goes_through_tenacity():
    assert probe("503,503,202") == {"attempts": 3, "tenacity": True}


async def test_time_spent_in_the_first_attempt_counts_against_the_retry_budget():
    calls = 0

    async def slow_refusal(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        raise httpx.ConnectError("refused", request=request)

    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow_refusal)) as http:
        sender = Sender(http, "http://gw.test", "t0ken", sleep=record, retry_budget_s=0.2)
        with pytest.raises(DeliveryError, match="after 1 attempt"):
            await sender.send(REPORT)
    assert calls == 1 and sleeps == []


@pytest.fixture
def ca_loads(monkeypatch):
    """Count CA bundle loads (every verified SSL context does one)."""
    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self, *args, **kwargs):
        loads.append(kwargs.get("cafile") or (args[0] if args else None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return loads


async def test_one_ca_load_for_https_even_behind_proxies(ca_loads, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    async with build_client(timeout_s=5, urls=("https://gw.test", "http://127.0.0.1:9256/m")):
        pass
    assert len(ca_loads) == 1


async def test_no_ca_load_when_every_url_is_plain_http(ca_loads):
    async with build_client(timeout_s=5, urls=("http://gw.test", "http://127.0.0.1:9256/m")):
        pass
    assert ca_loads == []


async def test_ca_file_is_the_only_bundle_loaded(ca_loads, tmp_path):
    import certifi

    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(Path(certifi.where()).read_bytes())
    async with build_client(timeout_s=5, ca_file=ca_file, urls=("https://gw.test",)):
        pass
    assert ca_loads == [str(ca_file)]
