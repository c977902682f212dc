"""Per-token rate limit: a token bucket per token id, in memory (one gateway process).

Behind a load balancer each gateway applies the limit on its own share of the traffic, which is
the intent: the limit protects one process from one runaway client, not a global quota.

The same bucket, keyed by source address, counts failed token attempts (``guards``): once a
source has spent its burst of failures it gets ``429`` before its token is even looked at.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """``rate_per_s`` requests per second with bursts of up to ``burst``; rate 0 = no limit."""

    def __init__(
        self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys  # many keys (source addresses): forget the refilled ones
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> int | None:
        """Take one request from ``key``'s bucket: None if allowed, else whole seconds to wait."""
        if self.rate_per_s <= 0:
            return None
        bucket = self._refilled(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return self._wait_s(bucket)

    def blocked_for(self, key: str) -> int | None:
        """Whole seconds until ``key`` may take one again (None: now), taking nothing."""
        if self.rate_per_s <= 0 or key not in self._buckets:
            return None
        bucket = self._refilled(key)
        return None if bucket.tokens >= 1.0 else self._wait_s(bucket)

    def _refilled(self, key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_refilled(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            elapsed = now - bucket.updated_s
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
            bucket.updated_s = now
        return bucket

    def _wait_s(self, bucket: _Bucket) -> int:
        return max(1, math.ceil((1.0 - bucket.tokens) / self.rate_per_s))

    def _forget_refilled(self, now: float) -> None:
        full_after_s = self.burst / self.rate_per_s
        self._buckets = {k: b for k, b in self._buckets.items()
                         if now - b.updated_s < full_after_s}
