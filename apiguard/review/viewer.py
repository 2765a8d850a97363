"""Where the review page reads a held message: never in the SMTP process.

Parsing a message is CPU work under the GIL: done on a thread of the SMTP
process, a 205 KB HTML message held the event loop 11.7 s while a reviewer
opened it (the SMTP greeting waited as long). `WorkerViewer` parses in a
worker process of its own (`apiguard.worker`: isolated, with the analysis
workers' CPU, running-time and memory limits), so opening any message costs
the SMTP process a pipe write and a read. A message whose display goes past a
limit is shown as "could not be displayed", and the worker is replaced.

`ThreadViewer` keeps the old way for tools that have no SMTP sessions to
protect (the tests of the page's own logic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from apiguard.review.display import MessageView, attachment_content, message_view
from apiguard.worker import WorkerError, WorkerLost, WorkerProcess

log = structlog.get_logger("apiguard.review")


class MessageViewer(Protocol):
    """What the review page asks of a stored message's bytes."""

    async def view(self, raw: bytes) -> MessageView | None:
        """The message as shown, or None when it could not be read."""

    async def attachment(self, raw: bytes, index: int) -> tuple[str, bytes] | None:
        """(file name, bytes) of attachment `index`, or None."""

    async def stop(self) -> None: ...


def setup_viewer(config: object) -> Callable[[bytes, str, int], object]:
    """In the viewer's worker process: what each request asks for."""

    def handle(raw: bytes, what: str, index: int) -> object:
        if what == "view":
            return message_view(raw)
        return attachment_content(raw, index)

    return handle


class WorkerViewer:
    """Reads held messages in a worker process, started at the first use."""

    def __init__(
        self,
        *,
        cpu_seconds: float = 20.0,
        running_seconds: float = 120.0,
        memory_bytes: int = 0,
        cwd: Path | None = None,
    ) -> None:
        self.cpu_seconds = cpu_seconds
        self.running_seconds = running_seconds
        self.memory_bytes = memory_bytes
        self.cwd = cwd if cwd is not None and cwd.is_dir() else None
        self._worker: WorkerProcess | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return self._worker.pid if self._worker is not None else None

    def _current(self) -> WorkerProcess:
        if self._worker is None:
            self._worker = WorkerProcess(
                "apiguard.review.viewer:setup_viewer",
                None,
                cpu_seconds=self.cpu_seconds,
                memory_bytes=self.memory_bytes,
                cwd=self.cwd,
            )
        return self._worker

    async def _ask(self, raw: bytes, what: str, index: int = 0) -> object | None:
        worker = self._current()
        try:
            answer: object = await worker.call(raw, what, index, timeout=self.running_seconds)
            return answer
        except (WorkerLost, WorkerError) as error:
            log.error("review.display_failed", error=type(error).__name__, size=len(raw))
            if self._worker is worker:
                self._worker = None  # the next request starts a fresh one
            task = asyncio.get_running_loop().create_task(worker.stop(timeout=1.0))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            return None

    async def view(self, raw: bytes) -> MessageView | None:
        shown = await self._ask(raw, "view")
        return shown if isinstance(shown, MessageView) else None

    async def attachment(self, raw: bytes, index: int) -> tuple[str, bytes] | None:
        found = await self._ask(raw, "attachment", index)
        return found if isinstance(found, tuple) else None

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)


class ThreadViewer:
    """Reads held messages on a thread of this process (no SMTP to protect)."""

    async def view(self, raw: bytes) -> MessageView | None:
        return await asyncio.to_thread(message_view, raw)

    async def attachment(self, raw: bytes, index: int) -> tuple[str, bytes] | None:
        return await asyncio.to_thread(attachment_content, raw, index)

    async def stop(self) -> None:
        return None
