"""The gateway's token cache re-reads the token hash only when it changed (it grows with the
fleet once every host has its own token), and sees every change within one refresh."""

from __future__ import annotations

import pytest

from ingest_gateway import stream
from ingest_gateway.auth import FULL_RELOAD_INTERVAL_S, TokenCache, TokenStore
from ingest_gateway.errors import Unauthorized

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


async def test_refresh_reads_the_tokens_only_after_a_change(redis):
    store, clock = TokenStore(redis), Clock()
    cache = TokenCache(store, clock=clock)
    _, ingest = await store.create("ingest", "agents")
    await cache.refresh()
    await cache.refresh()
    assert cache.loads == 1

    record, reader = await store.create("read", "grafana")
    await cache.refresh()
    assert cache.loads == 2
    assert (await cache.authenticate(f"Bearer {reader}", "read", 1)).token_id == record.token_id

    await store.revoke(record.token_id)
    await cache.refresh()
    assert cache.loads == 3
    with pytest.raises(Unauthorized, match="revoked"):
        await cache.authenticate(f"Bearer {reader}", "read", 1)
    await cache.authenticate(f"Bearer {ingest}", "ingest", 1)


async def test_a_change_that_skips_the_counter_is_seen_within_the_full_reload_interval(redis):
    store, clock = TokenStore(redis), Clock()
    cache = TokenCache(store, clock=clock)
    record, ingest = await store.create("ingest")
    await cache.refresh()

    await redis.hdel(stream.TOKENS_KEY, record.token_id)  # a hand edit: no version bump
    await cache.refresh()
    assert cache.loads == 1  # not seen yet
    clock.now_s += FULL_RELOAD_INTERVAL_S
    await cache.refresh()

    assert cache.loads == 2
    with pytest.raises(Unauthorized):
        await cache.authenticate(f"Bearer {ingest}", "ingest", 1)


async def test_without_a_counter_every_refresh_reads_the_tokens(redis):
    store = TokenStore(redis)
    cache = TokenCache(store, clock=Clock())
    await store.create("ingest")
    await redis.delete(stream.TOKENS_VERSION_KEY)  # tokens written by an older procfleet

    await cache.refresh()
    await cache.refresh()

    assert cache.loads == 2
