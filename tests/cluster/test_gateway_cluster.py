"""The gateway on a real cluster (Redis 7.0 and Valkey 8): found from any node's URL, reports
land on the shard's master, redirections followed, and a dead seed node is survived."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from redis.asyncio import RedisCluster

from ingest_gateway import stream
from ingest_gateway.app_state import STATE
from ingest_gateway.ingest.cluster_enqueue import ClusterEnqueuer
from tests.support.redis_cluster import LocalCluster
from tests.support.reports import report_doc

pytestmark = pytest.mark.integration
SHARDS = 4


async def post(client, token: str, doc) -> tuple[int, dict, dict]:
    resp = await client.post("/v1/reports", data=orjson.dumps(doc), headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return resp.status, await resp.json(), dict(resp.headers)


def server_in_shard(shard: int, shards: int = SHARDS) -> str:
    """A server_id whose reports go to ``shard``."""
    n = 0
    while stream.shard_for(f"host-{n}", shards) != shard:
        n += 1
    return f"host-{n}"


def stream_len(cluster: LocalCluster, shard: int) -> int:
    key = stream.sample_stream(shard)
    return cluster.client(cluster.master_of(key)).xlen(key)


@pytest.mark.parametrize("path", ["/0", ""])
async def test_cluster_found_from_any_node_url(clean_cluster, make_cluster_gateway, path):
    replica = clean_cluster.nodes[-1]  # a replica: the gateway learns the masters from it
    client, app, token = await make_cluster_gateway(clean_cluster.url(replica, path), shards=SHARDS)
    state = app[STATE]
    assert state.clustered is True
    assert isinstance(state.enqueuer, ClusterEnqueuer)
    assert len(state.router.masters()) == 3
    for shard in range(SHARDS):
        status, body, _ = await post(client, token, report_doc(
            server_id=server_in_shard(shard), processes=5, groups=2))
        assert status == 202, body
    # host + snapshot-less report: 1 host message + 2 groups + 5 processes each
    assert [stream_len(clean_cluster, shard) for shard in range(SHARDS)] == [8] * SHARDS


async def test_shards_spread_over_masters_and_keys_keep_their_names(clean_cluster,
                                                                    make_cluster_gateway):
    client, _app, token = await make_cluster_gateway(clean_cluster.url(), shards=8)
    masters = {clean_cluster.master_of(stream.sample_stream(s)).port for s in range(8)}
    assert len(masters) == 3  # crc16 of {0}..{7} falls on every third of the slots
    status, body, _ = await post(client, token, report_doc(server_id="web-01"))
    assert status == 202, body
    rc = clean_cluster.cluster_client()
    assert int(rc.get(stream.SHARDS_KEY)) == 8
    assert rc.hlen(stream.TOKENS_KEY) == 1
    report_key = stream.report_seen_key(body["report_id"])
    assert rc.exists(report_key) == 1
    for shard in range(8):
        groups = rc.xinfo_groups(stream.sample_stream(shard))
        assert [g["name"] for g in groups] == [stream.GROUP.encode()]


async def test_duplicate_report_is_answered_200_on_a_cluster(clean_cluster, make_cluster_gateway):
    client, _app, token = await make_cluster_gateway(clean_cluster.url(), shards=SHARDS)
    doc = report_doc(server_id=server_in_shard(1))
    assert (await post(client, token, doc))[0] == 202
    status, body, _ = await post(client, token, doc)
    assert (status, body["duplicate"]) == (200, True)
    assert stream_len(clean_cluster, 1) == 5  # 1 host + 1 group + 3 processes, once


async def test_moved_slot_is_followed_and_the_map_refreshed(clean_cluster, make_cluster_gateway):
    client, app, token = await make_cluster_gateway(clean_cluster.url(), shards=SHARDS)
    key = stream.sample_stream(2)
    assert (await post(client, token, report_doc(server_id=server_in_shard(2))))[0] == 202
    source = clean_cluster.master_of(key)
    target = next(n for n in clean_cluster.current_masters() if n is not source)
    refreshes = app[STATE].router.refreshes
    await asyncio.to_thread(clean_cluster.migrate_slot_of, key, target)
    status, body, _ = await post(client, token, report_doc(server_id=server_in_shard(2)))
    assert status == 202, body
    assert clean_cluster.client(target).xlen(key) == 10
    slot = clean_cluster.client(target).execute_command("CLUSTER", "KEYSLOT", key)
    assert clean_cluster.client(source).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    deadline = time.monotonic() + 5
    while app[STATE].router.refreshes == refreshes and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert app[STATE].router.owner(app[STATE].enqueuer._slots[2])[1] == target.port
    await asyncio.to_thread(clean_cluster.migrate_slot_of, key, source)  # put it back


async def test_ask_during_migration_is_followed(clean_cluster, make_cluster_gateway):
    client, _app, token = await make_cluster_gateway(clean_cluster.url(), shards=SHARDS)
    key = stream.sample_stream(3)
    assert (await post(client, token, report_doc(server_id=server_in_shard(3))))[0] == 202
    source = clean_cluster.master_of(key)
    target = next(n for n in clean_cluster.current_masters() if n is not source)
    slot = int(clean_cluster.client(source).execute_command("CLUSTER", "KEYSLOT", key))
    src, dst = clean_cluster.client(source), clean_cluster.client(target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                        "AUTH", clean_cluster.password, "KEYS", key)
    try:
        # The slot is half-way: the source answers ASK for the key it no longer holds.
        status, body, _ = await post(client, token, report_doc(server_id=server_in_shard(3)))
        assert status == 202, body
    finally:
        for node in clean_cluster.current_masters():
            clean_cluster.client(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE",
                                                       target.node_id)
    assert dst.xlen(key) == 10  # both reports, on the importing node
    await asyncio.to_thread(clean_cluster.migrate_slot_of, key, source)


async def test_gateway_survives_its_seed_master_dying(own_cluster, make_cluster_gateway):
    seed = own_cluster.nodes[0]
    client, _app, token = await make_cluster_gateway(own_cluster.url(seed), shards=SHARDS,
                                                     redis_timeout_s=1.0)
    shard = next(s for s in range(SHARDS)
                 if own_cluster.master_of(stream.sample_stream(s)) is seed)
    assert (await post(client, token, report_doc(server_id=server_in_shard(shard))))[0] == 202
    killed_s = time.monotonic()
    own_cluster.kill_master_of(stream.sample_stream(shard))
    accepted_after_s = None
    statuses = set()
    deadline = killed_s + own_cluster.node_timeout_ms / 1000 + 10
    while time.monotonic() < deadline:
        status, body, headers = await post(client, token,
                                           report_doc(server_id=server_in_shard(shard)))
        statuses.add(status)
        if status == 202:
            accepted_after_s = time.monotonic() - killed_s
            break
        assert status == 503 and "Retry-After" in headers, body
        await asyncio.sleep(0.2)
    assert accepted_after_s is not None, f"no 202 within node timeout + 10 s: {statuses}"
    # Every shard, the other masters' included, works through the learned nodes.
    for other in range(SHARDS):
        assert (await post(client, token,
                           report_doc(server_id=server_in_shard(other))))[0] == 202
    rc = RedisCluster(host="127.0.0.1", port=own_cluster.master_of(
        stream.sample_stream(shard)).port, password=own_cluster.password, protocol=2)
    assert await rc.xlen(stream.sample_stream(shard)) >= 10
    await rc.aclose()
