"""The relay client pipelines MAIL, RCPT and DATA when the relay offers
PIPELINING (RFC 2920), reads every reply in order, and keeps the connection for
the next message; a relay that does not offer it gets one command at a time.

The scripted relay here withholds every reply until the whole group has
arrived: a client that waited for the MAIL reply before sending RCPT would
never finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apiguard.config import RelaySettings
from apiguard.relay.base import SpooledContent
from apiguard.relay.smtp import SmtpRelay, wire_body
from tests.support import Sink

MESSAGE = b"Subject: essai\r\n\r\nLigne 1\r\n.ligne avec point\r\n"


@dataclass
class Transaction:
    commands: list[bytes]
    data: bytes | None = None


@dataclass
class ScriptedRelay:
    """A raw SMTP server offering PIPELINING. `answer` gives the reply to each
    command of a group (MAIL, RCPT..., DATA); replies go out only once the
    group's DATA has arrived, all in one write."""

    answer: Callable[[bytes], bytes]
    after_data: bytes = b"250 2.0.0 queued\r\n"
    pipelining: bool = True
    # False: after the 354, read nothing more (a stalled relay); `early` is
    # then sent at once instead of waiting for the end of data.
    read_data: bool = True
    early: bytes = b""
    answer_rset: bool = True
    transactions: list[Transaction] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    rset_seen: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0, limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.released.set()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            writer.write(b"220 relay.test ESMTP\r\n")
            await reader.readline()  # EHLO
            extensions = b"250-PIPELINING\r\n" if self.pipelining else b""
            writer.write(b"250-relay.test\r\n" + extensions + b"250 SIZE 1000000\r\n")
            while True:
                line = await reader.readline()
                if not line or line == b"QUIT\r\n":
                    writer.write(b"221 bye\r\n")
                    return
                if line == b"RSET\r\n":
                    self.rset_seen = True
                    if self.answer_rset:
                        writer.write(b"250 ok\r\n")
                    continue
                group = [line]
                while self.pipelining and line != b"DATA\r\n":
                    line = await reader.readline()
                    if not line:
                        return
                    group.append(line)
                replies = [self.answer(command) for command in group]
                writer.write(b"".join(replies))
                transaction = Transaction(group)
                self.transactions.append(transaction)
                if not self.pipelining:
                    while line != b"DATA\r\n":
                        line = await reader.readline()
                        if not line:
                            return
                        group.append(line)
                        writer.write(self.answer(line))
                    replies.append(self.answer(line))
                if replies[-1].startswith(b"354") and not self.read_data:
                    writer.write(self.early)
                    await self.released.wait()  # reads nothing more until stopped
                    return
                if replies[-1].startswith(b"354"):
                    lines = []
                    while (line := await reader.readline()) != b".\r\n":
                        if not line:
                            return
                        lines.append(line)
                    transaction.data = b"".join(lines) + line
                    writer.write(self.after_data)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.closed += 1
            writer.close()


Factory = Callable[..., Awaitable[ScriptedRelay]]


def accept_all(command: bytes) -> bytes:
    if command.startswith(b"DATA"):
        return b"354 go ahead\r\n"
    return b"250 2.1.0 ok\r\n"


@pytest.fixture
async def relay_factory() -> AsyncIterator[Callable[..., Awaitable[ScriptedRelay]]]:
    started: list[ScriptedRelay] = []

    async def make(**kwargs: object) -> ScriptedRelay:
        relay = ScriptedRelay(**kwargs)  # type: ignore[arg-type]
        await relay.start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        await relay.stop()


def client_for(port: int) -> SmtpRelay:
    return SmtpRelay(
        RelaySettings(host="127.0.0.1", port=port, security="none", timeout=5, connections=1)
    )


