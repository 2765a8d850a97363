"""Hostile input through the real proxy: bounded analysis, held past a limit,
no charter bypass by a fake encryption marker, isolated workers."""

from __future__ import annotations

import base64
import os
import random
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from apiguard.review.auth import hash_password
from bench import hostile
from tests.samples import pe_executable
from tests.support import Sink, eventually, proxy_settings, running_proxy, send

SENDER = hostile.SENDER
COLLEAGUE = hostile.RECIPIENT


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_letters_that_made_the_old_patterns_backtrack_are_judged_within_budget(
    sink: Sink, storage: Path
) -> None:
    # Each took from 10 s to minutes of CPU with the old patterns; the budget
    # here is 5 s per message, and each is judged by the charter, not the limit.
    settings = proxy_settings(storage, sink.port, processing={"workers": 1, "max_cpu_seconds": 5})
    letters = [
        hostile.cf_letter(200_000),
        hostile.closing_letter(100_000),
        hostile.html_unclosed_scripts(200_000),
    ]
    async with running_proxy(settings) as app:
        for raw in letters:
            _, reply = await send(app.port, SENDER, [COLLEAGUE], crlf(raw))
            assert reply.startswith("2.0.0 queued as")
        await eventually(lambda: len(sink.handler.mails()) == len(letters), timeout=30)


async def test_a_pdf_that_inflates_a_thousandfold_is_held_naming_the_limit(
    sink: Sink, storage: Path
) -> None:
    settings = proxy_settings(storage, sink.port, processing={"workers": 1})
    raw = crlf(hostile.pdf_letter(hostile.inflating_pdf(pages=20)))
    async with running_proxy(settings) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], raw)
        assert reply.startswith("2.0.0 held for review as")
        held = await app.store.run(app.store.sync.get, reply.split()[-1])
    assert held is not None
    (limit,) = [f for f in held.findings if f.rule == "analysis.limits"]
    assert dict(limit.details) == {"limit": "decompressed"}
    assert limit.message_fr.startswith("analyse interrompue")
    assert "analysis stopped" in limit.message_en
    assert sink.handler.mails() == []


def _mail(
    body: str,
    attachments: list[tuple[bytes, str]] | None = None,
    subject: str = "Soirée de formation",
) -> bytes:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = COLLEAGUE
    mail["Subject"] = subject
    mail.set_content(body)
    for content, filename in attachments or []:
        mail.add_attachment(
            content, maintype="application", subtype="octet-stream", filename=filename
        )
    return crlf(mail.as_bytes())


INVITATION = (
    "Chers confrères, nous avons le plaisir de vous inviter à notre soirée de formation "
    "sur le diabète, jeudi prochain à 20 h, suivie d'un buffet. Inscription auprès du "
    "secrétariat."
)


async def test_a_fake_encryption_marker_does_not_switch_the_charter_off(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        # An announcement behind a `$APICRYPT` line: refused as an announcement.
        with pytest.raises(aiosmtplib.SMTPDataError) as announced:
            await send(app.port, SENDER, [COLLEAGUE], _mail("$APICRYPT\n" + INVITATION))
        assert announced.value.message.startswith("5.7.1 art2.announcement (Art. 2)")
        # A Windows executable named `.apz`: refused.
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(
                app.port,
                SENDER,
                [COLLEAGUE],
                _mail(
                    "Message chiffré par APICRYPT.",
                    [(pe_executable(), "lettre.apz")],
                    subject="Compte rendu",
                ),
            )
        assert refused.value.message.startswith("5.7.1 art3.")
        # A real APICRYPT block still goes through.
        block = base64.encodebytes(random.Random(7).randbytes(300)).decode("ascii")
        encrypted = _mail("$APICRYPT$V2$\n" + block, subject="Compte rendu")
        _, reply = await send(app.port, SENDER, [COLLEAGUE], encrypted)
        assert reply.startswith("2.0.0 queued as")
        await eventually(lambda: len(sink.handler.mails()) == 1)


async def test_workers_ignore_modules_in_the_services_directory(
    sink: Sink, storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service_dir = tmp_path / "service"
    service_dir.mkdir()
    marker = tmp_path / "imported"
    for name in ("queue", "pypdf", "structlog"):
        (service_dir / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    monkeypatch.chdir(service_dir)
    monkeypatch.setenv("PYTHONPATH", str(service_dir))
    settings = proxy_settings(
        storage,
        sink.port,
        processing={"workers": 1},
        review={"enabled": True, "port": 0, "users": {"r": hash_password("x" * 12, n=1024)}},
    )
    async with running_proxy(settings) as app:
        _, reply = await send(
            app.port, SENDER, [COLLEAGUE], crlf(hostile.pdf_letter(hostile.text_pdf()))
        )
        assert reply.startswith("2.0.0 ")
        pids = app.analyser.pids
        assert pids
        for pid in pids:
            assert os.readlink(f"/proc/{pid}/cwd") == str(storage.resolve())
    assert not marker.exists()
