"""`apiguard milter` inside a real Postfix (Debian's, a private instance):
what a practice sending through its existing mail server sees."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import httpx
import pytest

from apiguard.milter.marks import split_body
from tests.integration.milter_postfix import postfix_with_milter
from tests.support import Sink, eventually, free_port, letter, send

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

# The same, with a folded header: the held copy keeps its lines as sent.
HELD_LETTER = b"X-Long-Header: first part of it,\r\n\tsecond part\r\n" + NO_PATIENT


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


async def test_an_announcement_is_refused_at_end_of_data_with_apiguards_reply(
    tmp_path: Path, sink: Sink
) -> None:
    async with postfix_with_milter(tmp_path, sink.port) as (postfix, _):
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(postfix.smtp_port, SENDER, [COLLEAGUE], ANNOUNCEMENT)
        # The sender's notice goes back through Postfix, signed, and passes.
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=30)
        assert "milter" in postfix.log() and "art2.announcement" in postfix.log()
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1 art2.announcement (Art. 2): ")
    assert "/" in refused.value.message  # French, then English
    notice = sink.handler.notices()[0]
    assert notice.rcpt_tos == [SENDER]
    assert MARK not in notice.data
    body = notice.message.get_body(("plain",))
    assert body is not None and "art2.announcement (Article 2)" in body.get_content()
    assert sink.handler.mails() == []


async def test_a_sender_outside_the_recipient_domains_still_gets_the_notice(
    tmp_path: Path, sink: Sink
) -> None:
    secretariat = "secretariat@cabinet-exemple.fr"  # not an APICRYPT or MSSante address
    # The practice owns that domain: its senders may be told (notices go only to
    # senders the practice owns), although no letter may be sent to it.
    owned = (
        '[charter]\nallowed_sender_domains = ["apicrypt.org", "mssante.fr", "cabinet-exemple.fr"]\n'
    )
    async with postfix_with_milter(tmp_path, sink.port, owned) as (postfix, _):
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(postfix.smtp_port, secretariat, [COLLEAGUE], ANNOUNCEMENT)
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=30)
        # Anyone else's null-sender mail to that address is still refused.
        with pytest.raises(aiosmtplib.SMTPDataError) as forged:
            await send(postfix.smtp_port, "", [secretariat], letter(6))
    assert refused.value.message.startswith("5.7.1 art2.announcement (Art. 2): ")
    assert sink.handler.notices()[0].rcpt_tos == [secretariat]
    assert forged.value.code == 550
    assert forged.value.message.startswith("5.7.1 recipient.domain: ")
    assert sink.handler.mails() == []


async def test_a_held_letter_waits_until_released_then_is_delivered_once(
    tmp_path: Path, sink: Sink
) -> None:
    config = tmp_path / "apiguard.toml"
    async with postfix_with_milter(tmp_path, sink.port) as (postfix, milter):
        _, reply = await send(postfix.smtp_port, SENDER, [COLLEAGUE], HELD_LETTER)
        assert reply.startswith("2.0.0 Ok")  # stored in the quarantine: Postfix's copy goes
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=30)  # hold notice
        (held,) = await asyncio.to_thread(held_ids, config)
        await asyncio.sleep(1.5)
        assert sink.handler.mails() == []
        assert postfix.queue() == []
        await asyncio.to_thread(review, config, "release", held)
        await eventually(lambda: len(sink.handler.mails()) == 1, timeout=30)
        await asyncio.sleep(1.5)  # nothing more comes
        assert [e["reason"] for e in milter.events("milter.mark_ignored")] == []
        assert len(milter.events("milter.reinjected")) == 2  # the notice and the letter
        # Counted as in proxy mode: one decision, held, by art1.no-patient-data.
        metrics = await asyncio.to_thread(milter.metrics)
        assert 'apiguard_messages_total{decision="hold"} 1.0' in metrics
        assert 'apiguard_messages_total{decision="forward"} 0.0' in metrics
        assert 'apiguard_findings_total{action="hold",rule="art1.no-patient-data"} 1.0' in metrics
    assert len(sink.handler.mails()) == 1
    delivered = sink.handler.mails()[0]
    assert delivered.rcpt_tos == [COLLEAGUE]
    assert MARK not in delivered.data
    assert_unchanged(delivered.data, HELD_LETTER)
    assert held in delivered.data.decode()  # apiguard's trace line names the held id


async def test_a_rejected_held_letter_gives_the_sender_a_notice(tmp_path: Path, sink: Sink) -> None:
    config = tmp_path / "apiguard.toml"
    async with postfix_with_milter(tmp_path, sink.port) as (postfix, _):
        await send(postfix.smtp_port, SENDER, [COLLEAGUE], NO_PATIENT)
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=30)
        (held,) = await asyncio.to_thread(held_ids, config)
        await asyncio.to_thread(
            review, config, "reject", held, "--comment", "pas de patient / no patient"
        )
        await eventually(lambda: len(sink.handler.notices()) == 2, timeout=30)
        await asyncio.sleep(1)
    assert sink.handler.mails() == []
    notice = sink.handler.notices()[1]
    assert notice.rcpt_tos == [SENDER]
    assert MARK not in notice.data
    assert held in notice.data.decode("utf-8", "replace")


async def test_a_forged_mark_is_ignored_and_deleted(tmp_path: Path, sink: Sink) -> None:
    forged = b"X-Apiguard-Release: v1 1700000000 " + b"ab" * 16 + b" " + b"cd" * 32 + b"\r\n"
    async with postfix_with_milter(tmp_path, sink.port) as (postfix, milter):
        await send(postfix.smtp_port, SENDER, [COLLEAGUE], forged + NO_PATIENT)
        await send(postfix.smtp_port, SENDER, [COLLEAGUE], forged + letter(2))
        await eventually(lambda: len(sink.handler.mails()) == 1, timeout=30)
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=30)
        ignored = milter.events("milter.mark_ignored")
    # The letter without patient is held like any other; the good letter
    # passes, the forged header removed.
    assert [e["reason"] for e in ignored] == ["invalid", "invalid"]
    assert MARK not in sink.handler.mails()[0].data
    assert_unchanged(sink.handler.mails()[0].data, letter(2))


async def test_with_apiguard_killed_postfix_answers_tempfail_and_nothing_is_lost(
    tmp_path: Path, sink: Sink
) -> None:
    async with postfix_with_milter(tmp_path, sink.port) as (postfix, milter):
        # Killed in the middle of a transaction: the end of DATA gets a 4xx.
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=postfix.smtp_port) as client:
            await client.mail(SENDER)
            await client.rcpt(COLLEAGUE)
            await milter.stop(signal.SIGKILL)
            with pytest.raises(aiosmtplib.SMTPResponseException) as in_flight:
                await client.data(letter(3))
        assert 400 <= in_flight.value.code < 500
        # Down: every new message gets a 4xx.
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await send(postfix.smtp_port, SENDER, [COLLEAGUE], letter(3))
        assert 400 <= refused.value.code < 500
        await asyncio.sleep(1)
        assert sink.handler.messages == []
        assert postfix.queue() == []
        # The practice's mail program tries again once apiguard is back.
        await milter.start()
        _, reply = await send(postfix.smtp_port, SENDER, [COLLEAGUE], letter(3))
        assert reply.startswith("2.0.0 Ok")
        await eventually(lambda: len(sink.handler.messages) == 1, timeout=30)
    assert_unchanged(sink.handler.messages[0].data, letter(3))


async def release_on_the_review_page(port: int, token: str, message_id: str) -> None:
    """Sign in with the review token and press "release", as a reviewer does."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

        async def csrf(path: str) -> str:
            found = re.search(r'name="csrf" value="([^"]+)"', (await client.get(path)).text)
            assert found is not None
            return found.group(1)

        signed_in = await client.post(
            "/login", data={"csrf": await csrf("/login"), "name": "", "password": token}
        )
        assert signed_in.status_code in (200, 303)
        released = await client.post(
            f"/messages/{message_id}/release", data={"csrf": await csrf("/")}
        )
        assert released.status_code == 303


