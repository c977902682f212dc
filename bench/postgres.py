"""The PostgreSQL a benchmark runs on: the server of ``DATABASE_URL`` when it is set (the
bench then creates and drops its own scratch databases there), else a temporary
EmbeddedPostgres, removed afterwards wherever its data lives (procfleet/embedded.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from procfleet.embedded import EmbeddedPostgres


def run_on_postgres(main: Callable[[str], Awaitable[None]], label: str) -> None:
    """``asyncio.run(main(admin_url))`` on ``DATABASE_URL``'s server or a temporary one."""
    if os.environ.get("DATABASE_URL"):
        asyncio.run(main(os.environ["DATABASE_URL"]))
        return
    data_dir = Path(tempfile.mkdtemp(prefix=f"procfleet-bench-{label}-"))
    data_dir.chmod(0o755)
    server = EmbeddedPostgres(data_dir / "pgdata")
    server.start()
    try:
        asyncio.run(main(server.url))
    finally:
        server.remove()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str, label: str) -> AsyncIterator[str]:
    """A new, empty database on ``admin_url``'s server for the bench (its URL), dropped after
    it whatever happens."""
    name = f"procfleet_bench_{label}_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(admin_url)
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
