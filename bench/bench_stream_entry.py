"""Valkey's CPU per stream entry, by message shape and AOF: what one message per process costs.

    python bench/bench_stream_entry.py [--entries 100000] [--rounds 3]

Every entry of the product's path is written once (``XADD``), delivered once to the consumer
group (``XREADGROUP … >``, which with AOF on also writes an ``XCLAIM`` per entry to the AOF)
and acknowledged once (``XACK``). This bench does exactly that, with pre-framed pipelines of
1,000 commands so that the client is never the limit, and reads Valkey's own CPU time (its AOF
rewrites included) from /proc around each step. Side by side in one run, each case on a fresh
embedded Valkey:

- schema 1: two fields per entry, ``v 1 d <payload>``;
- schema 2: one field, ``m <payload>`` (what the gateway writes, ``ingest_gateway/stream.py``);
- schema 2 without AOF: the share of the AOF (procfleet never runs so, see README "Durability").

The payload is a real process message (~250 bytes). Printed: µs of Valkey CPU per entry for each
step (best of the rounds) and each case's total against schema 1's.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hiredis  # noqa: E402

from bench.fleet_measure import tree_cpu_s  # noqa: E402
from ingest_gateway import stream  # noqa: E402
from procfleet.embedded import EmbeddedValkey  # noqa: E402

PIPELINE = 1000
READ_COUNT = 5000
ROW = ("srv-0001", 1_795_000_000.25, 4242, "2026-10-02T08:10:27.287000+00:00", 1, "www-data",
       "python3", "/usr/bin/python3 -m app.worker --queue q7 --concurrency 4", "S", 1234.0,
       0.5, 0.8, 123_456_789, 987_654_321, None, None, None)
PAYLOAD = stream.encode_data(stream.KIND_PROCESS, ROW)
CASES = {
    "schema 1 (v 1 d <payload>), AOF": ((b"v", b"1", b"d", PAYLOAD), True),
    "schema 2 (m <payload>), AOF": ((stream.FIELD_MESSAGE, PAYLOAD), True),
    "schema 2, no AOF": ((stream.FIELD_MESSAGE, PAYLOAD), False),
}


class Client:
    """Pipelined RESP over one socket: send a batch, read exactly its replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = hiredis.Reader()

    def run(self, commands: list[bytes]) -> list:
        self.sock.sendall(b"".join(commands))
        replies: list = []
        while len(replies) < len(commands):
            self.reader.feed(self.sock.recv(1 << 20))
            while (reply := self.reader.gets()) is not False:
                replies.append(reply)
        return replies


def measure(fields: tuple[bytes, ...], aof: bool, entries: int) -> dict[str, float]:
    """µs of Valkey CPU per entry for XADD, XREADGROUP and XACK on a fresh server."""
    with tempfile.TemporaryDirectory(prefix="procfleet-bench-entry-") as scratch:
        server = EmbeddedValkey(Path(scratch))
        server.start()
        try:
            client, pack = Client(server.port), hiredis.pack_command
            if not aof:
                client.run([pack(("CONFIG", "SET", "appendonly", "no"))])
            key = stream.sample_stream(0)
            client.run([pack(("XGROUP", "CREATE", key, stream.GROUP, "0", "MKSTREAM"))])
            xadd = pack(("XADD", key, "*", *fields))
            steps: dict[str, float] = {}
            before = tree_cpu_s(server.pid)
            for _ in range(entries // PIPELINE):
                client.run([xadd] * PIPELINE)
            after = tree_cpu_s(server.pid)
            steps["XADD"], before = (after - before) / entries * 1e6, after
            read = pack(("XREADGROUP", "GROUP", stream.GROUP, "bench", "COUNT", READ_COUNT,
                         "STREAMS", key, ">"))
            id_batches = []
            while reply := client.run([read])[0]:
                id_batches.append([entry[0] for entry in reply[0][1]])
            after = tree_cpu_s(server.pid)
            steps["XREADGROUP"], before = (after - before) / entries * 1e6, after
            for ids in id_batches:
                client.run([pack(("XACK", key, stream.GROUP, *ids))])
            steps["XACK"] = (tree_cpu_s(server.pid) - before) / entries * 1e6
            client.sock.close()
        finally:
            server.stop()
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {}
    for round_no in range(1, args.rounds + 1):
        for name, (fields, aof) in CASES.items():
            steps = measure(fields, aof, args.entries)
            print(f"round {round_no}  {name:34s} " + "  ".join(
                f"{step} {us:.2f}" for step, us in steps.items()), flush=True)
            kept = best.setdefault(name, dict(steps))
            for step, us in steps.items():
                kept[step] = min(kept[step], us)
        time.sleep(0.5)
    baseline = sum(best[next(iter(CASES))].values())
    print(f"\nValkey CPU per entry, µs (best of {args.rounds}; payload {len(PAYLOAD)} bytes)")
    print(f"{'case':36s} {'XADD':>7s} {'XREADGROUP':>11s} {'XACK':>7s} {'total':>7s} "
          f"{'x schema 1':>11s}")
    for name, steps in best.items():
        total = sum(steps.values())
        print(f"{name:36s} {steps['XADD']:7.2f} {steps['XREADGROUP']:11.2f} "
              f"{steps['XACK']:7.2f} {total:7.2f} {total / baseline:11.2f}")


if __name__ == "__main__":
    main()
