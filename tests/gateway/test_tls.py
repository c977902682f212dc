"""The listener with TLS (cert/key settings), run through ``serve`` as the CLI runs it."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import httpx
import pytest

from ingest_gateway.auth import TokenStore
from ingest_gateway.server import serve
from ingest_gateway.settings import GatewaySettings
from procfleet.embedded import free_port
from tests.support.reports import report_doc

pytestmark = pytest.mark.integration


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 (openssl ships with ca-certificates)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_gateway_serves_https_with_the_configured_certificate(redis_url, redis,
                                                                    certificate):
    cert, key = certificate
    port = free_port()
    settings = GatewaySettings(redis_url=redis_url, tls_cert_file=str(cert),
                               tls_key_file=str(key), shutdown_timeout_s=5)
    _, token = await TokenStore(redis).create("ingest", "tls")
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, "127.0.0.1", port, stop))
    verify = ssl.create_default_context(cafile=str(cert))
    try:
        async with httpx.AsyncClient(verify=verify, timeout=10) as client:
            for _ in range(200):  # until the listener is up
                try:
                    await client.get(f"https://127.0.0.1:{port}/healthz")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
            response = await client.post(
                f"https://127.0.0.1:{port}/v1/reports", json=report_doc(processes=2),
                headers={"Authorization": f"Bearer {token}"})
        async with httpx.AsyncClient(timeout=5) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)

    assert response.status_code == 202
