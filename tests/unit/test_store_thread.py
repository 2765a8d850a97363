"""The store's own thread: calls run one at a time, in order, on one thread,
and their results, errors and cancellations reach the caller as an executor's
would."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from apiguard.store.aio import _StoreThread


async def test_calls_run_in_order_on_one_thread_and_return_their_results() -> None:
    worker = _StoreThread("test-store")
    seen: list[tuple[int, str]] = []

    def step(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * n

    results = await asyncio.gather(*(worker.call(lambda n=n: step(n)) for n in range(20)))
    assert results == [n * n for n in range(20)]
    assert seen == [(n, "test-store") for n in range(20)]
    worker.stop()


async def test_an_error_reaches_the_caller_and_the_thread_goes_on() -> None:
    worker = _StoreThread("test-store")

    def broken() -> None:
        raise ValueError("disk says no")

    with pytest.raises(ValueError, match="disk says no"):
        await worker.call(broken)
    assert await worker.call(lambda: "still here") == "still here"
    worker.stop()


async def test_a_caller_that_gives_up_leaves_the_call_running_and_the_thread_working() -> None:
    worker = _StoreThread("test-store")
    finished: list[str] = []
    loop_errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))

    def slow() -> str:
        time.sleep(0.2)
        finished.append("slow")
        return "late"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(worker.call(slow), timeout=0.05)
    assert await worker.call(lambda: "next") == "next"  # after the slow one, in order
    assert finished == ["slow"]  # the cancelled call still ran to its end
    assert loop_errors == []  # its late result was dropped, not set on a cancelled future
    worker.stop()


async def test_stop_finishes_the_calls_already_queued() -> None:
    worker = _StoreThread("test-store")
    done: list[int] = []
    futures = [worker.call(lambda n=n: done.append(n)) for n in range(5)]
    worker.stop()
    assert done == list(range(5))
    await asyncio.gather(*futures)
