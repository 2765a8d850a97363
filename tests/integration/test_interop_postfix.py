"""apiguard between real programs: Debian's Postfix upstream (a practice MTA
with `relayhost = [127.0.0.1]:<apiguard>`) and downstream (apiguard's relay,
STARTTLS with a test CA, delivering to a Python sink), msmtp, swaks and
Python's smtplib as clients.

    client ──> upstream Postfix ──> apiguard ──> downstream Postfix ──> sink
    msmtp, swaks, smtplib ───────────┘

The two Postfix instances run once for the module, on fixed free ports;
apiguard and the sinks start for each test on theirs.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apiguard.config import Settings
from apiguard.store.base import MessageState
from tests.integration.postfix_support import (
    POSTFIX_PROGRAMS,
    CertificateAuthority,
    PostfixInstance,
    inline_map,
    msmtp,
    require_programs,
    swaks,
)
from tests.support import Sink, eventually, free_port, letter, proxy_settings, running_proxy

pytestmark = pytest.mark.slow

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
UNKNOWN = "dr.inconnu@medical69.apicrypt.org"
CORPUS = Path(__file__).parents[1] / "corpus"


@dataclass(frozen=True)
class Ports:
    apiguard: int
    upstream: int
    downstream: int
    downstream_7bit: int  # the same Postfix, without 8BITMIME on this port
    downstream_ascii: int  # the same Postfix, without SMTPUTF8 on this port
    sink: int  # behind the downstream Postfix
    bounces: int  # where the upstream Postfix sends its bounces


@pytest.fixture(scope="module")
def ports() -> Ports:
    return Ports(*(free_port() for _ in range(7)))


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def upstream(ports: Ports) -> Iterator[PostfixInstance]:
    """A practice's Postfix relaying everything through apiguard; bounces to
    the sender's domain go to the `bounces` sink."""
    require_programs(*POSTFIX_PROGRAMS, "swaks")
    instance = PostfixInstance(
        "upstream",
        {
            "relayhost": f"[127.0.0.1]:{ports.apiguard}",
            "transport_maps": inline_map(
                {"medical13.apicrypt.org": f"smtp:[127.0.0.1]:{ports.bounces}"}
            ),
        },
        {ports.upstream: {}},
    )
    yield from _running(instance)


@pytest.fixture(scope="module")
def downstream(ports: Ports, authority: CertificateAuthority) -> Iterator[PostfixInstance]:
    """apiguard's relay: STARTTLS with the test CA's certificate, one unknown
    recipient refused, everything else relayed to the sink."""
    require_programs(*POSTFIX_PROGRAMS)
    instance = PostfixInstance(
        "downstream",
        {
            "relayhost": f"[127.0.0.1]:{ports.sink}",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(authority.cert_file),
            "smtpd_tls_key_file": str(authority.key_file),
            "smtpd_recipient_restrictions": (
                f"check_recipient_access {inline_map({UNKNOWN: 'REJECT 5.1.1 no such user'})},"
                " permit_mynetworks, reject"
            ),
        },
        {
            ports.downstream: {},
            ports.downstream_7bit: {"smtpd_discard_ehlo_keywords": "8bitmime"},
            ports.downstream_ascii: {"smtputf8_enable": "no"},
        },
    )
    yield from _running(instance)


@pytest.fixture
def practice_mta(upstream: PostfixInstance) -> Iterator[PostfixInstance]:
    """The upstream Postfix with an empty queue, left empty for the next test."""
    upstream.clear_queue()
    yield upstream
    upstream.clear_queue()


def _running(instance: PostfixInstance) -> Iterator[PostfixInstance]:
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        instance.remove()


@pytest.fixture
async def sink(ports: Ports) -> AsyncIterator[Sink]:
    server = Sink(ports.sink)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def bounces(ports: Ports) -> AsyncIterator[Sink]:
    server = Sink(ports.bounces)
    await server.start()
    yield server
    await server.stop()


def apiguard_settings(
    storage: Path, ports: Ports, authority: CertificateAuthority, **sections: dict[str, Any]
) -> Settings:
    """apiguard on its fixed port, relaying to the downstream Postfix with
    STARTTLS, trusting the test CA in addition to the system's."""
    relay = {
        "port": ports.downstream,
        "security": "starttls",
        "ca_file": str(authority.ca_file),
        "helo_name": "apiguard.cabinet.test",
    }
    relay.update(sections.pop("relay", {}))
    smtp = {"port": ports.apiguard, "hostname": "apiguard.cabinet.test"}
    smtp.update(sections.pop("smtp", {}))
    return proxy_settings(storage, ports.downstream, relay=relay, smtp=smtp, **sections)


