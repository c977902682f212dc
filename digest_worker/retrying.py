"""Retry transport errors with backoff until they pass, or until the worker stops.

Used for everything that talks to PostgreSQL or Redis: an outage is waited out, never
turned into data loss. Each retry logs a warning with the attempt and the next delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
INITIAL_DELAY_S = 0.2


async def retry_until_stopped(
    target: str, func: Callable[..., Awaitable[T]], *args: Any,
    stopping: asyncio.Event, max_delay_s: float,
    on_retry: Callable[[], None] | None = None,
    while_waiting: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """``await func(*args)`` until it succeeds. Any ``Exception`` is retried after an
    exponential, jittered delay (up to ``max_delay_s``); once ``stopping`` is set the last
    error is re-raised instead. ``while_waiting`` runs after each delay (keep-alives)."""

    async def sleep(delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay_s)
        if while_waiting is not None and not stopping.is_set():
            await while_waiting()

    def before_sleep(state: RetryCallState) -> None:
        delay_s = state.next_action.sleep if state.next_action else 0.0
        exc = state.outcome.exception() if state.outcome else None
        if on_retry is not None:
            on_retry()
        log.warning(f"{target} unavailable, retrying", extra={"kv": {
            "target": target, "attempt": state.attempt_number,
            "next_delay_s": round(delay_s, 2),
            "error": f"{type(exc).__name__}: {exc}"[:300]}})

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, Exception)),
        # Exponential from INITIAL_DELAY_S up to max_delay_s, plus jitter so that many
        # workers do not reconnect in step.
        wait=wait_exponential(multiplier=INITIAL_DELAY_S, max=max_delay_s)
        + wait_random(0, INITIAL_DELAY_S),
        stop=lambda state: stopping.is_set(),
        before_sleep=before_sleep, sleep=sleep, reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await func(*args)
    raise AssertionError("unreachable")  # pragma: no cover
