"""Notices under hostile input: a relay's multi-line reply, attacker-chosen
headers, senders the practice does not own (real proxy, real sink)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiosmtplib
import pytest
import structlog

from apiguard import metrics
from apiguard.smtp.auth import hash_password
from tests.support import (
    Sink,
    eventually,
    letter,
    make_certificate,
    proxy_settings,
    running_proxy,
    send,
)

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


async def test_mail_from_an_ordinary_address_is_refused_by_default_and_gets_no_notice(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(app.port, "victim@outside.example", [COLLEAGUE], letter(2))
        await asyncio.sleep(0.5)  # a notice would be delivered by now
    assert refused.value.code == 550
    assert "sender.domain" in refused.value.message
    assert "messagerie securisee" in refused.value.message
    assert "secure health messaging" in refused.value.message
    assert sink.handler.messages == []


async def test_a_notice_to_a_sender_the_practice_does_not_own_is_dropped_logged_and_counted(
    sink: Sink, storage: Path
) -> None:
    # Any sender may submit (sender.domain only warns), but notices only go to owned ones.
    settings = proxy_settings(
        storage, sink.port, charter={"rules": {"sender.domain": {"action": "warn"}}}
    )
    held = b"Subject: question\r\n\r\nBonjour, une question sans patient.\r\n"
    before = dropped_count()
    async with running_proxy(settings) as app:
        with structlog.testing.capture_logs() as logs:
            _, reply = await send(app.port, "victim@outside.example", [COLLEAGUE], held)
            assert "held" in reply
            _, reply = await send(app.port, SENDER, [COLLEAGUE], held)
            assert "held" in reply
            await eventually(lambda: len(sink.handler.notices()) == 1)
            await asyncio.sleep(0.5)
    assert [n.rcpt_tos for n in sink.handler.notices()] == [[SENDER]]
    dropped = [e for e in logs if e["event"] == "notice.dropped"]
    assert [e["reason"] for e in dropped] == ["sender_not_owned"]
    assert "outside.example" not in str(dropped)
    assert dropped_count() == before + 1


def dropped_count() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "apiguard_notices_dropped_total", {"reason": "sender_not_owned"}
    )
    return value or 0.0


async def test_an_authenticated_sender_gets_its_notice_whatever_its_domain(
    sink: Sink, storage: Path, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    own = "secretariat@cabinet.example"
    settings = proxy_settings(
        storage,
        sink.port,
        smtp={
            "tls_cert": str(cert),
            "tls_key": str(key),
            "allowed_networks": ["10.0.0.0/8"],  # this loopback client must log in
            "users": {"secretariat": {"password_hash": hash_password("pw-123456"), "senders": []}},
        },
        charter={"rules": {"sender.domain": {"action": "warn"}}},
    )
    held = b"Subject: question\r\n\r\nBonjour, une question sans patient.\r\n"
    tls = ssl.create_default_context(cafile=str(cert))
    async with running_proxy(settings) as app:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=app.port, start_tls=True, tls_context=tls
        )
        async with client:
            await client.login("secretariat", "pw-123456")
            _, reply = await client.sendmail(own, [COLLEAGUE], held)
        assert "held" in reply
        await eventually(lambda: len(sink.handler.notices()) == 1)
    assert sink.handler.notices()[0].rcpt_tos == [own]