def dated(raw: bytes) -> bytes:
    """Clients add a Date: when there is none (msmtp does): give one."""
    return b"Date: Tue, 08 Dec 2026 09:00:00 +0100\r\n" + raw


def for_swaks(path: Path, message: bytes) -> Path:
    """swaks ends the data with CRLF itself (after a final CRLF, that makes
    an empty line): the file holds the message without its last CRLF."""
    path.write_bytes(message.removesuffix(b"\r\n"))
    return path


def trace_lines(received: bytes, original: bytes) -> list[bytes]:
    """The header lines added on top of `original`, which must end `received`
    unchanged; a folded Received: counts as one."""
    assert received.endswith(original), received[:600]
    added = received[: -len(original)].decode()
    assert added.endswith("\r\n")
    fields = []
    for line in added.removesuffix("\r\n").split("\r\n"):
        if line[:1] in (" ", "\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return [f.encode() for f in fields]


async def test_msmtp_and_swaks_through_apiguard_and_postfix_arrive_byte_identical(
    storage: Path,
    tmp_path: Path,
    ports: Ports,
    authority: CertificateAuthority,
    downstream: PostfixInstance,
    sink: Sink,
) -> None:
    first, second = dated(letter(1)), dated(letter(2))
    for_swaks(tmp_path / "second.eml", second)
    async with running_proxy(apiguard_settings(storage, ports, authority)):
        await asyncio.to_thread(msmtp, ports.apiguard, SENDER, [COLLEAGUE], first)
        transcript = await asyncio.to_thread(
            swaks, ports.apiguard, SENDER, COLLEAGUE, tmp_path / "second.eml"
        )
        assert "250 2.0.0 queued as" in transcript
        await eventually(lambda: len(sink.handler.messages) == 2, timeout=20)
    by_id = {m.message["Message-ID"]: m for m in sink.handler.messages}
    for original in (first, second):
        message_id = email.message_from_bytes(original, policy=email.policy.default)["Message-ID"]
        received = by_id[message_id]
        assert received.rcpt_tos == [COLLEAGUE]
        added = trace_lines(received.data, original)
        # Postfix's Received: (ESMTPS: STARTTLS was used), then apiguard's one.
        assert len(added) == 2 and all(a.startswith(b"Received: ") for a in added)
        assert b"by downstream.postfix.test" in added[0] and b"with ESMTPS" in added[0]
    assert "starttls=1 mail=2 rcpt=2 data=2" in downstream.log()


async def test_an_upstream_postfix_relays_through_apiguard_unchanged(
    storage: Path,
    tmp_path: Path,
    ports: Ports,
    authority: CertificateAuthority,
    practice_mta: PostfixInstance,
    downstream: PostfixInstance,
    sink: Sink,
) -> None:
    original = dated(letter(3))
    for_swaks(tmp_path / "letter.eml", original)
    async with running_proxy(apiguard_settings(storage, ports, authority)):
        transcript = await asyncio.to_thread(
            swaks, ports.upstream, SENDER, COLLEAGUE, tmp_path / "letter.eml"
        )
        assert "250 2.0.0 Ok: queued as" in transcript
        await eventually(lambda: len(sink.handler.messages) == 1, timeout=20)
    received = sink.handler.messages[0]
    assert received.mail_from == SENDER and received.rcpt_tos == [COLLEAGUE]
    added = trace_lines(received.data, original)
    assert len(added) == 3  # downstream Postfix, apiguard, upstream Postfix
    assert b"upstream.postfix.test" in added[2] and b"apiguard" in added[1]


async def test_a_charter_refusal_comes_back_in_the_upstream_postfix_bounce_with_its_text(
    storage: Path,
    tmp_path: Path,
    ports: Ports,
    authority: CertificateAuthority,
    practice_mta: PostfixInstance,
    downstream: PostfixInstance,
    sink: Sink,
    bounces: Sink,
) -> None:
    refused = (CORPUS / "viol-04-depart-retraite.eml").read_bytes()
    for_swaks(tmp_path / "refused.eml", refused)
    settings = apiguard_settings(storage, ports, authority, notices={"on_reject": "smtp"})
    async with running_proxy(settings):
        await asyncio.to_thread(swaks, ports.upstream, SENDER, COLLEAGUE, tmp_path / "refused.eml")
        await eventually(lambda: len(bounces.handler.messages) == 1, timeout=20)
    bounce = bounces.handler.messages[0]
    assert bounce.mail_from in ("", "<>") and bounce.rcpt_tos == [SENDER]
    text = bounce.data.decode(errors="replace")
    assert "host 127.0.0.1[127.0.0.1] said: 550 5.7.1" in text
    # apiguard's reply, French then English, reaches the sender in full.
    said = text.split("said: ", 1)[1]
    assert "(Art." in said and " / " in said
    assert sink.handler.messages == []
    assert "status=bounced" in practice_mta.log()


async def test_a_held_letter_is_accepted_for_the_upstream_postfix_and_kept_for_review(
    storage: Path,
    tmp_path: Path,
    ports: Ports,
    authority: CertificateAuthority,
    practice_mta: PostfixInstance,
    downstream: PostfixInstance,
    sink: Sink,
) -> None:
    for_swaks(tmp_path / "letter.eml", dated(letter(4)))
    settings = apiguard_settings(
        storage, ports, authority, charter={"rules": {"art5.review-all": {"enabled": True}}}
    )
    async with running_proxy(settings) as app:
        await asyncio.to_thread(swaks, ports.upstream, SENDER, COLLEAGUE, tmp_path / "letter.eml")
        await eventually(lambda: "held for review as" in practice_mta.log(), timeout=20)
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=20)
        held = app.store.sync.list_messages(MessageState.HELD)
    assert len(held) == 1 and held[0].mail_from == SENDER
    assert sink.handler.mails() == []  # only the hold notice, to the sender
    assert sink.handler.notices()[0].rcpt_tos == [SENDER]
    assert practice_mta.queue() == []  # the upstream Postfix is done with it


