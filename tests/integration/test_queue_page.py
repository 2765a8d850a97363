"""The review page's queue view ("File d'attente"): over HTTP through the ASGI
interface of the real app and a real store, then in real headless Chromium
against the running proxy and a relay that defers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from apiguard.config import ReviewSettings
from apiguard.notices import NoticeIdentity
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
from tests.integration.test_queue_cli import DeferringHandler
from tests.integration.test_review_browser import CHROMIUM, CHROMIUM_ARGS
from tests.integration.test_review_http import BASE, PASSWORD, PLAIN, TOKEN, Page
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
HOSTILE_REPLY = "451 4.3.0 <script>alert(1)</script> try later"


def queue(store: SqliteStore, message_id: str, *, reply: str = HOSTILE_REPLY) -> None:
    """A letter the relay deferred once; its next attempt in an hour."""
    now = time.time()
    store.accept(
        NewMessage(
            id=message_id,
            created_at=now - 120,
            kind=MessageKind.MAIL,
            mail_from=SENDER,
            recipients=(COLLEAGUE,),
            raw=PLAIN,
            size=len(PLAIN),
            verdict="forward",
            state=MessageState.QUEUED,
        )
    )
    store.claim_due(now, 100)
    store.complete(
        message_id,
        [RecipientOutcome(COLLEAGUE, RecipientState.DEFERRED, reply, now + 3600)],
        now=now - 60,
    )


def recipient(store: SqliteStore, message_id: str) -> tuple[str, float | None]:
    message = store.get(message_id)
    assert message is not None
    (row,) = message.recipients
    return row.state.value, row.next_attempt_at


def audit(store: SqliteStore, message_id: str) -> list[tuple[str, str, str]]:
    message = store.get(message_id)
    assert message is not None
    return [(a.actor, a.action, a.comment) for a in message.audit]


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    sync = SqliteStore(tmp_path / "var")
    store = AsyncStore(sync)
    service = ReviewService(sync, NoticeIdentity(), hold_days=7)
    settings = ReviewSettings(
        users={"secretariat": hash_password(PASSWORD, n=1024)}, token=TOKEN, page_size=3
    )
    changes: list[int] = []
    app = create_app(service, store, settings, secret="s" * 48, on_change=lambda: changes.append(1))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Page(client, sync, changes)
    await store.close()


# -- over HTTP -------------------------------------------------------------------------


async def test_the_queue_view_needs_a_reviewer(page: Page) -> None:
    queue(page.store, "m1")
    for path in ("/queue", "/queue/m1/delete"):
        response = await page.client.get(path, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
    token = await page.csrf()
    for path in ("/queue/retry", "/queue/m1/retry", "/queue/m1/delete"):
        response = await page.client.post(
            path, data={"csrf": token, "confirm": "yes"}, follow_redirects=False
        )
        assert response.status_code == 403, path
    assert page.state("m1") is MessageState.QUEUED
    assert audit(page.store, "m1") == []


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        ({}, {}),
        ({"csrf": "forged-token-forged-token-forged-token"}, {}),
        ("valid", {"origin": "http://evil.example"}),
    ],
)
async def test_queue_actions_without_the_right_csrf_token_are_refused(
    page: Page, data: dict[str, str] | str, headers: dict[str, str]
) -> None:
    queue(page.store, "m1")
    before = recipient(page.store, "m1")
    await page.login()
    form = {"csrf": await page.csrf("/queue")} if data == "valid" else dict(data)  # type: ignore[arg-type]
    for path in ("/queue/retry", "/queue/m1/retry", "/queue/m1/delete"):
        response = await page.client.post(
            path, data={**form, "confirm": "yes"}, headers=headers, follow_redirects=False
        )
        assert response.status_code == 403, path
        assert "jeton de sécurité" in response.text
    assert recipient(page.store, "m1") == before
    assert page.state("m1") is MessageState.QUEUED
    assert audit(page.store, "m1") == [] and page.changes == []


async def test_the_queue_view_lists_recipients_with_state_attempts_next_try_and_reason(
    page: Page,
) -> None:
    queue(page.store, "m1")
    await page.login()
    home = (await page.client.get("/")).text
    assert '<a href="/queue">File d&#39;attente</a>' in home  # in the navigation
    html = (await page.client.get("/queue")).text
    assert "File d&#39;attente d&#39;envoi" in html
    assert "1 message(s) dans la file" in html
    row = html[html.index('id="q-m1"') :]
    assert SENDER in row and COLLEAGUE in row
    assert "différé" in row and "1 essai(s)" in row and "prochain essai" in row
    assert "451 4.3.0 &lt;script&gt;alert(1)&lt;/script&gt; try later" in row
    assert "<script>" not in html
    assert 'action="/queue/m1/retry"' in row and 'href="/queue/m1/delete"' in row
    assert "style=" not in html
    english = await page.post("/lang", lang="en", next="/queue")
    assert english.headers["location"] == "/queue"
    html = (await page.client.get("/queue")).text
    assert "Delivery queue" in html and "deferred" in html and "Retry now" in html


async def test_a_queued_message_page_shows_its_attempt_history_and_audit_trail(
    page: Page,
) -> None:
    queue(page.store, "m1")
    with contextlib.closing(sqlite3.connect(page.store.path)) as db, db:
        db.execute(
            "INSERT INTO delivery_attempts (message_id, rcpt, at, outcome, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            ("m1", COLLEAGUE, time.time() - 60, "deferred", HOSTILE_REPLY),
        )
    await page.login()
    listing = (await page.client.get("/queue")).text
    assert '<a href="/queue/m1">' in listing
    html = (await page.client.get("/queue/m1")).text
    assert "Message m1" in html and "Tentatives d&#39;envoi" in html
    history = html[html.index('class="attempts"') :]
    assert COLLEAGUE in history and "différé" in history
    assert "451 4.3.0 &lt;script&gt;alert(1)&lt;/script&gt; try later" in history
    assert "<script>" not in html
    assert 'action="/queue/m1/retry"' in html and 'href="/queue/m1/delete"' in html
    await page.post("/queue/m1/retry")
    html = (await page.client.get("/queue/m1")).text
    assert "secretariat" in html and "à réessayer maintenant" in html
    assert (await page.client.get("/queue/nope")).status_code == 404


async def test_retry_from_the_page_is_audited_with_the_reviewer_and_wakes_delivery(
    page: Page,
) -> None:
    queue(page.store, "m1")
    await page.login()
    response = await page.post("/queue/m1/retry")
    assert (response.status_code, response.headers["location"]) == (303, "/queue")
    state, due = recipient(page.store, "m1")
    assert state == "deferred" and due is not None and due <= time.time()
    assert audit(page.store, "m1") == [("secretariat", "retry", "")]
    assert page.changes == [1]
    assert "1 message(s) à réessayer maintenant" in (await page.client.get("/queue")).text
    await page.post("/queue/retry")
    assert "Aucun message n&#39;attend de nouvel essai." in (await page.client.get("/queue")).text


async def test_delete_from_the_page_needs_its_confirmation_step(page: Page) -> None:
    queue(page.store, "m1")
    await page.login()
    # The form posted without the confirmation: only the confirmation page.
    unconfirmed = await page.post("/queue/m1/delete")
    assert unconfirmed.status_code == 200
    assert "Supprimer le message m1 de la file ?" in unconfirmed.text
    assert page.state("m1") is MessageState.QUEUED
    confirmation = (await page.client.get("/queue/m1/delete")).text
    assert 'name="confirm" value="yes"' in confirmation
    assert 'name="notify" value="yes"' in confirmation
    assert "Prévenir l&#39;expéditeur" in confirmation
    response = await page.post(
        "/queue/m1/delete", confirm="yes", notify="yes", comment="doublon du 12"
    )
    assert (response.status_code, response.headers["location"]) == (303, "/queue")
    assert page.state("m1") is MessageState.CANCELLED
    assert page.store.get_raw("m1") is None
    assert audit(page.store, "m1") == [("secretariat", "delete", "doublon du 12")]
    (notice,) = [
        m for m in page.store.list_messages(MessageState.QUEUED) if m.kind is MessageKind.NOTICE
    ]
    assert [r.rcpt for r in notice.recipients] == [SENDER] and notice.related_id == "m1"
    assert page.changes == [1]
    html = (await page.client.get("/queue")).text
    assert "Message supprimé de la file : l&#39;expéditeur est prévenu." in html
    gone = await page.client.get("/queue/m1/delete", follow_redirects=False)
    assert (gone.status_code, gone.headers["location"]) == (303, "/queue")
    missing = await page.client.get("/queue/nope/delete")
    assert missing.status_code == 404


async def test_a_message_being_sent_is_not_deleted_from_the_page(page: Page) -> None:
    queue(page.store, "m1")
    with contextlib.closing(sqlite3.connect(page.store.path)) as db, db:
        db.execute("UPDATE recipients SET state = 'sending'")  # claimed by delivery
    await page.login()
    await page.post("/queue/m1/delete", confirm="yes")
    assert page.state("m1") is MessageState.QUEUED
    assert page.store.get_raw("m1") == PLAIN
    assert "Envoi en cours à l&#39;instant" in (await page.client.get("/queue")).text


# -- in Chromium ---------------------------------------------------------------------------


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="/usr/bin/chromium missing (apt-get install chromium); in CI this fails instead",
)
@pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None and not os.environ.get("CI"),
    reason="playwright missing (pip install playwright; no `playwright install` needed)",
)
async def test_an_operator_retries_then_deletes_queued_mail_from_the_queue_view(
    storage: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    sink = Sink()
    relay = DeferringHandler()
    sink.handler = relay
    await sink.start()
    settings = proxy_settings(
        storage,
        sink.port,
        delivery={"retry_initial": 3600, "retry_max": 3600, "poll_interval": 0.2},
        review={
            "enabled": True,
            "port": 0,
            "users": {"secretariat": hash_password(PASSWORD, n=1024)},
        },
    )
    try:
        async with running_proxy(settings) as app:
            _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(7))
            message_id = reply.split()[-1]
            await eventually(lambda: relay.attempts_to(COLLEAGUE) == 1)

            def deferred() -> bool:
                message = app.store.sync.get(message_id)
                return message is not None and message.recipients[0].attempts == 1

            await eventually(deferred)
            base = f"http://127.0.0.1:{app.review_port}"
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"),
                    executable_path=str(CHROMIUM),
                    headless=True,
                    args=CHROMIUM_ARGS,
                    viewport={"width": 1280, "height": 800},
                    locale="fr-FR",
                )
                try:
                    page = browser.pages[0] if browser.pages else await browser.new_page()
                    problems: list[str] = []
                    page.on(
                        "console",
                        lambda m: (
                            problems.append(m.text) if m.type in ("error", "warning") else None
                        ),
                    )
                    page.on(
                        "response",
                        lambda r: (
                            problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None
                        ),
                    )
                    await page.goto(base + "/")
                    await page.get_by_label("Nom du relecteur").fill("secretariat")
                    await page.get_by_label("Mot de passe").fill(PASSWORD)
                    await page.get_by_role("button", name="Se connecter").click()

                    # From the navigation to the queue: the deferred letter and why.
                    await page.get_by_role("link", name="File d'attente").click()
                    await expect(page.get_by_role("heading", level=1)).to_have_text(
                        "File d'attente d'envoi"
                    )
                    row = page.locator(f"#q-{message_id}")
                    await expect(row).to_contain_text(COLLEAGUE)
                    await expect(row).to_contain_text("différé")
                    await expect(row).to_contain_text("1 essai(s)")
                    await expect(row).to_contain_text("mailbox busy, try later")
                    await expect(row).to_contain_text("prochain essai")
                    await page.screenshot(path=str(tmp_path / "queue.png"), full_page=True)

                    # Retry now: the relay sees a new attempt at once (not in an hour).
                    await row.get_by_role("button", name="Réessayer maintenant").click()
                    await expect(page.locator(".flash")).to_contain_text(
                        "1 message(s) à réessayer maintenant"
                    )
                    await eventually(lambda: relay.attempts_to(COLLEAGUE) == 2)

                    # The message's own page: its recipients, attempts and audit trail.
                    await page.locator(f"#q-{message_id}").get_by_role("link").first.click()
                    await expect(page.get_by_role("heading", level=1)).to_have_text(
                        f"Message {message_id}"
                    )
                    await expect(page.locator("section.audit")).to_contain_text(
                        "secretariat : à réessayer maintenant"
                    )
                    await page.get_by_role("link", name="Retour à la file d'attente").click()

                    # Delete: a confirmation page first, the sender told on request.
                    relay.deferring = False
                    await eventually(
                        lambda: (
                            (m := app.store.sync.get(message_id)) is not None
                            and m.recipients[0].attempts == 2
                        )
                    )
                    await page.reload()
                    await (
                        page.locator(f"#q-{message_id}")
                        .get_by_role("link", name="Supprimer…")
                        .click()
                    )
                    await expect(page.get_by_role("heading", level=1)).to_have_text(
                        f"Supprimer le message {message_id} de la file ?"
                    )
                    assert app.store.sync.get_raw(message_id) is not None  # nothing yet
                    await page.get_by_label("Prévenir l'expéditeur").check()
                    await page.get_by_label("Commentaire").fill("renvoyé par fax")
                    await page.get_by_role("button", name="Confirmer la suppression").click()
                    await expect(page.locator(".flash")).to_contain_text("l'expéditeur est prévenu")
                    # Gone from the queue (the notice to its sender may pass through it).
                    await expect(page.locator(f"#q-{message_id}")).to_have_count(0)
                    await eventually(
                        lambda: app.store.sync.count_messages(MessageState.QUEUED) == 0
                    )
                    await page.reload()
                    await expect(
                        page.get_by_text("La file d'attente est vide : tout a été remis.")
                    ).to_be_visible()
                    assert problems == []
                finally:
                    await browser.close()
            await eventually(lambda: len(relay.notices()) == 1)
            await asyncio.sleep(0.3)
    finally:
        await sink.stop()
    assert relay.mails() == []  # the letter itself never left
    notice = relay.notices()[0]
    assert notice.rcpt_tos == [SENDER]
    text = notice.message.get_body(("plain",))
    assert text is not None
    assert message_id in text.get_content() and "renvoyé par fax" in text.get_content()
    database = storage / "apiguard.sqlite3"
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT actor, action, comment FROM audit WHERE message_id = ? ORDER BY seq",
            (message_id,),
        ).fetchall()
    assert rows == [("secretariat", "retry", ""), ("secretariat", "delete", "renvoyé par fax")]
    assert re.fullmatch(r"[0-9a-f]+", message_id)
