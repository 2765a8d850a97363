"""Articles 1, 2 and 4 through the running proxy: what a practitioner sees."""

from __future__ import annotations

import json
from pathlib import Path

import aiosmtplib
import pytest
import structlog
from structlog.testing import capture_logs

from apiguard.cli import main
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
# Distinctive synthetic identity, searched for in every log line and reply.
PATIENT_FIELDS = ("ZORGLUBOVSKI", "Philomene", "12/05/1961", "1610513055123")


def distinctive_letter(n: int, *, last_name: str = "ZORGLUBOVSKI", subject: str = "") -> bytes:
    raw = letter(n).decode()
    raw = raw.replace("TESTPATIENT", last_name).replace("Camille", "Philomene")
    raw = raw.replace("12/05/1961\r\n\r\n", "12/05/1961\r\n1610513055123 94\r\n")
    if subject:
        raw = raw.replace("Subject: Compte rendu de consultation", f"Subject: {subject}")
    return raw.encode()


ANNOUNCEMENT = (
    "From: dr.martin@medical13.apicrypt.org\r\nTo: dr.durand@medical69.apicrypt.org\r\n"
    "Subject: Invitation soirée FMC\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Chers confrères,\r\nNous avons le plaisir de vous inviter à notre soirée de formation "
    "médicale continue le jeudi 12 décembre à 20h. Inscription obligatoire avant le 5 "
    "décembre.\r\nConfraternellement\r\n"
).encode()

RCP_LETTER = (
    "From: dr.martin@medical13.apicrypt.org\r\nTo: dr.durand@medical69.apicrypt.org\r\n"
    "Subject: Compte rendu RCP\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Cher confrère,\r\nVotre patiente Mme ZORGLUBOVSKI Philomène, née le 12/05/1961, a été "
    "discutée en réunion de concertation pluridisciplinaire d'oncologie ce mardi. Il est "
    "proposé une chimiothérapie adjuvante.\r\nBien confraternellement,\r\nDr Martin\r\n"
).encode("latin-1")

NO_PATIENT = (
    b"From: dr.martin@medical13.apicrypt.org\r\nTo: dr.durand@medical69.apicrypt.org\r\n"
    b"Subject: Question\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Bonjour, peux-tu me rappeler demain matin au cabinet ? Merci.\r\n"
)


def assert_no_patient_data(text: str) -> None:
    for value in PATIENT_FIELDS:
        assert value not in text, value


async def test_a_valid_hprim_letter_is_forwarded_unchanged(sink: Sink, storage: Path) -> None:
    raw = distinctive_letter(1)
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], raw)
        assert reply.startswith("2.0.0 queued as")
        await eventually(lambda: len(sink.handler.messages) == 1)
    assert sink.handler.messages[0].data.endswith(raw)


async def test_an_empty_last_name_is_refused_naming_line_2_without_patient_data(
    sink: Sink, storage: Path
) -> None:
    raw = distinctive_letter(2, last_name="")
    with capture_logs() as logs:
        async with running_proxy(proxy_settings(storage, sink.port)) as app:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await send(app.port, SENDER, [COLLEAGUE], raw)
            await eventually(lambda: len(sink.handler.notices()) == 1)
    reply = refused.value.message
    assert refused.value.code == 550
    assert reply.startswith("5.7.1 art4.hprim-identity (Art. 4): ")
    assert "ligne 2" in reply and "line 2" in reply
    assert_no_patient_data(reply)
    notice = sink.handler.notices()[0]
    assert notice.rcpt_tos == [SENDER]
    body = notice.message.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert "art4.hprim-identity" in content and "Article 4" in content
    assert_no_patient_data(notice.data.decode("utf-8", "replace"))
    assert_no_patient_data(json.dumps(logs, default=str))
    assert sink.handler.mails() == []


async def test_a_subject_naming_the_patient_is_refused(sink: Sink, storage: Path) -> None:
    raw = distinctive_letter(3, subject="CR de ZORGLUBOVSKI")
    with capture_logs() as logs:
        async with running_proxy(proxy_settings(storage, sink.port)) as app:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await send(app.port, SENDER, [COLLEAGUE], raw)
            await eventually(lambda: len(sink.handler.notices()) == 1)
    assert refused.value.message.startswith("5.7.1 privacy.identity-in-subject: ")
    assert_no_patient_data(refused.value.message)
    assert_no_patient_data(json.dumps(logs, default=str))
    # The notice does not repeat the subject either.
    assert b"ZORGLUBOVSKI" not in sink.handler.notices()[0].data


async def test_an_announcement_without_patient_data_is_refused_with_article_2(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(app.port, SENDER, [COLLEAGUE], ANNOUNCEMENT)
        await eventually(lambda: len(sink.handler.notices()) == 1)
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1 art2.announcement (Art. 2): ")
    body = sink.handler.notices()[0].message.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert "art2.announcement (Article 2)" in content
    assert content.index("Que faire") < content.index("What to do")
    assert sink.handler.mails() == []


async def test_a_letter_mentioning_a_concertation_meeting_is_forwarded(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], RCP_LETTER)
        assert reply.startswith("2.0.0 queued as")
        await eventually(lambda: len(sink.handler.mails()) == 1)


async def test_a_message_to_six_recipients_is_refused(sink: Sink, storage: Path) -> None:
    recipients = [f"dr.confrere{n}@medical69.apicrypt.org" for n in range(6)]
    raw = distinctive_letter(4)
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(app.port, SENDER, recipients, raw)
    assert refused.value.message.startswith("5.7.1 art2.too-many-recipients (Art. 2): ")
    assert sink.handler.mails() == []


async def test_a_message_without_patient_data_is_held_then_released(
    sink: Sink, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = storage.parent / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n')
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], NO_PATIENT)
        assert reply.startswith("2.0.0 held for review as ")
        held_id = reply.split()[-1]
        await eventually(lambda: len(sink.handler.notices()) == 1)
        hold_notice = sink.handler.notices()[0].message.get_body(("plain",))
        assert hold_notice is not None
        assert "art1.no-patient-data" in hold_notice.get_content()
        assert sink.handler.mails() == []
        assert main(["review", "release", held_id, "--config", str(config)]) == 0
        await eventually(lambda: len(sink.handler.mails()) == 1)
    assert sink.handler.mails()[0].data.endswith(NO_PATIENT)
    capsys.readouterr()


def test_structlog_is_configured_for_json_in_tests() -> None:
    # The privacy assertions above read captured events: make sure they are dicts.
    with capture_logs() as logs:
        structlog.get_logger("t").info("probe", size=1)
    assert logs == [{"event": "probe", "size": 1, "log_level": "info"}]
