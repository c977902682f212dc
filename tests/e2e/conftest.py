"""Fixtures of the end-to-end tests: servers the test owns, and the programs over them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio

from procfleet.embedded import EmbeddedPostgres, EmbeddedValkey
from tests.e2e.harness import Stack


@dataclass
class Pipeline:
    """A test's own Valkey and PostgreSQL (it may kill or restart them) and its programs."""

    stack: Stack
    valkey: EmbeddedValkey
    postgres: EmbeddedPostgres


@pytest_asyncio.fixture
async def pipeline(own_valkey, own_postgres, tmp_path) -> AsyncIterator[Pipeline]:
    """Own servers, migrated, with two tokens; every program started is stopped by pid at
    the end (their log tails are printed, pytest shows them when the test failed)."""
    valkey, postgres = own_valkey(), own_postgres()
    stack = await Stack(valkey.url, postgres.url, tmp_path).prepare()
    try:
        yield Pipeline(stack, valkey, postgres)
    finally:
        stack.stop_all()
        print(stack.diagnosis())
