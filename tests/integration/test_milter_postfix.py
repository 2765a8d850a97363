"""`apiguard milter` inside a real Postfix (Debian's, a private instance):
what a practice sending through its existing mail server sees."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest

from tests.integration.milter_postfix import postfix_with_milter
from tests.support import Sink, eventually, letter, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
MARK = b"X-Apiguard-Release"

ANNOUNCEMENT = (
    "From: dr.martin@medical13.apicrypt.org\r\nTo: dr.durand@medical69.apicrypt.org\r\n"
    "Subject: Invitation soirée FMC\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Chers confrères,\r\nNous avons le plaisir de vous inviter à notre soirée de formation "
    "médicale continue le jeudi 12 décembre à 20h. Inscription obligatoire avant le 5 "
    "décembre.\r\nConfraternellement\r\n"
).encode()

# No patient named: held for review (art1.no-patient-data).
NO_PATIENT = (
    b"From: dr.martin@medical13.apicrypt.org\r\nTo: dr.durand@medical69.apicrypt.org\r\n"
    b"Subject: Question\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Bonjour, peux-tu me rappeler demain matin au cabinet ? Merci.\r\n"
)


def assert_unchanged(delivered: bytes, sent: bytes) -> None:
    """The same body, byte for byte, and every header line sent, in order
    (Postfix adds its Received line, and a Date when the client gave none)."""
    delivered_head, _, delivered_body = delivered.partition(b"\r\n\r\n")
    sent_head, _, sent_body = sent.partition(b"\r\n\r\n")
    assert delivered_body == sent_body
    lines = delivered_head.split(b"\r\n")
    positions = [lines.index(line) for line in sent_head.split(b"\r\n")]
    assert positions == sorted(positions)


def review(config: Path, *arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "apiguard", "review", *arguments, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def held_ids(config: Path) -> list[str]:
    return [m["id"] for m in json.loads(review(config, "list", "--json"))]


async def test_a_legitimate_letter_is_delivered_unchanged(tmp_path: Path, sink: Sink) -> None:
    raw = letter(1)
    async with postfix_with_milter(tmp_path, sink.port) as (postfix, milter):
        _, reply = await send(postfix.smtp_port, SENDER, [COLLEAGUE], raw)
        assert reply.startswith("2.0.0 Ok: queued as")
        await eventually(lambda: len(sink.handler.messages) == 1, timeout=30)
    delivered = sink.handler.messages[0]
    assert delivered.rcpt_tos == [COLLEAGUE]
    assert_unchanged(delivered.data, raw)
    assert MARK not in delivered.data
    decisions = milter.events("smtp.decision")
    assert [d["verdict"] for d in decisions] == ["forward"]
