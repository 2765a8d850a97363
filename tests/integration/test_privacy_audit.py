"""Privacy audit: distinctive synthetic patient data through every path of the
running proxy (forward, hold, release, reject at DATA, reviewer reject, relay
5xx bounce, delivery expiry, quarantine expiry), then a search of every log
line, every metric, every SMTP reply, every notice, the decision records, the
dashboard and the monthly report in every format for it. Notices may name
the rule and the record, never the values. The store is 0600 files in 0700
folders."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import json
import logging
import stat
import time
import unicodedata
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pypdf
import pytest
import structlog

import apiguard.app
from apiguard import metrics
from apiguard.config import ReviewSettings
from apiguard.notices import NoticeIdentity
from apiguard.review.auth import hash_password
from apiguard.review.service import ReviewService
from apiguard.review.web import create_app
from apiguard.store.aio import AsyncStore
from apiguard.store.sqlite import SqliteStore
from tests.support import Sink, eventually, proxy_settings, running_proxy

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
UNKNOWN = "dr.inconnu@medical75.apicrypt.org"  # the relay answers 5xx
BUSY = "dr.occupe@medical76.apicrypt.org"  # the relay answers 4xx until expiry

LAST, FIRST = "QUIMPERLAY", "Azalaïs"
BIRTH = "17/03/1937"
NIR = "1 37 03 75 123 456 65"
ATTACHMENT = "bilan_xenophore_genou.txt"
# What must never leave the message (searched case- and accent-insensitively).
SECRETS = (
    "quimperlay",
    "azalais",
    "17/03/1937",
    "1937-03-17",
    "17031937",
    "37 03 75 123",
    "370375123456",
    "xenophore",
)

LETTER = """\
Subject: {subject}
From: Dr Alice Martin <dr.martin@medical13.apicrypt.org>
To: dr.durand@medical69.apicrypt.org
Message-ID: <audit-{n}@medical13.apicrypt.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

A1B2C3
{last}
{first}
{space}
{space}
29000 QUIMPER
{birth}

CR-2026-{n}
20/11/2026
.         dr.martin
.         dr.durand

Cher confrère,
Compte rendu numéro {n} pour votre patiente {first} {last}, née le {birth},
NIR {nir}, vue pour un bilan cardiologique (visite {n}).
L'examen clinique est normal. Bien confraternellement.
****FIN****
****FINFICHIER****
--BOUNDARY
Content-Type: text/plain; charset=utf-8; name="{attachment}"
Content-Disposition: attachment; filename="{attachment}"
Content-Transfer-Encoding: 8bit

Bilan {n} de {last} {first} ({birth}) : normal.
--BOUNDARY--
"""


def audit_letter(n: int, subject: str | None = "Compte rendu de consultation") -> bytes:
    text = LETTER.format(
        n=n,
        subject=subject or "",
        last=LAST,
        first=FIRST,
        birth=BIRTH,
        nir=NIR,
        attachment=ATTACHMENT,
        space=" ",  # HPRIM lines 4 and 5 hold a single space
    )
    if subject is None:
        text = text.replace("Subject: \n", "")
    return text.replace("\n", "\r\n").encode("utf-8")


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def leaks(text: str) -> list[str]:
    folded = fold(text)
    return [secret for secret in SECRETS if secret in folded]


def notice_texts(raw: bytes) -> list[str]:
    """Every header and decoded part of a notice, as text."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    texts = [raw.decode("utf-8", "replace")]
    for part in message.walk():
        texts += [f"{name}: {value}" for name, value in part.items()]
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            texts.append(payload.decode("utf-8", "replace"))
    return texts


class Client:
    """Records every SMTP reply the proxy gives."""

    def __init__(self) -> None:
        self.replies: list[str] = []

    async def send(self, port: int, recipients: list[str], raw: bytes) -> str:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
            for response in (await smtp.ehlo(), await smtp.mail(SENDER)):
                self.replies.append(f"{response.code} {response.message}")
            for rcpt in recipients:
                response = await smtp.rcpt(rcpt)
                self.replies.append(f"{response.code} {response.message}")
            try:
                response = await smtp.data(raw)
            except aiosmtplib.SMTPResponseException as error:
                self.replies.append(f"{error.code} {error.message}")
                return f"{error.code} {error.message}"
            self.replies.append(f"{response.code} {response.message}")
            return f"{response.code} {response.message}"


def message_id(reply: str) -> str:
    return reply.split()[-1]


async def dashboard_and_reports(storage: Path) -> dict[str, str]:
    """Everything the decision records hold and the dashboard and the monthly
    report show (HTML, CSV, JSON, the PDF's text), by what it is."""
    sync = SqliteStore(storage)
    texts: dict[str, str] = {}
    for table in ("decisions", "decision_findings", "charter_versions"):
        rows = sync.read(lambda db, t=table: db.execute(f"SELECT * FROM {t}").fetchall())
        assert rows, f"{table} is empty: nothing to search"
        texts[f"{table} table"] = json.dumps(rows, ensure_ascii=False, default=str)
    store = AsyncStore(sync)
    users = {"audit": hash_password("audit password", n=1024)}
    app = create_app(
        ReviewService(sync, NoticeIdentity()), store, ReviewSettings(users=users), secret="s" * 48
    )
    month = time.strftime("%Y-%m")
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit.test") as client:
            login = (await client.get("/login")).text
            token = login.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            await client.post(
                "/login", data={"csrf": token, "name": "audit", "password": "audit password"}
            )
            for days in (30, 365):
                page = await client.get("/dashboard", params={"days": str(days)})
                assert page.status_code == 200 and "<svg" in page.text
                texts[f"dashboard {days} days"] = page.text
            for format in ("html", "csv", "json", "pdf"):
                report = await client.get(
                    "/dashboard/report", params={"month": month, "format": format}
                )
                assert report.status_code == 200
                if format == "pdf":
                    pages = pypdf.PdfReader(io.BytesIO(report.content)).pages
                    texts["report pdf"] = "\n".join(p.extract_text() for p in pages)
                else:
                    texts[f"report {format}"] = report.text
    finally:
        await store.close()
    assert '"messages": 5' in texts["report json"]  # 1 forwarded, 1 refused, 3 held
    return texts


