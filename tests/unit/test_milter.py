"""The milter edge: protocol packets, reinjection marks, and one Postfix
conversation driven through the real pipeline on a real SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import stat
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apiguard.app import build_charter
from apiguard.config import ConfigError, Settings
from apiguard.milter import protocol
from apiguard.milter.marks import (
    HEADER,
    Mark,
    Marker,
    MarkKeyError,
    claim_nonce,
    load_key,
    marked,
    split_body,
)
from apiguard.milter.protocol import (
    Action,
    ChangeHeader,
    Command,
    Negotiation,
    Protocol,
    ProtocolError,
    ReplyCode,
)
from apiguard.milter.server import MilterServer, parse_socket, quick_ack
from apiguard.milter.session import MilterSession, answer
from apiguard.pipeline import Pipeline
from apiguard.policy.verdict import Verdict
from apiguard.smtp import replies
from apiguard.store.aio import AsyncStore
from apiguard.store.base import MessageKind
from apiguard.store.sqlite import SqliteStore
from apiguard.store.volume import VolumeStore
from tests.support import letter
from tests.unit.test_store_durability import barriers

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
KEY = bytes(range(32))
NO_PATIENT = (
    b"From: dr.martin@medical13.apicrypt.org\r\nTo: dr.durand@medical69.apicrypt.org\r\n"
    b"Subject: Question\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Bonjour, peux-tu me rappeler demain matin au cabinet ? Merci.\r\n"
)
ANNOUNCEMENT = (
    "From: dr.martin@medical13.apicrypt.org\r\nTo: dr.durand@medical69.apicrypt.org\r\n"
    "Subject: Invitation soirée FMC\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Chers confrères,\r\nNous avons le plaisir de vous inviter à notre soirée de formation "
    "médicale continue le jeudi 12 décembre à 20h. Inscription obligatoire avant le 5 "
    "décembre.\r\nConfraternellement\r\n"
).encode()
POSTFIX_OFFER = struct.pack(">III", 6, 0x1FF, 0x1FFFFF)


# -- protocol -------------------------------------------------------------------------


def test_a_packet_is_its_length_then_command_and_data() -> None:
    assert protocol.packet(b"y", b"550 x\0") == b"\0\0\0\x07y550 x\0"
    assert protocol.CONTINUE.encode() == b"\0\0\0\x01c"


def test_negotiation_keeps_the_no_reply_stages_postfix_offers() -> None:
    agreed = Negotiation.parse(POSTFIX_OFFER).agreed()
    assert agreed.version == 6
    assert agreed.actions == Action.ADDHDRS | Action.CHGHDRS
    assert agreed.protocol & Protocol.NR_HDR and agreed.protocol & Protocol.NR_BODY
    assert not agreed.protocol & Protocol.NR_RCPT  # RCPT is answered: the recipient rules
    assert not agreed.protocol & Protocol.NOHDRS
    # An MTA that offers fewer no-reply stages gets only those.
    narrow = Negotiation.parse(struct.pack(">III", 6, 0x1FF, int(Protocol.NR_HDR)))
    assert narrow.agreed().protocol == Protocol.NR_HDR


def test_negotiation_refuses_an_old_protocol_or_missing_header_actions() -> None:
    with pytest.raises(ProtocolError, match="milter_protocol = 6"):
        Negotiation.parse(struct.pack(">III", 2, 0x1FF, 0x7F)).agreed()
    with pytest.raises(ProtocolError):
        Negotiation.parse(struct.pack(">III", 6, int(Action.ADDHDRS), 0)).agreed()
    with pytest.raises(ProtocolError):
        Negotiation.parse(b"\0\0\0\x06")


def test_connect_addresses_and_envelope_paths_parse() -> None:
    assert protocol.parse_connect(b"localhost\x004\x00\x19127.0.0.1\x00") == (
        "localhost",
        "127.0.0.1",
    )
    assert protocol.parse_connect(b"localhost\x00L") == ("localhost", "")  # sendmail command
    assert protocol.address("<a@b.fr>") == "a@b.fr"
    assert protocol.address("<>") == ""
    assert protocol.address("<@relay.fr:a@b.fr>") == "a@b.fr"
    assert protocol.strings(b"<a@b.fr>\0SIZE=12\0") == ["<a@b.fr>", "SIZE=12"]


def test_packet_lengths_and_commands_are_checked() -> None:
    with pytest.raises(ProtocolError):
        protocol.split_length(struct.pack(">I", 0))
    with pytest.raises(ProtocolError):
        protocol.split_length(struct.pack(">I", protocol.MAX_PACKET + 1))
    with pytest.raises(ProtocolError):
        protocol.parse_command(b"Zdata")
    assert protocol.parse_command(b"Bbody") == (Command.BODY, b"body")


def test_reply_codes_are_4xx_or_5xx_on_one_line() -> None:
    with pytest.raises(ValueError):
        ReplyCode("250 2.0.0 ok")
    assert ReplyCode("550 5.7.1 a\r\n b").encode() == protocol.packet(b"y", b"550 5.7.1 a b\0")
    assert ReplyCode("451 4.3.0 later").temporary
    assert ReplyCode("550 5.7.1 100 % du texte").encode() == protocol.packet(
        b"y", b"550 5.7.1 100 %% du texte\0"
    )


def test_deleting_a_header_is_a_change_to_an_empty_value() -> None:
    assert ChangeHeader(HEADER, 2).encode() == protocol.packet(
        b"m", b"\0\0\0\x02" + HEADER.encode() + b"\0\0"
    )


def test_socket_specifications() -> None:
    assert parse_socket("inet:127.0.0.1:8891") == ("inet", "127.0.0.1", 8891)
    assert parse_socket("inet:[::1]:8891") == ("inet", "::1", 8891)
    assert parse_socket("unix:/run/apiguard/milter.sock") == (
        "unix",
        "/run/apiguard/milter.sock",
        0,
    )


@pytest.mark.parametrize("value", ["8891", "inet:8891", "unix:relative", "tcp:1.2.3.4:1"])
def test_a_bad_milter_socket_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ValueError, match="inet:HOST:PORT"):
        Settings.model_validate({"milter": {"socket": value}})


# -- marks ---------------------------------------------------------------------------


def test_the_mark_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "milter.key"
    key = load_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    path.chmod(0o644)
    with pytest.raises(MarkKeyError, match="chmod 600"):
        load_key(path)
    assert issubclass(MarkKeyError, ConfigError)


def test_a_mark_holds_for_its_message_only() -> None:
    marker = Marker(KEY, clock=lambda: 10_000.0)
    body = split_body(letter(1))
    mark = marker.mark(SENDER, [COLLEAGUE], body)
    parsed = Mark.parse(mark.header_value())
    assert parsed == mark
    assert marker.verify(mark, SENDER, [COLLEAGUE], body)
    # Line endings and trailing blank lines may change on the way: still the same.
    assert marker.verify(mark, SENDER, [COLLEAGUE], body.replace(b"\r\n", b"\n") + b"\r\n")
    assert not marker.verify(mark, SENDER, [COLLEAGUE], body.replace(b"Camille", b"Camilla"))
    assert not marker.verify(mark, SENDER, [COLLEAGUE, "x@medical69.apicrypt.org"], body)
    assert not marker.verify(mark, "other@medical13.apicrypt.org", [COLLEAGUE], body)
    assert not Marker(bytes(32), clock=lambda: 10_000.0).verify(mark, SENDER, [COLLEAGUE], body)
    late = Marker(KEY, max_age=900, clock=lambda: 10_000.0 + 901)
    assert not late.verify(mark, SENDER, [COLLEAGUE], body)


def test_malformed_marks_are_not_marks() -> None:
    for value in ("", "v1", "v2 1 " + "a" * 32 + " " + "b" * 64, "v1 x " + "a" * 32 + " b"):
        assert Mark.parse(value) is None


def test_a_nonce_is_claimed_once() -> None:
    db = sqlite3.connect(":memory:")
    assert claim_nonce(db, "n1", 1000.0, 900)
    assert not claim_nonce(db, "n1", 1001.0, 900)
    assert claim_nonce(db, "n2", 1001.0, 900)
    # Nonces too old to verify anyway are forgotten.
    claim_nonce(db, "n3", 10_000.0, 900)
    assert db.execute("SELECT COUNT(*) FROM milter_marks").fetchone()[0] == 1


# -- one conversation through the real pipeline --------------------------------------


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with running_pipeline(tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def running_pipeline(tmp_path: Path, **sections: dict[str, str]) -> AsyncIterator[Pipeline]:
    settings = Settings.model_validate(
        {"storage": {"path": str(tmp_path / "var")}, "processing": {"workers": 0}, **sections}
    )
    store = AsyncStore(SqliteStore(settings.storage.path))
    running = Pipeline(
        build_charter(settings),
        store,
        settings,
        volume=VolumeStore(store.sync),
        spool_forwarded=False,
    )
    yield running
    await store.close()


def session_for(pipeline: Pipeline, **options: float) -> MilterSession:
    marker = Marker(KEY, clock=lambda: options.get("now", 1_000_000.0))
    return MilterSession(pipeline, marker, max_message_size=int(options.get("max_size", 1_000_000)))


def header_packets(raw: bytes) -> list[tuple[Command, bytes]]:
    head, _, _ = raw.partition(b"\r\n\r\n")
    packets = []
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        packets.append((Command.HEADER, name + b"\0" + value + b"\0"))
    return packets


async def converse(
    session: MilterSession,
    raw: bytes,
    recipients: tuple[str, ...] = (COLLEAGUE,),
    mail_from: str = SENDER,
) -> tuple[list[protocol.Response], list[protocol.Response]]:
    """Postfix's commands for one message; (the RCPT answers, the end-of-message answers)."""
    await session.handle(Command.OPTNEG, POSTFIX_OFFER)
    assert await session.handle(Command.CONNECT, b"localhost\x004\x00\x19127.0.0.1\x00") == []
    assert await session.handle(Command.MACRO, b"Cj\0mta.test\0") == []
    await session.handle(Command.HELO, b"poste.cabinet.test\0")
    assert await session.handle(Command.MAIL, f"<{mail_from}>\0SIZE=100\0".encode()) == []
    rcpt_answers = []
    for rcpt in recipients:
        rcpt_answers.extend(await session.handle(Command.RCPT, f"<{rcpt}>\0".encode()))
    assert await session.handle(Command.DATA, b"") == []
    for command, data in header_packets(raw):
        assert await session.handle(command, data) == []
    assert await session.handle(Command.EOH, b"") == []
    body = split_body(raw)
    for start in range(0, len(body), 40):
        assert await session.handle(Command.BODY, body[start : start + 40]) == []
    return rcpt_answers, await session.handle(Command.BODYEOB, b"")


