"""Faults on a real cluster under the simulated agents' load, end to end (gateway and worker
processes over a 3 masters + 3 replicas cluster of each engine and a PostgreSQL the test
owns): every acknowledged report's rows land exactly once, nothing is left pending and
nothing is dead-lettered (``tests.e2e.test_faults.under_load`` checks all three).

(a) a master is killed with -9 and its replica promoted, with ``PROCFLEET_WAIT_REPLICAS=1``:
    a 2xx meant the replica had the entries, so the promoted replica has every acknowledged
    one; the killed node is started again and rejoins as a replica (until then its successor
    has no replica and WAIT 1 answers 503, which the agents retry);
(b) the slot of a shard carrying load is migrated to another master;
(c) a worker is killed with -9 (another worker claims its entries).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
import pytest_asyncio
from redis.asyncio import RedisCluster

from bench.fleet_load import Fleet
from ingest_gateway import stream
from tests.e2e.checks import pending_of
from tests.e2e.harness import SHARDS, Stack
from tests.e2e.test_faults import under_load
from tests.support.polling import wait_until
from tests.support.redis_cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.fault]


class ClusterStack(Stack):
    """The e2e ``Stack`` whose own Redis client is a cluster client."""

    def redis(self) -> RedisCluster:  # type: ignore[override]
        return RedisCluster.from_url(self.redis_url, protocol=2, socket_timeout=5,
                                     socket_connect_timeout=5)


@dataclass
class ClusterPipeline:
    stack: ClusterStack
    cluster: LocalCluster


@pytest_asyncio.fixture
async def cluster_pipeline(own_cluster, own_postgres, tmp_path):
    postgres = own_postgres()
    stack = await ClusterStack(own_cluster.url(), postgres.url, tmp_path).prepare()
    try:
        yield ClusterPipeline(stack, own_cluster)
    finally:
        stack.stop_all()
        print(stack.diagnosis())


def busiest_shard_key(fleet: Fleet) -> str:
    """The stream key of the shard most simulated hosts report to."""
    counts = [0] * SHARDS
    for host in fleet.hosts:
        counts[stream.shard_for(host.server_id, SHARDS)] += 1
    return stream.sample_stream(counts.index(max(counts)))


async def test_master_killed_with_wait_replicas_loses_no_acknowledged_report(
        cluster_pipeline):
    stack, cluster = cluster_pipeline.stack, cluster_pipeline.cluster
    gateway = await stack.start_gateway(PROCFLEET_WAIT_REPLICAS="1")
    stack.start_worker("cw1")
    stack.start_worker("cw2")
    timings: dict[str, float] = {}

    async def kill_master(fleet: Fleet) -> None:
        key = busiest_shard_key(fleet)
        dead = await asyncio.to_thread(cluster.kill_master_of, key)
        timings["killed"] = time.monotonic()
        await asyncio.to_thread(cluster.wait_promoted, key, dead)
        timings["promoted"] = time.monotonic()
        await asyncio.to_thread(cluster.restart, dead)  # rejoins as the new master's replica
        await asyncio.to_thread(cluster.wait_healthy)
        timings["healthy"] = time.monotonic()

    stats = await under_load(cluster_pipeline, kill_master)
    assert stats.statuses[503] > 0  # the shard's reports were refused, then retried
    started = next(r for r in gateway.records() if r.get("msg") == "gateway started")
    assert started["cluster"] is True and started["wait_replicas"] == 1
    accepted = [r.acked_s for r in stats.reports if r.acked_s]
    assert accepted
    promoted_after_s = timings["promoted"] - timings["killed"]
    assert promoted_after_s < cluster.node_timeout_ms / 1000 + 10


async def test_slot_of_a_loaded_shard_migrates_under_load(cluster_pipeline):
    stack, cluster = cluster_pipeline.stack, cluster_pipeline.cluster
    gateway = await stack.start_gateway()
    stack.start_worker("cw1")
    stack.start_worker("cw2")
    moved: list[int] = []

    async def migrate(fleet: Fleet) -> None:
        key = busiest_shard_key(fleet)
        source = cluster.master_of(key)
        target = next(n for n in cluster.current_masters() if n is not source)
        await asyncio.to_thread(cluster.migrate_slot_of, key, target)
        moved.append(cluster.master_of(key).port)
        assert moved[0] == target.port

    await under_load(cluster_pipeline, migrate)
    assert moved
    # The gateway learned the move (MOVED/ASK, then a refreshed slot map).
    maps = [r for r in gateway.records() if r.get("msg") == "cluster slot map"]
    assert len(maps) >= 2, maps


async def test_worker_killed_on_a_cluster_loses_nothing(cluster_pipeline):
    stack = cluster_pipeline.stack
    await stack.start_gateway()
    victim = stack.start_worker("cw1")
    stack.start_worker("cw2", PROCFLEET_WORKER_CLAIM_IDLE_MS="2000")
    redis = stack.redis()
    held: list[int] = []

    async def kill_worker(fleet: Fleet) -> None:
        held.append(await wait_until(lambda: pending_of(redis, "cw1"), "cw1 holding a batch",
                                     30, interval_s=0.002))
        victim.kill()  # not restarted: cw2 claims its entries after the idle time

    try:
        await under_load(cluster_pipeline, kill_worker)
        assert held[0] > 0
        assert await pending_of(redis, "cw1") == 0
    finally:
        await redis.aclose()
