"""Composition root: settings → objects; starts and stops everything."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from apiguard import metrics
from apiguard.analysis import Analyser
from apiguard.attachments import AnalysisLimits
from apiguard.config import ConfigError, Settings
from apiguard.delivery import DeliveryWorker
from apiguard.looplag import LoopLagMonitor
from apiguard.notices import NoticeIdentity
from apiguard.ops import OpsServer, Probes, start_ops
from apiguard.pipeline import Pipeline
from apiguard.policy.charter import Charter
from apiguard.policy.context import CharterContext
from apiguard.policy.rules.lookalike import known_correspondents
from apiguard.relay.base import Relay
from apiguard.relay.maildir import MaildirRelay
from apiguard.relay.smtp import SmtpRelay
from apiguard.reports.charter import charter_snapshot
from apiguard.reports.upkeep import ReportUpkeep
from apiguard.review.service import ReviewService
from apiguard.smtp.handler import ApiguardHandler
from apiguard.smtp.listeners import SmtpListeners
from apiguard.store.aio import AsyncStore
from apiguard.store.base import StoreError
from apiguard.store.sqlite import SqliteStore
from apiguard.store.volume import VolumeStore

if TYPE_CHECKING:
    from apiguard.review.server import ReviewServer

log = structlog.get_logger("apiguard.app")

# How often held messages past `review.hold_days` are looked for.
EXPIRY_INTERVAL = 60.0


def build_charter(settings: Settings) -> Charter:
    """The charter table from `[charter]` (raises CharterConfigError)."""
    directory = None
    if settings.charter.correspondents:
        from apiguard.correspondents import load_directory

        directory = load_directory(
            Path(settings.charter.correspondents), key="charter.correspondents"
        )
    context = CharterContext(
        allowed_recipient_domains=tuple(settings.charter.allowed_recipient_domains),
        allowed_sender_domains=tuple(settings.charter.allowed_sender_domains),
        directory=directory,
        attachment_limits=AnalysisLimits(
            max_decompressed=settings.processing.max_decompressed_bytes
        ),
    )
    return Charter.build(settings.charter.rules, context)


def build_relay(settings: Settings) -> Relay:
    if not settings.relay.host:
        return MaildirRelay(settings.outbox_path)
    return SmtpRelay(settings.relay)


def open_store(settings: Settings) -> SqliteStore:
    """The store under `storage.path` (ConfigError when it cannot be opened)."""
    try:
        return SqliteStore(settings.storage.path)
    except StoreError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"storage.path: cannot open the store: {reason}") from None


class Application:
    """The running proxy: SMTP server, pipeline, store and delivery worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.charter = build_charter(settings)
        self.listeners = SmtpListeners(settings.smtp)  # TLS files are read here
        self.ops: OpsServer | None = None
        self.store = AsyncStore(open_store(settings))
        # Memory across messages (Article 2 over time) in the same database.
        self.volume = VolumeStore(self.store.sync)
        # Known correspondents (recipient.lookalike): the directory and every
        # address delivered to, kept current as deliveries succeed.
        self.known = known_correspondents(
            self.charter.context.directory, self.volume.known_addresses()
        )
        self.volume.delivered_listeners.append(self.known.add_all)
        self.charter.context = dataclasses.replace(
            self.charter.context, known_correspondents=self.known
        )
        self.relay = build_relay(settings)
        self.identity = NoticeIdentity.of(settings)
        self.delivery = DeliveryWorker(
            self.store,
            self.relay,
            settings.delivery,
            self.identity,
            concurrency=settings.relay.connections,
            relay_host=settings.relay.host,
        )
        self.analyser = Analyser(self.charter, settings, workers=settings.processing.workers)
        self.pipeline = Pipeline(
            self.charter,
            self.store,
            settings,
            on_queued=self.delivery.wake,
            volume=self.volume,
            analyser=self.analyser,
        )
        self.handler = ApiguardHandler(self.pipeline, max_recipients=settings.smtp.max_recipients)
        self.server: asyncio.Server | None = None
        self.looplag = LoopLagMonitor()
        self._stopped = asyncio.Event()
        self.review = ReviewService(
            self.store.sync, self.identity, hold_days=settings.review.hold_days
        )
        self.review_web: ReviewServer | None = None
        self.reports = ReportUpkeep(
            self.store, settings.reports.retention_days, charter_snapshot(self.charter, settings)
        )
        self._expiry: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        sockname = self.server.sockets[0].getsockname()
        return int(sockname[1])

    @property
    def tls_port(self) -> int:
        """The implicit TLS port (`smtp.implicit_tls_port`)."""
        assert self.listeners.implicit_tls is not None
        return self.listeners.port_of(self.listeners.implicit_tls)

    @property
    def ops_port(self) -> int:
        assert self.ops is not None
        return self.ops.port

    async def _listen(self) -> None:
        """Bind every port before anything runs: a port in use stops the start here."""
        metrics.initialise(rule.id for rule in self.charter.all_rules)
        try:
            await self.listeners.start(self.handler)
            self.server = self.listeners.submission
            if self.settings.ops.enabled:
                probes = Probes(
                    self.store,
                    self.delivery,
                    self.pipeline,
                    self.listeners,
                    self.settings.storage.path,
                    self.settings.delivery.poll_interval,
                    relay_failure_grace=self.settings.ops.relay_failure_grace,
                )
                self.ops = await start_ops(self.settings.ops, probes.ready, probes.refresh)
        except BaseException:
            self.listeners.close()
            await self.store.close()
            raise

    async def start(self) -> None:
        # Before listening: no accept can be writing a spool file yet.
        swept = await self.store.run(self.store.sync.sweep_spool)
        if swept:
            log.info("store.spool_swept", files=swept)
        await self.analyser.start()
        await self._listen()
        self.looplag.start()
        dropped = await self.store.run(self.volume.recover)
        if dropped:
            log.info("volume.recovered", dropped=dropped)
        await self.reports.start()
        await self.delivery.start()
        log.info(
            "app.started",
            smtp_port=self.port,
            tls_port=self.tls_port if self.listeners.implicit_tls else None,
            ops_port=self.ops.port if self.ops else None,
            auth=bool(self.listeners.users),
            relay="maildir" if not self.settings.relay.host else "smtp",
            rules=len(self.charter.rules),
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )
        self._expiry = asyncio.create_task(self._expire_held(), name="apiguard-expiry")
        if self.settings.review.enabled:
            from apiguard.review.server import ReviewServer

            self.review_web = ReviewServer(
                self.settings,
                self.review,
                self.store,
                on_change=self.delivery.wake,
                volume=self.volume,
            )
            await self.review_web.start()

    @property
    def review_port(self) -> int:
        assert self.review_web is not None
        return self.review_web.port

    async def _expire_held(self) -> None:
        """Reject, with a notice, what stayed held longer than `review.hold_days`."""
        while True:
            try:
                expired = await self.store.run(self.review.expire_due)
            except Exception as error:
                log.error("review.expiry_failed", error=type(error).__name__)
            else:
                if any(result.done for result in expired):
                    log.info("review.expired", messages=sum(r.done for r in expired))
                    self.delivery.wake()
            try:
                await self.reports.tick()  # prunes the decision records daily
            except Exception as error:
                log.error("reports.prune_failed", error=type(error).__name__)
            await asyncio.sleep(EXPIRY_INTERVAL)

    async def stop(self) -> None:
        """Stop accepting, finish transactions in flight, then stop delivering."""
        self.handler.accepting = False
        self.listeners.close()
        if self.ops is not None:
            await self.ops.stop()
        if self.review_web is not None:
            await self.review_web.stop()
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        finished = await self.handler.wait_idle(self.settings.smtp.shutdown_grace)
        await self.analyser.stop()
        await self.delivery.stop()
        await self.relay.close()
        await self.store.close()
        await self.looplag.stop()
        log.info("app.stopped", clean=finished)
        self._stopped.set()

    async def serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("app.stopping")
        await self.stop()
