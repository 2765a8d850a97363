"""Notices under hostile input: a relay's multi-line reply, attacker-chosen
headers, senders the practice does not own (real proxy, real sink)."""

from __future__ import annotations

from pathlib import Path

from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
OTHER = "dr.petit@medical75.apicrypt.org"


async def test_a_multi_line_relay_reply_with_controls_becomes_one_clean_dsn_line(
    sink: Sink, storage: Path
) -> None:
    sink.handler.refuse[OTHER] = (
        "550-5.1.1 first line\r\n550-5.1.1 X-Injected: yes\x1b[31m\x07\r\n550 5.1.1 last line"
    )
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        await send(app.port, SENDER, [COLLEAGUE, OTHER], letter(1))
        await eventually(lambda: len(sink.handler.notices()) == 1)
    report = sink.handler.notices()[0].message
    status = next(
        p for p in report.iter_parts() if p.get_content_type() == "message/delivery-status"
    )
    raw_status = status.as_bytes()
    assert b"\x1b" not in raw_status and b"\x07" not in raw_status
    # The injected "header" stays inside the one Diagnostic-Code line.
    lines = raw_status.decode().splitlines()
    assert not any(line.startswith("X-Injected") for line in lines)
    unfolded = raw_status.decode().replace("\r\n", "\n").replace("\n ", " ")
    diagnostic = [line for line in unfolded.splitlines() if line.startswith("Diagnostic-Code:")]
    assert len(diagnostic) == 1
    assert "first line" in diagnostic[0] and "last line" in diagnostic[0]
    text = next(p for p in report.iter_parts() if p.get_content_type() == "text/plain")
    assert "\x1b" not in text.get_content()


async def test_a_notice_quotes_few_header_lines_whatever_the_message_carries(
    sink: Sink, storage: Path
) -> None:
    extra = "".join(f"References: <a{n}@medical69.apicrypt.org>\r\n" for n in range(51)).encode()
    held = extra + b"Subject: rien\r\n\r\nBonjour, une question sans patient.\r\n"
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], held)
        assert "held" in reply
        await eventually(lambda: len(sink.handler.notices()) == 1)
    notice = sink.handler.notices()[0]
    quoted = next(
        p for p in notice.message.iter_parts() if p.get_content_type() == "text/rfc822-headers"
    )
    text = quoted.get_content()
    assert 0 < text.count("References: <a") <= 20
    assert len(text.encode()) <= 4096 + 100
    assert len(notice.data) < 20_000
