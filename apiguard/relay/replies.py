"""Pipelined relay transactions (RFC 2920): MAIL, every RCPT and DATA go in one
write, and their replies are read in order.

aiosmtplib opens the connection (greeting, EHLO, STARTTLS, AUTH) and keeps it
between messages, but its protocol expects exactly one reply per command it
writes and drops any other. For one transaction, `ReplyReader` takes the
connection's transport over (`set_protocol`), reads every reply, and gives the
transport back. The connection's loss and its flow control still reach
aiosmtplib's protocol, so the pooled client knows when it is gone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

# A reply longer than this is not SMTP (RFC 5321 4.5.3.1.5: 512 per line).
MAX_REPLY = 64 * 1024


class ReplyReader(asyncio.Protocol):
    """Reads SMTP replies, several per write, from a borrowed transport."""

    def __init__(self, previous: SMTPProtocol, transport: asyncio.Transport) -> None:
        self._previous = previous
        self._transport = transport
        self._buffer = bytearray()
        self._replies: deque[SMTPResponse] = deque()
        # Set once the connection cannot go on: lost, closed, or not speaking SMTP.
        self._error: aiosmtplib.SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    def install(cls, protocol: SMTPProtocol) -> ReplyReader:
        transport = protocol.transport
        # Not `isinstance(transport, asyncio.Transport)`: uvloop's is no subclass.
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        reader = cls(protocol, cast(asyncio.Transport, transport))
        transport.set_protocol(reader)
        return reader

    def uninstall(self) -> bool:
        """Give the transport back to aiosmtplib. False when the connection must
        not be reused: lost, or with replies nobody asked for."""
        if self._transport.get_protocol() is self:
            self._transport.set_protocol(self._previous)
        return self._error is None and not self._buffer and not self._replies

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        self._transport.write(data)

    def answered(self) -> bool:
        """A reply (or the connection's end) is waiting to be read."""
        return bool(self._replies) or self._error is not None

    async def reply(self, timeout: float | None) -> SMTPResponse:
        while not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError as error:
                raise aiosmtplib.SMTPReadTimeoutError("no reply from the relay") from error
            finally:
                self._waiter = None
        return self._replies.popleft()

    # -- asyncio.Protocol ---------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
        except ValueError:
            self._fail(aiosmtplib.SMTPResponseException(-1, "malformed reply from the relay"))
            self._transport.close()
            return
        if len(self._buffer) > MAX_REPLY:
            self._fail(aiosmtplib.SMTPResponseException(-1, "reply too long from the relay"))
            self._transport.close()
            return
        self._wake()

    def _parse(self) -> SMTPResponse | None:
        """One whole reply off the front of the buffer (its lines joined as
        aiosmtplib joins them), or None while it is incomplete."""
        lines: list[str] = []
        offset = 0
        while (end := self._buffer.find(b"\n", offset)) != -1:
            line = bytes(self._buffer[offset : end + 1])
            offset = end + 1
            if (
                not line[:3].isdigit()
                or line[:1] not in b"2345"
                or line[3:4] not in (b" ", b"-", b"\r", b"\n")
            ):
                raise ValueError("malformed reply")
            lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return SMTPResponse(int(line[:3]), "\n".join(lines))
        return None

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("the relay closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("connection lost"))
        self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._previous.pause_writing()

    def resume_writing(self) -> None:
        self._previous.resume_writing()

    def _fail(self, error: aiosmtplib.SMTPException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
