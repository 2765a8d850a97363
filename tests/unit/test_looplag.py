"""The loop-lag monitor warns when the event loop was blocked too long."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from apiguard.looplag import LoopLagMonitor


@pytest.mark.parametrize(
    ("lag", "warned"),
    [(0.0, False), (0.05, False), (0.1, False), (0.101, True), (2.5, True)],
)
def test_only_lags_over_the_threshold_are_logged(lag: float, warned: bool) -> None:
    monitor = LoopLagMonitor(threshold=0.1)
    with capture_logs() as logs:
        monitor.observe(lag)
    blocked = [e for e in logs if e["event"] == "loop.blocked"]
    assert bool(blocked) is warned
    if warned:
        assert blocked[0]["log_level"] == "warning"
        assert blocked[0]["lag_ms"] == round(lag * 1000)
    assert monitor.max_lag == lag
    assert monitor.blocked_count == int(warned)


async def blocked_lags() -> list[int]:
    monitor = LoopLagMonitor(interval=0.01, threshold=0.1)
    with capture_logs() as logs:
        monitor.start()
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # blocks the loop, as a synchronous parse of a big message would
        await asyncio.sleep(0.05)
        await monitor.stop()
    return [e["lag_ms"] for e in logs if e["event"] == "loop.blocked"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_blocking_call_in_the_loop_is_reported(loop: str) -> None:
    """On either loop `apiguard serve` may run on."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    from apiguard.cli import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
        lags = runner.run(blocked_lags())
    assert len(lags) == 1
    assert 250 <= lags[0] < 1000


async def test_a_free_loop_is_not_reported_and_stop_is_idempotent() -> None:
    monitor = LoopLagMonitor(interval=0.01, threshold=0.1)
    with capture_logs() as logs:
        monitor.start()
        await asyncio.sleep(0.1)
        await monitor.stop()
        await monitor.stop()
    assert [e for e in logs if e["event"] == "loop.blocked"] == []
