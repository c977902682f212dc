"""What the Redis-side admin commands (`procfleet token`, `procfleet host`) share: the gateway's
settings read once (REDIS_URL, a cluster too), and the same exit codes and messages when the
settings are bad or Redis cannot be reached."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable


def run_admin(command: str, args: argparse.Namespace,
              body: Callable[[argparse.Namespace, str], Awaitable[int]]) -> int:
    """``body(args, redis_url)``'s exit code; 2 for bad settings or an unreachable Redis."""
    from redis.exceptions import RedisError

    from agent.errors import ConfigError
    from ingest_gateway.settings import GatewaySettings, mask_url

    try:
        settings = GatewaySettings.from_env(os.environ)
    except ConfigError as exc:
        print(f"procfleet {command}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(body(args, settings.redis_url))
    except (RedisError, OSError) as exc:
        print(f"procfleet {command}: cannot reach Redis at {mask_url(settings.redis_url)}: "
              f"{exc}", file=sys.stderr)
        return 2
