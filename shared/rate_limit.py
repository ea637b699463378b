"""A token-bucket rate limiter, one bucket per key (an API token), thread-safe.

A bucket holds up to `burst` permits and refills at `rate_per_s`; a request takes one permit or is refused with
the seconds until the next one (the 429's Retry-After). Buckets exist only for keys that passed authentication,
so the memory is bounded by the number of tokens, and the limit is per process (each replica has its own).
Written here rather than taken from a library: the maintained ones (`limits`, `pyrate-limiter`) offer windows
or leaky buckets, not a per-key token bucket with a burst, and this is twenty lines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TokenBucketLimiter"]


@dataclass
class _Bucket:
    permits: float
    updated: float


class TokenBucketLimiter:
    """`acquire(key, rate_per_s, burst)` → 0.0 when allowed, else the seconds to wait."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, rate_per_s: float, burst: int) -> float:
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(permits=float(burst), updated=now)
            bucket.permits = min(float(burst), bucket.permits + (now - bucket.updated) * rate_per_s)
            bucket.updated = now
            if bucket.permits >= 1.0:
                bucket.permits -= 1.0
                return 0.0
            return (1.0 - bucket.permits) / rate_per_s
