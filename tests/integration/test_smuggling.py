"""SMTP smuggling: an end-of-data written with bare LF or CR must never end a
message, neither at apiguard's door (aiosmtpd 1.4.6 ends DATA only on
<CRLF>.<CRLF>) nor at a lenient relay behind it (the message is sent on with
CRLF line ends and dot-stuffing, so a smuggled dot can no longer end it)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.support import Sink, eventually, letter, proxy_settings, running_proxy

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
VICTIM = "dr.petit@medical75.apicrypt.org"

SMUGGLED_COMMANDS = (
    f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{VICTIM}>\r\nDATA\r\n"
    "From: someone-else@medical75.apicrypt.org\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
).encode()

# The false end-of-data sequences seen in SMTP smuggling attacks.
FALSE_ENDS = {
    "bare LF dot bare LF": b"\n.\n",
    "bare LF dot CRLF": b"\n.\r\n",
    "CRLF dot bare LF": b"\r\n.\n",
    "bare CR dot bare CR": b"\r.\r",
    "bare CR dot CRLF": b"\r.\r\n",
    "CRLF dot bare CR": b"\r\n.\r",
}


def attack(false_end: bytes) -> bytes:
    """A letter with a false end-of-data and a second transaction behind it."""
    anchor = b"Bien confraternellement."
    return letter(1).replace(anchor, b"Voici." + false_end + SMUGGLED_COMMANDS + anchor)


async def raw_session(port: int, payload: bytes) -> list[bytes]:
    """Speak SMTP by hand (a client library would normalise the line ends)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [await reader.readline()]
    writer.write(f"EHLO attacker\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{COLLEAGUE}>\r\n".encode())
    writer.write(b"DATA\r\n")
    await writer.drain()
    while not lines[-1].startswith(b"354"):
        lines.append(await asyncio.wait_for(reader.readline(), 5))
    writer.write(payload + b"\r\n.\r\nQUIT\r\n")
    await writer.drain()
    while line := await asyncio.wait_for(reader.readline(), 10):
        lines.append(line)
    writer.close()
    return lines


@pytest.mark.parametrize("name", sorted(FALSE_ENDS))
async def test_a_false_end_of_data_never_makes_a_second_message(
    sink: Sink, storage: Path, name: str
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        lines = await raw_session(app.port, attack(FALSE_ENDS[name]))
        await eventually(lambda: len(sink.handler.messages) == 1)
        await asyncio.sleep(0.3)
    after_data = lines[lines.index(next(x for x in lines if x.startswith(b"354"))) + 1 :]
    # One reply to the one end-of-data, then the reply to QUIT: no 250 for a smuggled MAIL.
    assert [line[:3] for line in after_data] == [b"250", b"221"]
    assert len(sink.handler.messages) == 1
    received = sink.handler.messages[0]
    assert received.rcpt_tos == [COLLEAGUE]
    assert b"smuggled body" in received.data  # it stayed inside the first message


class LenientRelay:
    """A relay that (like vulnerable servers) ends DATA on a dot between any line
    ends, and then reads what follows as commands: what a smuggler hopes for."""

    END = re.compile(rb"(?:\r\n|\n|\r)\.(?:\r\n|\n|\r)")

    def __init__(self) -> None:
        self.messages: list[tuple[list[bytes], bytes]] = []
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 lenient.test ESMTP\r\n")
        envelope: list[bytes] = []
        buffer = b""
        in_data = False
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            while True:
                if in_data:
                    match = self.END.search(b"\r\n" + buffer)
                    if match is None:
                        break
                    self.messages.append((envelope, (b"\r\n" + buffer)[2 : match.start()]))
                    buffer = (b"\r\n" + buffer)[match.end() :]
                    envelope, in_data = [], False
                    writer.write(b"250 2.0.0 stored\r\n")
                    continue
                line, sep, rest = buffer.partition(b"\n")
                if not sep:
                    break
                buffer = rest
                verb = line.strip().upper()[:4]
                if verb == b"EHLO":
                    writer.write(b"250-lenient.test\r\n250 8BITMIME\r\n")
                elif verb in (b"MAIL", b"RCPT"):
                    envelope.append(line.strip())
                    writer.write(b"250 OK\r\n")
                elif verb == b"DATA":
                    in_data = True
                    writer.write(b"354 go\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(b"250 OK\r\n")
            await writer.drain()
        writer.close()


@pytest.mark.parametrize("name", sorted(FALSE_ENDS))
async def test_a_lenient_relay_behind_apiguard_still_sees_one_message(
    storage: Path, name: str
) -> None:
    relay = LenientRelay()
    await relay.start()
    try:
        async with running_proxy(proxy_settings(storage, relay.port)) as app:
            await raw_session(app.port, attack(FALSE_ENDS[name]))
            await eventually(lambda: len(relay.messages) >= 1)
            await asyncio.sleep(0.3)
    finally:
        await relay.stop()
    assert len(relay.messages) == 1
    envelope, data = relay.messages[0]
    assert [command.split(b">")[0] + b">" for command in envelope] == [
        f"MAIL FROM:<{SENDER}>".encode(),
        f"RCPT TO:<{COLLEAGUE}>".encode(),
    ]
    assert b"smuggled body" in data
    # What reached the relay has CRLF line ends only: no bare CR or LF left to abuse.
    assert b"\r\n" in data and data.count(b"\n") == data.count(b"\r\n")
    assert data.count(b"\r") == data.count(b"\r\n")