def stored(pipeline: Pipeline) -> list[tuple[str, str, bytes | None]]:
    """The mail (not the notices) apiguard recorded: id, state, content kept."""
    store = pipeline.store.sync
    rows = [m for m in store.list_messages(None, 50) if m.kind is MessageKind.MAIL]
    return [(m.id, m.state.value, store.get_raw(m.id)) for m in rows]


async def test_a_forwarded_letter_continues_and_only_its_decision_is_kept(
    pipeline: Pipeline,
) -> None:
    rcpt, final = await converse(session_for(pipeline), letter(1))
    assert rcpt == [protocol.CONTINUE]
    assert final == [protocol.CONTINUE]
    [(_, state, raw)] = stored(pipeline)
    # Postfix delivers its own copy: nothing for apiguard's delivery worker.
    assert state == "done" and raw is None
    assert pipeline.store.sync.claim_due(2_000_000_000.0, 10) == []
    # Its recipient is now a known correspondent (recipient.lookalike's memory).
    assert pipeline.volume is not None
    assert pipeline.volume.known_addresses() == [COLLEAGUE]
    # Recorded without an fsync of its own: Postfix keeps the letter.
    assert barriers(pipeline.store.sync) == 0


async def test_a_held_letter_is_stored_whole_then_discarded(pipeline: Pipeline) -> None:
    _, final = await converse(session_for(pipeline), NO_PATIENT)
    assert final == [protocol.DISCARD]
    [(message_id, state, raw)] = stored(pipeline)
    assert state == "held" and raw is not None
    # apiguard's trace line, then the message as the client sent it.
    assert raw.startswith(b"Received: from poste.cabinet.test ([127.0.0.1])")
    assert raw.endswith(NO_PATIENT)
    assert message_id.encode() in raw
    # On disk before the DISCARD: the content rules hold it, so its accept was
    # durable itself (no barrier needed after it).
    assert barriers(pipeline.store.sync) == 0


