"""The SMTP edge under hostile input, through real sockets: control characters
in addresses, the null sender, the memory budget for message data in flight,
and per-address connection limits (real proxy and sink on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apiguard.cli import main
from apiguard.controls import terminal_safe
from tests.support import Sink, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"


async def session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO client.test\r\n")
    while not (line := await reader.readline()).startswith(b"250 "):
        assert line.startswith(b"250-")
    return reader, writer


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> str:
    writer.write(line + b"\r\n")
    await writer.drain()
    reply = b""
    while True:
        got = await asyncio.wait_for(reader.readline(), 10)
        reply += got
        if got[3:4] != b"-":
            return reply.decode("utf-8", "replace")


async def test_control_characters_in_addresses_are_refused_at_mail_and_rcpt(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        reader, writer = await session(app.port)
        for control in (b"\x07", b"\x1b[2J", b"\x00", b"\x7f"):
            sender = b'<"dr\\' + control + b'x"@medical13.apicrypt.org>'
            reply = await command(reader, writer, b"MAIL FROM:" + sender)
            assert reply.startswith("553 5.1.7 "), reply
            assert "caractere de controle" in reply and "control character" in reply
        assert (await command(reader, writer, f"MAIL FROM:<{SENDER}>".encode()))[:3] == "250"
        for control in (b"\x07", b"\x1b", b"\x00"):
            rcpt = b'<"dr' + control + b'durand"@medical69.apicrypt.org>'
            reply = await command(reader, writer, b"RCPT TO:" + rcpt)
            assert reply.startswith("553 5.1.3 "), reply
        assert (await command(reader, writer, f"RCPT TO:<{COLLEAGUE}>".encode()))[:3] == "250"
        assert (await command(reader, writer, b"DATA"))[:3] == "354"
        reply = await command(reader, writer, letter(1) + b".")
        assert reply.startswith("250 2.0.0 queued")
        writer.close()


async def test_review_show_and_list_print_no_terminal_control_sequences(
    sink: Sink, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = proxy_settings(
        storage, sink.port, charter={"rules": {"art5.review-all": {"enabled": True}}}
    )
    config = storage.parent / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n')
    hostile = letter(2).replace(
        b"Cher confr",
        b"\x1b]0;pwned\x07\x1b[2J\x1b[1;1Hrm -rf\r\x08\x9b31m\xc2\x9b2J Cher confr",
    )
    async with running_proxy(settings) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], hostile)
        held_id = reply.split()[-1]
        assert main(["review", "show", held_id, "--config", str(config)]) == 0
        shown = capsys.readouterr().out
        assert main(["review", "list", "--config", str(config)]) == 0
        listed = capsys.readouterr().out
    for printed in (shown, listed):
        assert not any(c in printed for c in "\x1b\x07\x08\r\x9b"), repr(printed)
    assert "rm -rf" in shown and "Cher confr" in shown  # the text itself stays readable
    assert held_id in listed and SENDER in listed


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain\ttext\nnext line", "plain\ttext\nnext line"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("over\rwrite", "overwrite"),
        ("\x9b2Jc1 csi", "c1 csi"),
        ("nul\x00 del\x7f bel\x07", "nul del bel"),
        ("Cher confrère, œdème", "Cher confrère, œdème"),
    ],
)
def test_terminal_safe_removes_escape_sequences_and_controls(text: str, shown: str) -> None:
    assert terminal_safe(text) == shown
