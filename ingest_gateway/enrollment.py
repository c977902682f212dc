"""Host enrollment (the osquery/Fleet model): one host token per ``server_id``.

A host presents an ``enroll`` token once (``POST /v1/enroll``) and gets a ``host`` token bound
to its ``server_id``; with it, it can write that server's reports and nothing else. A
``server_id`` that already has a host token cannot enroll again (409) until an operator runs
``procfleet host reset ID``, which revokes the old token: a host cannot take over another's
identity by enrolling under its name.

Redis holds the token record (hashed, in ``stream.TOKENS_KEY``, like every token) and the
binding ``server_id -> token id`` in ``stream.HOSTS_KEY``. The record is written first and the
binding second (``HSETNX``, the one check that decides who enrolled first): if we fail between
the two, what is left is a record whose secret nobody was ever given, never a binding that
would refuse the host until a reset. The two keys are not updated in one transaction, so they
may live in different Redis Cluster slots.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from agent.errors import ProcfleetError
from ingest_gateway import stream
from ingest_gateway.auth import HOST_SCOPE, TokenRecord, TokenStore

log = logging.getLogger(__name__)


class AlreadyEnrolled(ProcfleetError):
    """``server_id`` already has a host token; carries the id and the token's id."""

    def __init__(self, server_id: str, token_id: str) -> None:
        self.server_id, self.token_id = server_id, token_id
        super().__init__(f"server_id {server_id!r} is already enrolled (host token {token_id}); "
                         f"run `procfleet host reset {server_id}` to let it enroll again")


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class HostEnrollment:
    """Enroll and reset hosts in Redis (the gateway's ``/v1/enroll`` and ``procfleet host``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.store = TokenStore(redis)

    async def enroll(self, server_id: str, hostname: str) -> tuple[TokenRecord, str]:
        """A new host token bound to ``server_id`` (record, token text), or ``AlreadyEnrolled``."""
        record, token = await self.store.create(HOST_SCOPE, hostname, server_id=server_id)
        if not await self.redis.hsetnx(stream.HOSTS_KEY, server_id, record.token_id):
            # Someone enrolled this server first: the record we just wrote is nobody's.
            await self.store.delete(record.token_id)
            holder = _text(await self.redis.hget(stream.HOSTS_KEY, server_id)) or "?"
            raise AlreadyEnrolled(server_id, holder)
        log.info("host enrolled", extra={"kv": {"server_id": server_id,
                                                "token_id": record.token_id}})
        return record, token

    async def token_id_of(self, server_id: str) -> str | None:
        """The id of the host token enrolled for ``server_id``, if any."""
        return _text(await self.redis.hget(stream.HOSTS_KEY, server_id))

    async def list(self) -> dict[str, str]:
        """Every enrolled ``server_id`` and the id of its host token."""
        raw = await self.redis.hgetall(stream.HOSTS_KEY)
        return {_text(k) or "": _text(v) or "" for k, v in raw.items()}

    async def reset(self, server_id: str) -> str | None:
        """Revoke the host token of ``server_id`` and let it enroll again; returns the revoked
        token's id, None when the server was not enrolled. Revoking first: a reset cut short
        leaves the binding, and running it again finishes it."""
        token_id = await self.token_id_of(server_id)
        if token_id is None:
            return None
        await self.store.revoke(token_id)
        await self.redis.hdel(stream.HOSTS_KEY, server_id)
        log.info("host reset", extra={"kv": {"server_id": server_id, "token_id": token_id}})
        return token_id
