"""What clients really send, through real sockets: bare LF line ends, dots at
line starts, over-long header lines, EHLO's extensions and enhanced status
codes on every reply, internationalised addresses (SMTPUTF8)."""

from __future__ import annotations

import asyncio
import email
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support import Sink, SinkHandler, eventually, letter, proxy_settings, running_proxy

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
INTERNATIONAL = "dr.hélène.durand@medical69.apicrypt.org"


class RawClient:
    """SMTP by hand: a client library would normalise the line ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        await client.reply()  # the greeting
        return client

    async def reply(self) -> list[str]:
        """One reply, all its lines."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            lines.append(line.decode("utf-8").rstrip("\r\n"))
            if line[3:4] != b"-":
                return lines

    async def command(self, line: str) -> list[str]:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        return await self.reply()

    async def send(self, mail_from: str, rcpt: str, payload: bytes) -> str:
        """A whole transaction; `payload` is sent as it is (dots stuffed after
        CRLFs only), then the end of data."""
        await self.command("EHLO client.test")
        await self.command(f"MAIL FROM:<{mail_from}>")
        await self.command(f"RCPT TO:<{rcpt}>")
        assert (await self.command("DATA"))[0].startswith("354")
        stuffed = payload.replace(b"\r\n.", b"\r\n..")  # transparency, CRLF lines
        end = b".\r\n" if payload.endswith(b"\r\n") else b"\r\n.\r\n"
        self.writer.write(stuffed + end)
        return (await self.reply())[0]

    async def close(self) -> None:
        await self.command("QUIT")
        self.writer.close()


def lf_only(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


async def test_a_bare_lf_letter_over_1000_octets_is_relayed_as_a_crlf_client_sends_it(
    sink: Sink, storage: Path
) -> None:
    """Issue 19 items 1 and 2: the LF-only letter was one 1000+ octet line, and
    its HPRIM lines starting with a dot gained a second one."""
    crlf = letter(1).replace(b"Cher confr", b"Suite du compte rendu.\r\n" * 40 + b"Cher confr")
    stuffed = lf_only(crlf).replace(b"\n.", b"\n..")  # a client stuffs dots, LF or not
    assert len(crlf) > 1000 and b"\n.         dr.martin" in lf_only(crlf)
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        client = await RawClient.connect(app.port)
        reply = await client.send(SENDER, COLLEAGUE, stuffed.removesuffix(b"\n"))
        await client.close()
        assert reply.startswith("250 2.0.0 queued as ")
        await eventually(lambda: len(sink.handler.messages) == 1)
    received = sink.handler.messages[0].data
    assert received.endswith(crlf)
    assert received[: -len(crlf)].startswith(b"Received: from ")
    assert received.count(b"\r\n") == received.count(b"\n")
    assert b"\r\n.         dr.martin\r\n.         dr.durand\r\n" in received


async def test_an_over_long_header_line_gets_advice_about_the_header(
    sink: Sink, storage: Path
) -> None:
    long_subject = b"Subject: " + b"compte rendu " * 120
    header_refused = letter(2).replace(b"Subject: Compte rendu de consultation", long_subject)
    body_refused = letter(3).replace(b"Cher confr", b"x" * 1500 + b"\r\nCher confr")
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        client = await RawClient.connect(app.port)
        header_reply = await client.send(SENDER, COLLEAGUE, header_refused)
        body_reply = await client.send(SENDER, COLLEAGUE, body_refused)
        await client.close()
    assert header_reply.startswith("500 5.5.2 ligne d'en-tete de plus de 1000 octets")
    assert "objet" in header_reply and "piece jointe" not in header_reply
    assert "header line longer than 1000 octets" in header_reply
    assert body_reply.startswith("500 5.5.2 ligne de plus de 1000 octets")
    assert "piece jointe" in body_reply
    assert sink.handler.messages == []


ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3} ")


