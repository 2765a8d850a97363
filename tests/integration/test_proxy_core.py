"""The store-and-forward core, through real sockets: apiguard and a sink on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiosmtplib
import pytest

from apiguard.cli import main
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
OTHER = "dr.petit@medical75.apicrypt.org"


async def test_a_forwarded_message_reaches_the_relay_with_its_body_unchanged(
    sink: Sink, storage: Path
) -> None:
    raw = letter(1)
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], raw)
        assert reply.startswith("2.0.0 queued as ")
        await eventually(lambda: len(sink.handler.messages) == 1)
    received = sink.handler.messages[0]
    assert received.mail_from == SENDER
    assert received.rcpt_tos == [COLLEAGUE]
    _head, _, body = received.data.partition(b"\r\n\r\n")
    assert body == raw.partition(b"\r\n\r\n")[2]
    # The only change is one trace header added on top.
    assert received.data.endswith(raw)
    assert received.data[: -len(raw)].startswith(b"Received: from ")


async def test_temporary_relay_failures_are_retried_and_delivered_once(
    sink: Sink, storage: Path
) -> None:
    sink.handler.data_replies = ["451 4.3.0 try later", "451 4.3.0 try later"]
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        await send(app.port, SENDER, [COLLEAGUE], letter(2))
        await eventually(lambda: len(sink.handler.messages) == 1, timeout=15)
        await asyncio.sleep(1.0)  # longer than the retry delay: no second copy
    assert len(sink.handler.messages) == 1
    assert sink.handler.data_replies == []


async def test_a_refused_recipient_gets_a_french_and_english_report_without_the_body(
    sink: Sink, storage: Path
) -> None:
    sink.handler.refuse[OTHER] = "550 5.1.1 unknown user"
    raw = letter(3)
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        await send(app.port, SENDER, [COLLEAGUE, OTHER], raw)
        await eventually(lambda: len(sink.handler.notices()) == 1)
    assert [m.rcpt_tos for m in sink.handler.mails()] == [[COLLEAGUE]]
    notice = sink.handler.notices()[0]
    assert notice.rcpt_tos == [SENDER]
    report = notice.message
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    text = parts[0].get_content()
    assert text.index("Bonjour") < text.index("Hello")
    assert OTHER in text and "550 5.1.1" in text
    assert "Final-Recipient: rfc822; " + OTHER in notice.data.decode()
    assert b"TESTPATIENT" not in notice.data
    assert b"bilan cardiologique" not in notice.data
    assert b"Compte rendu" not in notice.data  # the subject is not repeated


async def test_a_message_accepted_while_the_relay_is_down_is_delivered_when_it_returns(
    storage: Path,
) -> None:
    sink = Sink()  # not started: nothing listens on its port yet
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(4))
        assert reply.startswith("2.0.0 queued")
        await asyncio.sleep(0.5)
        await sink.start()
        try:
            await eventually(lambda: len(sink.handler.messages) == 1, timeout=15)
        finally:
            await sink.stop()


async def test_a_recipient_outside_the_secure_domains_is_refused_alone(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        refused, _ = await send(app.port, SENDER, [COLLEAGUE, "someone@gmail.com"], letter(5))
        assert refused["someone@gmail.com"].code == 550
        assert refused["someone@gmail.com"].message.startswith("5.7.1 recipient.domain:")
        await eventually(lambda: len(sink.handler.messages) == 1)
    assert sink.handler.messages[0].rcpt_tos == [COLLEAGUE]


async def test_review_all_holds_then_release_delivers_and_reject_notifies(
    sink: Sink, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = proxy_settings(
        storage, sink.port, charter={"rules": {"art5.review-all": {"enabled": True}}}
    )
    config = storage.parent / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n')
    async with running_proxy(settings) as app:
        _, first = await send(app.port, SENDER, [COLLEAGUE], letter(6))
        _, second = await send(app.port, SENDER, [COLLEAGUE], letter(7))
        assert first.startswith("2.0.0 held for review as ")
        first_id, second_id = first.split()[-1], second.split()[-1]
        await eventually(lambda: len(sink.handler.notices()) == 2)  # two hold notices
        assert sink.handler.mails() == []

        assert main(["review", "list", "--json", "--config", str(config)]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert {m["id"] for m in listed} == {first_id, second_id}
        assert listed[0]["findings"][0]["rule"] == "art5.review-all"

        assert main(["review", "release", first_id, "--config", str(config)]) == 0
        await eventually(lambda: len(sink.handler.mails()) == 1)
        assert main(["review", "release", first_id, "--config", str(config)]) == 1

        assert main(["review", "reject", second_id, "--config", str(config)]) == 0
        await eventually(lambda: len(sink.handler.notices()) == 3)
        await asyncio.sleep(0.3)
    assert len(sink.handler.mails()) == 1
    rejection = sink.handler.notices()[-1]
    assert rejection.rcpt_tos == [SENDER]
    text = rejection.message.get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert "n'a PAS été envoyé" in content and "was NOT sent" in content
    assert "art5.review-all" in content


async def test_a_client_outside_the_allowed_networks_is_refused_at_once(
    sink: Sink, storage: Path
) -> None:
    settings = proxy_settings(storage, sink.port, smtp={"allowed_networks": ["10.0.0.0/8"]})
    async with running_proxy(settings) as app:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.port, start_tls=False)
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
            await client.connect()
        assert refused.value.code == 554
    assert sink.handler.messages == []


MALFORMED = {
    "no headers": b"just some text without any header\r\nsecond line\r\n",
    "truncated mime": (
        b"From: dr.martin@medical13.apicrypt.org\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n--XYZ\r\n'
        b"Content-Type: text/plain\r\n\r\nhalf a messa"
    ),
    "binary garbage": bytes(range(256)) * 40,
    "cr only": b"From: dr.martin@medical13.apicrypt.org\rSubject: x\r\rBonjour\rcordialement\r",
    "one megabyte line": b"From: dr.martin@medical13.apicrypt.org\r\n\r\n"
    + b"A" * 1_000_000
    + b"\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_input_gets_a_clear_reply_and_the_server_keeps_serving(
    sink: Sink, storage: Path, name: str
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=app.port, start_tls=False) as c:
            await c.mail(SENDER)
            await c.rcpt(COLLEAGUE)
            try:
                response = await c.data(MALFORMED[name])
                code, text = response.code, response.message
            except aiosmtplib.SMTPDataError as error:
                code, text = error.code, error.message
            # Accepted, refused by the charter, or (over-long line) refused by the
            # SMTP layer with its RFC 5321 reason: always an answer, never a hang.
            assert code in (250, 500, 550)
            assert text.startswith(("2.0.0", "5.7.1", "5.5.2 ligne de plus de 1000 octets"))
        # The server still serves a normal message afterwards.
        _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(8))
        assert reply.startswith("2.0.0")


async def test_malformed_structure_is_refused_with_the_mime_rule(sink: Sink, storage: Path) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(app.port, SENDER, [COLLEAGUE], MALFORMED["binary garbage"])
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1 mime.malformed: ")


def test_check_json_on_a_clean_message_says_forward(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "letter.eml"
    path.write_bytes(letter(9))
    assert main(["check", "--json", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verdict"] == "forward"
    assert result["findings"] == []
    assert "recipient.syntax" in result["checked"]


def test_check_on_a_missing_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--json", str(tmp_path / "absent.eml")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "no such file" in captured.err


def test_check_refuses_recipients_like_the_proxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "letter.eml"
    path.write_bytes(letter(10))
    assert main(["check", "--json", "--to", "x@gmail.com", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verdict"] == "reject"
    assert result["refused_recipients"] == ["x@gmail.com"]
    assert result["findings"][0]["recipient"] == "x@gmail.com"
