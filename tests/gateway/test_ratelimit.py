"""The per-token token bucket."""

from __future__ import annotations

from ingest_gateway.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_burst_then_refuse_with_seconds_to_wait():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=0.5, burst=3, clock=clock)
    assert [limiter.acquire("t1") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("t1") == 2  # one token takes 2 s at 0.5/s


def test_tokens_refill_with_time_up_to_the_burst():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=10, burst=2, clock=clock)
    limiter.acquire("t1"), limiter.acquire("t1")
    assert limiter.acquire("t1") == 1
    clock.now_s += 60  # refills to the burst, not beyond
    assert [limiter.acquire("t1") for _ in range(3)] == [None, None, 1]


def test_each_token_has_its_own_bucket():
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=FakeClock())
    assert limiter.acquire("a") is None
    assert limiter.acquire("b") is None
    assert limiter.acquire("a") == 1


def test_rate_zero_means_no_limit():
    limiter = RateLimiter(rate_per_s=0, burst=1, clock=FakeClock())
    assert all(limiter.acquire("a") is None for _ in range(1000))


def test_blocked_for_takes_nothing_and_knows_no_unseen_key():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=0.5, burst=2, clock=clock)
    assert limiter.blocked_for("10.0.0.1") is None and limiter.blocked_for("10.0.0.1") is None
    limiter.acquire("10.0.0.1"), limiter.acquire("10.0.0.1")
    assert limiter.blocked_for("10.0.0.1") == 2 and limiter.blocked_for("10.0.0.2") is None
    clock.now_s += 2
    assert limiter.blocked_for("10.0.0.1") is None


def test_many_keys_forget_the_buckets_that_refilled():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        limiter.acquire(key)
    clock.now_s += 5  # a, b and c are full again: nothing to remember
    limiter.acquire("d")
    assert set(limiter._buckets) == {"d"}
