"""Runs the synchronous store on one dedicated thread, off the event loop.

Group commit: writes that arrive while a commit is running are queued and share
the next transaction (and its one fsync). A caller still awaits its own write:
nothing is acknowledged before the transaction that holds it has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

from apiguard.store.base import DeliveryJob, NewMessage, RecipientOutcome, StoreError
from apiguard.store.sqlite import DEFAULT_LEASE, SPOOL_SIZE, SqliteStore, WriteFailed, WriteOp

P = ParamSpec("P")
T = TypeVar("T")
Item = TypeVar("Item")

# Work to do inside the message's own transaction (e.g. settling volume counts).
FollowUp = Callable[[sqlite3.Connection], Any]


class _StoreThread:
    """The one thread the store runs on: calls come in through a queue and
    their outcomes go back to the caller's event loop. (A `ThreadPoolExecutor`
    adds, per call, a future with its own lock and condition, a second future
    on the loop to mirror it, and a thread-count check: a quarter of a round
    trip's cost, paid for every group commit.)"""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        # A daemon: a process that exits without `close()` is not held by it
        # (an interrupted transaction is rolled back by SQLite at the next open).
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, function: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((function, future, loop))
        return future

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            function, future, loop = item
            try:
                outcome: tuple[Any, BaseException | None] = (function(), None)
            except BaseException as error:  # handed to the caller, as an executor does
                outcome = (None, error)
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(_settle, future, *outcome)
            del item, function, future, outcome  # no reference kept while waiting

    def stop(self) -> None:
        """Finish the calls already queued, then end the thread."""
        self._calls.put(None)
        self._thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller gave up waiting (the call ran anyway)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Batcher(Generic[Item]):
    """Queues items and writes each queue-full with one call on the store thread."""

    def __init__(self, store: AsyncStore, write: Callable[[list[Item]], list[Any]]) -> None:
        self._store = store
        self._write = write
        self._pending: list[tuple[Item, asyncio.Future[Any]]] = []
        self._flushing = False

    async def submit(self, item: Item) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._store.run(self._write, [item for item, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if future.done():
                            continue
                        if isinstance(result, WriteFailed):
                            future.set_exception(result.error)
                        else:
                            future.set_result(result)
        finally:
            self._flushing = False


class AsyncStore:
    """Awaitable access to a `SqliteStore`, with group commit of accepted
    messages and of delivery outcomes."""

    def __init__(self, store: SqliteStore) -> None:
        self.sync = store
        self._thread = _StoreThread("apiguard-store")
        # Every write goes through one queue: what arrives while a transaction
        # runs shares the next one (and its one fsync), whatever its kind.
        self._writes: _Batcher[WriteOp] = _Batcher(self, store.write_many)

    async def write(
        self,
        operation: Callable[[sqlite3.Connection], T],
        *,
        durable: bool | Callable[[T], bool],
    ) -> T:
        """Run `operation` inside a shared write transaction; returns its result
        once that transaction has committed (durably, when `durable` is True or
        says so of the result: the write is then on disk before it returns)."""
        result: T = await self._writes.submit((operation, durable))
        return result

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`function(*args, **kwargs)` on the store thread."""
        return await self._thread.call(functools.partial(function, *args, **kwargs))

    async def accept(
        self,
        message: NewMessage,
        notices: tuple[NewMessage, ...] = (),
        then: FollowUp | None = None,
    ) -> Any:
        """Durably store one message (with its notices, and `then` run in the same
        transaction); returns `then`'s result once committed. A session cancelled
        meanwhile (client gone, timeout) does not cut an accept in two: the
        write, once queued, is committed anyway (the message is stored without
        its 250, and the client's retry makes a duplicate at worst, never a
        loss); a big message's spool file and commit run shielded as one."""
        if message.raw is not None and len(message.raw) > SPOOL_SIZE:
            return await asyncio.shield(self._accept(message, notices, then))
        return await self._accept(message, notices, then)

    async def _accept(
        self, message: NewMessage, notices: tuple[NewMessage, ...], then: FollowUp | None
    ) -> Any:
        spooled = message.raw is not None and len(message.raw) > SPOOL_SIZE
        if spooled:
            assert message.raw is not None
            try:
                await asyncio.to_thread(self.sync.spool_write, message.id, message.raw)
            except OSError as error:
                raise StoreError(f"spool: {error.strerror or error}") from error
            message = dataclasses.replace(message, raw=None, spooled=True)
        try:
            return await self.write(
                functools.partial(
                    self.sync.accept_in, message=message, notices=notices, follow_up=then
                ),
                durable=True,
            )
        except Exception:
            if spooled:  # the transaction failed: nothing refers to the file
                self.sync.spool_discard(message.id)
            raise

    async def complete(
        self,
        message_id: str,
        outcomes: list[RecipientOutcome],
        notices: tuple[NewMessage, ...] = (),
        now: float = 0.0,
    ) -> None:
        """Record one delivery attempt's outcomes (grouped with other writes)."""
        await self.write(
            functools.partial(
                self.sync.complete_in,
                message_id=message_id,
                outcomes=outcomes,
                notices=notices,
                now=now,
            ),
            durable=True,
        )

    async def read_content(self, message_id: str) -> bytes | None:
        """A message's content; a spool file is read off the store thread."""
        return await asyncio.to_thread(self.sync.read_content, message_id)

    async def claim(
        self, now: float, limit: int, lease: float = DEFAULT_LEASE
    ) -> list[DeliveryJob]:
        """Due recipients marked as sending for `lease` seconds (not durable:
        see `claim_due`)."""
        return await self.write(
            functools.partial(self.sync.claim_in, now=now, limit=limit, lease=lease),
            durable=False,
        )

    async def close(self) -> None:
        await self.run(self.sync.close)
        self._thread.stop()