async def test_one_write_for_the_envelope_and_the_connection_is_kept(
    relay_factory: Factory,
) -> None:
    relay = await relay_factory(answer=accept_all)
    client = client_for(relay.port)
    try:
        for n in range(3):
            result = await asyncio.wait_for(
                client.send("a@x.test", [f"b{n}@y.test", "c@y.test"], MESSAGE), 10
            )
            assert {r: reply.code for r, reply in result.replies.items()} == {
                f"b{n}@y.test": 250,
                "c@y.test": 250,
            }
    finally:
        await client.close()
    assert relay.connections == 1
    assert relay.transactions[0].commands == [
        b"MAIL FROM:<a@x.test> SIZE=%d\r\n" % len(wire_body(MESSAGE)),
        b"RCPT TO:<b0@y.test>\r\n",
        b"RCPT TO:<c@y.test>\r\n",
        b"DATA\r\n",
    ]
    # Dot-stuffed on the wire, ended by the lone dot.
    assert relay.transactions[0].data == (
        b"Subject: essai\r\n\r\nLigne 1\r\n..ligne avec point\r\n.\r\n"
    )


async def test_refused_recipient_gets_its_own_reply(relay_factory: Factory) -> None:
    def answer(command: bytes) -> bytes:
        if b"<inconnu@y.test>" in command:
            return b"550-5.1.1 no such user\r\n550 5.1.1 here\r\n"
        return accept_all(command)

    relay = await relay_factory(answer=answer)
    client = client_for(relay.port)
    try:
        result = await client.send("a@x.test", ["inconnu@y.test", "ok@y.test"], MESSAGE)
        again = await client.send("a@x.test", ["ok@y.test"], MESSAGE)
    finally:
        await client.close()
    assert result.replies["inconnu@y.test"].code == 550
    assert "no such user" in result.replies["inconnu@y.test"].text
    assert result.replies["ok@y.test"].code == 250
    assert again.replies["ok@y.test"].code == 250
    assert relay.connections == 1
    assert all(t.data is not None for t in relay.transactions)


async def test_all_refused_while_data_said_354_ends_the_data_empty(relay_factory: Factory) -> None:
    """RFC 2920 3.1: a relay may accept DATA with no valid recipient; the
    client then sends the lone dot, and the connection stays usable."""

    def answer(command: bytes) -> bytes:
        if command.startswith(b"RCPT"):
            return b"550 5.1.1 unknown\r\n"
        return accept_all(command)

    relay = await relay_factory(answer=answer, after_data=b"554 5.5.1 no valid recipients\r\n")
    client = client_for(relay.port)
    try:
        result = await client.send("a@x.test", ["x@y.test", "z@y.test"], MESSAGE)
        relay.answer = accept_all
        relay.after_data = b"250 ok\r\n"
        after = await client.send("a@x.test", ["x@y.test"], MESSAGE)
    finally:
        await client.close()
    assert {reply.code for reply in result.replies.values()} == {550}
    assert relay.transactions[0].data == b".\r\n"
    assert after.replies["x@y.test"].code == 250
    assert relay.connections == 1


async def test_refused_sender_refuses_every_recipient(relay_factory: Factory) -> None:
    def answer(command: bytes) -> bytes:
        if command.startswith(b"MAIL"):
            return b"552 5.3.4 message too big\r\n"
        return b"503 5.5.1 need MAIL\r\n"

    relay = await relay_factory(answer=answer)
    client = client_for(relay.port)
    try:
        result = await client.send("a@x.test", ["x@y.test", "z@y.test"], MESSAGE)
    finally:
        await client.close()
    assert {r: reply.code for r, reply in result.replies.items()} == {
        "x@y.test": 552,
        "z@y.test": 552,
    }
    assert relay.transactions[0].data is None


async def test_refused_content_is_the_data_reply(relay_factory: Factory) -> None:
    relay = await relay_factory(answer=accept_all, after_data=b"554 5.7.1 rejected\r\n")
    client = client_for(relay.port)
    try:
        result = await client.send("a@x.test", ["x@y.test"], MESSAGE)
    finally:
        await client.close()
    assert result.replies["x@y.test"].code == 554


async def test_relay_closing_in_the_group_is_a_temporary_failure(relay_factory: Factory) -> None:
    def answer(command: bytes) -> bytes:
        if command.startswith(b"RCPT"):
            return b"421 4.3.2 shutting down\r\n"
        return accept_all(command)

    relay = await relay_factory(answer=answer)
    client = client_for(relay.port)
    try:
        result = await client.send("a@x.test", ["x@y.test"], MESSAGE)
    finally:
        await client.close()
    assert result.replies["x@y.test"].code == 451  # retried later


