"""Upkeep of the decision records while the proxy runs: the charter
configuration remembered at each start (when it changed), and the records
older than `reports.retention_days` pruned at start and then daily."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from apiguard.reports import records
from apiguard.reports.charter import canonical
from apiguard.store.aio import AsyncStore

log = structlog.get_logger("apiguard.reports")

DAY = 24 * 3600.0


class ReportUpkeep:
    """Started by the application; `tick()` is called from a periodic task."""

    def __init__(
        self,
        store: AsyncStore,
        retention_days: int,
        charter_snapshot: dict[str, Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.retention = retention_days * DAY
        self.snapshot = charter_snapshot
        self.clock = clock
        self.pruned_at: float | None = None

    async def start(self) -> None:
        now = self.clock()
        digest, text = canonical(self.snapshot)
        changed = await self.store.write(
            lambda db: records.charter_version_in(db, digest, text, now), durable=True
        )
        if changed:
            log.info("reports.charter_recorded", digest=digest[:12])
        await self.prune(now)

    async def tick(self) -> None:
        """Prune once a day."""
        now = self.clock()
        if self.pruned_at is None or now - self.pruned_at >= DAY:
            await self.prune(now)

    async def prune(self, now: float) -> int:
        cutoff = now - self.retention
        removed = await self.store.write(lambda db: records.prune_in(db, cutoff), durable=True)
        self.pruned_at = now
        if removed:
            log.info("reports.pruned", records=removed)
        return removed
