"""Serves the review page with uvicorn inside apiguard's own event loop.

uvicorn would install its own SIGINT/SIGTERM handlers; apiguard owns signals
(it must finish SMTP transactions before stopping), so they are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import structlog
import uvicorn

from apiguard.config import ConfigError, Settings
from apiguard.review.auth import session_secret
from apiguard.review.circuits import find_board
from apiguard.review.service import ReviewService
from apiguard.review.viewer import WorkerViewer
from apiguard.review.web import create_app
from apiguard.store.aio import AsyncStore

log = structlog.get_logger("apiguard.review")


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ReviewServer:
    """The review page's HTTP server: start() binds, stop() drains and closes."""

    def __init__(
        self,
        settings: Settings,
        service: ReviewService,
        store: AsyncStore,
        *,
        on_change: Callable[[], None] = lambda: None,
        volume: object | None = None,
    ) -> None:
        self.settings = settings
        review = settings.review
        processing = settings.processing
        # Messages are parsed for display in a worker process, never here.
        self.viewer = WorkerViewer(
            cpu_seconds=processing.max_cpu_seconds,
            running_seconds=processing.max_running_seconds,
            memory_bytes=processing.worker_memory_bytes,
            cwd=settings.storage.path,
        )
        app = create_app(
            service,
            store,
            review,
            secret=session_secret(review.session_secret, settings.storage.path),
            on_change=on_change,
            circuits=find_board(volume),
            viewer=self.viewer,
        )
        self.config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,  # paths carry ids and filters; our own events say enough
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
            # HTTPS when a certificate is set (required beyond loopback).
            ssl_certfile=review.tls_cert or None,
            ssl_keyfile=review.tls_key or None,
        )
        self.server = _EmbeddedServer(self.config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def _bind(self) -> socket.socket:
        host, port = self.settings.review.host, self.settings.review.port
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(100)
            sock.setblocking(False)
        except OSError as error:
            raise ConfigError(
                f"review: cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None
        return sock

    async def start(self) -> None:
        self._socket = self._bind()
        self._task = asyncio.create_task(
            self.server.serve(sockets=[self._socket]), name="apiguard-review"
        )
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise ConfigError("review: the web server stopped at start-up")
            await asyncio.sleep(0.01)
        log.info("review.started", host=self.settings.review.host, port=self.port)

    async def stop(self) -> None:
        if self._task is None:
            await self.viewer.stop()
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self.viewer.stop()
        log.info("review.stopped")
