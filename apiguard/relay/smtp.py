"""The real relay, through aiosmtplib, with a small pool of reused connections."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import aiosmtplib

from apiguard.config import ConfigError, RelaySettings
from apiguard.relay.base import (
    Content,
    RelayReply,
    SendResult,
    SpooledContent,
    connection_trouble,
)
from apiguard.relay.eightbit import seven_bit
from apiguard.relay.replies import ReplyReader
from apiguard.relay.trouble import BAD_CONNECTION, LostAfterData, trouble
from apiguard.smtp.data import transparent_dots


def _tls_context(settings: RelaySettings) -> ssl.SSLContext | None:
    """The relay's TLS context: the system's trusted CAs, plus `ca_file`'s
    (a private CA beside the public ones), or only `ca_file`'s with
    `ca_replace_system`. ConfigError naming the key and the file."""
    if settings.security == "none":
        return None
    if settings.ca_replace_system and settings.ca_file:
        # create_default_context's verification, without the system's CAs.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        context = ssl.create_default_context()
    if settings.ca_file:
        _load_ca_file(context, settings.ca_file)
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_ca_file(context: ssl.SSLContext, ca_file: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except FileNotFoundError:
        raise ConfigError(f"relay.ca_file: {ca_file}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"relay.ca_file: {ca_file}: is a directory") from None
    except ssl.SSLError as error:
        reason = error.reason or "no PEM certificate"
        raise ConfigError(f"relay.ca_file: {ca_file}: not a CA bundle ({reason})") from None
    except OSError as error:
        raise ConfigError(f"relay.ca_file: {ca_file}: cannot read ({error.strerror})") from None


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
        if not _only_crlf(data):
            data = _LINE_ENDS.sub(b"\r\n", data)
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        data = transparent_dots(data, add=True)
        self._ended_line = self._line_start = data.endswith(b"\r\n")
        self._emitted = True
        return data


def _only_crlf(data: bytes) -> bool:
    """Every CR and LF of `data` is in a CRLF (mail usually is): with one-byte
    counts and a split, quicker than counting a two-byte pattern. As many CRs
    as LFs, and as many line breaks (CRLF, CR, LF each one) as LFs: no bare one."""
    lf = data.count(b"\n")
    if data.count(b"\r") != lf or data.endswith(b"\r"):
        return False
    unended = bool(data) and not data.endswith(b"\n")  # a last line without a line end
    return len(data.splitlines()) == lf + unended


OFF_LOOP_SIZE = 1024 * 1024
STREAM_PIECE = 256 * 1024
# The most a streamed message may have waiting in the relay connection's buffer.
STREAM_BUFFER = 1024 * 1024


def _path(address: str, encoding: str) -> bytes:
    """An SMTP path: `<address>`, `<>` for the null sender of a notice."""
    return b"<" + address.strip().strip("<>").encode(encoding) + b">"


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
# No command may carry a line end of its own (command injection).
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
BAD_ADDRESS = RelayReply(
    553, "5.1.3 adresse invalide (caractere de controle) / address with a control character"
)


def _file_is_ascii(path: Path) -> bool:
    with path.open("rb") as handle:
        while piece := handle.read(STREAM_PIECE * 4):
            if not piece.isascii():
                return False
    return True


async def _without_8bit(data: Content) -> Content:
    """For a relay without 8BITMIME (RFC 6152): the content with its 8-bit
    parts encoded (`apiguard.relay.eightbit`); 7-bit content as it is."""
    if isinstance(data, SpooledContent):
        if await asyncio.to_thread(_file_is_ascii, data.path):
            return data
        return await asyncio.to_thread(lambda: seven_bit(data.read()))
    if data.isascii():
        return data
    return (
        seven_bit(data) if len(data) < OFF_LOOP_SIZE else await asyncio.to_thread(seven_bit, data)
    )


async def _stream(
    write: Callable[[bytes], None],
    transport: Any,
    content: SpooledContent,
    timeout: float | None,
    answered: Callable[[], bool],
) -> bool:
    """Send a spooled content in wire form, piece by piece as the connection
    drains: a 10 MB message holds neither 10 MB of memory nor the event loop.
    False when the relay answered before the end (a refusal mid-stream): the
    rest is not sent. A relay that stops reading for `timeout` seconds is a
    timeout, as a silent reply is."""
    encoder = WireEncoder()
    loop = asyncio.get_running_loop()
    with content.path.open("rb") as handle:
        while piece := await asyncio.to_thread(handle.read, STREAM_PIECE):
            if answered():
                return False
            write(encoder.feed(piece))
            waiting = transport.get_write_buffer_size()
            since = loop.time()
            while waiting > STREAM_BUFFER:
                if answered():  # a refusal, perhaps followed by the close
                    return False
                if transport.is_closing():
                    raise aiosmtplib.SMTPServerDisconnected("connection lost while sending")
                await asyncio.sleep(0.002)
                now, left = loop.time(), transport.get_write_buffer_size()
                if left < waiting:
                    waiting, since = left, now
                elif timeout is not None and now - since > timeout:
                    raise aiosmtplib.SMTPTimeoutError("the relay stopped reading the message")
    if answered():
        return False
    write(encoder.finish())
    return True


async def _send_body(
    write: Callable[[bytes], None],
    transport: Any,
    wire: bytes | None,
    data: Content,
    timeout: float | None,
    answered: Callable[[], bool] = lambda: False,
) -> bool:
    """The content in wire form and the end of data, after the 354; False
    when the relay answered before the end (see `_stream`)."""
    if wire is None:
        assert isinstance(data, SpooledContent)
        if not await _stream(write, transport, data, timeout, answered):
            return False
        write(END_OF_DATA)
    elif len(wire) < OFF_LOOP_SIZE:
        write(wire + END_OF_DATA)  # one send, not two
    else:
        write(wire)  # not copied once more for three bytes
        write(END_OF_DATA)
    return True


# A refusal: temporary (4xx) or permanent (5xx).
REFUSAL = range(400, 600)


def _expect(reply: Any, accepted: Container[int]) -> None:
    """A reply other than `accepted` must be a refusal (4xx, 5xx): anything
    else (another 2xx, a 3xx) means the replies are out of step, and must never
    pass for a success."""
    if reply.code in accepted:
        return
    raise aiosmtplib.SMTPResponseException(reply.code, reply.message)


def _recipient_refusal(answer: Any) -> RelayReply | None:
    """A RCPT reply: None when the recipient is accepted, its refusal otherwise."""
    if answer.code in (250, 251):
        return None
    _expect(answer, REFUSAL)
    return RelayReply(answer.code, answer.message)


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
                    return self._all(recipients, trouble(error))
                try:
                    result = await self._transaction(client, mail_from, recipients, data)
                except aiosmtplib.SMTPServerDisconnected as error:
                    # A pooled connection the relay had closed: retry once on a
                    # fresh one, unless the content was sent whole already.
                    self._drop(client)
                    if attempt == 0 and not isinstance(error, LostAfterData):
                        continue
                    return self._all(recipients, trouble(error))
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                    self._drop(client)
                    return self._all(recipients, trouble(error))
                except ValueError:
                    # An address no SMTP command can carry: it never will.
                    self._release(client)
                    return self._all(recipients, BAD_ADDRESS)
                except BaseException:
                    self._drop(client)  # cancelled mid-transaction: never reused
                    raise
                self._release(client)
                return result
        return self._all(recipients, connection_trouble("no connection"))  # pragma: no cover

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
            # Only the internationalised recipients cannot be reached (RFC
            # 6531 3.5); the others go, unless the sender's address is one.
            plain = [r for r in recipients if r.isascii()]
            if not mail_from.isascii() or not plain:
                return self._all(recipients, SMTPUTF8_UNSUPPORTED)
            sent = await self._transaction(client, mail_from, plain, data)
            refused = {r: SMTPUTF8_UNSUPPORTED for r in recipients if not r.isascii()}
            return SendResult({**sent.replies, **refused})
        if not client.supports_extension("8bitmime"):
            data = await _without_8bit(data)
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
        # The addresses were parsed by our SMTP server already: they go as
        # paths without aiosmtplib's second RFC 5322 parse.
        mail = (
            b"MAIL FROM:"
            + _path(mail_from, encoding)
            + b"".join(b" " + o.encode() for o in options)
        )
        rcpts = [b"RCPT TO:" + _path(rcpt, encoding) for rcpt in recipients]
        if any(_CONTROL.search(command) for command in (mail, *rcpts)):
            raise ValueError("a path contains a control character")
        try:
            if client.supports_extension("pipelining"):
                replies = await self._pipelined(client, mail, rcpts, recipients, wire, data)
            else:
                replies = await self._one_by_one(client, mail, rcpts, recipients, wire, data)
        except aiosmtplib.SMTPResponseException as error:
            if error.code == 421:
                raise aiosmtplib.SMTPServerDisconnected(error.message) from error
            if not 400 <= error.code <= 599:
                # Not SMTP, or replies out of step: this connection is not
                # trusted again, and the message is tried again later.
                client.close()
                reason = f"unexpected reply from the relay: {error.code} {error.message}"
                return self._all(recipients, connection_trouble(reason, status=BAD_CONNECTION))
            await self._reset(client)
            return self._all(recipients, RelayReply(error.code, error.message))
        refused, accepted = replies
        if accepted is None:
            await self._reset(client)
            return SendResult(refused)
        # The relay's own words (`250 2.0.0 Ok: queued as 0C1F322415F`): its
        # queue id traces the message into the relay's log.
        return SendResult({r: refused.get(r, accepted) for r in recipients})

    @staticmethod
    async def _one_by_one(
        client: aiosmtplib.SMTP,
        mail: bytes,
        rcpts: list[bytes],
        recipients: list[str],
        wire: bytes | None,
        data: Content,
    ) -> tuple[dict[str, RelayReply], RelayReply | None]:
        """A relay without PIPELINING: each command waits for its reply. The
        refused recipients' replies (all of them when none was accepted: then
        no DATA was sent, and no acceptance) and the relay's acceptance of the
        content. Raises `SMTPResponseException` for a refused MAIL, DATA or
        content."""
        _expect(await client.execute_command(mail), {250})
        replies: dict[str, RelayReply] = {}
        for rcpt, command in zip(recipients, rcpts, strict=True):
            answer = await client.execute_command(command)
            if answer.code == 421:
                raise aiosmtplib.SMTPServerDisconnected(answer.message)
            if (refusal := _recipient_refusal(answer)) is not None:
                replies[rcpt] = refusal
        if len(replies) == len(recipients):
            return replies, None
        _expect(await client.execute_command(b"DATA"), {354})
        protocol = client.protocol
        assert protocol is not None
        await _send_body(protocol.write, protocol.transport, wire, data, client.timeout)
        try:
            done = await protocol.read_response(timeout=client.timeout)
        except aiosmtplib.SMTPServerDisconnected as error:
            raise LostAfterData(str(error)) from error
        _expect(done, {250})
        return replies, RelayReply(done.code, done.message)

    @staticmethod
    async def _pipelined(
        client: aiosmtplib.SMTP,
        mail: bytes,
        rcpts: list[bytes],
        recipients: list[str],
        wire: bytes | None,
        data: Content,
    ) -> tuple[dict[str, RelayReply], RelayReply | None]:
        """`_one_by_one` with PIPELINING (RFC 2920): MAIL, the RCPTs and DATA in
        one write, then their replies in order; the content after the 354."""
        assert client.protocol is not None
        reader = ReplyReader.install(client.protocol)
        in_step = False  # every reply read and nothing half-sent: reusable
        try:
            reader.write(b"\r\n".join((mail, *rcpts, b"DATA")) + b"\r\n")
            sent = await reader.reply(client.timeout)
            answers = [await reader.reply(client.timeout) for _ in rcpts]
            start = await reader.reply(client.timeout)
            if 421 in (sent.code, start.code, *(a.code for a in answers)):
                raise aiosmtplib.SMTPServerDisconnected("the relay is closing the connection")
            refused = sent.code != 250 or not any(a.code in (250, 251) for a in answers)
            if refused and start.code == 354:
                # DATA was accepted for nothing: end it empty (RFC 2920 3.1).
                reader.write(END_OF_DATA)
                await reader.reply(client.timeout)
            in_step = True
            _expect(sent, {250})
            replies: dict[str, RelayReply] = {}
            for rcpt, answer in zip(recipients, answers, strict=True):
                if (refusal := _recipient_refusal(answer)) is not None:
                    replies[rcpt] = refusal
            if refused:
                return replies, None
            _expect(start, {354})
            in_step = False
            whole = await _send_body(
                reader.write, client.protocol.transport, wire, data, client.timeout, reader.answered
            )
            try:
                done = await reader.reply(client.timeout)
            except aiosmtplib.SMTPServerDisconnected as error:
                if whole:
                    raise LostAfterData(str(error)) from error
                raise
            in_step = whole
            # Answered in the middle, it can only be a refusal (it stands, and
            # the connection goes).
            _expect(done, {250} if whole else REFUSAL)
            if not whole:
                raise aiosmtplib.SMTPDataError(done.code, done.message)
            return replies, RelayReply(done.code, done.message)
        finally:
            clean = reader.uninstall()
            if not (clean and in_step):
                client.close()

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