async def test_a_recipient_refused_by_the_downstream_postfix_gets_a_delivery_status_notice(
    storage: Path,
    ports: Ports,
    authority: CertificateAuthority,
    downstream: PostfixInstance,
    sink: Sink,
) -> None:
    async with running_proxy(apiguard_settings(storage, ports, authority)):
        await asyncio.to_thread(
            msmtp, ports.apiguard, SENDER, [COLLEAGUE, UNKNOWN], dated(letter(5))
        )
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=20)
        await eventually(lambda: len(sink.handler.mails()) == 1, timeout=20)
    assert sink.handler.mails()[0].rcpt_tos == [COLLEAGUE]
    notice = sink.handler.notices()[0]
    assert notice.rcpt_tos == [SENDER]
    assert notice.message.get_content_type() == "multipart/report"
    text = notice.data.decode(errors="replace")
    assert f"Final-Recipient: rfc822; {UNKNOWN}" in text
    assert "Status: 5.1.1" in text
    assert "no such user" in text  # the downstream Postfix's own words


async def test_starttls_with_a_wrong_ca_keeps_the_message_deferred(
    storage: Path,
    tmp_path: Path,
    ports: Ports,
    authority: CertificateAuthority,
    downstream: PostfixInstance,
    sink: Sink,
) -> None:
    other = CertificateAuthority.create(tmp_path / "other-ca", name="some other CA")
    settings = apiguard_settings(storage, ports, authority, relay={"ca_file": str(other.ca_file)})
    async with running_proxy(settings) as app:
        await asyncio.to_thread(msmtp, ports.apiguard, SENDER, [COLLEAGUE], dated(letter(6)))

        def deferred() -> list[str]:
            queued = app.store.sync.list_messages(MessageState.QUEUED)
            return [r.last_reply for m in queued for r in m.recipients if r.attempts]

        await eventually(lambda: bool(deferred()), timeout=20)
        reason = deferred()[0]
    assert sink.handler.messages == []
    assert reason.startswith("certificate verify failed"), reason
    assert "SSL_accept error from localhost[127.0.0.1]" in downstream.log()


async def test_bare_lf_input_is_relayed_with_crlf_and_its_dots_intact(
    storage: Path,
    ports: Ports,
    authority: CertificateAuthority,
    downstream: PostfixInstance,
    sink: Sink,
) -> None:
    """Python's smtplib sends bytes as they are: a file with LF line ends goes
    out with LF line ends (its dots are stuffed after them)."""
    crlf = dated(letter(7)).replace(
        b"Cher confr", b"Ligne de compte rendu.\r\n" * 40 + b"Cher confr"
    )
    lf = crlf.replace(b"\r\n", b"\n")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", ports.apiguard, timeout=30) as client:
            client.sendmail(SENDER, [COLLEAGUE], lf)

    async with running_proxy(apiguard_settings(storage, ports, authority)):
        await asyncio.to_thread(send)
        await eventually(lambda: len(sink.handler.messages) == 1, timeout=20)
    received = sink.handler.messages[0].data
    # smtplib ends the data with an empty line when the content ends with LF.
    assert len(trace_lines(received, crlf + b"\r\n")) == 2
    assert b"\r\n.         dr.martin\r\n.         dr.durand\r\n" in received