async def test_ehlo_advertises_what_apiguard_does_and_every_reply_has_an_enhanced_code(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        client = await RawClient.connect(app.port)
        ehlo = await client.command("EHLO client.test")
        replies = [
            await client.command("NOOP"),
            await client.command("RSET"),
            await client.command("VRFY <x@y.fr>"),
            await client.command("HELP"),
            await client.command("FOO"),
            await client.command("DATA"),  # no MAIL yet
            await client.command("MAIL FROM:<" + SENDER + "> BODY=8BITMIME SMTPUTF8"),
            await client.command("MAIL FROM:<" + SENDER + ">"),  # nested
            await client.command("RCPT TO:<not an address>"),
            await client.command("RCPT TO:<" + COLLEAGUE + ">"),
            await client.command("STARTTLS"),  # no certificate
            await client.command("QUIT"),
        ]
        client.writer.close()
    extensions = {line[4:].split(" ")[0] for line in ehlo[1:]}
    assert {"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "SIZE"} <= extensions
    for reply in replies:
        assert all(ENHANCED.match(line) for line in reply), reply
    assert replies[0] == ["250 2.0.0 OK"] and replies[-1] == ["221 2.0.0 Bye"]
    assert replies[4][0].startswith("500 5.5.2 ")  # unknown command
    assert replies[5][0].startswith("503 5.5.1 ")  # bad sequence


async def test_an_internationalised_recipient_is_delivered_by_a_relay_with_smtputf8(
    storage: Path,
) -> None:
    sink = Sink()
    loop = asyncio.get_running_loop()
    sink.server = await loop.create_server(
        lambda: SMTP(sink.handler, hostname="sink.test", enable_SMTPUTF8=True, loop=loop),
        "127.0.0.1",
        sink.port,
    )
    try:
        async with running_proxy(proxy_settings(storage, sink.port)) as app:
            client = await RawClient.connect(app.port)
            await client.command("EHLO client.test")
            assert (await client.command(f"MAIL FROM:<{SENDER}> SMTPUTF8"))[0].startswith("250")
            assert (await client.command(f"RCPT TO:<{INTERNATIONAL}>"))[0].startswith("250")
            assert (await client.command("DATA"))[0].startswith("354")
            client.writer.write(letter(4) + b".\r\n")
            assert (await client.reply())[0].startswith("250 2.0.0 queued")
            await client.close()
            await eventually(lambda: len(sink.handler.messages) == 1)
    finally:
        await sink.stop()
    assert sink.handler.messages[0].rcpt_tos == [INTERNATIONAL]


async def test_only_the_internationalised_recipient_fails_when_the_relay_lacks_smtputf8(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        client = await RawClient.connect(app.port)
        await client.command("EHLO client.test")
        await client.command(f"MAIL FROM:<{SENDER}> SMTPUTF8")
        await client.command(f"RCPT TO:<{COLLEAGUE}>")
        await client.command(f"RCPT TO:<{INTERNATIONAL}>")
        assert (await client.command("DATA"))[0].startswith("354")
        client.writer.write(letter(7) + b".\r\n")
        assert (await client.reply())[0].startswith("250 2.0.0 queued")
        await client.close()
        await eventually(lambda: len(sink.handler.notices()) == 1)
        await eventually(lambda: len(sink.handler.mails()) == 1)
    assert sink.handler.mails()[0].rcpt_tos == [COLLEAGUE]
    notice = sink.handler.notices()[0].data.decode("ascii")
    # RFC 6533 3: the internationalised address in 7-bit form, the other one absent.
    assert "Final-Recipient: utf-8; dr.h\\x{E9}l\\x{E8}ne.durand@medical69.apicrypt.org" in notice
    assert "Status: 5.6.7" in notice and f"rfc822; {COLLEAGUE}" not in notice


async def test_an_address_that_is_not_utf8_is_refused_as_malformed(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        client = await RawClient.connect(app.port)
        await client.command("EHLO client.test")
        client.writer.write(b"MAIL FROM:<dr.\xe9ric@medical13.apicrypt.org> SMTPUTF8\r\n")
        latin1_sender = await client.reply()
        await client.close()
    assert latin1_sender[0].startswith("553 5.1.3 ")


@pytest.mark.parametrize("with_option", [True, False])
async def test_an_internationalised_recipient_fails_with_a_5_6_7_notice_without_smtputf8(
    sink: Sink, storage: Path, with_option: bool
) -> None:
    """The relay (aiosmtpd's default) does not offer SMTPUTF8: the recipient
    cannot be reached through it, and the sender is told why (RFC 6531 3.5),
    by postmaster at the configured host name."""
    option = " SMTPUTF8" if with_option else ""
    settings = proxy_settings(storage, sink.port, smtp={"hostname": "apiguard.cabinet.test"})
    async with running_proxy(settings) as app:
        client = await RawClient.connect(app.port)
        await client.command("EHLO client.test")
        await client.command(f"MAIL FROM:<{SENDER}>{option}")
        assert (await client.command(f"RCPT TO:<{INTERNATIONAL}>"))[0].startswith("250")
        assert (await client.command("DATA"))[0].startswith("354")
        client.writer.write(letter(5) + b".\r\n")
        assert (await client.reply())[0].startswith("250 2.0.0 queued")
        await client.close()
        await eventually(lambda: len(sink.handler.notices()) == 1)
    assert sink.handler.mails() == []
    notice = sink.handler.notices()[0]
    assert notice.rcpt_tos == [SENDER]
    assert b"Status: 5.6.7" in notice.data
    assert notice.message["From"] == "apiguard <postmaster@apiguard.cabinet.test>"
    assert b"Reporting-MTA: dns; apiguard.cabinet.test" in notice.data


@dataclass
class OptionsHandler(SinkHandler):
    """Records MAIL FROM's options; offers 8BITMIME or not."""

    eight_bit: bool = True
    mail_options: list[list[str]] = field(default_factory=list)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        return [r for r in responses if self.eight_bit or r != "250-8BITMIME"]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mail_options.append(options)
        envelope.mail_from = address
        return "250 2.1.0 OK"


LATIN1 = (
    letter(6)
    .replace(b"charset=utf-8", b"charset=iso-8859-1")
    .replace("confrère".encode(), "confrère".encode("latin-1"))
)


@pytest.mark.parametrize("eight_bit", [True, False])
async def test_8bit_content_goes_with_body_8bitmime_or_converted_to_quoted_printable(
    storage: Path, eight_bit: bool
) -> None:
    sink = Sink()
    handler = sink.handler = OptionsHandler(eight_bit=eight_bit)
    await sink.start()
    try:
        async with running_proxy(proxy_settings(storage, sink.port)) as app:
            client = await RawClient.connect(app.port)
            assert (await client.send(SENDER, COLLEAGUE, LATIN1)).startswith("250 ")
            await client.close()
            await eventually(lambda: len(sink.handler.messages) == 1)
    finally:
        await sink.stop()
    received = sink.handler.messages[0].data
    if eight_bit:
        assert "BODY=8BITMIME" in handler.mail_options[0]
        assert received.endswith(LATIN1)
    else:
        assert not any(o.startswith("BODY=") for o in handler.mail_options[0])
        assert received.isascii() and b"Cher confr=E8re," in received
        assert b"Content-Transfer-Encoding: quoted-printable\r\n" in received
        converted = email.message_from_bytes(received)
        assert converted.get_payload(decode=True) == LATIN1.split(b"\r\n\r\n", 1)[1]