async def test_no_patient_data_leaves_the_message(
    sink: Sink, storage: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apiguard.app, "EXPIRY_INTERVAL", 0.05)
    sink.handler.refuse[UNKNOWN] = "550 5.1.1 unknown user"
    sink.handler.refuse[BUSY] = "451 4.2.1 mailbox busy, try later"
    rules = {"art5.empty-subject": {"action": "hold"}}
    client = Client()
    with structlog.testing.capture_logs() as logs, caplog.at_level(logging.INFO):
        settings = proxy_settings(
            storage, sink.port, charter={"rules": rules}, delivery={"lifetime": 1.5}
        )
        async with running_proxy(settings) as app:
            # forward, one recipient refused by the relay (5xx), one never reachable (expiry)
            forwarded = await client.send(app.port, [COLLEAGUE, UNKNOWN, BUSY], audit_letter(1))
            assert forwarded.startswith("250 2.0.0 queued")
            # reject at DATA: the patient's name in the (unencrypted) subject
            refused = await client.send(app.port, [COLLEAGUE], audit_letter(2, f"Suivi {LAST}"))
            assert refused.startswith("550 5.7.1 privacy.identity-in-subject")
            # three held messages: one released, one rejected by a reviewer, one expires
            held = [
                await client.send(app.port, [COLLEAGUE], audit_letter(n, None)) for n in (3, 4, 5)
            ]
            assert all(h.startswith("250 2.0.0 held for review") for h in held)
            released = await app.store.run(app.review.release, message_id(held[0]), "audit", "ok")
            rejected = await app.store.run(
                app.review.reject, message_id(held[1]), "audit", "à revoir"
            )
            assert released.done and rejected.done
            app.delivery.wake()
            # 2 mails; notices: 5xx bounce, expiry bounce, reject, 3 holds, reviewer reject
            await eventually(
                lambda: len(sink.handler.mails()) == 2 and len(sink.handler.notices()) == 7,
                timeout=20,
            )
            metric_text = metrics.exposition().decode()
        # quarantine expiry: the same store, hold_days now over
        expiring = proxy_settings(
            storage,
            sink.port,
            charter={"rules": rules},
            review={"hold_days": 1e-9},
        )
        async with running_proxy(expiring):
            await eventually(lambda: len(sink.handler.notices()) == 8, timeout=10)
            await asyncio.sleep(0.2)
            metric_text += metrics.exposition().decode()

    # the notices did go out, and said what happened
    notices = sink.handler.notices()
    bodies = ["\n".join(notice_texts(n.data)) for n in notices]
    assert any("550 5.1.1" in body for body in bodies)  # relay bounce
    assert any("4.4.7" in body for body in bodies)  # delivery expiry
    assert any("privacy.identity-in-subject" in body for body in bodies)
    assert sum("art5.empty-subject" in body for body in bodies) >= 5  # 3 holds, 2 rejects

    found: dict[str, list[str]] = {}
    for entry in logs:
        if hit := leaks(json.dumps(entry, ensure_ascii=False, default=str)):
            found.setdefault("log", []).extend(hit)
    for record in caplog.records:
        if hit := leaks(record.getMessage()):
            found.setdefault("stdlib log", []).extend(hit)
    if hit := leaks(metric_text):
        found["metrics"] = hit
    for reply in client.replies:
        if hit := leaks(reply):
            found.setdefault("smtp reply", []).extend(hit)
    for body in bodies:
        if hit := leaks(body):
            found.setdefault("notice", []).extend(hit)
    for what, text in (await dashboard_and_reports(storage)).items():
        if hit := leaks(text):
            found.setdefault(what, []).extend(hit)
    assert found == {}
    assert len(logs) > 20  # the search had something to search
    # the audit values really were in what was delivered (the search can find them)
    assert leaks(sink.handler.mails()[0].data.decode("utf-8"))


def test_store_files_are_0600_in_0700_folders(storage: Path) -> None:
    asyncio.run(_one_message(storage))
    folders = [storage, *(p for p in storage.rglob("*") if p.is_dir())]
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert files, "the store wrote nothing"
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {"0o700"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o600"}


async def _one_message(storage: Path) -> Any:
    sink = Sink()
    await sink.start()
    try:
        async with running_proxy(proxy_settings(storage, sink.port)) as app:
            await Client().send(app.port, [COLLEAGUE], audit_letter(9))
            await eventually(lambda: len(sink.handler.messages) == 1)
    finally:
        await sink.stop()
