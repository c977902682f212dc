"""The PostgreSQL a benchmark runs on: the server of ``DATABASE_URL`` when it is set (the
bench then creates and drops its own scratch databases there), else a temporary
EmbeddedPostgres, removed afterwards wherever its data lives (procfleet/embedded.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

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