async def test_a_letter_held_by_the_live_counts_is_on_disk_before_the_discard(
    tmp_path: Path,
) -> None:
    """The content rules forward it, the rate rule (read in the store's
    transaction) holds it: the commit that was not durable is followed by a
    sync barrier before Postfix hears DISCARD."""
    rate = {"rules": {"art2.rate": {"per_10min": 2}}}
    async with running_pipeline(tmp_path, charter=rate) as pipeline:
        for number in (1, 2):
            _, final = await converse(session_for(pipeline), letter(number))
            assert final == [protocol.CONTINUE]
        assert barriers(pipeline.store.sync) == 0
        _, final = await converse(session_for(pipeline), letter(3))
        assert final == [protocol.DISCARD]
        assert barriers(pipeline.store.sync) == 1
        assert [state for _, state, _ in stored(pipeline)].count("held") == 1


async def test_an_announcement_is_refused_with_the_proxys_text(pipeline: Pipeline) -> None:
    _, final = await converse(session_for(pipeline), ANNOUNCEMENT)
    [refusal] = final
    assert isinstance(refusal, ReplyCode)
    assert refusal.reply.startswith("550 5.7.1 art2.announcement (Art. 2): ")


async def test_with_notices_by_email_only_a_refusal_is_discarded_and_notified(
    tmp_path: Path,
) -> None:
    async with running_pipeline(tmp_path, notices={"on_reject": "email"}) as pipeline:
        _, final = await converse(session_for(pipeline), ANNOUNCEMENT)
        notices = [
            m for m in pipeline.store.sync.list_messages(None, 50) if m.kind.value == "notice"
        ]
        assert final == [protocol.DISCARD]
        assert [n.recipients[0].rcpt for n in notices] == [SENDER]
        [(_, state, raw)] = stored(pipeline)
        assert state == "rejected" and raw is None


