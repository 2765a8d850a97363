"""Runs the synchronous store on one dedicated thread, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from apiguard.store.base import NewMessage
from apiguard.store.sqlite import SqliteStore

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """Awaitable access to a `SqliteStore`, with group commit of accepted messages:
    transactions that arrive while a commit is running share the next fsync."""

    def __init__(self, store: SqliteStore) -> None:
        self.sync = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apiguard-store")
        self._pending: list[tuple[tuple[NewMessage, tuple[NewMessage, ...]], asyncio.Future[None]]]
        self._pending = []
        self._flushing = False

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    async def accept(self, message: NewMessage, notices: tuple[NewMessage, ...] = ()) -> None:
        """Durably store one message (with its notices); returns once committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((message, notices), future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self.run(self.sync.accept_many, [item for item, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._flushing = False

    async def close(self) -> None:
        await self.run(self.sync.close)
        self._executor.shutdown(wait=True)
