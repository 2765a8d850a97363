"""The operations listener: `/metrics` (Prometheus), `/healthz`, `/readyz`.

A small starlette app served by uvicorn in apiguard's own event loop, on its own
`[ops] host/port` (default 127.0.0.1:9025): health checks and scraping keep
working whether the review page is enabled or not, and this port never serves
message data, so it may be opened to a monitoring host when the review page
may not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from apiguard import metrics
from apiguard.config import ConfigError, OpsSettings
from apiguard.relay.base import reason_class

if TYPE_CHECKING:
    from apiguard.delivery import DeliveryWorker
    from apiguard.pipeline import Pipeline
    from apiguard.smtp.listeners import SmtpListeners
    from apiguard.store.aio import AsyncStore

log = structlog.get_logger("apiguard.ops")

# Each check's name and whether it passes; with the reasons of those that do not.
Readiness = tuple[Mapping[str, bool], Mapping[str, str]]
ReadinessProbe = Callable[[], Awaitable[Readiness]]
Refresh = Callable[[], Awaitable[None]]


def ops_app(ready: ReadinessProbe, refresh: Refresh) -> Starlette:
    """`ready()` names each check and whether it passes; `refresh()` updates the
    gauges read from the store just before a scrape."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks, reasons = await ready()
        ok = all(checks.values())
        body: dict[str, object] = {"status": "ready" if ok else "not ready", "checks": checks}
        if reasons:
            body["reasons"] = dict(reasons)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        try:
            await refresh()
        except Exception as error:  # stale gauges beat a failed scrape
            log.warning("ops.refresh_failed", error=type(error).__name__)
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("not found\n", status_code=404)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        exception_handlers={404: not_found},
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the application owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (raises OSError, e.g. when the port is in use)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class OpsServer:
    """Runs `ops_app` on a socket bound beforehand (so bind errors are ours)."""

    def __init__(self, app: Starlette, sock: socket.socket) -> None:
        self.sock = sock
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            http="h11",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]), name="ops")
        # uvicorn exposes a `started` flag, not an event.
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # surfaces the start-up error

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()


async def start_ops(settings: OpsSettings, ready: ReadinessProbe, refresh: Refresh) -> OpsServer:
    """Bind `[ops] host/port` and serve (ConfigError naming the key when it cannot)."""
    try:
        sock = bind(settings.host, settings.port)
    except OSError as error:
        raise ConfigError(
            f"ops.port: cannot listen on {settings.host}:{settings.port}: {error.strerror or error}"
        ) from None
    server = OpsServer(ops_app(ready, refresh), sock)
    await server.start()
    return server


def _probe_writable(directory: Path) -> bool:
    """Create, fsync and remove a small file in the store's folder."""
    probe = directory / ".ready-probe"
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
    probe.unlink()
    return True


def _words(error: Exception) -> str:
    """An OS or store error in words (its message, else its kind)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or "no answer in time"


class Probes:
    """What /readyz checks and what /metrics refreshes, over the running parts."""

    def __init__(
        self,
        store: AsyncStore,
        delivery: DeliveryWorker,
        pipeline: Pipeline,
        listeners: SmtpListeners,
        storage: Path,
        poll_interval: float,
        *,
        relay_failure_grace: float = 900.0,
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.pipeline = pipeline
        self.listeners = listeners
        self.storage = storage
        self.stale_after = max(60.0, 10 * poll_interval)
        self.relay_failure_grace = relay_failure_grace

    async def ready(self) -> Readiness:
        """The store takes writes (a file in its folder, on the store's own
        thread so a stuck store fails too, and the delivery worker's claims and
        records), the delivery worker loops, the SMTP ports listen, and the
        relay has not failed for longer than `ops.relay_failure_grace`."""
        reasons: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.store.run(_probe_writable, self.storage), timeout=5)
        except Exception as error:
            reasons["store"] = f"the store's folder cannot be written: {_words(error)}"
        worker = self.delivery
        if "store" not in reasons and not worker.store_writable:
            reasons["store"] = f"the store cannot be written: {worker.store_failure}"
        delivery_ok = worker.alive and worker.clock() - worker.last_loop_at < self.stale_after
        if not delivery_ok:
            reasons["delivery"] = "the delivery loop is not running"
        relay = self._relay_trouble()
        if relay:
            reasons["relay"] = relay
        checks = {
            "store": "store" not in reasons,
            "delivery": delivery_ok,
            "smtp": self.listeners.serving,
            "relay": "relay" not in reasons,
        }
        if not self.listeners.serving:
            reasons["smtp"] = "the SMTP ports are not listening"
        return checks, reasons

    def _relay_trouble(self) -> str:
        """Why the relay counts as down (failing for longer than the grace), or ""."""
        health = self.delivery.relay_health
        if not self.relay_failure_grace or health.failing_since is None:
            return ""
        failing = self.delivery.clock() - health.failing_since
        if failing < self.relay_failure_grace:
            return ""
        return f"the relay has failed for {int(failing)} s: {health.last_reason}"

    async def refresh(self) -> None:
        """Gauges read from the store, just before a scrape."""
        metrics.set_queue_depth(await self.store.run(self.store.sync.queue_counts))
        oldest, deferred = await self.store.run(self.store.sync.queue_health)
        by_class: dict[str, int] = {}
        for reason, count in deferred.items():
            kind = reason_class(reason)
            by_class[kind] = by_class.get(kind, 0) + count
        age = self.delivery.clock() - oldest if oldest is not None else 0.0
        metrics.set_queue_health(age, by_class)
        volume = self.pipeline.volume  # art2.rate circuits; absent without volume state
        if volume is not None:
            metrics.CIRCUITS_OPEN.set(len(await self.store.run(volume.circuits)))
