"""Bearer tokens with scopes, stored in Redis as SHA-256 hashes only.

A token reads ``pf_<id>_<secret>``. The id is public (it is what ``token list`` shows and what
``token revoke`` takes); the secret never leaves ``token create``. Redis holds, in the hash
``stream.TOKENS_KEY``, one field per id with ``{sha256, name, scope, created_at, revoked}``
(and ``server_id`` for a host token).
Tokens live in Redis rather than PostgreSQL so that ingest keeps working while the database is
down. Scopes: ``read`` queries the API; ``ingest`` writes reports of any host (fleet-wide);
``enroll`` only obtains host tokens (``POST /v1/enroll``); ``host`` writes reports of its own
``server_id`` only and is made by enrollment alone (``ingest_gateway/enrollment.py``).
The gateway keeps them in memory (``TokenCache``), refreshed every few seconds, so a
request costs no Redis round trip; a revocation takes effect within one refresh.

With one host token per enrolled host the hash grows with the fleet: re-reading it costs ~0.1 s
at 10,000 tokens and ~1 s at 100,000, every refresh, in the event loop (docs/BENCHMARKS.md,
"Token refresh"), while checking a version counter costs ~0.1 ms. So every change
bumps ``stream.TOKENS_VERSION_KEY`` after writing, and a refresh reads the hash only when that
counter moved, or once every ``FULL_RELOAD_INTERVAL_S`` whatever it says (a writer that does not
bump it — an older ``procfleet``, a hand edit — is seen within that bound).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent.errors import ConfigError
from ingest_gateway import stream
from ingest_gateway.errors import Forbidden, Unauthorized, Unavailable

log = logging.getLogger(__name__)

SCOPES: Final = ("ingest", "read", "enroll", "host")
# What `procfleet token create` may make: host tokens come from enrollment only.
CREATABLE_SCOPES: Final = ("ingest", "read", "enroll")
HOST_SCOPE: Final = "host"
TOKEN_PREFIX: Final = "pf"
TOKEN_ID_BYTES: Final = 6
TOKEN_SECRET_BYTES: Final = 32
MIN_MISS_REFRESH_INTERVAL_S: Final = 1.0  # unknown ids cannot make us hammer Redis
FULL_RELOAD_INTERVAL_S: Final = 60.0


@dataclass(frozen=True)
class TokenRecord:
    """What Redis knows about one token (never the token itself)."""

    token_id: str
    sha256: str
    name: str
    scope: str
    created_at: float
    revoked: bool = False
    server_id: str | None = None  # the one server a host token may write

    def to_json(self) -> bytes:
        doc = asdict(self)
        del doc["token_id"]  # it is the hash field name
        if doc["server_id"] is None:
            del doc["server_id"]
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, token_id: str, raw: bytes) -> TokenRecord:
        doc = orjson.loads(raw)
        return cls(token_id=token_id, sha256=doc["sha256"], name=doc.get("name", ""),
                   scope=doc["scope"], created_at=float(doc.get("created_at", 0)),
                   revoked=bool(doc.get("revoked", False)), server_id=doc.get("server_id"))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def split_token(token: str) -> str | None:
    """The public id of a well-formed token, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


