"""What surrounds the enqueue path on a cluster: readiness, backpressure, tokens from the
CLI, and durability (``PROCFLEET_WAIT_REPLICAS``, ``PROCFLEET_WAIT_AOF``)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as sync_redis

from ingest_gateway import stream
from ingest_gateway.app_state import STATE
from procfleet.cli import main
from tests.cluster.test_gateway_cluster import SHARDS, post, server_in_shard
from tests.support.reports import report_doc

pytestmark = pytest.mark.integration


async def test_readyz_on_a_cluster(clean_cluster, make_cluster_gateway):
    client, _app, _token = await make_cluster_gateway(clean_cluster.url(), shards=SHARDS)
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert (body["shards"], body["cluster"], body["wait_replicas"]) == (SHARDS, True, 0)


async def test_backlog_over_high_water_is_503_on_a_cluster(clean_cluster, make_cluster_gateway):
    client, app, token = await make_cluster_gateway(clean_cluster.url(), shards=SHARDS,
                                                    backlog_high_water=10)
    server_id = server_in_shard(0)
    assert (await post(client, token, report_doc(server_id=server_id, processes=20)))[0] == 202
    await app[STATE].monitor.refresh()
    assert app[STATE].monitor.backlog[0] == 22
    status, body, headers = await post(client, token, report_doc(server_id=server_id))
    assert status == 503 and headers["Retry-After"] == "1", body


async def test_token_cli_writes_where_the_gateway_reads_on_a_cluster(
        clean_cluster, make_cluster_gateway, monkeypatch, capsys):
    client, app, _token = await make_cluster_gateway(clean_cluster.url(), shards=SHARDS)
    # The URL names a node that does not serve procfleet:tokens' slot for one of the two.
    for node in clean_cluster.current_masters():
        monkeypatch.setenv("REDIS_URL", clean_cluster.url(node))
        assert await asyncio.to_thread(main, ["token", "create", "--scope", "ingest",
                                              "--name", f"cli-{node.port}"]) == 0
        token = capsys.readouterr().out.strip()
        await app[STATE].tokens.refresh()
        status, body, _ = await post(client, token, report_doc(server_id="cli-host"))
        assert status == 202, body


def replica_xlen(cluster, key: str) -> int:
    """XLEN read from the replica of ``key``'s master (READONLY on its own connection)."""
    master = cluster.master_of(key)
    for node in cluster.nodes:
        if not node.alive or node is master:
            continue
        client = sync_redis.Redis(host="127.0.0.1", port=node.port, password=cluster.password,
                                  single_connection_client=True, protocol=2)
        info = client.info("replication")
        if info["role"] == "slave" and int(info["master_port"]) == master.port:
            client.execute_command("READONLY")
            return client.xlen(key)
    raise AssertionError(f"no replica of {master.port}")


async def test_wait_replicas_answers_once_the_replica_has_the_report(clean_cluster,
                                                                     make_cluster_gateway):
    client, app, token = await make_cluster_gateway(clean_cluster.url(), shards=SHARDS,
                                                    wait_replicas=1)
    for shard in range(SHARDS):
        status, body, _ = await post(client, token, report_doc(server_id=server_in_shard(shard),
                                                               processes=50))
        assert status == 202, body
        # No wait here: a 2xx means the replica acknowledged the entries already.
        assert replica_xlen(clean_cluster, stream.sample_stream(shard)) == 52
    rounds = [b.rounds for b in app[STATE].enqueuer.barriers]
    assert rounds == [1] * SHARDS


async def test_too_few_replicas_is_503_after_the_timeout(clean_cluster, make_cluster_gateway):
    client, _app, token = await make_cluster_gateway(clean_cluster.url(), shards=SHARDS,
                                                     wait_replicas=2, wait_replicas_timeout_ms=300)
    started = time.monotonic()
    status, body, headers = await post(client, token, report_doc(server_id="lonely"))
    assert status == 503 and headers["Retry-After"] == "1", body
    assert body["error"]["reason"].startswith("1 of 2 replicas acknowledged within 300 ms")
    assert time.monotonic() - started >= 0.3


async def test_wait_aof_on_a_cluster_where_the_engine_has_it(clean_cluster, make_cluster_gateway):
    # appendfsync everysec: the replica's fsync may take a second and more on a busy box.
    client, app, token = await make_cluster_gateway(
        clean_cluster.url(), shards=SHARDS, wait_aof=True, wait_replicas=1,
        wait_aof_timeout_ms=5000, redis_timeout_s=8.0)
    # Redis 7.0 has no WAITAOF (WAIT alone then), Valkey 8 has it.
    assert app[STATE].wait_aof is (clean_cluster.engine == "valkey")
    status, body, _ = await post(client, token, report_doc(server_id=server_in_shard(1)))
    assert status == 202, body
