"""Exponential throttling of failed logins, per client address.

Used by SMTP AUTH and the review page's login. A few failures are free (people
mistype); each further failure doubles the wait before the next attempt from
that address is even looked at, up to `cap` seconds. A throttled attempt is
refused at once, without running scrypt: guessing costs the guesser time and
costs apiguard nothing, and a flood of wrong passwords from one address no
longer slows the practice's own logins (40 sessions of wrong AUTH PLAIN made a
real login take 2 s). A success forgets the address's failures; so does
`forget` seconds without a failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    failures: int
    last: float
    locked_until: float


class FailureThrottle:
    """Failed attempts per key (a client address); not thread-safe (one event loop)."""

    MAX_KEYS = 10_000

    def __init__(
        self,
        *,
        free: int = 3,
        base: float = 1.0,
        cap: float = 300.0,
        forget: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.forget = forget
        self.clock = clock
        self._records: dict[str, _Record] = {}

    def wait(self, key: str) -> float:
        """Seconds before an attempt from `key` may be checked (0: now)."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        now = self.clock()
        if now - record.last >= self.forget:
            del self._records[key]
            return 0.0
        return max(0.0, record.locked_until - now)

    def failures(self, key: str) -> int:
        """Failures remembered for `key` (0 once forgotten)."""
        self.wait(key)  # forgets a stale record
        record = self._records.get(key)
        return record.failures if record is not None else 0

    def failed(self, key: str) -> float:
        """Record a failure; returns the wait it imposes (0 while still free)."""
        now = self.clock()
        if len(self._records) >= self.MAX_KEYS:
            self._prune(now)
        record = self._records.get(key)
        if record is None or now - record.last >= self.forget:
            record = self._records[key] = _Record(0, now, now)
        record.failures += 1
        record.last = now
        over = record.failures - self.free
        delay = 0.0 if over <= 0 else min(self.cap, self.base * math.pow(2, over - 1))
        record.locked_until = now + delay
        return delay

    def succeeded(self, key: str) -> None:
        self._records.pop(key, None)

    def _prune(self, now: float) -> None:
        stale = [k for k, r in self._records.items() if now - r.last >= self.forget]
        for key in stale:
            del self._records[key]
        if len(self._records) >= self.MAX_KEYS:  # still full: drop the oldest half
            for key in sorted(self._records, key=lambda k: self._records[k].last)[
                : self.MAX_KEYS // 2
            ]:
                del self._records[key]
