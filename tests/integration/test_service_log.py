"""The service's log holds JSON lines only, whatever clients and relays do:
TLS handshakes that fail on both listeners, unknown commands, a letter
pipelined after a refused RCPT, a relay whose certificate does not verify.
And none of those lines repeats what a client sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from aiosmtpd.smtp import SMTP

from tests.integration.test_faults import apiguard_process
from tests.support import SinkHandler, eventually, free_port, letter, make_certificate, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"


def write_config(tmp_path: Path, port: int, tls_port: int, relay_port: int) -> Path:
    cert, key = make_certificate(tmp_path / "own")
    config = tmp_path / "apiguard.toml"
    config.write_text(
        f"""
[smtp]
port = {port}
implicit_tls_port = {tls_port}
tls_cert = "{cert}"
tls_key = "{key}"
max_errors = 30
[ops]
port = 0
[relay]
host = "127.0.0.1"
port = {relay_port}
security = "starttls"
[storage]
path = "{tmp_path / "var"}"
[delivery]
retry_initial = 0.2
retry_max = 0.5
poll_interval = 0.05
[processing]
workers = 0
[logging]
format = "json"
level = "debug"
"""
    )
    return config


@contextlib.asynccontextmanager
async def untrusted_relay(tmp_path: Path, port: int) -> AsyncIterator[None]:
    """A relay offering STARTTLS with a self-signed certificate nobody trusts."""
    cert, key = make_certificate(tmp_path / "relay")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(SinkHandler(), hostname="relay.test", loop=loop, tls_context=context),
        "127.0.0.1",
        port,
    )
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def reply(reader: asyncio.StreamReader) -> None:
    """Read one whole reply: up to its last line (`NNN text`, not `NNN-text`).
    Hanging up with part of it unread would reset the connection, and the
    server would drop what it had not read yet."""
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return


async def talk(port: int, lines: list[bytes], *, then: bytes = b"") -> None:
    """Say `lines` (reading what comes back), then send `then` raw and hang up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.wait_for(reader.readline(), 5)
        for line in lines:
            writer.write(line)
            await asyncio.wait_for(reply(reader), 5)
        if then:
            writer.write(then)
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(4096), 1)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def test_the_log_is_json_only_and_never_repeats_the_client(tmp_path: Path) -> None:
    port, tls_port, relay_port = free_port(), free_port(), free_port()
    config = write_config(tmp_path, port, tls_port, relay_port)
    log: list[bytes] = []
    async with untrusted_relay(tmp_path, relay_port), apiguard_process(config, port, log):
        # STARTTLS, then bytes that are no TLS handshake.
        await talk(port, [b"EHLO c.test\r\n", b"STARTTLS\r\n"], then=b"TESTPATIENT " * 50)
        # Plain text on the implicit TLS port.
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_port)
        writer.write(b"EHLO TESTPATIENT\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        # Unknown commands, and a letter pipelined after a refused RCPT.
        await talk(
            port,
            [b"EHLO c.test\r\n", b"XCLIENT ADDR=TESTPATIENT\r\n", b"HELP TESTPATIENT\r\n"],
            then=b"MAIL FROM:<"
            + SENDER.encode()
            + b">\r\nRCPT TO:<camille.testpatient@gmail.com>\r\nDATA\r\n"
            + letter(1),
        )
        # A letter the relay cannot take: its certificate does not verify.
        await send(port, SENDER, [COLLEAGUE], letter(2))

        def reason_logged() -> bool:
            return any(b"certificate verify failed" in line for line in log)

        await eventually(reason_logged)
    # `apiguard_process` checked that every line is JSON.
    records = [json.loads(line) for line in log]
    raw = b"".join(log)
    for secret in (b"TESTPATIENT", b"testpatient", b"Camille", b"XCLIENT ADDR"):
        assert secret not in raw, secret
    events = {record["event"] for record in records}
    assert {"smtp.refused", "smtp.server_log", "delivery.attempt"} <= events
    refused = {(r["stage"], r["cause"]) for r in records if r["event"] == "smtp.refused"}
    assert {("command", "unknown_command"), ("rcpt", "charter")} <= refused
