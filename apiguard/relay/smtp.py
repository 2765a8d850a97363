"""The real relay, through aiosmtplib, with a small pool of reused connections."""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib

from apiguard.config import RelaySettings
from apiguard.relay.base import RelayReply, SendResult, connection_trouble


def _tls_context(settings: RelaySettings) -> ssl.SSLContext | None:
    if settings.security == "none":
        return None
    context = ssl.create_default_context(cafile=settings.ca_file or None)
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpRelay:
    """Sends through the configured relay; connections are kept and reused."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.connections)
        self._tls = _tls_context(settings)

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username or None,
            password=s.password or None,
            local_hostname=s.helo_name,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=self._tls,
        )

    async def _acquire(self) -> aiosmtplib.SMTP:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
        client = self._client()
        await client.connect()
        return client

    def _release(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.append(client)

    @staticmethod
    def _drop(client: aiosmtplib.SMTP) -> None:
        client.close()

    async def send(self, mail_from: str, recipients: list[str], data: bytes) -> SendResult:
        async with self._slots:
            for attempt in range(2):
                try:
                    client = await self._acquire()
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                    return self._all(recipients, connection_trouble(type(error).__name__))
                try:
                    result = await self._transaction(client, mail_from, recipients, data)
                except aiosmtplib.SMTPServerDisconnected:
                    # A pooled connection the relay had closed: retry once on a fresh one.
                    self._drop(client)
                    if attempt == 0:
                        continue
                    return self._all(recipients, connection_trouble("disconnected"))
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                    self._drop(client)
                    return self._all(recipients, connection_trouble(type(error).__name__))
                self._release(client)
                return result
        return self._all(recipients, connection_trouble("unavailable"))  # pragma: no cover

    async def _transaction(
        self, client: aiosmtplib.SMTP, mail_from: str, recipients: list[str], data: bytes
    ) -> SendResult:
        try:
            refused, _ = await client.sendmail(mail_from, recipients, data)
        except aiosmtplib.SMTPRecipientsRefused as error:
            await self._reset(client)
            return SendResult(
                {r.recipient: RelayReply(r.code, r.message) for r in error.recipients}
            )
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as error:
            await self._reset(client)
            return self._all(recipients, RelayReply(error.code, error.message))
        except aiosmtplib.SMTPResponseException as error:
            if error.code in (421,):
                raise aiosmtplib.SMTPServerDisconnected(error.message) from error
            await self._reset(client)
            return self._all(recipients, RelayReply(error.code, error.message))
        replies = {r: RelayReply(250, "2.0.0 accepted") for r in recipients}
        for rcpt, response in refused.items():
            replies[rcpt] = RelayReply(response.code, response.message)
        return SendResult(replies)

    @staticmethod
    async def _reset(client: aiosmtplib.SMTP) -> None:
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()

    @staticmethod
    def _all(recipients: list[str], reply: RelayReply) -> SendResult:
        return SendResult({r: reply for r in recipients})

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            try:
                await asyncio.wait_for(client.quit(), timeout=2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
