"""`procfleet token create|list|revoke`: manage API tokens (stored hashed in Redis).

``create`` prints the token alone on stdout (so ``TOKEN=$(procfleet token create ...)`` works);
it cannot be shown again. Redis is found through ``REDIS_URL``.
"""

from __future__ import annotations

import argparse
import sys
import time

from procfleet.commands.redis_admin import run_admin

# ingest_gateway.auth.CREATABLE_SCOPES, repeated to keep --help import-light. Host tokens are
# not made here: a host obtains its own with an enroll token (POST /v1/enroll).
SCOPES = ("ingest", "read", "enroll")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create a token and print it")
    create.add_argument("--scope", choices=SCOPES, required=True,
                        help="ingest: post reports of any host (fleet-wide); read: query the "
                        "API; enroll: let hosts obtain their own host token")
    create.add_argument("--name", default="", help="who or what uses it (shown by list)")
    listing = sub.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = sub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id", metavar="ID", help="the id shown by list")


def _format_time(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


async def _run(args: argparse.Namespace, redis_url: str) -> int:
    import orjson

    from ingest_gateway.auth import TokenStore
    from ingest_gateway.ingest.cluster import open_client

    redis = await open_client(redis_url, 5)  # a cluster node's URL gives a cluster client
    try:
        store = TokenStore(redis)
        if args.token_command == "create":
            record, token = await store.create(args.scope, args.name)
            print(f"created token id={record.token_id} scope={record.scope}", file=sys.stderr)
            print(token)
            return 0
        if args.token_command == "list":
            records = sorted((await store.load()).values(), key=lambda r: r.created_at)
            if args.json:
                for r in records:
                    print(orjson.dumps({"id": r.token_id, "name": r.name, "scope": r.scope,
                                        "created_at": _format_time(r.created_at),
                                        "revoked": r.revoked,
                                        "server_id": r.server_id}).decode())
                return 0
            print(f"{'ID':<14}{'SCOPE':<8}{'CREATED':<22}{'REVOKED':<9}NAME")
            for r in records:
                print(f"{r.token_id:<14}{r.scope:<8}{_format_time(r.created_at):<22}"
                      f"{'yes' if r.revoked else 'no':<9}{r.name}"
                      f"{f'  server_id={r.server_id}' if r.server_id else ''}")
            return 0
        revoked = await store.revoke(args.token_id)
        if revoked is None:
            print(f"procfleet token: no token with id {args.token_id!r}", file=sys.stderr)
            return 1
        print(f"revoked token id={revoked.token_id} (effective within the gateway's token "
              f"refresh interval)", file=sys.stderr)
        return 0
    finally:
        await redis.aclose()


def run(args: argparse.Namespace) -> int:
    return run_admin("token", args, _run)
