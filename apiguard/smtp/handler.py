"""A thin aiosmtpd handler: it asks the pipeline and returns reply strings.

Not aiosmtpd's `Proxy` handler, which answers 250 even when the relay refuses:
here a 250 means the message is durably stored.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from apiguard.mail import Envelope
from apiguard.pipeline import Pipeline
from apiguard.smtp import replies

log = structlog.get_logger("apiguard.smtp")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def peer_allowed(peer: Any, networks: tuple[IPNetwork, ...]) -> bool:
    """Is the client's address inside one of the allowed networks?"""
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class GuardedSMTP(SMTP):
    """aiosmtpd's SMTP protocol, refusing clients outside the allowed networks
    with a 554 greeting before anything else is said."""

    def __init__(self, handler: Any, *, networks: tuple[IPNetwork, ...], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._networks = networks
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if not peer_allowed(peer, self._networks):
            self._refused = True
            log.warning("smtp.client_refused", reason="network")
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(f"{replies.CLIENT_REFUSED}\r\n".encode("ascii"))
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        result: bool | None = super().eof_received()
        return result


class ApiguardHandler:
    """aiosmtpd hooks → pipeline. Tracks transactions in flight for a clean stop."""

    def __init__(self, pipeline: Pipeline, *, max_recipients: int) -> None:
        self.pipeline = pipeline
        self.max_recipients = max_recipients
        self.in_flight = 0
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not self.accepting:
            return str(replies.SHUTTING_DOWN)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        refusal = self.pipeline.check_recipient(
            envelope.mail_from or "", address, list(envelope.rcpt_tos)
        )
        if refusal is not None:
            return str(refusal)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        if not self.accepting:
            return str(replies.SHUTTING_DOWN)
        self.in_flight += 1
        self._idle.clear()
        try:
            raw = envelope.original_content or envelope.content or b""
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogateescape")
            peer = session.peer[0] if isinstance(session.peer, tuple) else ""
            reply = await self.pipeline.receive(
                Envelope(envelope.mail_from or "", tuple(envelope.rcpt_tos)),
                raw,
                peer=str(peer),
                helo=str(session.host_name or ""),
            )
            return str(reply)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no transaction is being processed (True) or the timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
