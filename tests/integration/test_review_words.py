"""What the review page, the notices and the command line say, checked word by
word: French words on the French page, English punctuation on the English
one, French signal names in French notices, a hold notice that says not to
send again, a list whose rows can be told apart, a refusal that asks first,
and a second cancel that says it was cancelled already."""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from apiguard.cli import main
from apiguard.config import ReviewSettings
from apiguard.notices import NoticeIdentity, hold_notice, reject_notice
from apiguard.policy.charter import Charter
from apiguard.policy.verdict import Action, Finding
from apiguard.review.auth import hash_password
from apiguard.review.service import ReviewService
from apiguard.review.web import create_app
from apiguard.store.aio import AsyncStore
from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
)
from apiguard.store.sqlite import SqliteStore
from tests.support import letter

PASSWORD = "mot de passe du secrétariat"
SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
OTHER = "dr.petit@medical33.apicrypt.org"
FIX = Finding(
    "art5.review-all",
    5,
    Action.HOLD,
    "relecture demandée",
    "review required",
    "Un membre du cabinet doit relire ce message.",
    "Someone at the practice must check this message.",
)
WITH_ATTACHMENT = (
    b"From: Dr Martin <dr.martin@medical13.apicrypt.org>\r\n"
    b"To: dr.durand@medical69.apicrypt.org\r\nSubject: =?utf-8?q?R=C3=A9sultats_de_biologie?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour.\r\n"
    b"--B\r\nContent-Type: text/plain\r\n"
    b'Content-Disposition: attachment; filename="bilan.txt"\r\n\r\n'
    b"contenu joint\r\n--B--\r\n"
)


class Page:
    def __init__(self, client: httpx.AsyncClient, store: SqliteStore) -> None:
        self.client = client
        self.store = store

    def accept(
        self,
        message_id: str,
        raw: bytes = WITH_ATTACHMENT,
        state: MessageState = MessageState.HELD,
        recipients: tuple[str, ...] = (COLLEAGUE,),
    ) -> None:
        self.store.accept(
            NewMessage(
                id=message_id,
                created_at=time.time(),
                kind=MessageKind.MAIL,
                mail_from=SENDER,
                recipients=recipients,
                raw=raw,
                size=len(raw),
                verdict="hold" if state is MessageState.HELD else "forward",
                state=state,
                findings=(FIX,),
                not_before=time.time() + 600,
            )
        )

    async def csrf(self, path: str = "/login") -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', (await self.client.get(path)).text)
        assert found is not None
        return found.group(1)

    async def login(self) -> None:
        token = await self.csrf()
        await self.client.post(
            "/login", data={"csrf": token, "name": "secretariat", "password": PASSWORD}
        )

    async def english(self) -> None:
        await self.client.post("/lang", data={"csrf": await self.csrf("/"), "lang": "en"})


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    sync = SqliteStore(tmp_path / "var")
    store = AsyncStore(sync)
    service = ReviewService(sync, NoticeIdentity(), hold_days=7)
    settings = ReviewSettings(users={"secretariat": hash_password(PASSWORD, n=1024)})
    app = create_app(service, store, settings, secret="s" * 48)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://review.test"
    ) as client:
        yield Page(client, sync)
    await store.close()


# -- the message page ---------------------------------------------------------------


async def test_recipient_states_are_french_on_the_french_page(page: Page) -> None:
    page.accept("h1", recipients=(COLLEAGUE, OTHER))
    page.accept("q1", state=MessageState.QUEUED, recipients=(COLLEAGUE, OTHER))
    page.store.complete(
        "q1",
        [
            RecipientOutcome(COLLEAGUE, RecipientState.DELIVERED, "250 ok"),
            RecipientOutcome(OTHER, RecipientState.FAILED, "550 unknown"),
        ],
        now=time.time(),
    )
    await page.login()
    held = (await page.client.get("/messages/h1")).text
    done = (await page.client.get("/messages/q1")).text
    assert f"{COLLEAGUE} <small>(retenu)</small>" in held
    assert f"{COLLEAGUE} <small>(remis)</small>" in done
    assert f"{OTHER} <small>(non remis)</small>" in done
    for english in ("(held)", "(delivered)", "(failed)"):
        assert english not in held + done
    await page.english()
    assert f"{COLLEAGUE} <small>(delivered)</small>" in (await page.client.get("/messages/q1")).text


async def test_the_english_page_writes_what_to_do_without_a_space_before_the_colon(
    page: Page,
) -> None:
    page.accept("h1")
    await page.login()
    french = (await page.client.get("/messages/h1")).text
    assert "<strong>Que faire\u00a0:</strong>" in french
    await page.english()
    english = (await page.client.get("/messages/h1")).text
    assert "<strong>What to do:</strong> Someone at the practice" in english
    assert " :" not in re.sub(r"<[^>]+>", "", english.split("<main>", 1)[1])


async def test_the_attachments_table_has_no_empty_header_cell(page: Page) -> None:
    page.accept("h1")
    await page.login()
    html = (await page.client.get("/messages/h1")).text
    table = html.split('<section class="attachments">', 1)[1].split("</table>", 1)[0]
    assert "bilan.txt" in table
    headers = re.findall(r"<th[^>]*>(.*?)</th>", table)
    assert len(headers) == 5 and all(h.strip() for h in headers)


# -- the list --------------------------------------------------------------------------


