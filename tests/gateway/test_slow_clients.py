"""Slow clients, on a real socket against the listener ``serve`` runs: request headers or a
body dripped a byte at a time are cut off at their bound and counted in /metrics."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ingest_gateway.auth import TokenStore
from ingest_gateway.server import serve
from ingest_gateway.settings import GatewaySettings
from procfleet.embedded import free_port

pytestmark = pytest.mark.integration

DRIP_EVERY_S = 0.1
GIVE_UP_S = 20.0  # far past the bounds below: the old gateway kept such connections for ever


@pytest.fixture
async def listener(redis_url, redis):
    """``serve`` on a free port with short slow-client bounds; yields (base URL, token)."""
    port = free_port()
    settings = GatewaySettings(redis_url=redis_url, header_timeout_s=0.5, body_timeout_s=0.5,
                               shutdown_timeout_s=2)
    _, token = await TokenStore(redis).create("ingest", "slow-clients")
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, "127.0.0.1", port, stop))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(500):  # until the listener is up
            try:
                await client.get(f"{base}/healthz")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.02)
    yield port, base, token
    stop.set()
    await asyncio.wait_for(server, 30)


async def drip_until_closed(port: int, head: bytes, drip: bytes) -> tuple[float, bytes]:
    """Send ``head``, then ``drip`` one byte per DRIP_EVERY_S until the server closes the
    connection; returns (seconds from connecting, what the server sent)."""
    started = time.monotonic()  # the server's clock starts when it accepts the connection
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(head)
        for i in range(int(GIVE_UP_S / DRIP_EVERY_S)):
            try:  # waiting for the server's answer is the pace of the drip
                chunk = await asyncio.wait_for(reader.read(65536), DRIP_EVERY_S)
            except TimeoutError:
                chunk = None
            if chunk == b"":
                return time.monotonic() - started, received
            received += chunk or b""
            try:
                writer.write(drip[i % len(drip):i % len(drip) + 1])
                await writer.drain()
            except ConnectionError:
                return time.monotonic() - started, received
        raise AssertionError(f"still open after {GIVE_UP_S} s; got {received!r}")
    finally:
        writer.close()


async def metric(base: str, line_start: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{base}/metrics")).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_start)]
    return values[0] if values else 0.0


async def test_half_sent_headers_are_cut_off_and_counted(listener):
    port, base, _token = listener
    elapsed_s, answer = await drip_until_closed(
        port, b"POST /v1/reports HTTP/1.1\r\nHost: gw\r\n", b"X-Slow: abcdefghijklmnop")
    assert answer == b""  # closed without a response: no request was ever complete
    assert elapsed_s >= 0.5
    assert await metric(base, 'procfleet_gateway_slow_clients_total{phase="headers"}') == 1.0


async def test_a_body_dripped_byte_by_byte_gets_408_and_the_connection_closes(listener):
    port, base, token = listener
    head = (f"POST /v1/reports HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n").encode()
    elapsed_s, answer = await drip_until_closed(port, head, b'{"report_id": "slow"')
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"field":"body"' in answer and b"not received within 0.5 s" in answer
    assert elapsed_s >= 0.5
    assert await metric(base, 'procfleet_gateway_slow_clients_total{phase="body"}') == 1.0
    assert await metric(base, 'procfleet_gateway_rejected_total{reason="slow_body"}') == 1.0


async def test_a_kept_alive_connection_serves_request_after_request(listener):
    _port, base, _token = listener
    async with httpx.AsyncClient(timeout=5) as client:  # one pooled connection
        statuses = [(await client.get(f"{base}/healthz")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert await metric(base, 'procfleet_gateway_slow_clients_total{phase="headers"}') == 0.0
