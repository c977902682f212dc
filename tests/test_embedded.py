"""The embedded servers the stack and the tests rely on start, answer and persist."""

import asyncpg
import pytest
import redis.asyncio as aioredis

pytestmark = pytest.mark.integration


async def test_valkey_answers_and_keeps_data_across_restart_with_aof(own_valkey):
    server = own_valkey()
    client = aioredis.from_url(server.url)
    await client.xadd("procfleet:test", {"k": "v"})
    # appendfsync everysec: a clean shutdown flushes the AOF, so the entry survives.
    await client.aclose()
    server.stop()
    server.start()
    client = aioredis.from_url(server.url)
    assert await client.xlen("procfleet:test") == 1
    assert (await client.config_get("appendonly"))["appendonly"] == "yes"
    await client.aclose()


async def test_postgres_answers_sql(fresh_database):
    url = await fresh_database()
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
    finally:
        await conn.close()
