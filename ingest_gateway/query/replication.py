"""How far behind the query API's database is, when it is a streaming replica
(``PROCFLEET_QUERY_DATABASE_URL``): ``GET /api/database``.

``lag_s`` is 0 when the replica has replayed everything it received, else the age of the last
transaction it replayed (PostgreSQL's own measure: an idle primary would make the age alone
grow forever). ``streaming`` says whether the WAL receiver is connected right now: a replica
cut off from its primary has replayed all it received, and is still behind.
"""

from __future__ import annotations

from typing import Any

import asyncpg

_STATUS_SQL = """
SELECT pg_is_in_recovery() AS replica,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       CASE WHEN NOT pg_is_in_recovery() THEN 0.0
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS lag_s,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver
"""


async def replication_status(conn: asyncpg.Connection) -> dict[str, Any]:
    """``{"role", "lag_s", "streaming", "receive_lsn", "replay_lsn"}`` of ``conn``'s server."""
    row = await conn.fetchrow(_STATUS_SQL)
    if not row["replica"]:
        return {"role": "primary", "lag_s": 0.0, "streaming": None, "receive_lsn": None,
                "replay_lsn": None}
    lag_s = row["lag_s"]
    return {"role": "replica", "lag_s": None if lag_s is None else round(max(lag_s, 0.0), 3),
            "streaming": row["receiver"] == "streaming", "receive_lsn": row["receive_lsn"],
            "replay_lsn": row["replay_lsn"]}