async def test_each_row_shows_its_held_recipients_subject_and_a_meaningful_checkbox_label(
    page: Page,
) -> None:
    page.accept("h1", recipients=(COLLEAGUE, OTHER))
    page.accept("h2", raw=letter(2))
    await page.login()
    html = (await page.client.get("/")).text
    first = html.split('<tr id="m-h1">', 1)[1].split("</tr>", 1)[0]
    second = html.split('<tr id="m-h2">', 1)[1].split("</tr>", 1)[0]
    assert COLLEAGUE in first and OTHER in first and OTHER not in second
    assert "Résultats de biologie" in first  # decoded from RFC 2047
    assert "Compte rendu de consultation" in second
    label = re.search(r'aria-label="([^"]+)"', first)
    assert label is not None
    assert re.fullmatch(
        rf"Sélectionner le message de {re.escape(SENDER)} du \d\d/\d\d/\d{{4}} \d\d:\d\d",
        label.group(1),
    )
    assert 'aria-label="h1"' not in html


async def test_refusing_from_a_row_asks_for_confirmation_first(page: Page) -> None:
    page.accept("h1")
    await page.login()
    html = (await page.client.get("/")).text
    row = html.split('<tr id="m-h1">', 1)[1].split("</tr>", 1)[0]
    assert 'formaction="/messages/h1/reject"' not in row  # no one-click refusal
    link = re.search(r'<a class="button reject" href="([^"]+)"', row)
    assert link is not None
    confirm = await page.client.get(link.group(1).replace("&amp;", "&"))
    assert confirm.status_code == 200
    assert "Refuser ce message ?" in confirm.text and "Résultats de biologie" in confirm.text
    assert page.store.get("h1").state is MessageState.HELD  # type: ignore[union-attr]
    token = await page.csrf("/")
    done = await page.client.post(
        "/messages/h1/reject", data={"csrf": token, "next": "/"}, follow_redirects=False
    )
    assert done.status_code == 303
    assert page.store.get("h1").state is MessageState.REJECTED  # type: ignore[union-attr]
    again = await page.client.get("/messages/h1/reject", follow_redirects=False)
    assert (again.status_code, again.headers["location"]) == (303, "/messages/h1")


# -- notices -----------------------------------------------------------------------------


def _french_part(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    text = message.get_body(("plain",))
    assert text is not None
    return str(text.get_content()).split("English version", 1)[0]


def test_the_french_notice_names_the_signals_in_french() -> None:
    raw = (
        "Subject: Joyeux Noël\r\nFrom: dr.martin@medical13.apicrypt.org\r\n"
        "To: dr.durand@medical69.apicrypt.org\r\n\r\n"
        "Joyeux Noël et bonne année à toute l'équipe ! Meilleurs vœux, bonnes fêtes.\r\n"
        "Invitation à notre soirée de formation, inscription avant le 12.\r\n"
    ).encode()
    from apiguard.mail import Envelope
    from apiguard.pipeline import evaluate

    _, decision = evaluate(Charter.build({}), Envelope(SENDER, (COLLEAGUE,)), raw)
    scored = [f for f in decision.findings if "signaux" in f.message_fr]
    assert scored, [f.rule for f in decision.findings]
    notice = reject_notice(
        identity=NoticeIdentity(),
        message_id="m1",
        sender=SENDER,
        recipients=[COLLEAGUE],
        findings=decision.findings,
        original_raw=raw,
        arrival=time.time(),
    )
    french = _french_part(notice)
    assert "vœux" in french
    assert "signaux : invitation, formation" in french
    for english in ("greetings", "training", "signals"):
        assert english not in french


def test_the_hold_notice_says_not_to_send_again_in_both_languages() -> None:
    notice = hold_notice(
        identity=NoticeIdentity(),
        message_id="m1",
        sender=SENDER,
        recipients=[COLLEAGUE],
        findings=[FIX],
        original_raw=letter(1),
        arrival=time.time(),
        hold_days=7,
    )
    message = email.message_from_bytes(notice, policy=email.policy.default)
    body = message.get_body(("plain",))
    assert body is not None
    french, english = str(body.get_content()).split("English version", 1)
    assert "n'aurait pas dû" not in french and "renvoyez-le" not in french
    assert "Ne le renvoyez pas en attendant : une seconde copie serait retenue" in french
    assert "demandez à la personne qui relit les messages du cabinet de le refuser" in french
    assert "Do not send it again meanwhile: a second copy would be held too." in english
    assert "ask the person who reviews the practice's messages to refuse it" in english


# -- the command line -----------------------------------------------------------------------


def test_cancelling_a_letter_twice_says_it_was_already_cancelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "var"
    store = SqliteStore(storage)
    store.accept(
        NewMessage(
            id="g1",
            created_at=time.time(),
            kind=MessageKind.MAIL,
            mail_from=SENDER,
            recipients=(COLLEAGUE,),
            raw=letter(1),
            size=len(letter(1)),
            verdict="forward",
            state=MessageState.QUEUED,
            not_before=time.time() + 600,
        )
    )
    store.close()
    config = tmp_path / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n', encoding="utf-8")
    assert main(["review", "cancel", "g1", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["review", "cancel", "g1", "--config", str(config)]) == 1
    said = capsys.readouterr().err
    assert "déjà annulé" in said and "already cancelled" in said
    assert "too late" not in said
