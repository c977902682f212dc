"""`procfleet mcp`: the MCP server over stdio, the form desktop LLM clients start.

A client of the query API, never of the database: every tool call is one GET to the gateway
(``$PROCFLEET_GATEWAY_URL``, token ``$PROCFLEET_TOKEN`` with the ``read`` scope: the settings of
``procfleet top``). stdout carries the protocol only; logs go to stderr. Exit codes: 0 the
client closed stdin, 2 bad settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

from procfleet.commands.top import TIMEOUT_S, error_reason, gateway_settings

if TYPE_CHECKING:  # imported where used: `procfleet --help` and the agent stay light
    import httpx


class HttpApi:
    """``QueryApi`` over HTTP: GET on the gateway with the read token."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        import httpx

        from ingest_gateway.query.mcp.api import ApiError

        try:
            response = await self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ApiError(0, "PROCFLEET_GATEWAY_URL",
                           f"cannot reach the gateway at {self.client.base_url}: {exc}") from None
        if response.status_code != 200:
            try:
                error = response.json()["error"]
                raise ApiError(response.status_code, str(error.get("field")),
                               str(error.get("reason")), error.get("value"))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ApiError(response.status_code, "", error_reason(response)) from None
        return response.json()


def http_client(url: str, token: str, transport: httpx.AsyncBaseTransport | None = None):
    import httpx

    return httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, transport=transport,
                             headers={"Authorization": f"Bearer {token}"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("serve the Model Context Protocol on stdin/stdout (for LLM clients); "
                          "reads PROCFLEET_GATEWAY_URL and PROCFLEET_TOKEN (read scope)")


async def serve_stdio(url: str, token: str) -> None:
    from ingest_gateway.query.mcp.tools import build_server

    async with http_client(url, token) as client:
        await build_server(HttpApi(client)).run_stdio_async()


def main(args: argparse.Namespace, env: Mapping[str, str], *, err: TextIO = sys.stderr) -> int:
    import anyio

    url, token, problems = gateway_settings(env)
    if problems:
        for problem in problems:
            print(f"procfleet mcp: {problem}", file=err)
        return 2
    anyio.run(serve_stdio, url, token)
    return 0


def run(args: argparse.Namespace) -> int:
    return main(args, os.environ)
