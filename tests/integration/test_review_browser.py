"""The review page in a real browser: Debian's chromium, headless, driven by
Playwright for Python, against the running proxy and a sink server."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from apiguard.review.auth import hash_password
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "mot de passe du secrétariat"
SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
SCREENSHOT_COPY = Path("/tmp/review-list.png")

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="/usr/bin/chromium missing (apt-get install chromium); in CI this fails instead",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None and not os.environ.get("CI"),
        reason="playwright missing (pip install playwright; no `playwright install` needed)",
    ),
]


async def test_a_reviewer_signs_in_releases_one_held_message_and_rejects_another(
    sink: Sink, storage: Path, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    settings = proxy_settings(
        storage,
        sink.port,
        charter={"rules": {"art5.review-all": {"enabled": True}}},
        review={
            "enabled": True,
            "port": 0,
            "users": {"secretariat": hash_password(PASSWORD, n=1024)},
        },
    )
    async with running_proxy(settings) as app:
        _, first = await send(app.port, SENDER, [COLLEAGUE], letter(1))
        _, second = await send(app.port, SENDER, [COLLEAGUE], letter(2))
        released_id, rejected_id = first.split()[-1], second.split()[-1]
        await eventually(lambda: len(sink.handler.notices()) == 2)  # the hold notices
        assert sink.handler.mails() == []
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
                    lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
                )
                page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
                page.on(
                    "response",
                    lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
                )

                # Signing in: the list is behind the login form.
                await page.goto(base + "/")
                assert page.url == base + "/login"
                await page.get_by_label("Nom du relecteur").fill("secretariat")
                await page.get_by_label("Mot de passe").fill(PASSWORD)
                await page.get_by_role("button", name="Se connecter").click()
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    "Messages en attente de relecture"
                )

                # Both held messages, with their findings and expiry.
                await expect(page.locator("tbody tr")).to_have_count(2)
                row = page.locator(f"#m-{released_id}")
                await expect(row).to_contain_text("art5.review-all")
                await expect(row).to_contain_text("Art. 5")
                await expect(row).to_contain_text("relecture avant envoi demandée")
                await expect(row).to_contain_text("reste 6 j 23 h")
                await expect(page.locator("link[rel=stylesheet]")).to_have_attribute(
                    "href", "/static/review.css"
                )
                screenshot = tmp_path / "review-list.png"
                await page.screenshot(path=str(screenshot), full_page=True)
                shutil.copyfile(screenshot, SCREENSHOT_COPY)

                # One message: read it, then release it.
                await row.get_by_role("link", name="Ouvrir").click()
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    f"Message {released_id}"
                )
                await expect(page.locator("section.why")).to_contain_text(
                    "Un membre du cabinet doit relire puis libérer ce message"
                )
                await expect(page.locator("pre.text")).to_contain_text("bilan cardiologique")
                await page.get_by_label("Commentaire").fill("relu, conforme")
                await page.get_by_role("button", name="Libérer").click()
                await expect(page.locator(".flash")).to_contain_text("1 message(s) libéré(s)")
                await expect(page.locator("section.audit")).to_contain_text("relu, conforme")
                await eventually(lambda: len(sink.handler.mails()) == 1)
                delivered = sink.handler.mails()[0]
                assert delivered.rcpt_tos == [COLLEAGUE]
                assert b"CR-2026-1" in delivered.data

                # Back to the list: reject the other one from its row, which asks first.
                await page.get_by_role("link", name="Retour à la liste").click()
                other = page.locator(f"#m-{rejected_id}")
                await other.get_by_role("link", name="Refuser").click()
                await expect(page.get_by_role("heading", level=1)).to_have_text(
                    "Refuser ce message ?"
                )
                await page.get_by_role("button", name="Confirmer le refus").click()
                await expect(page.locator(".flash")).to_contain_text("1 message(s) refusé(s)")
                await expect(
                    page.get_by_text("Aucun message en attente de relecture.")
                ).to_be_visible()
                await expect(page.locator("section.circuits")).to_contain_text("Aucun circuit.")
                await eventually(lambda: len(sink.handler.notices()) == 3)
                assert problems == []
            finally:
                await browser.close()

    assert screenshot.stat().st_size > 10_000
    assert len(sink.handler.mails()) == 1
    rejection = sink.handler.notices()[-1]
    assert rejection.rcpt_tos == [SENDER]
    text = rejection.message.get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert rejected_id in content
    assert "une personne du cabinet l'a refusé" in content
