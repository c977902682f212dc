"""The gateway's token refresh as the fleet enrolls: a full re-read of the token hash against
the version check that skips it when nothing changed, side by side.

    python bench/bench_token_refresh.py [--tokens 1000,10000,100000] [--rounds 5]

With enrollment every host owns a token, so ``procfleet:tokens`` grows with the fleet and each
gateway refreshes it every ``PROCFLEET_TOKEN_REFRESH_S`` (5 s). For each size the hash is filled
with host token records, then ``TokenCache.refresh`` is timed (best of ``--rounds``) when the
tokens changed since the last refresh (full read: HGETALL + parsing every record) and when they
did not (one GET of the version counter). Uses an embedded Valkey unless ``REDIS_URL`` is set
(give it a spare db: the bench deletes the procfleet token keys of that db).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis  # noqa: E402

from ingest_gateway import stream  # noqa: E402
from ingest_gateway.auth import TokenCache, TokenRecord, TokenStore  # noqa: E402
from procfleet.embedded import EmbeddedValkey  # noqa: E402

FILL_BATCH = 5_000


async def fill(redis: Redis, count: int) -> None:
    await redis.delete(stream.TOKENS_KEY, stream.TOKENS_VERSION_KEY)
    now = time.time()
    for start in range(0, count, FILL_BATCH):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(count, start + FILL_BATCH)):
            record = TokenRecord(f"{i:012x}", "a" * 64, f"host-{i}.example.net", "host", now,
                                 server_id=f"host-{i}")
            pipe.hset(stream.TOKENS_KEY, record.token_id, record.to_json())
        await pipe.execute()
    await redis.incr(stream.TOKENS_VERSION_KEY)


async def best_ms(refresh, before, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        await before()
        started = time.perf_counter()
        await refresh()
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def run(url: str, sizes: list[int], rounds: int) -> None:
    redis = Redis.from_url(url, protocol=2)
    try:
        print(f"{'tokens':>8}  {'changed: full read ms':>22}  {'unchanged: version check ms':>28}")
        for count in sizes:
            await fill(redis, count)
            cache = TokenCache(TokenStore(redis))
            await cache.refresh()

            async def bump() -> None:
                await redis.incr(stream.TOKENS_VERSION_KEY)

            async def nothing() -> None:
                return None

            changed = await best_ms(cache.refresh, bump, rounds)
            unchanged = await best_ms(cache.refresh, nothing, rounds)
            print(f"{count:>8}  {changed:>22.2f}  {unchanged:>28.3f}")
        await redis.delete(stream.TOKENS_KEY, stream.TOKENS_VERSION_KEY)
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(n) for n in args.tokens.split(",")]
    if os.environ.get("REDIS_URL"):
        asyncio.run(run(os.environ["REDIS_URL"], sizes, args.rounds))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="procfleet-bench-tokens-"))
    valkey = EmbeddedValkey(data_dir)
    valkey.start()
    try:
        asyncio.run(run(valkey.url, sizes, args.rounds))
    finally:
        valkey.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