class TokenStore:
    """Create, list and revoke tokens in Redis (used by ``procfleet token`` and the cache)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def create(self, scope: str, name: str = "", *,
                     server_id: str | None = None) -> tuple[TokenRecord, str]:
        """A new token: its record and the token text (shown once, never stored). A host
        token needs the ``server_id`` it is bound to; no other scope takes one."""
        if scope not in SCOPES:
            raise ConfigError("scope", scope, f"choose one of {SCOPES}")
        if (scope == HOST_SCOPE) != (server_id is not None):
            raise ConfigError("server_id", server_id, f"does not fit scope {scope!r}: only a "
                              f"host token is bound to a server")
        while True:
            token_id = secrets.token_hex(TOKEN_ID_BYTES)
            token = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
            record = TokenRecord(token_id, hash_token(token), name, scope, time.time(),
                                 server_id=server_id)
            if await self.redis.hsetnx(stream.TOKENS_KEY, token_id, record.to_json()):
                await self._changed()
                return record, token

    async def _changed(self) -> None:
        # After the write: a refresh that read the old version re-reads on its next turn.
        await self.redis.incr(stream.TOKENS_VERSION_KEY)

    async def version(self) -> int | None:
        """The change counter of the tokens (None before the first change)."""
        raw = await self.redis.get(stream.TOKENS_VERSION_KEY)
        return None if raw is None else int(raw)

    async def delete(self, token_id: str) -> None:
        """Remove a record outright (enrollment's undo of a token nobody was given)."""
        await self.redis.hdel(stream.TOKENS_KEY, token_id)
        await self._changed()

    async def load(self) -> dict[str, TokenRecord]:
        raw = await self.redis.hgetall(stream.TOKENS_KEY)
        records = {}
        for key, value in raw.items():
            token_id = key.decode() if isinstance(key, bytes) else key
            try:
                records[token_id] = TokenRecord.from_json(token_id, value)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("unreadable token record skipped", extra={"kv": {"id": token_id}})
        return records

    async def find(self, token: str) -> TokenRecord | None:
        """The record of ``token`` if it exists and the secret matches (revoked or not)."""
        token_id = split_token(token)
        if token_id is None:
            return None
        raw = await self.redis.hget(stream.TOKENS_KEY, token_id)
        if raw is None:
            return None
        record = TokenRecord.from_json(token_id, raw)
        return record if hmac.compare_digest(hash_token(token), record.sha256) else None

    async def revoke(self, token_id: str) -> TokenRecord | None:
        """Mark a token revoked; None when no token has that id."""
        raw = await self.redis.hget(stream.TOKENS_KEY, token_id)
        if raw is None:
            return None
        record = TokenRecord.from_json(token_id, raw)
        revoked = TokenRecord(**{**asdict(record), "revoked": True})
        await self.redis.hset(stream.TOKENS_KEY, token_id, revoked.to_json())
        await self._changed()
        return revoked


class TokenCache:
    """In-memory view of the tokens, refreshed by ``refresh`` (a background task calls it)."""

    def __init__(self, store: TokenStore, *, clock=time.monotonic) -> None:
        self.store = store
        self._records: dict[str, TokenRecord] = {}
        self._loaded = False
        self._clock = clock
        self._last_refresh = float("-inf")
        self._last_load = float("-inf")
        self._version: int | None = None
        self.loads = 0  # full reads of the hash (tests and the refresh cost)

    async def refresh(self) -> None:
        """Re-read the tokens if they changed (or the full-reload interval passed)."""
        version = await self.store.version()
        now = self._clock()
        if (not self._loaded or version is None or version != self._version
                or now - self._last_load >= FULL_RELOAD_INTERVAL_S):
            self._records = await self.store.load()
            self._version, self._last_load = version, now
            self._loaded = True
            self.loads += 1
        self._last_refresh = now

    def add(self, record: TokenRecord) -> None:
        """Know a token this gateway just created (an enrolled host's) before the next refresh."""
        self._records[record.token_id] = record

    async def authenticate(self, header: str | None, scope: str | tuple[str, ...],
                           retry_after_s: int) -> TokenRecord:
        """The record of the bearer token in ``header`` if it grants ``scope`` (or one of them).

        401 for a missing, malformed, unknown or revoked token; 403 for a wrong scope; 503 when
        the token is unknown and Redis cannot be asked."""
        if not header:
            raise Unauthorized("missing bearer token", kind="no_token")
        kind, _, token = header.partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            raise Unauthorized("expected 'Authorization: Bearer <token>'", kind="bad_token")
        token_id = split_token(token)
        if token_id is None:
            raise Unauthorized("malformed token", kind="bad_token")
        record = self._records.get(token_id)
        if record is None and self._clock() - self._last_refresh >= MIN_MISS_REFRESH_INTERVAL_S:
            # A token created seconds ago: look again before refusing it.
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                if not self._loaded:
                    raise Unavailable("Authorization", f"token store unreachable: {exc}",
                                      kind="redis", retry_after_s=retry_after_s) from None
            record = self._records.get(token_id)
        # Constant-time comparison of the hashes, also when the id is unknown.
        expected = record.sha256 if record is not None else "0" * 64
        if not hmac.compare_digest(hash_token(token), expected) or record is None:
            raise Unauthorized("invalid token", kind="bad_token")
        if record.revoked:
            raise Unauthorized("token revoked", kind="revoked")
        scopes = (scope,) if isinstance(scope, str) else scope
        if record.scope not in scopes:
            needs = " or ".join(repr(s) for s in scopes)
            raise Forbidden("Authorization", f"token scope {record.scope!r} does not allow this "
                            f"route (needs {needs})", kind="scope")
        return record