@pytest.mark.parametrize("pipelining", [True, False])
async def test_malformed_reply_is_a_temporary_failure(
    relay_factory: Factory, pipelining: bool
) -> None:
    def answer(command: bytes) -> bytes:
        if command.startswith(b"RCPT"):
            return b"HELLO there\r\n"
        return accept_all(command)

    relay = await relay_factory(answer=answer, pipelining=pipelining)
    client = client_for(relay.port)
    try:
        result = await asyncio.wait_for(client.send("a@x.test", ["x@y.test"], MESSAGE), 10)
    finally:
        await client.close()
    assert result.replies["x@y.test"].code == 451


async def test_silent_relay_times_out(relay_factory: Factory) -> None:
    relay = await relay_factory(answer=lambda command: b"")
    client = SmtpRelay(
        RelaySettings(host="127.0.0.1", port=relay.port, security="none", timeout=0.5)
    )
    try:
        result = await asyncio.wait_for(client.send("a@x.test", ["x@y.test"], MESSAGE), 10)
    finally:
        await client.close()
    assert result.replies["x@y.test"].code == 451


async def test_spooled_content_is_streamed_after_the_pipelined_group(
    relay_factory: Factory,
    tmp_path: Path,
) -> None:
    body = b"Subject: gros\r\n\r\n" + b"".join(b".%06d ligne\r\n" % n for n in range(60_000))
    path = tmp_path / "spooled"
    path.write_bytes(body)
    relay = await relay_factory(answer=accept_all)
    client = client_for(relay.port)
    try:
        result = await client.send(
            "a@x.test", ["x@y.test"], SpooledContent(path=path, size=len(body))
        )
    finally:
        await client.close()
    assert result.replies["x@y.test"].code == 250
    assert relay.transactions[0].data == body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def test_relay_without_pipelining_gets_one_command_at_a_time(relay_factory: Factory) -> None:
    relay = await relay_factory(answer=accept_all, pipelining=False)
    client = client_for(relay.port)
    try:
        result = await asyncio.wait_for(
            client.send("a@x.test", ["x@y.test", "z@y.test"], MESSAGE), 10
        )
    finally:
        await client.close()
    assert {reply.code for reply in result.replies.values()} == {250}
    assert relay.transactions[0].data is not None


@pytest.mark.parametrize("pipelining", [True, False])
async def test_real_smtp_server_both_ways(sink: Sink, pipelining: bool) -> None:
    sink.handler.pipelining = pipelining
    sink.handler.refuse["nope@y.test"] = "550 5.1.1 unknown"
    client = client_for(sink.port)
    try:
        for _ in range(2):
            result = await client.send("a@x.test", ["x@y.test", "nope@y.test"], MESSAGE)
            assert result.replies["x@y.test"].code == 250
            assert result.replies["nope@y.test"].code == 550
    finally:
        await client.close()
    assert len(sink.handler.messages) == 2
    assert sink.handler.messages[0].data == MESSAGE
    assert sink.handler.ehlo_count == 1


@pytest.mark.parametrize(
    "answer_data",
    [b"250 2.0.0 ok\r\n", b"252 2.1.5 maybe\r\n"],
    ids=["data-answered-250", "rcpt-answered-252"],
)
async def test_replies_out_of_step_are_never_a_delivery(
    relay_factory: Factory, answer_data: bytes
) -> None:
    """A 2xx where a refusal or the 354 was due (a stray line, a confused
    relay) means the replies are out of step: a temporary failure, never a
    message reported delivered that the relay never received."""

    def answer(command: bytes) -> bytes:
        if command.startswith(b"DATA") and answer_data.startswith(b"250"):
            return answer_data
        if command.startswith(b"RCPT") and answer_data.startswith(b"252"):
            return answer_data
        return accept_all(command)

    relay = await relay_factory(answer=answer)
    client = client_for(relay.port)
    try:
        result = await asyncio.wait_for(client.send("a@x.test", ["x@y.test"], MESSAGE), 10)
        relay.answer = accept_all
        after = await asyncio.wait_for(client.send("a@x.test", ["x@y.test"], MESSAGE), 10)
    finally:
        await client.close()
    assert result.replies["x@y.test"].code == 451
    assert not any(t.data and t.data != b".\r\n" for t in relay.transactions[:-1])
    assert after.replies["x@y.test"].code == 250


