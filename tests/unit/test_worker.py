"""The worker-process link: real child processes on pipes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest

from apiguard.worker import WorkerError, WorkerLost, WorkerProcess, WorkerTimeout


def setup_scale(factor: int) -> Callable[[bytes, int], int]:
    """Run in the child: a function that scales and adds the blob's length,
    fails on negatives, sleeps on 0."""

    def scale(blob: bytes, value: int) -> int:
        if value < 0:
            raise ValueError(f"negative value {value}")  # the text must not travel
        if value == 0:
            import time

            time.sleep(30)
        print("stray output goes to stderr, not into the protocol")
        return value * factor + len(blob)

    return scale


SETUP = "tests.unit.test_worker:setup_scale"


async def test_answers_match_requests_under_concurrency() -> None:
    worker = WorkerProcess(SETUP, 3)
    await worker.start()
    try:
        blobs = [b"x" * (n % 7) * 100_000 for n in range(1, 60)]  # up to 600 kB
        results = await asyncio.gather(
            *(worker.call(blob, n) for n, blob in enumerate(blobs, start=1))
        )
        assert results == [3 * n + len(blob) for n, blob in enumerate(blobs, start=1)]
        big = await worker.call(b"y" * 10_000_000, 10**400)  # more than a pipe holds
        assert big == 3 * 10**400 + 10_000_000
    finally:
        await worker.stop()
    assert not worker.alive


async def test_an_error_names_its_type_only_and_the_worker_lives_on() -> None:
    worker = WorkerProcess(SETUP, 2)
    await worker.start()
    try:
        with pytest.raises(WorkerError) as error:
            await worker.call(b"", -7)
        assert str(error.value) == "ValueError"
        assert await worker.call(b"ab", 5) == 12
    finally:
        await worker.stop()


async def test_a_killed_worker_fails_what_was_in_flight() -> None:
    worker = WorkerProcess(SETUP, 2)
    await worker.start()
    busy = asyncio.create_task(worker.call(b"", 0))  # sleeps in the child
    await asyncio.sleep(0.2)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerLost):
        await asyncio.wait_for(busy, 10)
    assert not worker.alive
    with pytest.raises(WorkerLost):
        await worker.call(b"", 1)
    await worker.stop()


async def test_a_setup_that_fails_is_reported() -> None:
    worker = WorkerProcess("tests.unit.test_worker:no_such_setup", None)
    with pytest.raises(WorkerLost):
        await asyncio.wait_for(worker.start(), 20)
    await worker.stop()


async def test_a_caller_cancelled_mid_request_leaves_the_pipe_in_step() -> None:
    worker = WorkerProcess(SETUP, 1)
    await worker.start()
    try:
        for _ in range(3):
            caller = asyncio.create_task(worker.call(b"z" * 8_000_000, 1))
            await asyncio.sleep(0.001)  # somewhere in the middle of its pieces
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
        assert await worker.call(b"abc", 2) == 5
    finally:
        await worker.stop()


def setup_refusing(config: object) -> Callable[..., object]:
    raise ValueError("bad configuration")


async def test_a_worker_whose_setup_raises_stops_and_reports_it() -> None:
    worker = WorkerProcess("tests.unit.test_worker:setup_refusing", None)
    with pytest.raises(WorkerLost, match="ValueError"):
        await asyncio.wait_for(worker.start(), 20)
    assert not worker.alive
    with pytest.raises(WorkerLost):  # and never serves anything
        await worker.call(b"", 1)
    await worker.stop()


async def test_a_request_past_its_deadline_kills_the_worker() -> None:
    worker = WorkerProcess(SETUP, 1)
    await worker.start()
    hung = asyncio.create_task(worker.call(b"", 0, timeout=0.5))  # 0 sleeps 30 s in the child
    await asyncio.sleep(0.1)
    other = asyncio.create_task(worker.call(b"", 1))  # queued behind the hung one
    with pytest.raises(WorkerTimeout):
        await hung
    with pytest.raises(WorkerLost):
        await asyncio.wait_for(other, 10)
    assert not worker.alive
    await worker.stop()


def setup_slow_echo(config: object) -> Callable[..., object]:
    def echo(blob: bytes, number: int, now: float) -> int:
        import time

        time.sleep(0.05)
        return number

    return echo


async def test_requests_in_flight_on_a_killed_analysis_worker_are_all_answered() -> None:
    from apiguard.analysis import Analyser

    class EchoAnalyser(Analyser):
        def __init__(self) -> None:  # the pool machinery only, with a test function
            self.workers, self.timeout, self._background = 1, 60.0, set()
            self._pools = {}
            self._sizes = {"letters": 1, "attachments": 1, "big": 1}

        def _new_worker(self, size_class: str = "letters") -> WorkerProcess:
            return WorkerProcess("tests.unit.test_worker:setup_slow_echo", None)

    analyser = EchoAnalyser()
    await analyser.start()
    try:
        victim = analyser._pools["letters"][0]
        calls = [
            asyncio.create_task(analyser.analyse(b"x", n, 0.0))  # type: ignore[arg-type]
            for n in range(10)
        ]
        await asyncio.sleep(0.12)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert sorted(results) == list(range(10))  # type: ignore[type-var]
        assert analyser._pools["letters"][0] is not victim
    finally:
        await analyser.stop()


async def test_a_worker_can_run_at_a_lower_cpu_priority() -> None:
    worker = WorkerProcess(SETUP, 1, nice=5)
    await worker.start()
    try:
        assert worker.pid is not None
        with open(f"/proc/{worker.pid}/stat") as stat:
            nice = int(stat.read().rsplit(")", 1)[1].split()[16])
        assert nice == os.nice(0) + 5
        assert await worker.call(b"", 2) == 2
    finally:
        await worker.stop()


def setup_cycles(config: object) -> Callable[[bytes], tuple[bool, bool]]:
    """Run in the child, with automatic collection off: each request leaves a
    reference cycle behind and says whether the previous one was freed, and
    whether what the set-up built is out of the collector's sight (frozen)."""
    import gc
    import weakref

    gc.disable()
    previous: list[weakref.ref[object]] = []

    class Node:
        other: object = None

    def leave_a_cycle(blob: bytes) -> tuple[bool, bool]:
        freed = bool(previous) and previous[-1]() is None
        node, other = Node(), Node()
        node.other, other.other = other, node
        previous.append(weakref.ref(node))
        return freed, gc.get_freeze_count() > 0

    return leave_a_cycle


