"""The real relay, through aiosmtplib, with a small pool of reused connections."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from apiguard.config import RelaySettings
from apiguard.relay.base import (
    Content,
    RelayReply,
    SendResult,
    SpooledContent,
    connection_trouble,
)


def _tls_context(settings: RelaySettings) -> ssl.SSLContext | None:
    if settings.security == "none":
        return None
    context = ssl.create_default_context(cafile=settings.ca_file or None)
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


SMTPUTF8_UNSUPPORTED = RelayReply(
    553, "5.6.7 adresse internationale refusee par le relais / relay lacks SMTPUTF8"
)


def wire_form(data: bytes) -> bytes:
    """`data` as DATA sends it: CRLF line ends only (a bare CR or LF would let
    the relay see a different end of data: SMTP smuggling), the transparent dot
    added to each line that starts with one, a final CRLF and the lone dot."""
    return wire_body(data) + END_OF_DATA


END_OF_DATA = b".\r\n"


def wire_body(data: bytes) -> bytes:
    """`wire_form` without the final lone dot (a 10 MB message is not copied
    once more to add three bytes); `data` itself when it needs no change."""
    encoder = WireEncoder()
    body = encoder.feed(data)
    end = encoder.finish()
    return body + end if end else body


class WireEncoder:
    """`wire_body` fed in pieces (a spool file read 256 KiB at a time): the
    concatenated output is `wire_body` of the concatenated input. A CR at the
    end of a piece waits for the next one (it may start a CRLF), and whether a
    piece starts a line is carried over for the dot-stuffing."""

    def __init__(self) -> None:
        self._held = b""
        self._line_start = True
        self._emitted = False
        self._ended_line = True

    def feed(self, piece: bytes) -> bytes:
        data = self._held + piece
        cut = len(data) - 1 if data.endswith(b"\r") else len(data)
        self._held = data[cut:]
        return self._encode(data[:cut])

    def finish(self) -> bytes:
        """The rest, and the final CRLF when the content does not end a line."""
        data, self._held = self._held, b""
        out = self._encode(data)
        if self._emitted and not self._ended_line:
            out += b"\r\n"
        return out

    def _encode(self, data: bytes) -> bytes:
        if not data:
            return b""
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            data = _LINE_ENDS.sub(b"\r\n", data)
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        self._ended_line = self._line_start = data.endswith(b"\r\n")
        self._emitted = True
        return data


OFF_LOOP_SIZE = 1024 * 1024
STREAM_PIECE = 256 * 1024
# The most a streamed message may have waiting in the relay connection's buffer.
STREAM_BUFFER = 1024 * 1024


def _path(address: str, encoding: str) -> bytes:
    """An SMTP path: `<address>`, `<>` for the null sender of a notice."""
    return b"<" + address.strip().strip("<>").encode(encoding) + b">"


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def _file_is_ascii(path: Path) -> bool:
    with path.open("rb") as handle:
        while piece := handle.read(STREAM_PIECE * 4):
            if not piece.isascii():
                return False
    return True


async def _stream(protocol: SMTPProtocol, content: SpooledContent) -> None:
    """Send a spooled content in wire form, piece by piece as the connection
    drains: a 10 MB message holds neither 10 MB of memory nor the event loop."""
    encoder = WireEncoder()
    transport = protocol.transport
    assert isinstance(transport, asyncio.WriteTransport)
    with content.path.open("rb") as handle:
        while piece := await asyncio.to_thread(handle.read, STREAM_PIECE):
            protocol.write(encoder.feed(piece))
            while transport.get_write_buffer_size() > STREAM_BUFFER:
                if transport.is_closing():
                    raise aiosmtplib.SMTPServerDisconnected("connection lost while sending")
                await asyncio.sleep(0.002)
    protocol.write(encoder.finish())


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

    async def send(self, mail_from: str, recipients: list[str], data: Content) -> SendResult:
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
        self, client: aiosmtplib.SMTP, mail_from: str, recipients: list[str], data: Content
    ) -> SendResult:
        """MAIL, RCPT for each recipient, DATA. Not aiosmtplib's `sendmail`: it
        normalises the line ends of the whole message twice and scans it for
        dots once more; `wire_form` does it with a few `bytes` passes."""
        if client.is_ehlo_or_helo_needed:
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        utf8 = not all(a.isascii() for a in (mail_from, *recipients))
        if utf8 and not client.supports_extension("smtputf8"):
            return self._all(recipients, SMTPUTF8_UNSUPPORTED)
        if isinstance(data, SpooledContent):
            wire: bytes | None = None
            size, ascii_only = data.size, await asyncio.to_thread(_file_is_ascii, data.path)
        else:
            # A big message's passes take tens of milliseconds: not on the loop.
            wire = (
                wire_body(data)
                if len(data) < OFF_LOOP_SIZE
                else await asyncio.to_thread(wire_body, data)
            )
            size, ascii_only = len(wire), data.isascii()
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={size}")  # a spooled content's is an estimate (RFC 1870)
        if not ascii_only and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if utf8:
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            # The addresses were parsed by our SMTP server already: they go as
            # paths without aiosmtplib's second RFC 5322 parse (its command
            # check still refuses any CR or LF in them).
            sent = await client.execute_command(
                b"MAIL", b"FROM:" + _path(mail_from, encoding), *(o.encode() for o in options)
            )
            if sent.code != 250:
                raise aiosmtplib.SMTPSenderRefused(sent.code, sent.message, mail_from)
            replies: dict[str, RelayReply] = {}
            for rcpt in recipients:
                answer = await client.execute_command(b"RCPT", b"TO:" + _path(rcpt, encoding))
                if answer.code == 421:
                    raise aiosmtplib.SMTPServerDisconnected(answer.message)
                if answer.code not in (250, 251):
                    replies[rcpt] = RelayReply(answer.code, answer.message)
            if len(replies) == len(recipients):
                await self._reset(client)
                return SendResult(replies)
            start = await client.execute_command(b"DATA")
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            assert client.protocol is not None
            if wire is None:
                assert isinstance(data, SpooledContent)
                await _stream(client.protocol, data)
                client.protocol.write(END_OF_DATA)
            elif len(wire) < OFF_LOOP_SIZE:
                client.protocol.write(wire + END_OF_DATA)  # one send, not two
            else:
                client.protocol.write(wire)  # not copied once more for three bytes
                client.protocol.write(END_OF_DATA)
            done = await client.protocol.read_response(timeout=client.timeout)
            if done.code != 250:
                raise aiosmtplib.SMTPDataError(done.code, done.message)
        except aiosmtplib.SMTPResponseException as error:
            if error.code == 421:
                raise aiosmtplib.SMTPServerDisconnected(error.message) from error
            await self._reset(client)
            return self._all(recipients, RelayReply(error.code, error.message))
        accepted = RelayReply(250, "2.0.0 accepted")
        return SendResult({r: replies.get(r, accepted) for r in recipients})

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
