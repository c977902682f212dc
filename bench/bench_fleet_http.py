"""The simulated agents' HTTP client against aiohttp's and httpx' clients, side by side.

``bench/fleet_http.py`` is a hand-written HTTP/1.1 client; it stays only while it costs the load
generator less CPU per report than a well-kept library would. This bench POSTs the same gzip
body to a stub gateway (aiohttp, in its own process so its CPU is not counted) with the same
concurrency through each client, alternating rounds, and prints the client's CPU per request
(``time.process_time``, the figure that matters when the load generator shares the box with the
pipeline it measures) and the requests per second.

    .venv/bin/python bench/bench_fleet_http.py [--requests 4000] [--rounds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from bench.fleet_http import HttpPool  # noqa: E402
from procfleet.embedded import free_port  # noqa: E402

PATH = "/v1/reports"
HEADERS = {"Authorization": "Bearer pf_bench", "Content-Type": "application/json",
           "Content-Encoding": "gzip"}


def serve(port: int) -> None:
    """The stub gateway: read the body, answer 202 with a small JSON body, keep alive."""
    from aiohttp import web

    async def reports(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"accepted": True}, status=202)

    app = web.Application()
    app.router.add_post(PATH, reports)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def report_body() -> bytes:
    # 300 processes' worth of JSON with command lines that do not compress away, gzip'd as the
    # agents send it (~7 KB on the wire).
    rows = ",".join(f'{{"pid":{i},"command":"/usr/bin/app --id {os.urandom(12).hex()}",'
                    f'"cpu_seconds_total":{i * 1.5}}}' for i in range(300))
    return gzip.compress(f'{{"processes":[{rows}]}}'.encode(), 6)


async def run(client: str, url: str, body: bytes, requests: int, concurrency: int) -> tuple:
    limit = asyncio.Semaphore(concurrency)
    if client == "fleet_http (ours)":
        pool = HttpPool(url, HEADERS, timeout_s=30, connect_timeout_s=5)
        post, close = (lambda: pool.post(PATH, body)), pool.aclose
        ok = lambda r: r.status_code == 202  # noqa: E731
    elif client == "aiohttp":
        session = aiohttp.ClientSession(
            url, headers=HEADERS, connector=aiohttp.TCPConnector(limit=concurrency))

        async def post():
            async with session.post(PATH, data=body) as response:
                await response.read()
                return response.status

        close, ok = session.close, (lambda status: status == 202)
    else:
        hx = httpx.AsyncClient(base_url=url, headers=HEADERS,
                               limits=httpx.Limits(max_connections=concurrency))
        post, close = (lambda: hx.post(PATH, content=body)), hx.aclose
        ok = lambda r: r.status_code == 202  # noqa: E731

    async def one() -> bool:
        async with limit:
            return ok(await post())

    await asyncio.gather(*(one() for _ in range(concurrency)))  # warm the connections
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(requests)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await close()
    if not all(results):
        raise SystemExit(f"{client}: {results.count(False)} requests did not get 202")
    return cpu / requests * 1e6, requests / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the stub gateway did not start") from None
                time.sleep(0.05)
        body = report_body()
        clients = ("fleet_http (ours)", "aiohttp", "httpx")
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for client in clients:
                cpu_us, rate = asyncio.run(run(client, url, body, args.requests, args.concurrency))
                old = best.get(client)
                best[client] = (min(cpu_us, old[0]), max(rate, old[1])) if old else (cpu_us, rate)
        ours = best[clients[0]][0]
        print(f"{args.requests} POSTs of {len(body)} B per round, concurrency "
              f"{args.concurrency}, best of {args.rounds} rounds, {os.cpu_count()} cores")
        print(f"{'client':20s} {'client CPU µs/request':>22s} {'requests/s':>11s} "
              f"{'CPU x ours':>11s}")
        for client in clients:
            cpu_us, rate = best[client]
            print(f"{client:20s} {cpu_us:22.1f} {rate:11.0f} {cpu_us / ours:11.2f}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