async def test_a_recipient_outside_the_allowed_domains_is_refused_at_rcpt(
    pipeline: Pipeline,
) -> None:
    outsider = "someone@gmail.com"
    rcpt, _ = await converse(session_for(pipeline), letter(1), (COLLEAGUE, outsider))
    expected = pipeline.check_recipient(SENDER, outsider, [COLLEAGUE])
    assert expected is not None
    assert rcpt == [protocol.CONTINUE, ReplyCode(str(expected))]
    assert str(expected).startswith("550 5.7.1 recipient.domain: ")


async def test_a_null_sender_is_refused_for_a_recipient_at_the_end_unless_marked(
    pipeline: Pipeline,
) -> None:
    outsider = "secretariat@cabinet-exemple.fr"  # a sender's address, outside the domains
    expected = pipeline.check_recipient("", outsider, [])
    assert expected is not None
    session = session_for(pipeline)
    rcpt, final = await converse(session, letter(1), (outsider,), mail_from="")
    assert rcpt == [protocol.CONTINUE]
    assert final == [ReplyCode(str(expected))]
    # apiguard's own notice to that sender, marked: it passes.
    mark = session.marker.mark("", [outsider], split_body(letter(1)))
    _, final = await converse(session, marked(letter(1), mark), (outsider,), mail_from="")
    assert final == [ChangeHeader(HEADER, 1), protocol.CONTINUE]


async def test_a_message_over_the_size_limit_is_refused_and_not_kept(pipeline: Pipeline) -> None:
    _, final = await converse(session_for(pipeline, max_size=200), letter(1))
    assert final == [ReplyCode(str(replies.message_too_big(200)))]
    assert stored(pipeline) == []


async def test_a_store_that_cannot_write_answers_a_temporary_failure(
    pipeline: Pipeline,
) -> None:
    await pipeline.store.run(pipeline.store.sync.close)  # the database is gone
    _, final = await converse(session_for(pipeline), NO_PATIENT)
    [failure] = final
    assert isinstance(failure, ReplyCode) and failure.temporary


async def test_a_valid_mark_passes_once_and_is_deleted(pipeline: Pipeline) -> None:
    session = session_for(pipeline)
    mark = session.marker.mark(SENDER, [COLLEAGUE], split_body(NO_PATIENT))
    _, final = await converse(session, marked(NO_PATIENT, mark))
    assert final == [ChangeHeader(HEADER, 1), protocol.CONTINUE]
    assert stored(pipeline) == []  # not judged again, not recorded again
    # The same mark again (a replay): judged like any message, and still deleted.
    _, again = await converse(session_for(pipeline), marked(NO_PATIENT, mark))
    assert again == [ChangeHeader(HEADER, 1), protocol.DISCARD]
    [(_, state, raw)] = stored(pipeline)
    assert state == "held" and raw is not None and HEADER.encode() not in raw


