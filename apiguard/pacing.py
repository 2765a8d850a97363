"""Pacing after failures: how long to wait before trying again, and how many
log lines a repeated failure may write.

A store that cannot be written fails every claim at once: retried without a
pause, the delivery loop wrote 7 225 `delivery.claim_failed` lines in 2.8 s.
`Backoff` spaces the retries (doubling, capped) and `LogBudget` keeps a
repeated event to a few lines a minute, each saying how many were left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """Waits that double after each failure, from `initial` up to `cap`
    seconds; a success starts again from `initial`."""

    def __init__(self, initial: float, cap: float, clock: Callable[[], float]) -> None:
        self.initial = initial
        self.cap = max(initial, cap)
        self.clock = clock
        self.failures = 0
        self.retry_at = 0.0

    def failed(self) -> float:
        """One more failure: the wait before the next try (also in `retry_at`)."""
        wait = float(min(self.cap, self.initial * 2 ** min(self.failures, 30)))
        self.failures += 1
        self.retry_at = self.clock() + wait
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0

    @property
    def waiting(self) -> float:
        """Seconds left before the next try is due (0: due now)."""
        return max(0.0, self.retry_at - self.clock())


class LogBudget:
    """At most `per_minute` lines of one event per minute (a monotonic clock:
    a wall-clock change neither silences nor floods it)."""

    def __init__(self, per_minute: int = 6, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._window = -60.0
        self._written = 0
        self.left_out = 0

    def allow(self) -> int | None:
        """None when this line is to be left out; otherwise how many were left
        out since the last one written (to log with it)."""
        now = self.clock()
        if now - self._window >= 60.0:
            self._window, self._written = now, 0
        if self._written >= self.per_minute:
            self.left_out += 1
            return None
        self._written += 1
        left_out, self.left_out = self.left_out, 0
        return left_out
