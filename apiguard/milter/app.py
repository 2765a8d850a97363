"""`apiguard milter`: the proxy's parts (charter, analysis workers, store,
volume counts, quarantine, review page, notices) behind a milter listener
instead of an SMTP port.

Postfix keeps queueing and delivering forwarded mail; apiguard's delivery
worker only hands back to Postfix (`milter.reinject`) what apiguard itself
sends: released held letters and notices, each signed with a single-use
mark (`apiguard.milter.marks`) so that the milter lets it pass.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, cast

import structlog

from apiguard import metrics
from apiguard.app import Application
from apiguard.config import Settings
from apiguard.delivery import DeliveryWorker
from apiguard.milter.marks import Marker, load_key, marked, split_body
from apiguard.milter.server import MilterServer, parse_socket
from apiguard.milter.session import MilterSession
from apiguard.ops import Probes, start_ops
from apiguard.pipeline import Pipeline
from apiguard.relay.base import Content, Relay, SendResult, SpooledContent
from apiguard.relay.smtp import SmtpRelay

if TYPE_CHECKING:
    from apiguard.smtp.listeners import SmtpListeners

log = structlog.get_logger("apiguard.milter")


class MarkingRelay:
    """Hands mail back to the MTA, each message signed with a fresh mark."""

    def __init__(self, inner: Relay, marker: Marker) -> None:
        self.inner = inner
        self.marker = marker

    async def send(self, mail_from: str, recipients: list[str], data: Content) -> SendResult:
        raw = await asyncio.to_thread(data.read) if isinstance(data, SpooledContent) else data
        mark = self.marker.mark(mail_from, recipients, split_body(raw))
        return await self.inner.send(mail_from, recipients, marked(raw, mark))

    async def close(self) -> None:
        await self.inner.close()


def mark_key_path(settings_path: str, storage: Path) -> Path:
    return Path(settings_path) if settings_path else storage / "milter.key"


class MilterApplication(Application):
    """The running milter: listener, pipeline, store, reinjection worker,
    quarantine expiry and (when enabled) the review page."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        milter = settings.milter
        self.marker = Marker(
            load_key(mark_key_path(milter.mark_key_file, settings.storage.path)),
            max_age=milter.mark_max_age,
        )
        _, host, port = parse_socket(milter.reinject)
        reinject = settings.relay.model_copy(
            update={"host": host, "port": port, "security": "none", "username": "", "password": ""}
        )
        self.relay = MarkingRelay(SmtpRelay(reinject), self.marker)
        self.delivery = DeliveryWorker(
            self.store,
            self.relay,
            settings.delivery,
            self.identity,
            concurrency=settings.relay.connections,
        )
        self.pipeline = Pipeline(
            self.charter,
            self.store,
            settings,
            on_queued=self.delivery.wake,
            volume=self.volume,
            analyser=self.analyser,
            spool_forwarded=False,
        )
        self.milter = MilterServer(milter.socket, self._session, timeout=milter.timeout)

    def _session(self) -> MilterSession:
        return MilterSession(
            self.pipeline, self.marker, max_message_size=self.settings.milter.max_message_size
        )

    @property
    def port(self) -> int:
        return self.milter.port

    async def _listen(self) -> None:
        """Bind the milter socket (and the operations port) before anything runs."""
        metrics.initialise(rule.id for rule in self.charter.all_rules)
        try:
            await self.milter.start()
            if self.settings.ops.enabled:
                # /readyz's "smtp" is the milter listener here.
                listener = cast("SmtpListeners", self.milter)
                probes = Probes(
                    self.store,
                    self.delivery,
                    self.pipeline,
                    listener,
                    self.settings.storage.path,
                    self.settings.delivery.poll_interval,
                )
                self.ops = await start_ops(self.settings.ops, probes.ready, probes.refresh)
        except BaseException:
            self.milter.close()
            await self.store.close()
            raise
        log.info("milter.listening", socket=self.settings.milter.socket, port=self.milter.port)

    async def stop(self) -> None:
        """Stop listening, let messages being judged finish, then stop the rest."""
        clean = await self.milter.stop(self.settings.smtp.shutdown_grace)
        if not clean:
            log.warning("milter.stopped_mid_message")
        await super().stop()
