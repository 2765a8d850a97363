"""SMTP fuzzing against a running apiguard (a real process on a loopback port):
random command sequences, sent in lockstep or pipelined in one write, with
malformed DATA. The server never crashes, answers every session with well-formed
replies, never fails inside a handler, stays available, and never leaves a
half-stored transaction in its store."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.service_log import assert_json_lines
from tests.support import free_port, letter

MAX_SIZE = 100_000
SENDER = b"dr.martin@medical13.apicrypt.org"


@dataclass
class Server:
    port: int
    database: Path
    log: Path
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    config = home / "apiguard.toml"
    # No relay host: accepted mail goes to the local maildir outbox.
    config.write_text(
        f"""
[smtp]
port = {port}
max_message_size = {MAX_SIZE}
max_recipients = 5
timeout = 10
max_connections_per_minute = 100000
[ops]
port = 0
[storage]
path = "{home / "var"}"
[logging]
format = "json"
"""
    )
    log = home / "apiguard.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "apiguard", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "apiguard exited early"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "apiguard did not start listening"
                time.sleep(0.05)
        yield Server(port, home / "var" / "apiguard.sqlite3", log, process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the vocabulary ----------------------------------------------------------------

CRLF = b"\r\n"


class Chunk(bytes):
    """Bytes that print short in Hypothesis's reports (some are 100 KB)."""

    def __repr__(self) -> str:
        head = bytes(self[:60])
        return f"Chunk({head!r}{'...' if len(self) > 60 else ''}, {len(self)} bytes)"


def _stuffed(raw: bytes) -> bytes:
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


addresses = st.sampled_from(
    [
        b"<dr.durand@medical69.apicrypt.org>",
        b"<dr.durand@medical69.apicrypt.org> NOTIFY=SUCCESS",
        b"<someone@gmail.com>",
        b"<>",
        b"<no-at-sign>",
        b"dr.durand@medical69.apicrypt.org",
        b'<"quoted local"@medical69.apicrypt.org>',
        b"<" + b"x" * 300 + b"@medical69.apicrypt.org>",
        b"<dr.d\xc3\xbcrand@medical69.apicrypt.org>",
    ]
)
senders = st.sampled_from(
    [
        b"<" + SENDER + b">",
        b"<" + SENDER + b"> SIZE=3000 BODY=8BITMIME",
        b"<" + SENDER + b"> SIZE=999999999",
        b"<" + SENDER + b"> SIZE=abc",
        b"<" + SENDER + b"> SMTPUTF8",
        b"<>",
        b"<nobody@elsewhere.example>",
        b"garbage",
        b"",
    ]
)
# DATA bodies, each with or without a proper terminator.
bodies = st.one_of(
    st.integers(0, 10_000).map(lambda n: _stuffed(letter(n)) + b".\r\n"),
    st.binary(max_size=2_000).map(lambda b: b + b"\r\n.\r\n"),
    st.binary(max_size=500),  # no terminator: the next commands become data
    st.just(b".\r\n"),  # empty message
    st.just(b"Subject: x\n\n.\n.\r\n"),  # bare LF, a lone dot that is no terminator
    st.just(
        b'Subject: \xff\xfe\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64\r\n.\r\n"
    ),
    st.just(b"Subject: long\r\n\r\n" + b"y" * 20_000 + b"\r\n.\r\n"),
    st.just(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * (MAX_SIZE // 900) + b".\r\n"),
    st.just(b"Subject: nul\r\n\r\n\x00\x00\r\n..\r\n...\r\n.\r\n"),
)
simple_commands = st.sampled_from(
    [
        b"EHLO client.test",
        b"HELO client.test",
        b"EHLO",
        b"RSET",
        b"NOOP",
        b"VRFY dr.durand",
        b"EXPN list",
        b"HELP",
        b"STARTTLS",
        b"AUTH PLAIN AGZvbwBiYXI=",
        b"BDAT 10 LAST",
        b"XYZZY",
        b"",
        b"DATA",
        b"MAIL",
        b"RCPT",
        b"QUIT",
        b"mail from:<dr.martin@medical13.apicrypt.org>",
        b"E" * 1_100,
    ]
)
step = st.one_of(
    simple_commands.map(lambda c: c + CRLF),
    senders.map(lambda a: b"MAIL FROM:" + a + CRLF),
    addresses.map(lambda a: b"RCPT TO:" + a + CRLF),
    bodies.map(lambda body: b"DATA\r\n" + body),
    st.binary(max_size=200).map(lambda b: b + CRLF),
)
transaction = st.tuples(senders, st.lists(addresses, min_size=1, max_size=3), bodies).map(
    lambda t: (
        [b"MAIL FROM:" + t[0] + CRLF]
        + [b"RCPT TO:" + a + CRLF for a in t[1]]
        + [b"DATA\r\n" + t[2]]
    )
)
sessions = st.lists(st.one_of(step.map(lambda s: [s]), transaction), min_size=1, max_size=8).map(
    lambda groups: [Chunk(b"EHLO fuzz.test\r\n")] + [Chunk(s) for g in groups for s in g]
)


# -- the client ---------------------------------------------------------------------


def _read_available(sock: socket.socket, wait: float) -> bytes:
    """Whatever the server says within `wait` seconds of quiet (or until EOF)."""
    data = b""
    sock.settimeout(wait)
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def converse(port: int, steps: list[bytes], pipelined: bool, *, half_close: bool = True) -> bytes:
    """Run one session; returns everything the server said. With `half_close`
    the client shuts its side down after the last step (aiosmtpd then cancels
    the transaction in progress, which must not leave it half-stored)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        said = _read_available(sock, 0.5) if not pipelined else b""
        try:
            if pipelined:
                sock.sendall(b"".join(steps))
            else:
                for chunk in steps:
                    sock.sendall(chunk)
                    said += _read_available(sock, 0.05)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server hung up (QUIT, or a line too long): fine
        said += _read_available(sock, 3.0)
    return said


def assert_well_formed(said: bytes) -> None:
    assert said, "no greeting"
    for line in said.split(b"\r\n")[:-1]:
        assert len(line) >= 3 and line[:3].isdigit(), f"malformed reply line {line[:80]!r}"
        assert line[3:4] in (b"", b" ", b"-"), f"malformed reply line {line[:80]!r}"
        # aiosmtpd answers "500 Error: (SomeException) ..." when a handler raised.
        assert b"Error: (" not in line, f"a handler failed: {line[:200]!r}"


def assert_still_answers(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        reader = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = reader.readline()
                assert line, "connection closed"
                if line[3:4] != b"-":
                    return line

        assert reply().startswith(b"220")
        sock.sendall(b"EHLO check.test\r\n")
        assert reply().startswith(b"250")
        sock.sendall(b"NOOP\r\n")
        assert reply().startswith(b"250")
        sock.sendall(b"QUIT\r\n")
        assert reply().startswith(b"221")


def assert_store_consistent(database: Path) -> None:
    """Every stored message has its recipients, and its content while a
    recipient still needs it; no content without its message."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        without_recipients = db.execute(
            "SELECT COUNT(*) FROM messages m"
            " WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id)"
        ).fetchone()[0]
        pending_without_data = db.execute(
            "SELECT COUNT(*) FROM recipients r"
            " WHERE r.state IN ('queued', 'deferred', 'sending', 'held')"
            " AND NOT EXISTS (SELECT 1 FROM message_data d WHERE d.id = r.message_id)"
        ).fetchone()[0]
        orphan_recipients = db.execute(
            "SELECT COUNT(*) FROM recipients r"
            " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = r.message_id)"
        ).fetchone()[0]
        orphan_data = db.execute(
            "SELECT COUNT(*) FROM message_data d"
            " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = d.id)"
        ).fetchone()[0]
    assert without_recipients == 0
    assert pending_without_data == 0
    assert orphan_recipients == 0
    assert orphan_data == 0


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=sessions, pipelined=st.booleans())
def test_random_sessions_never_break_the_server(
    server: Server, steps: list[bytes], pipelined: bool
) -> None:
    said = converse(server.port, steps, pipelined)
    assert_well_formed(said)
    assert server.process.poll() is None, "apiguard died"
    assert_still_answers(server.port)
    assert_store_consistent(server.database)


