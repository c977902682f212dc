"""The enqueue fast path on one Valkey next to a local Valkey / Redis cluster, in one run.

    python bench/bench_cluster.py [--reports 300] [--processes 300] [--concurrency 16]
                                  [--rounds 3] [--shards 12] [--engines valkey,redis]

Servers (all started here, AOF on, ``appendfsync everysec``): one Valkey (the single-node
path, ``enqueue.Enqueuer``), and per engine a cluster of 3 masters without replicas and one of
3 masters + 3 replicas on loopback (``tests/support/redis_cluster.py``;
``cluster_enqueue.ClusterEnqueuer``), the latter without and with ``WAIT 1``
(``PROCFLEET_WAIT_REPLICAS=1``, group commit per shard). Every path gets
the same validated reports (300 processes + 1 host message each, hosts spread over
``--shards`` shards), runs are interleaved round by round, the best of ``--rounds`` is kept.

Printed per path: messages/s through one client process, its CPU per message, and the server
CPU per message summed over the masters and over the replicas (``INFO cpu``), with the
busiest master's share: what one master costs per message, so what one more master buys once
the clients are enough to saturate them. One client process on this shared 2-core box cannot
saturate three masters (the client is the limit; the figures say by how much).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis as sync_redis  # noqa: E402

from bench.bench_enqueue import make_report, run_concurrently  # noqa: E402
from ingest_gateway import stream  # noqa: E402
from ingest_gateway.ingest.cluster import ClusterRouter  # noqa: E402
from ingest_gateway.ingest.cluster_enqueue import ClusterEnqueuer, barrier_key  # noqa: E402
from ingest_gateway.ingest.durability import AofBarrier  # noqa: E402
from ingest_gateway.ingest.enqueue import Enqueuer  # noqa: E402
from ingest_gateway.ingest.messages import report_messages  # noqa: E402
from ingest_gateway.ingest.resp import ConnectParams, RespPool  # noqa: E402
from procfleet.embedded import EmbeddedValkey  # noqa: E402
from tests.support.redis_cluster import LocalCluster, key_slot  # noqa: E402

MAX_RAW_OUTPUT_BYTES = 1 << 20


@dataclass
class Target:
    """One way to enqueue, and the servers whose CPU it costs."""

    name: str
    enqueuer: Enqueuer | ClusterEnqueuer
    masters: list[tuple[int, str | None]]  # (port, password)
    replicas: list[tuple[int, str | None]]


def server_cpu_s(nodes: list[tuple[int, str | None]]) -> list[float]:
    out = []
    for port, password in nodes:
        info = sync_redis.Redis(port=port, password=password).info("cpu")
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def clear(nodes: list[tuple[int, str | None]]) -> None:
    for port, password in nodes:
        client = sync_redis.Redis(port=port, password=password)
        for key in client.scan_iter(match="procfleet:*", count=1000):
            client.delete(key)


async def run_target(target: Target, reports, shards: int, concurrency: int):
    async def one(report) -> None:
        messages = report_messages(report, shards=shards,
                                   max_raw_output_bytes=MAX_RAW_OUTPUT_BYTES)
        assert not (await target.enqueuer.enqueue(messages)).duplicate

    await asyncio.to_thread(clear, target.masters)
    masters0 = await asyncio.to_thread(server_cpu_s, target.masters)
    replicas0 = await asyncio.to_thread(server_cpu_s, target.replicas)
    cpu0 = time.process_time()
    wall = await run_concurrently(reports, one, concurrency)
    cpu = time.process_time() - cpu0
    masters = [b - a for a, b in zip(masters0, await asyncio.to_thread(
        server_cpu_s, target.masters), strict=True)]
    replicas = sum(await asyncio.to_thread(server_cpu_s, target.replicas)) - sum(replicas0)
    return wall, cpu, masters, replicas


def cluster_target(name: str, cluster: LocalCluster, shards: int, concurrency: int,
                   wait_replicas: int) -> tuple[Target, ClusterRouter]:
    params = ConnectParams(host="127.0.0.1", port=cluster.nodes[0].port,
                           password=cluster.password)
    router = ClusterRouter(params, pool_size=concurrency, timeout_s=10)

    def barrier(shard: int) -> AofBarrier:
        slot = key_slot(barrier_key(shard))
        return AofBarrier(lambda: router.pool_for_slot(slot), key=barrier_key(shard),
                          wait_aof=False, replicas=wait_replicas, wait_aof_timeout_ms=2000,
                          timeout_s=10, retry_after_s=1, on_failure=router.note_failure)

    enqueuer = ClusterEnqueuer(router, shards=shards, dedupe_ttl_s=60, timeout_s=10,
                               retry_after_s=1, barrier=barrier if wait_replicas else None)
    masters = [(n.port, cluster.password) for n in cluster.current_masters()]
    replicas = [(n.port, cluster.password) for n in cluster.nodes
                if (n.port, cluster.password) not in masters]
    return Target(name, enqueuer, masters, replicas), router


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="procfleet-bench-cluster-"))
    single = EmbeddedValkey(base / "single")
    clusters: list[LocalCluster] = []
    targets: list[Target] = []
    routers: list[ClusterRouter] = []
    try:
        single.start()
        pool = RespPool(ConnectParams(host="127.0.0.1", port=single.port),
                        size=args.concurrency, timeout_s=10)
        targets.append(Target("valkey single node", Enqueuer(
            pool, shards=args.shards, dedupe_ttl_s=60, timeout_s=10, retry_after_s=1),
            [(single.port, None)], []))
        for engine in args.engines.split(","):
            for replicas in (0, 1):
                cluster = LocalCluster(engine, base / f"{engine}-{replicas}", password="bench",
                                       replicas=replicas).start()
                clusters.append(cluster)
                for wait in range(replicas + 1):
                    target, router = cluster_target(
                        f"{engine} cluster 3+{3 * replicas}" + (" WAIT 1" if wait else ""),
                        cluster, args.shards, args.concurrency, wait)
                    await router.refresh()
                    targets.append(target)
                    routers.append(router)
        spread = {}
        for cluster in clusters[:1]:
            for shard in range(args.shards):
                port = cluster.master_of(stream.sample_stream(shard)).port
                spread[port] = spread.get(port, 0) + 1
        per_report = args.processes + 1
        total = args.reports * per_report
        print(f"{args.reports} reports x {args.processes} processes (+1 host message) = "
              f"{total} messages per run; {args.shards} shards (over the 3 masters: "
              f"{sorted(spread.values())}); concurrency {args.concurrency}; one client "
              f"process; AOF everysec everywhere")
        best: dict[str, tuple] = {}
        for round_no in range(args.rounds):
            now = datetime.now(UTC)
            line = []
            for target in targets:
                reports = [make_report(i, args.processes, now) for i in range(args.reports)]
                run = await run_target(target, reports, args.shards, args.concurrency)
                line.append(f"{target.name} {total / run[0]:,.0f}")
                if target.name not in best or run[0] < best[target.name][0]:
                    best[target.name] = run
            print(f"  round {round_no + 1} msg/s: " + " | ".join(line))
        print(f"best of {args.rounds}:{'msg/s':>24}{'client us/msg':>15}{'masters us/msg':>16}"
              f"{'busiest':>9}{'replicas us/msg':>17}")
        for target in targets:
            wall, cpu, masters, replicas = best[target.name]
            print(f"{target.name:<32}{total / wall:>9,.0f}{cpu / total * 1e6:>15.2f}"
                  f"{sum(masters) / total * 1e6:>16.2f}{max(masters) / sum(masters):>9.0%}"
                  f"{replicas / total * 1e6:>17.2f}")
    finally:
        for router in routers:
            await router.close()
        for cluster in clusters:
            cluster.stop()
        single.stop()
        shutil.rmtree(base, ignore_errors=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=300)
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--engines", default="valkey,redis")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
