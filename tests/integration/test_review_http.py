"""The review page over HTTP (httpx through the ASGI interface of the real app,
over a real store), then the grace period and expiry through the running proxy."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import apiguard.app
from apiguard.cli import main
from apiguard.config import ReviewSettings
from apiguard.notices import NoticeIdentity
from apiguard.policy.verdict import Action, Finding
from apiguard.review.auth import hash_password
from apiguard.review.circuits import find_board
from apiguard.review.service import ReviewService
from apiguard.review.web import create_app
from apiguard.store.aio import AsyncStore
from apiguard.store.base import MessageKind, MessageState, NewMessage
from apiguard.store.sqlite import SqliteStore
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

PASSWORD = "mot de passe du secrétariat"
TOKEN = "jeton-partage-de-test-0123456789"
SENDER = "dr.martin@medical13.apicrypt.org"
LAB = "labo@bio.mssante.fr"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
BASE = "http://review.test"

REVIEW_ALL = Finding(
    "art5.review-all",
    5,
    Action.HOLD,
    "relecture avant envoi demandée pour tous les messages",
    "review before sending is required for every message",
    "Un membre du cabinet doit relire puis libérer ce message.",
    "Someone at the practice must check then release this message.",
)
ANNOUNCEMENT = Finding(
    "art2.announcement", 2, Action.HOLD, "annonce ou invitation groupée", "announcement"
)
PLAIN = (
    b"From: Dr Martin <dr.martin@medical13.apicrypt.org>\r\n"
    b"To: dr.durand@medical69.apicrypt.org\r\nSubject: Compte rendu\r\n\r\nBonjour.\r\n"
)
HOSTILE = (
    b"From: <script>alert('from')</script> <dr.martin@medical13.apicrypt.org>\r\n"
    b"To: dr.durand@medical69.apicrypt.org\r\nSubject: <img src=x onerror=alert(1)>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b'--B\r\nContent-Type: multipart/alternative; boundary="A"\r\n\r\n'
    b"--A\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Texte <script>alert('plain')</script> fin\r\n"
    b"--A\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><b>Gras</b><script>alert('html')</script></body></html>\r\n--A--\r\n"
    b"--B\r\nContent-Type: text/plain\r\n"
    b'Content-Disposition: attachment; filename="<script>x</script>.txt"\r\n\r\n'
    b"contenu joint\r\n--B--\r\n"
)


@dataclass
class Page:
    client: httpx.AsyncClient
    store: SqliteStore
    changes: list[int] = field(default_factory=list)

    def hold(
        self,
        message_id: str,
        raw: bytes = PLAIN,
        *,
        sender: str = SENDER,
        findings: tuple[Finding, ...] = (REVIEW_ALL,),
        created_at: float | None = None,
    ) -> None:
        self.store.accept(
            NewMessage(
                id=message_id,
                created_at=created_at or time.time(),
                kind=MessageKind.MAIL,
                mail_from=sender,
                recipients=(COLLEAGUE,),
                raw=raw,
                size=len(raw),
                verdict="hold",
                state=MessageState.HELD,
                findings=findings,
            )
        )

    def state(self, message_id: str) -> MessageState:
        message = self.store.get(message_id)
        assert message is not None
        return message.state

    async def csrf(self, path: str = "/login") -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', (await self.client.get(path)).text)
        assert found is not None
        return found.group(1)

    async def login(self, name: str = "secretariat", password: str = PASSWORD) -> httpx.Response:
        token = await self.csrf()
        return await self.client.post(
            "/login",
            data={"csrf": token, "name": name, "password": password},
            follow_redirects=False,
        )

    async def post(self, path: str, **data: str | list[str]) -> httpx.Response:
        return await self.client.post(
            path, data={"csrf": await self.csrf("/"), **data}, follow_redirects=False
        )

    async def get(self, path: str, **params: str) -> httpx.Response:
        return await self.client.get(path, params=params)


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


# -- access --------------------------------------------------------------------------


async def test_every_page_redirects_to_the_login_form_without_a_session(page: Page) -> None:
    page.hold("m1", HOSTILE)
    for path in ("/", "/?page=2", "/messages/m1", "/messages/m1/attachments/0"):
        response = await page.client.get(path, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
        assert "Gras" not in response.text and "contenu joint" not in response.text


async def test_every_action_is_refused_without_a_session(page: Page) -> None:
    page.hold("m1")
    token = await page.csrf()  # even with a valid anonymous CSRF token
    for path in (
        "/messages/m1/release",
        "/messages/m1/reject",
        "/messages/m1/cancel",
        "/bulk",
        "/circuits/close",
        "/logout",
    ):
        response = await page.client.post(
            path, data={"csrf": token, "ids": "m1", "action": "release"}, follow_redirects=False
        )
        assert response.status_code == 403, path
    assert page.state("m1") is MessageState.HELD
    assert page.changes == []


@pytest.mark.parametrize(
    ("name", "password"),
    [
        ("secretariat", "mauvais mot de passe"),
        ("inconnu", PASSWORD),
        ("secretariat", ""),
        ("", "jeton-faux-mais-assez-long-0000"),
    ],
)
async def test_a_wrong_password_is_refused(page: Page, name: str, password: str) -> None:
    response = await page.login(name, password)
    assert response.status_code == 401
    assert "Nom ou mot de passe incorrect." in response.text
    assert (await page.client.get("/", follow_redirects=False)).status_code == 303


@pytest.mark.parametrize(("name", "password"), [("secretariat", PASSWORD), ("", TOKEN)])
async def test_a_reviewer_or_the_token_signs_in_with_a_strict_http_only_cookie(
    page: Page, name: str, password: str
) -> None:
    response = await page.login(name, password)
    assert (response.status_code, response.headers["location"]) == (303, "/")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert (await page.client.get("/")).status_code == 200


async def test_signing_out_ends_the_session(page: Page) -> None:
    await page.login()
    assert (await page.post("/logout")).status_code == 303
    assert (await page.client.get("/", follow_redirects=False)).status_code == 303


async def test_the_login_form_itself_needs_its_csrf_token(page: Page) -> None:
    response = await page.client.post(
        "/login", data={"name": "secretariat", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 403
    assert (await page.client.get("/", follow_redirects=False)).status_code == 303


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        ({}, {}),
        ({"csrf": ""}, {}),
        ({"csrf": "forged-token-forged-token-forged-token"}, {}),
        ("valid", {"origin": "http://evil.example"}),
    ],
)
async def test_an_action_without_the_right_csrf_token_is_refused(
    page: Page, data: dict[str, str] | str, headers: dict[str, str]
) -> None:
    page.hold("m1")
    await page.login()
    form = {"csrf": await page.csrf("/")} if data == "valid" else dict(data)  # type: ignore[arg-type]
    response = await page.client.post(
        "/messages/m1/release", data=form, headers=headers, follow_redirects=False
    )
    assert response.status_code == 403
    assert "jeton de sécurité" in response.text
    bulk = await page.client.post(
        "/bulk",
        data={**form, "ids": "m1", "action": "release"},
        headers=headers,
        follow_redirects=False,
    )
    assert bulk.status_code == 403
    assert page.state("m1") is MessageState.HELD


# -- safe rendering and headers ---------------------------------------------------------


async def test_html_and_scripts_from_the_message_are_shown_escaped_never_rendered(
    page: Page,
) -> None:
    page.hold("m1", HOSTILE)
    await page.login()
    html = (await page.client.get("/messages/m1")).text
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "&lt;script&gt;alert(&#39;plain&#39;)&lt;/script&gt;" in html
    assert "&lt;b&gt;Gras&lt;/b&gt;&lt;script&gt;alert(&#39;html&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;script&gt;x&lt;/script&gt;.txt" in html  # the attachment name
    listing = (await page.client.get("/")).text
    assert "<script" not in listing.lower()


@pytest.mark.parametrize("path", ["/login", "/", "/messages/m1", "/messages/nope"])
async def test_pages_carry_the_security_headers_and_are_never_cached(page: Page, path: str) -> None:
    page.hold("m1")
    if path != "/login":
        await page.login()
    response = await page.client.get(path)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


async def test_the_stylesheet_is_served_by_the_app_and_pages_load_nothing_else(page: Page) -> None:
    await page.login()
    html = (await page.client.get("/")).text
    assert re.findall(r'(?:href|src)="(https?:)?//', html) == []
    assert re.findall(r'<link [^>]*href="([^"]+)"', html) == [
        "/static/review.css",
        "/static/favicon.svg",
    ]
    css = await page.client.get("/static/review.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    icon = await page.client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert "style=" not in html  # no inline style either


# -- the list ------------------------------------------------------------------------------


async def test_the_list_shows_findings_expiry_and_filters_and_pages(page: Page) -> None:
    now = time.time()
    for n in range(5):
        page.hold(
            f"m{n}",
            sender=LAB if n == 4 else SENDER,
            findings=(REVIEW_ALL, ANNOUNCEMENT) if n == 3 else (REVIEW_ALL,),
            created_at=now - 3600 + n,
        )
    await page.login()
    first = (await page.client.get("/")).text
    assert "5 message(s) en attente" in first
    assert "Page 1 sur 2" in first
    assert [m for m in re.findall(r'name="ids" value="(m\d)"', first)] == ["m4", "m3", "m2"]
    assert "art5.review-all" in first and "Art. 5" in first
    assert "relecture avant envoi demandée pour tous les messages" in first
    assert "reste 6 j 22 h" in first or "reste 6 j 23 h" in first
    second = (await page.client.get("/?page=2")).text
    assert re.findall(r'name="ids" value="(m\d)"', second) == ["m1", "m0"]

    by_rule = (await page.client.get("/", params={"rule": "art2.announcement"})).text
    assert re.findall(r'name="ids" value="(m\d)"', by_rule) == ["m3"]
    by_sender = (await page.client.get("/", params={"sender": LAB})).text
    assert re.findall(r'name="ids" value="(m\d)"', by_sender) == ["m4"]
    assert f'<option value="{LAB}" selected>' in by_sender


async def test_bulk_release_and_reject_act_on_the_selection_with_a_comment(page: Page) -> None:
    for name in ("a", "b", "c"):
        page.hold(name)
    await page.login()
    released = await page.post("/bulk", action="release", ids=["a", "b"], comment="vu au téléphone")
    assert released.status_code == 303
    assert [page.state(n) for n in "abc"] == [
        MessageState.QUEUED,
        MessageState.QUEUED,
        MessageState.HELD,
    ]
    listing = (await page.client.get("/")).text
    assert "2 message(s) libéré(s)" in listing
    asked = await page.post("/bulk", action="reject", ids=["b", "c"])
    assert asked.status_code == 200 and "Refuser ces 1 message(s)" in asked.text
    assert page.state("c") is MessageState.HELD  # asked first, nothing refused yet
    again = await page.post("/bulk", action="reject", ids=["b", "c"], confirmed="yes")
    assert again.status_code == 303
    assert page.state("c") is MessageState.REJECTED
    assert page.state("b") is MessageState.QUEUED
    flashes = (await page.client.get("/")).text
    assert "1 message(s) refusé(s)" in flashes and "1 message(s) n&#39;étaient plus" in flashes
    audit = page.store.get("a")
    assert audit is not None
    assert [(e.actor, e.action, e.comment) for e in audit.audit] == [
        ("secretariat", "release", "vu au téléphone")
    ]
    assert len(page.changes) == 2  # the delivery worker was woken each time


# -- one message ---------------------------------------------------------------------------


async def test_the_detail_page_shows_envelope_findings_attachments_and_the_audit_trail(
    page: Page,
) -> None:
    page.hold("m1", HOSTILE)
    await page.login()
    html = (await page.client.get("/messages/m1")).text
    assert SENDER in html and COLLEAGUE in html
    assert "Pourquoi ce message est retenu" in html
    assert "Un membre du cabinet doit relire puis libérer ce message." in html
    assert "Type détecté" in html and "<strong>text</strong>" in html
    assert 'href="/messages/m1/attachments/0" download' in html
    assert "Refus automatique le" in html

    response = await page.post(
        "/messages/m1/reject", comment="erreur de patient", next="/messages/m1"
    )
    assert (response.status_code, response.headers["location"]) == (303, "/messages/m1")
    after = (await page.client.get("/messages/m1")).text
    assert "refusé" in after and "« erreur de patient »" in after
    assert "<strong>secretariat</strong>" in after
    assert "Le contenu n&#39;est plus conservé" in after


async def test_an_attachment_downloads_only_as_a_file(page: Page) -> None:
    page.hold("m1", HOSTILE)
    await page.login()
    response = await page.client.get("/messages/m1/attachments/0")
    assert response.status_code == 200
    assert response.content == b"contenu joint"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith('attachment; filename="')
    assert "sandbox" in response.headers["content-security-policy"]
    assert (await page.client.get("/messages/m1/attachments/5")).status_code == 404


async def test_the_interface_switches_to_english_and_back(page: Page) -> None:
    page.hold("m1")
    await page.login()
    assert "Messages en attente de relecture" in (await page.client.get("/")).text
    response = await page.post("/lang", lang="en", next="/messages/m1")
    assert response.headers["location"] == "/messages/m1"
    english = (await page.client.get("/messages/m1")).text
    assert "Why this message is held" in english
    assert "review before sending is required for every message" in english
    assert '<html lang="en">' in english
    await page.post("/lang", lang="fr", next="https://evil.example/")
    assert "Messages en attente de relecture" in (await page.client.get("/")).text


async def test_a_message_in_its_grace_period_can_be_cancelled_from_the_page(page: Page) -> None:
    page.store.accept(
        NewMessage(
            id="g1",
            created_at=time.time(),
            kind=MessageKind.MAIL,
            mail_from=SENDER,
            recipients=(COLLEAGUE,),
            raw=PLAIN,
            size=len(PLAIN),
            verdict="forward",
            state=MessageState.QUEUED,
            not_before=time.time() + 600,
        )
    )
    await page.login()
    listing = (await page.client.get("/")).text
    assert "Envois différés" in listing and 'action="/messages/g1/cancel"' in listing
    assert (await page.post("/messages/g1/cancel")).status_code == 303
    assert page.state("g1") is MessageState.CANCELLED
    assert "Envoi annulé." in (await page.client.get("/")).text
    await page.post("/messages/g1/cancel")  # again: it says so, not "too late"
    assert "envoi est déjà annulé." in (await page.client.get("/")).text


# -- through the running proxy: grace period and expiry ------------------------------------


async def test_the_grace_period_delays_delivery_and_cancel_stops_it(
    sink: Sink, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = proxy_settings(storage, sink.port, review={"send_delay": 1.5})
    config = storage.parent / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n')
    async with running_proxy(settings) as app:
        _, kept = await send(app.port, SENDER, [COLLEAGUE], letter(1))
        _, undone = await send(app.port, SENDER, [COLLEAGUE], letter(2))
        cancelled_id = undone.split()[-1]
        assert main(["review", "cancel", cancelled_id, "--config", str(config)]) == 0
        assert "envoi annulé" in capsys.readouterr().out
        await asyncio.sleep(0.8)
        assert sink.handler.messages == []  # still inside the grace period
        await eventually(lambda: len(sink.handler.messages) == 1)
        await asyncio.sleep(0.5)
        assert main(["review", "cancel", kept.split()[-1], "--config", str(config)]) == 1
    assert len(sink.handler.messages) == 1
    assert b"CR-2026-1" in sink.handler.messages[0].data


async def test_a_message_held_too_long_is_rejected_with_an_expiry_notice(
    sink: Sink, storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apiguard.app, "EXPIRY_INTERVAL", 0.1)
    settings = proxy_settings(
        storage,
        sink.port,
        charter={"rules": {"art5.review-all": {"enabled": True}}},
        review={"hold_days": 1 / 86400},  # one second
    )
    async with running_proxy(settings) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(3))
        assert "held for review" in reply
        await eventually(lambda: len(sink.handler.notices()) == 2, timeout=15)
        message = app.store.sync.get(reply.split()[-1])
        assert message is not None and message.state is MessageState.REJECTED
        assert [(a.actor, a.action) for a in message.audit] == [("apiguard", "expire")]
    assert sink.handler.mails() == []
    expiry = sink.handler.notices()[-1].message.get_body(("plain",))
    assert expiry is not None
    assert "personne ne l'a libéré dans le délai prévu" in expiry.get_content()


# -- circuits (Article 2 over time) ----------------------------------------------------------


@dataclass
class StoredCircuit:
    sender: str
    state: str
    opened_at: float
    closed_at: float | None = None
    held_messages: int = 0


@dataclass
class FakeVolume:
    """The two circuit operations of the volume store, in memory."""

    items: list[StoredCircuit]
    closed: list[tuple[str, str]] = field(default_factory=list)

    def circuits(self, *, open_only: bool = True) -> list[StoredCircuit]:
        return [c for c in self.items if c.state == "open" or not open_only]

    def close_circuit(self, sender: str, actor: str, now: float) -> bool:
        for circuit in self.items:
            if circuit.sender == sender and circuit.state == "open":
                circuit.state, circuit.closed_at = "closed", now
                self.closed.append((sender, actor))
                return True
        return False


async def test_open_circuits_are_listed_and_closed_from_the_page(tmp_path: Path) -> None:
    sync = SqliteStore(tmp_path / "var")
    store = AsyncStore(sync)
    volume = FakeVolume(
        [
            StoredCircuit(LAB, "open", time.time() - 600, held_messages=12),
            StoredCircuit(SENDER, "closed", time.time() - 9000, time.time() - 8000),
        ]
    )
    app = create_app(
        ReviewService(sync, NoticeIdentity()),
        store,
        ReviewSettings(users={"secretariat": hash_password(PASSWORD, n=1024)}),
        secret="s" * 48,
        circuits=find_board(volume),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        page = Page(client, sync)
        await page.login()
        listing = (await page.client.get("/")).text
        assert "Circuits (envois en rafale, Art. 2)" in listing
        assert "12 message(s) retenu(s)" in listing
        assert listing.index(LAB) < listing.index(SENDER)  # open ones first
        assert listing.count("Fermer le circuit") == 1
        response = await page.post("/circuits/close", sender=LAB)
        assert response.status_code == 303
        assert volume.closed == [(LAB, "secretariat")]
        assert "Circuit fermé." in (await page.client.get("/")).text
        refused = await page.client.post("/circuits/close", data={"sender": SENDER})
        assert refused.status_code == 403
    await store.close()


def test_the_real_volume_store_speaks_the_circuit_board(tmp_path: Path) -> None:
    from apiguard.store.volume import VolumeStore

    sync = SqliteStore(tmp_path / "var")
    try:
        board = find_board(VolumeStore(sync))
        assert board is not None
        assert board.circuits() == []
        assert board.close(LAB, "secretariat", time.time()) is False
        assert find_board(None) is None and find_board(object()) is None
    finally:
        sync.close()