def test_pipelined_transactions_are_all_answered_and_stored(server: Server) -> None:
    rcpt = b"RCPT TO:<dr.durand@medical69.apicrypt.org>\r\n"
    steps = [b"EHLO pipe.test\r\n"]
    for n in range(5):
        steps += [b"MAIL FROM:<" + SENDER + b">\r\n", rcpt, b"DATA\r\n"]
        steps.append(_stuffed(letter(50_000 + n)) + b".\r\n")
    steps.append(b"QUIT\r\n")
    said = converse(server.port, steps, pipelined=True, half_close=False)
    assert_well_formed(said)
    codes = [line[:3] for line in said.split(b"\r\n") if line[3:4] == b" "]
    assert codes.count(b"354") == 5
    assert said.count(b"queued as") == 5
    assert codes[-1] == b"221"
    assert_store_consistent(server.database)


def test_the_log_shows_no_crash(server: Server) -> None:
    """Runs after the others in this module (file order): no traceback, no
    session exception, no failed evaluation in apiguard's log."""
    converse(server.port, [b"EHLO x\r\n", b"\xff\xfe garbage\r\n", b"QUIT\r\n"], True)
    assert_still_answers(server.port)
    text = server.log.read_text(errors="replace")
    for marker in ("Traceback", "session exception", "evaluation_failed", "Exception"):
        assert marker not in text, marker


def test_the_log_is_json_lines_that_never_repeat_what_the_client_sent(server: Server) -> None:
    """Runs last (file order): after every conversation above (refusals,
    garbage, pipelining, oversized lines), plus one that pipelines a letter's
    lines after a refused RCPT, and unknown commands aiosmtpd logs itself."""
    steps = [
        b"EHLO pipe.test\r\n",
        b"XCLIENT NAME=spoofed\r\n",
        b"MAIL FROM:<" + SENDER + b">\r\n",
        b"RCPT TO:<someone@gmail.com>\r\n",  # refused: not a secure-mail domain
        b"DATA\r\n",
        letter(60_000),  # taken for commands: "TESTPATIENT" among them
        b"QUIT\r\n",
    ]
    converse(server.port, steps, pipelined=True, half_close=False)
    assert_still_answers(server.port)
    raw = server.log.read_bytes()
    records = assert_json_lines(raw.splitlines())
    for secret in (b"TESTPATIENT", b"XCLIENT", b"spoofed", b"Camille", b"gmail.com"):
        assert secret not in raw, secret
    refused = {(r["stage"], r["cause"]) for r in records if r["event"] == "smtp.refused"}
    assert {("rcpt", "charter"), ("command", "unknown_command")} <= refused
    assert any(r["event"] == "smtp.server_log" for r in records)  # aiosmtpd's own, as JSON
