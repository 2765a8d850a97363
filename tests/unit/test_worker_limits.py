"""Per-message limits in the worker processes, and their isolation: real
child processes on pipes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from apiguard.worker import WorkerLimit, WorkerLost, WorkerProcess, WorkerTimeout


def setup_hog(config: object) -> Callable[[bytes, str, float], object]:
    """Run in the child: burn CPU, sleep or allocate, then say how much CPU
    this request used."""

    def hog(blob: bytes, kind: str, amount: float) -> object:
        started = time.process_time()
        if kind == "spin":
            end = time.process_time() + amount
            while time.process_time() < end:
                pass
        elif kind == "sleep":
            time.sleep(amount)
        elif kind == "alloc":
            hoard = bytearray(int(amount))
            return len(hoard)
        elif kind == "cwd":
            return os.getcwd()
        elif kind == "path":
            import sys

            return list(sys.path)
        return time.process_time() - started

    return hog


SETUP = "tests.unit.test_worker_limits:setup_hog"


async def test_each_message_has_its_own_cpu_budget() -> None:
    # Three requests of 1.2 s of CPU each under a budget of 2 s per message:
    # together they use more than one budget, and none is stopped.
    worker = WorkerProcess(SETUP, None, cpu_seconds=2)
    try:
        results = [await worker.call(b"", "spin", 1.2) for _ in range(3)]
        assert all(used >= 1.0 for used in results)
        assert worker.alive
    finally:
        await worker.stop()


async def test_a_message_past_its_cpu_budget_stops_its_worker_and_is_named() -> None:
    worker = WorkerProcess(SETUP, None, cpu_seconds=1)
    try:
        hog = asyncio.create_task(worker.call(b"", "spin", 30.0))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(worker.call(b"", "sleep", 0.0))
        with pytest.raises(WorkerLimit) as stopped:
            await asyncio.wait_for(hog, 20)
        assert stopped.value.limit == "cpu"
        # What waited behind it is not blamed: it may be analysed again elsewhere.
        with pytest.raises(WorkerLost) as lost:
            await asyncio.wait_for(queued, 10)
        assert not isinstance(lost.value, WorkerLimit)
        assert not worker.alive
    finally:
        await worker.stop()


async def test_time_waiting_in_the_queue_does_not_count_towards_the_deadline() -> None:
    # Five requests of 0.6 s each, a running deadline of 2 s: the last waits
    # 2.4 s in the queue and still gets its answer.
    worker = WorkerProcess(SETUP, None)
    try:
        await worker.start()
        calls = [asyncio.create_task(worker.call(b"", "sleep", 0.6, timeout=2.0)) for _ in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert len(results) == 5
        assert worker.alive
    finally:
        await worker.stop()


async def test_a_message_running_past_its_deadline_is_named_and_the_rest_are_lost() -> None:
    worker = WorkerProcess(SETUP, None)
    try:
        await worker.start()
        first = asyncio.create_task(worker.call(b"", "sleep", 0.1, timeout=5.0))
        stuck = asyncio.create_task(worker.call(b"", "sleep", 60.0, timeout=1.0))
        behind = asyncio.create_task(worker.call(b"", "sleep", 0.0, timeout=5.0))
        assert await asyncio.wait_for(first, 10) is not None
        with pytest.raises(WorkerTimeout) as stopped:
            await asyncio.wait_for(stuck, 20)
        assert stopped.value.limit == "time"
        with pytest.raises(WorkerLost) as lost:
            await asyncio.wait_for(behind, 10)
        assert not isinstance(lost.value, WorkerLimit)
    finally:
        await worker.stop()


async def test_an_allocation_past_the_memory_limit_is_named_and_the_worker_exits() -> None:
    worker = WorkerProcess(SETUP, None, memory_bytes=768 * 1024 * 1024)
    try:
        assert await worker.call(b"", "alloc", 16 * 1024 * 1024) == 16 * 1024 * 1024
        with pytest.raises(WorkerLimit) as stopped:
            await asyncio.wait_for(worker.call(b"", "alloc", 2 * 1024 * 1024 * 1024), 20)
        assert stopped.value.limit == "memory"
        for _ in range(100):
            if not worker.alive:
                break
            await asyncio.sleep(0.05)
        assert not worker.alive
    finally:
        await worker.stop()


async def test_workers_run_isolated_from_the_services_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `queue.py` in the directory the service was started from, and a
    # PYTHONPATH pointing at it, must never be imported by a worker.
    service_dir = tmp_path / "service"
    service_dir.mkdir()
    marker = tmp_path / "imported"
    (service_dir / "queue.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom _queue import *\n"
    )
    storage = tmp_path / "storage"
    storage.mkdir()
    monkeypatch.chdir(service_dir)
    monkeypatch.setenv("PYTHONPATH", str(service_dir))
    worker = WorkerProcess(SETUP, None, cwd=storage)
    try:
        assert await worker.call(b"", "cwd", 0.0) == str(storage)
        path = await worker.call(b"", "path", 0.0)
        assert str(service_dir) not in path and "" not in path
        import queue  # noqa: F401 - what the analysis imports, at the latest now

        assert not marker.exists()
    finally:
        await worker.stop()


async def test_a_message_past_a_limit_is_held_and_the_others_are_analysed_again() -> None:
    from apiguard.analysis import Analyser, content_half
    from apiguard.policy.charter import Charter
    from apiguard.policy.verdict import Verdict

    class HogAnalyser(Analyser):
        def __init__(self) -> None:  # the pool machinery only, with a test function
            self.content = content_half(Charter.build())
            self.workers, self.timeout, self._background = 1, 60.0, set()
            self._pools = {}
            self._sizes = {"letters": 1, "attachments": 1, "big": 1}

        def _new_worker(self, size_class: str = "letters") -> WorkerProcess:
            return WorkerProcess(SETUP, None, cpu_seconds=1)

    analyser = HogAnalyser()
    await analyser.start()
    try:
        victim = analyser._pools["letters"][0]
        hog = asyncio.create_task(analyser.analyse(b"", "spin", 30.0))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        others = [
            asyncio.create_task(analyser.analyse(b"", "sleep", 0.1))  # type: ignore[arg-type]
            for _ in range(3)
        ]
        fingerprint, decision = await asyncio.wait_for(hog, 30)
        assert fingerprint is None
        assert decision.verdict is Verdict.HOLD
        (finding,) = decision.findings
        assert finding.rule == "analysis.limits"
        assert dict(finding.details) == {"limit": "cpu"}
        assert finding.message_fr.startswith("analyse interrompue : limite de temps de calcul")
        assert "art1.no-patient-data" in decision.skipped
        results = await asyncio.wait_for(asyncio.gather(*others), 30)
        assert all(isinstance(used, float) for used in results)  # answered, not held
        assert analyser._pools["letters"][0] is not victim
    finally:
        await analyser.stop()