async def test_a_mark_for_other_recipients_is_ignored(pipeline: Pipeline) -> None:
    session = session_for(pipeline)
    mark = session.marker.mark(SENDER, [COLLEAGUE], split_body(NO_PATIENT))
    other = "dr.petit@medical75.apicrypt.org"
    _, final = await converse(session, marked(NO_PATIENT, mark), (COLLEAGUE, other))
    assert final == [ChangeHeader(HEADER, 1), protocol.DISCARD]


async def test_every_mark_header_is_deleted_last_first(pipeline: Pipeline) -> None:
    forged = f"{HEADER}: v1 1 {'a' * 32} {'b' * 64}\r\n".encode()
    _, final = await converse(session_for(pipeline), forged + forged + letter(1))
    assert final == [ChangeHeader(HEADER, 2), ChangeHeader(HEADER, 1), protocol.CONTINUE]


def test_a_success_the_pipeline_did_not_decide_is_never_an_accept() -> None:
    assert answer(replies.queued("x")) == protocol.TEMPFAIL
    decided = replies.held("x")
    assert answer(decided) == protocol.TEMPFAIL  # no verdict, no id
    from dataclasses import replace

    assert answer(replace(decided, verdict=Verdict.HOLD, message_id="x")) == protocol.DISCARD
    assert answer(replace(decided, verdict=Verdict.FORWARD, message_id="x")) == protocol.CONTINUE
    assert answer(replies.STORE_FAILED) == ReplyCode(str(replies.STORE_FAILED))


# -- the listener --------------------------------------------------------------------


async def test_the_listener_negotiates_and_closes_on_garbage(pipeline: Pipeline) -> None:
    server = MilterServer("inet:127.0.0.1:0", lambda: session_for(pipeline), timeout=5)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(protocol.packet(b"O", POSTFIX_OFFER))
        await writer.drain()
        length = protocol.split_length(await reader.readexactly(4))
        command, data = protocol.parse_command(await reader.readexactly(length))
        assert command is Command.OPTNEG
        assert Negotiation.parse(data).actions == Action.ADDHDRS | Action.CHGHDRS
        writer.write(b"\0\0\0\x02Zz")  # no such command
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        port = server.port
        await server.stop(1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_the_listener_acknowledges_an_unanswered_tcp_read_at_once(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postfix's next packet must not wait for a delayed ACK (see `quick_ack`)."""
    acknowledged: list[int] = []

    def recording(sock: socket.socket) -> None:
        acknowledged.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE))
        quick_ack(sock)

    monkeypatch.setattr("apiguard.milter.server.quick_ack", recording)
    server = MilterServer("inet:127.0.0.1:0", lambda: session_for(pipeline), timeout=5)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(protocol.packet(b"O", POSTFIX_OFFER))
        await writer.drain()
        length = protocol.split_length(await reader.readexactly(4))
        await reader.readexactly(length)
        # The negotiation's answer carried the ACK: no quick ACK needed.
        assert acknowledged == []
        # A stage apiguard does not answer (CONNECT, no reply negotiated) is
        # acknowledged at once.
        writer.write(protocol.packet(b"C", b"localhost\x004\x00\x19127.0.0.1\x00"))
        await writer.drain()
        for _ in range(200):
            if acknowledged:
                break
            await asyncio.sleep(0.01)
        assert acknowledged == [socket.SOCK_STREAM]
        writer.close()
    finally:
        await server.stop(1)


async def test_the_listener_serves_a_unix_socket_for_postfix_only(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    path = tmp_path / "milter.sock"
    path.touch()  # not a socket: left alone, the bind fails
    server = MilterServer(f"unix:{path}", lambda: session_for(pipeline), timeout=5)
    with pytest.raises(OSError):
        await server.start()
    path.unlink()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a socket left by a previous run is replaced
    stale.close()
    await server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(protocol.packet(b"O", POSTFIX_OFFER))
        length = protocol.split_length(await reader.readexactly(4))
        command, _ = protocol.parse_command(await reader.readexactly(length))
        assert command is Command.OPTNEG
        writer.close()
    finally:
        await server.stop(1)
