"""The per-key token bucket: a burst, then one request per 1/rate seconds."""

from __future__ import annotations

import pytest

from shared.rate_limit import TokenBucketLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_sixth_request_over_a_burst_of_five_waits_for_a_refill() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(clock=clock)
    assert [limiter.acquire("a", 2.0, 5) for _ in range(5)] == [0.0] * 5
    assert limiter.acquire("a", 2.0, 5) == pytest.approx(0.5)  # one permit per 0.5 s at 2/s
    clock.now += 0.5
    assert limiter.acquire("a", 2.0, 5) == 0.0
    assert limiter.acquire("a", 2.0, 5) > 0


def test_buckets_are_per_key_and_refill_only_up_to_the_burst() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(clock=clock)
    for _ in range(3):
        limiter.acquire("a", 1.0, 3)
    assert limiter.acquire("a", 1.0, 3) > 0
    assert limiter.acquire("b", 1.0, 3) == 0.0  # another token is not slowed by a's
    clock.now += 3600
    assert [limiter.acquire("a", 1.0, 3) for _ in range(4)].count(0.0) == 3