async def test_a_letter_released_on_the_review_page_is_delivered_once(
    tmp_path: Path, sink: Sink
) -> None:
    token, port = "relecture-secretariat-2026", free_port()
    review_config = f'[review]\nenabled = true\nport = {port}\ntoken = "{token}"\n'
    config = tmp_path / "apiguard.toml"
    async with postfix_with_milter(tmp_path, sink.port, review_config) as (postfix, _):
        await send(postfix.smtp_port, SENDER, [COLLEAGUE], NO_PATIENT)
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=30)
        (held,) = await asyncio.to_thread(held_ids, config)
        assert sink.handler.mails() == []
        await release_on_the_review_page(port, token, held)
        await eventually(lambda: len(sink.handler.mails()) == 1, timeout=30)
        await asyncio.sleep(1)
    assert len(sink.handler.mails()) == 1
    assert MARK not in sink.handler.mails()[0].data
    assert_unchanged(sink.handler.mails()[0].data, NO_PATIENT)


def sendmail(postfix_config: Path, raw: bytes) -> None:
    """Postfix's sendmail command (non_smtpd_milters), as a practice's
    software on the server itself would hand mail over."""
    subprocess.run(
        ["sendmail", "-C", str(postfix_config), "-f", SENDER, COLLEAGUE],
        input=raw,
        capture_output=True,
        timeout=60,
        check=True,
    )


async def test_mail_from_the_sendmail_command_is_judged_too(tmp_path: Path, sink: Sink) -> None:
    async with postfix_with_milter(tmp_path, sink.port) as (postfix, milter):
        await asyncio.to_thread(sendmail, postfix.config_directory, letter(4))
        await asyncio.to_thread(sendmail, postfix.config_directory, NO_PATIENT)
        await eventually(lambda: len(sink.handler.mails()) == 1, timeout=30)
        await eventually(lambda: len(sink.handler.notices()) == 1, timeout=30)  # hold notice
        await asyncio.sleep(1)
        decisions = milter.events("smtp.decision")
    assert sorted(d["verdict"] for d in decisions) == ["forward", "hold"]
    assert len(sink.handler.mails()) == 1
    assert sink.handler.mails()[0].data.endswith(split_body(letter(4)))
