"""Composition root: settings → objects; starts and stops everything."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog

from apiguard.config import Settings
from apiguard.delivery import DeliveryWorker
from apiguard.looplag import LoopLagMonitor
from apiguard.notices import NoticeIdentity
from apiguard.pipeline import Pipeline
from apiguard.policy.charter import Charter
from apiguard.policy.context import CharterContext
from apiguard.relay.base import Relay
from apiguard.relay.maildir import MaildirRelay
from apiguard.relay.smtp import SmtpRelay
from apiguard.smtp.handler import ApiguardHandler, GuardedSMTP, parse_networks
from apiguard.store.aio import AsyncStore
from apiguard.store.sqlite import SqliteStore

log = structlog.get_logger("apiguard.app")


def build_charter(settings: Settings) -> Charter:
    """The charter table from `[charter]` (raises CharterConfigError)."""
    directory = None
    if settings.charter.correspondents:
        from apiguard.correspondents import load_directory

        directory = load_directory(Path(settings.charter.correspondents))
    context = CharterContext(
        allowed_recipient_domains=tuple(settings.charter.allowed_recipient_domains),
        allowed_sender_domains=tuple(settings.charter.allowed_sender_domains),
        directory=directory,
    )
    return Charter.build(settings.charter.rules, context)


def build_relay(settings: Settings) -> Relay:
    if not settings.relay.host:
        return MaildirRelay(settings.outbox_path)
    return SmtpRelay(settings.relay)


def open_store(settings: Settings) -> SqliteStore:
    return SqliteStore(settings.storage.path)


class Application:
    """The running proxy: SMTP server, pipeline, store and delivery worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.charter = build_charter(settings)
        self.store = AsyncStore(open_store(settings))
        self.relay = build_relay(settings)
        self.identity = NoticeIdentity(
            from_address=settings.notices.from_address,
            from_name=settings.notices.from_name,
            reporting_mta=settings.smtp.hostname,
        )
        self.delivery = DeliveryWorker(
            self.store,
            self.relay,
            settings.delivery,
            self.identity,
            concurrency=settings.relay.connections,
        )
        self.pipeline = Pipeline(self.charter, self.store, settings, on_queued=self.delivery.wake)
        self.handler = ApiguardHandler(self.pipeline, max_recipients=settings.smtp.max_recipients)
        self.server: asyncio.Server | None = None
        self.looplag = LoopLagMonitor()
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        assert self.server is not None
        sockname = self.server.sockets[0].getsockname()
        return int(sockname[1])

    def _protocol(self) -> GuardedSMTP:
        smtp = self.settings.smtp
        return GuardedSMTP(
            self.handler,
            networks=parse_networks(smtp.allowed_networks),
            data_size_limit=smtp.max_message_size,
            hostname=smtp.hostname,
            ident="apiguard",
            timeout=smtp.timeout,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        self.looplag.start()
        await self.delivery.start()
        self.server = await asyncio.get_running_loop().create_server(
            self._protocol, host=self.settings.smtp.host, port=self.settings.smtp.port
        )
        log.info(
            "app.started",
            smtp_port=self.port,
            relay="maildir" if not self.settings.relay.host else "smtp",
            rules=len(self.charter.rules),
        )

    async def stop(self) -> None:
        """Stop accepting, finish transactions in flight, then stop delivering."""
        self.handler.accepting = False
        if self.server is not None:
            self.server.close()
        finished = await self.handler.wait_idle(self.settings.smtp.shutdown_grace)
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
