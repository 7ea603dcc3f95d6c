"""Per-key limits of the HTTP service, so that one key cannot use up the service for the rest.

Each key gets a token bucket (``rate`` requests a second on average, bursts of ``burst``) and
a cap on the requests it may have running at once (an export counts until its last byte is
sent). A request over either limit is refused at once with 429 and a Retry-After, rather than
queued: a queue would only hold the store longer for everybody.

The state is a few numbers per key, kept in memory: limits hold per serving process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["KeyLimiter", "KeyLimits", "LimitExceeded", "Slot"]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """`concurrency`: requests of one key running at once; `rate`: requests a second
    refilled into its bucket; `burst`: the bucket's size."""

    concurrency: int
    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.rate <= 0 or self.burst < 1:
            raise ValueError("concurrency and burst must be at least 1, rate above 0")


class LimitExceeded(Exception):
    """A key is over a limit; `retry_after` is the whole number of seconds to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Slot:
    """One running request of a key; `release` gives it back (only the first call counts),
    so that the several ways a streamed response can end may all call it."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    running: int = 0


class KeyLimiter:
    """The buckets and running counts of every key seen. Thread-safe: a streamed export
    ends (and releases its slot) in a worker thread."""

    def __init__(self, limits: KeyLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _Bucket] = {}

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = self._keys[key] = _Bucket(float(self.limits.burst), now)
        else:
            refill = (now - bucket.stamp) * self.limits.rate
            bucket.tokens = min(float(self.limits.burst), bucket.tokens + refill)
            bucket.stamp = now
        return bucket

    def take(self, key: str) -> None:
        """Count one request of `key` against its rate; `LimitExceeded` if the bucket is
        empty."""
        with self._lock:
            bucket = self._bucket(key, self._clock())
            if bucket.tokens < 1:
                wait = (1 - bucket.tokens) / self.limits.rate
                raise LimitExceeded(
                    f"too many requests for this API key (at most {self.limits.rate:g} a second"
                    f" on average, bursts of {self.limits.burst})",
                    max(1, math.ceil(wait)),
                )
            bucket.tokens -= 1

    def enter(self, key: str) -> Slot:
        """A running-request slot of `key`; `LimitExceeded` if all its slots are taken."""
        with self._lock:
            bucket = self._bucket(key, self._clock())
            if bucket.running >= self.limits.concurrency:
                raise LimitExceeded(
                    f"this API key already has {self.limits.concurrency} requests running"
                    " (exports count until they finish); retry when one has ended",
                    1,
                )
            bucket.running += 1
        return Slot(lambda: self._leave(key))

    def _leave(self, key: str) -> None:
        with self._lock:
            bucket = self._keys.get(key)
            if bucket is not None and bucket.running > 0:
                bucket.running -= 1