LATIN1_LETTER = (
    b"Date: Tue, 08 Dec 2026 09:00:00 +0100\r\n"
    b"From: dr.martin@medical13.apicrypt.org\r\n"
    b"To: dr.durand@medical69.apicrypt.org\r\n"
    b"Subject: Compte rendu\r\n"
    b"Message-ID: <latin1-8bit@medical13.apicrypt.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"A1B2C3\r\nTESTPATIENT\r\nCamille\r\n \r\n \r\n13001 MARSEILLE\r\n12/05/1961\r\n\r\n"
    b"CR-2026-8\r\n20/11/2026\r\n.         dr.martin\r\n.         dr.durand\r\n\r\n"
    b"Cher confr\xe8re,\r\nJ'ai vu votre patiente pour un bilan cardiologique \xe0 l'effort.\r\n"
    b"L'examen clinique est normal. Bien confraternellement.\r\n"
    b"****FIN****\r\n****FINFICHIER****\r\n"
)


@pytest.mark.parametrize("eight_bit_relay", [True, False])
async def test_8bit_content_reaches_a_relay_with_or_without_8bitmime_unharmed(
    storage: Path,
    ports: Ports,
    authority: CertificateAuthority,
    downstream: PostfixInstance,
    sink: Sink,
    eight_bit_relay: bool,
) -> None:
    port = ports.downstream if eight_bit_relay else ports.downstream_7bit
    settings = apiguard_settings(storage, ports, authority, relay={"port": port})
    async with running_proxy(settings):
        await asyncio.to_thread(msmtp, ports.apiguard, SENDER, [COLLEAGUE], LATIN1_LETTER)
        await eventually(lambda: len(sink.handler.messages) == 1, timeout=20)
    received = sink.handler.messages[0]
    message = received.message
    original = email.message_from_bytes(LATIN1_LETTER, policy=email.policy.default)
    assert message.get_payload(decode=True) == original.get_payload(decode=True)
    if eight_bit_relay:
        assert len(trace_lines(received.data, LATIN1_LETTER)) == 2  # sent as it was
    else:
        # Converted as Postfix converts: quoted-printable, 7-bit on the wire.
        assert received.data.isascii()
        assert message["Content-Transfer-Encoding"] == "quoted-printable"
        assert b"Cher confr=E8re," in received.data
        head, _body = received.data.split(b"\r\n\r\n", 1)
        assert head.endswith(
            LATIN1_LETTER.split(b"\r\n\r\n")[0].replace(
                b"Content-Transfer-Encoding: 8bit", b"Content-Transfer-Encoding: quoted-printable"
            )
        )


async def test_an_internationalised_recipient_fails_with_5_6_7_at_a_postfix_without_smtputf8(
    storage: Path,
    ports: Ports,
    authority: CertificateAuthority,
    downstream: PostfixInstance,
    sink: Sink,
) -> None:
    """Only that recipient: the other one is delivered, and the sender's
    notice (a 7-bit report, RFC 6533) goes through the same Postfix."""
    international = "dr.hélène.durand@medical69.apicrypt.org"
    settings = apiguard_settings(storage, ports, authority, relay={"port": ports.downstream_ascii})

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", ports.apiguard, timeout=30) as client:
            client.ehlo("poste.cabinet.test")
            refused = client.sendmail(
                SENDER, [COLLEAGUE, international], dated(letter(9)), mail_options=["SMTPUTF8"]
            )
            assert refused == {}

    async with running_proxy(settings):
        await asyncio.to_thread(send)
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=20)
        await eventually(lambda: len(sink.handler.mails()) == 1, timeout=20)
    assert sink.handler.mails()[0].rcpt_tos == [COLLEAGUE]
    notice = sink.handler.notices()[0]
    assert notice.rcpt_tos == [SENDER]
    assert b"Final-Recipient: utf-8; dr.h\\x{E9}l\\x{E8}ne.durand@" in notice.data
    assert b"Status: 5.6.7" in notice.data
