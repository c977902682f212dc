"""Fixtures of the worker tests: settings (helpers live in ``tests.support.worker``).

The ``migrated_database`` fixture (tests/conftest.py) gives a new database with every
migration applied per test; ``redis`` keeps the ``procfleet:*`` key space empty around every
test.
"""

from __future__ import annotations

import pytest

from digest_worker.settings import WorkerSettings
from tests.support.worker import SHARDS


@pytest.fixture
def settings(redis_url, migrated_database) -> WorkerSettings:
    """Worker settings for tests: short waits, burst mode (override with ``with_overrides``)."""
    return WorkerSettings(
        redis_url=redis_url, database_url=migrated_database, shards=SHARDS, batch_size=500,
        batch_max_wait_ms=20, block_ms=200, socket_timeout_s=5, summary_interval_s=3600,
        retry_max_delay_s=0.5, burst=True,
    )