async def test_the_garbage_of_a_big_message_is_collected_at_once() -> None:
    """A PDF reader's objects form cycles that only a full collection frees:
    after a big message the worker collects; after letters it does not pay for
    a full collection each time."""
    from apiguard.worker import COLLECT_AFTER

    worker = WorkerProcess("tests.unit.test_worker:setup_cycles", None)
    await worker.start()
    try:
        assert await worker.call(b"letter") == (False, True)  # frozen after set-up
        assert await worker.call(b"letter") == (False, True)  # a small one: not collected
        assert await worker.call(b"x" * COLLECT_AFTER) == (False, True)
        assert await worker.call(b"letter") == (True, True)  # collected after the big one
    finally:
        await worker.stop()


def request_channel_size(worker: WorkerProcess) -> int:
    """What the request channel holds: a pipe's size, or a socket's send buffer."""
    import fcntl
    import socket

    assert worker.process is not None and worker.process.stdin is not None
    transport = worker.process.stdin.transport
    pipe = transport.get_extra_info("pipe")
    if pipe is not None:
        return int(fcntl.fcntl(pipe.fileno(), 1032))  # F_GETPIPE_SZ
    channel = transport.get_extra_info("socket")
    return int(channel.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_request_channel_holds_a_letter_with_its_attachment(loop: str) -> None:
    """asyncio gives the worker a pipe, uvloop a Unix socket: both are widened
    past their 64 KiB or 208 KiB default, so that a 200 KB letter is written at once."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    from apiguard.cli import event_loop_factory

    async def measure() -> int:
        worker = WorkerProcess(SETUP, 3)
        await worker.start()
        try:
            assert await worker.call(b"x" * 300_000, 1) == 300_003
            return request_channel_size(worker)
        finally:
            await worker.stop()

    with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
        assert runner.run(measure()) >= 1 << 20
