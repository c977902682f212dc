"""Polling instead of fixed sleeps: a test waits for the condition it needs, as long as the
box needs, and fails naming what did not happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_until(check: Callable[[], Awaitable[T]], what: str = "the condition",
                     timeout_s: float = 30.0, interval_s: float = 0.05) -> T:
    """Poll the async ``check`` until it returns a truthy value and return that value; fail
    naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s (last: {last!r})")
        await asyncio.sleep(interval_s)
