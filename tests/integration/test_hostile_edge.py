"""The SMTP edge under hostile input, through real sockets: control characters
in addresses, the null sender, the memory budget for message data in flight,
and per-address connection limits (real proxy and sink on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiosmtplib
import pytest
import structlog

from apiguard.cli import main
from apiguard.controls import terminal_safe
from apiguard.notices import FailedRecipient, NoticeIdentity, bounce
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

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


WEBINAR = (
    b"From: <urps@medical69.apicrypt.org>\r\nSubject: Webinaire teleexpertise\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"L'URPS organise un webinaire le mardi 8 avril de 13h a 14h. Inscrivez-vous ici : "
    b"https://example.invalid/webinaire\r\n"
)


async def test_the_null_sender_is_refused_for_anything_but_a_genuine_report(
    sink: Sink, storage: Path
) -> None:
    """Issue 18: twelve identical announcements under `<>` were all delivered."""
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        with structlog.testing.capture_logs() as logs:
            for n in range(12):
                with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                    await send(app.port, "", [f"dr.n{n}@medical69.apicrypt.org"], WEBINAR)
                assert refused.value.code == 550
                assert refused.value.message.startswith("5.7.1 sender.null")
                assert "avis de non-remise" in refused.value.message
            # A genuine report goes through, and gets no notice back.
            _, reply = await send(app.port, "", [SENDER], genuine_report())
            assert reply.startswith("2.0.0 queued")
            await eventually(lambda: len(sink.handler.messages) == 1)
            await asyncio.sleep(0.3)
    assert sink.handler.messages[0].rcpt_tos == [SENDER]
    assert sink.handler.messages[0].mail_from in ("", "<>")
    decisions = [e for e in logs if e["event"] == "smtp.decision"]
    assert [d["verdict"] for d in decisions] == ["reject"] * 12 + ["forward"]
    assert all(d["notices"] == 0 for d in decisions)


async def test_the_volume_rules_count_mail_under_the_null_sender(sink: Sink, storage: Path) -> None:
    # Even where `sender.null` only warns, `<>` does not escape Article 2.
    settings = proxy_settings(
        storage, sink.port, charter={"rules": {"sender.null": {"action": "warn"}}}
    )
    async with running_proxy(settings) as app:
        with structlog.testing.capture_logs() as logs:
            for n in range(7):
                with contextlib.suppress(aiosmtplib.SMTPDataError):
                    await send(app.port, "", [f"dr.n{n}@medical69.apicrypt.org"], letter(1))
    decisions = [e for e in logs if e["event"] == "smtp.decision"]
    assert [d["verdict"] for d in decisions] == ["forward"] * 5 + ["reject"] * 2
    assert all("art2.fanout" in d["rules"] for d in decisions[5:])


async def test_a_report_under_the_null_sender_takes_one_recipient(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        reader, writer = await session(app.port)
        assert (await command(reader, writer, b"MAIL FROM:<>"))[:3] == "250"
        assert (await command(reader, writer, f"RCPT TO:<{SENDER}>".encode()))[:3] == "250"
        reply = await command(reader, writer, f"RCPT TO:<{COLLEAGUE}>".encode())
        assert reply.startswith("452 4.5.3 ") and "un seul destinataire" in reply
        writer.close()


def genuine_report() -> bytes:
    return bounce(
        identity=NoticeIdentity(reporting_mta="mta.medical13.apicrypt.org"),
        message_id="m1",
        sender=SENDER,
        failures=[FailedRecipient(COLLEAGUE, "failed", "5.1.1", "smtp; 550 5.1.1 unknown")],
        original_raw=letter(9),
        arrival=0.0,
    )


async def test_past_the_memory_budget_new_data_gets_452_before_it_is_read(
    sink: Sink, storage: Path
) -> None:
    limit = 1024 * 1024
    settings = proxy_settings(storage, sink.port, smtp={"max_inflight_bytes": limit})
    async with running_proxy(settings) as app:
        budget = app.listeners.budget
        # Other sessions' data in memory: all but 40 KB of the budget (how much a
        # slow upload holds depends on how the socket splits it; here it is exact).
        assert budget.take(limit - 40_000)
        reader, writer = await session(app.port)
        reply = await command(reader, writer, f"MAIL FROM:<{SENDER}> SIZE=200000".encode())
        assert reply.startswith("452 4.3.1 ") and "memoire" in reply and "memory" in reply
        assert (await command(reader, writer, f"MAIL FROM:<{SENDER}>".encode()))[:3] == "250"
        assert (await command(reader, writer, f"RCPT TO:<{COLLEAGUE}>".encode()))[:3] == "250"
        assert (await command(reader, writer, b"DATA")).startswith("452 4.3.1 ")
        # The client is told before sending a byte of data; the session goes on.
        budget.give_back(limit - 40_000)
        assert (await command(reader, writer, b"DATA"))[:3] == "354"
        reply = await command(reader, writer, letter(1) + b".")
        assert reply.startswith("250 2.0.0 queued")
        writer.close()

        # A transfer that runs past the budget half-way: read to its end,
        # discarded, 452; and all of its charge comes back.
        assert budget.take(limit - 300_000)
        reader, writer = await session(app.port)
        for line in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{COLLEAGUE}>", "DATA"):
            assert (await command(reader, writer, line.encode()))[0] in "23"
        reply = await command(reader, writer, letter(2) + (b"Y" * 998 + b"\r\n") * 600 + b".")
        assert reply.startswith("452 4.3.1 ")
        writer.close()
        budget.give_back(limit - 300_000)
        await eventually(lambda: budget.used == 0)
    assert len(sink.handler.messages) == 1


async def test_concurrent_uploads_share_the_budget_and_none_goes_over_it(
    sink: Sink, storage: Path
) -> None:
    limit = 2 * 1024 * 1024
    settings = proxy_settings(storage, sink.port, smtp={"max_inflight_bytes": limit})
    message = letter(4) + (b"W" * 998 + b"\r\n") * 600  # about 600 KB each
    async with running_proxy(settings) as app:
        budget = app.listeners.budget
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, budget.used)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        outcomes = await asyncio.gather(
            *(send(app.port, SENDER, [COLLEAGUE], message) for _ in range(8)),
            return_exceptions=True,
        )
        watcher.cancel()
    # Read to the end and judged (the filler breaks HPRIM: 550), or refused for memory.
    judged = [o for o in outcomes if isinstance(o, aiosmtplib.SMTPDataError) and o.code == 550]
    over = [
        o for o in outcomes if isinstance(o, aiosmtplib.SMTPResponseException) and o.code == 452
    ]
    assert peak <= limit
    assert judged and over and len(judged) + len(over) == 8, outcomes
