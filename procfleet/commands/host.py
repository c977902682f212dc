"""`procfleet host list|reset`: enrolled hosts and their host tokens (stored hashed in Redis).

A host enrolls once (``POST /v1/enroll`` with an enroll token) and gets a host token bound to
its ``server_id``; enrolling that ``server_id`` again is refused until ``host reset ID``
revokes the old host token (a reinstalled machine, a lost state directory). Redis is found
through ``REDIS_URL``.
"""

from __future__ import annotations

import argparse
import sys

from procfleet.commands.redis_admin import run_admin


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="host_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="enrolled server ids and the ids of their host tokens")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    reset = sub.add_parser("reset", help="revoke a server's host token so that it can enroll "
                           "again")
    reset.add_argument("server_id", metavar="ID", help="the server_id the host enrolled with")


async def _run(args: argparse.Namespace, redis_url: str) -> int:
    import orjson
    from redis.asyncio import Redis

    from ingest_gateway.enrollment import HostEnrollment

    redis = Redis.from_url(redis_url, protocol=2, socket_connect_timeout=5, socket_timeout=5)
    try:
        hosts = HostEnrollment(redis)
        if args.host_command == "list":
            enrolled = sorted((await hosts.list()).items())
            for server_id, token_id in enrolled:
                if args.json:
                    print(orjson.dumps({"server_id": server_id, "token_id": token_id}).decode())
                else:
                    print(f"{server_id}\t{token_id}")
            return 0
        token_id = await hosts.reset(args.server_id)
        if token_id is None:
            print(f"procfleet host: server_id {args.server_id!r} is not enrolled",
                  file=sys.stderr)
            return 1
        print(f"reset server_id={args.server_id}: host token {token_id} revoked (effective "
              f"within the gateway's token refresh interval); the host may enroll again",
              file=sys.stderr)
        return 0
    finally:
        await redis.aclose()


def run(args: argparse.Namespace) -> int:
    return run_admin("host", args, _run)