async def test_stray_extra_reply_is_not_read_as_the_next_message_s(
    relay_factory: Factory,
) -> None:
    relay = await relay_factory(answer=accept_all, after_data=b"250 queued\r\n250 again\r\n")
    client = client_for(relay.port)
    try:
        first = await client.send("a@x.test", ["x@y.test"], MESSAGE)
        await asyncio.sleep(0.1)
        second = await asyncio.wait_for(client.send("a@x.test", ["z@y.test"], MESSAGE), 10)
    finally:
        await client.close()
    assert first.replies["x@y.test"].code == 250
    # Either a fresh connection delivered it, or it is retried: never a false 250.
    delivered = [t for t in relay.transactions if t.data and b"z@y.test" in b"".join(t.commands)]
    assert (second.replies["z@y.test"].code == 250) == bool(delivered)


async def test_connection_lost_after_the_content_is_not_resent_at_once(
    relay_factory: Factory,
) -> None:
    relay = await relay_factory(answer=accept_all, after_data=b"")
    client = client_for(relay.port)

    async def close_after_data() -> None:
        await eventually_data(relay)
        for writer in list(relay.writers):
            writer.close()

    closer = asyncio.create_task(close_after_data())
    try:
        result = await asyncio.wait_for(client.send("a@x.test", ["x@y.test"], MESSAGE), 10)
    finally:
        await closer
        await client.close()
    assert result.replies["x@y.test"].code == 451  # the normal retry sends it again
    assert sum(1 for t in relay.transactions if t.data) == 1


async def eventually_data(relay: ScriptedRelay) -> None:
    for _ in range(500):
        if any(t.data for t in relay.transactions):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no content reached the relay")


async def test_relay_that_stops_reading_the_content_times_out(
    relay_factory: Factory, tmp_path: Path
) -> None:
    body = b"Subject: gros\r\n\r\n" + b"x" * 998 + b"\r\n"
    path = tmp_path / "spooled"
    path.write_bytes(body * 30_000)  # 30 MB: more than the socket buffers hold
    relay = await relay_factory(answer=accept_all, read_data=False)
    client = SmtpRelay(
        RelaySettings(host="127.0.0.1", port=relay.port, security="none", timeout=0.5)
    )
    try:
        result = await asyncio.wait_for(
            client.send("a@x.test", ["x@y.test"], SpooledContent(path, path.stat().st_size)), 20
        )
    finally:
        await client.close()
    assert result.replies["x@y.test"].code == 451
    # Not a read timeout: the relay stopped taking the content.
    assert result.replies["x@y.test"].reason == "timeout: the relay stopped reading the message"


async def test_refusal_in_the_middle_of_the_content_stands(
    relay_factory: Factory, tmp_path: Path
) -> None:
    body = b"Subject: gros\r\n\r\n" + b"x" * 998 + b"\r\n"
    path = tmp_path / "spooled"
    path.write_bytes(body * 30_000)
    relay = await relay_factory(
        answer=accept_all, read_data=False, early=b"552 5.3.4 message too big\r\n"
    )
    client = client_for(relay.port)
    try:
        result = await asyncio.wait_for(
            client.send("a@x.test", ["x@y.test"], SpooledContent(path, path.stat().st_size)), 20
        )
    finally:
        await client.close()
    assert result.replies["x@y.test"].code == 552


async def test_cancelled_while_resetting_closes_the_connection(relay_factory: Factory) -> None:
    def answer(command: bytes) -> bytes:
        if command.startswith(b"RCPT"):
            return b"550 5.1.1 unknown\r\n"
        if command.startswith(b"DATA"):
            return b"554 5.5.1 no valid recipients\r\n"
        return accept_all(command)

    relay = await relay_factory(answer=answer, answer_rset=False)
    client = client_for(relay.port)
    task = asyncio.create_task(client.send("a@x.test", ["x@y.test"], MESSAGE))
    for _ in range(500):
        if relay.rset_seen:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(500):
        if relay.closed:
            break
        await asyncio.sleep(0.01)
    assert relay.closed == 1  # the relay saw the connection end: nothing leaked
    await client.close()
