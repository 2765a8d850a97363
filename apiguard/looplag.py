"""Event-loop lag monitor: a task that should wake every `interval` seconds; when
it wakes late by more than `threshold`, something blocked the loop (a long
parse, a synchronous write) and every SMTP session waited with it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("apiguard.looplag")


class LoopLagMonitor:
    """Logs `loop.blocked` (warning, with `lag_ms`) when the loop was blocked
    longer than `threshold` seconds; keeps the worst lag seen in `max_lag`."""

    def __init__(
        self,
        interval: float = 0.05,
        threshold: float = 0.1,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self.clock = clock
        self.max_lag = 0.0
        self.blocked_count = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="apiguard-looplag"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def observe(self, lag: float) -> None:
        """Record one measured lag (seconds late)."""
        self.max_lag = max(self.max_lag, lag)
        if lag > self.threshold:
            self.blocked_count += 1
            log.warning("loop.blocked", lag_ms=round(lag * 1000))

    async def _run(self) -> None:
        while True:
            expected = self.clock() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, self.clock() - expected))
