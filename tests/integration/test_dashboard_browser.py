"""The dashboard and the list in Debian's chromium (headless, Playwright):
the charts and their tables show the figures of a store the test filled, the
page runs under its CSP without a complaint, and at a phone's 390 px the
list does not scroll sideways. Screenshots are kept under tests/artifacts/
(ignored by git) and in the test's tmp_path."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from apiguard.review.auth import hash_password
from apiguard.store.sqlite import SqliteStore
from apiguard.store.volume import VolumeStore
from tests.decisions import Filled, fill, recent_start
from tests.integration.test_review_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark
from tests.support import Sink, letter, proxy_settings, running_proxy, send

__all__ = ["pytestmark"]

PASSWORD = "mot de passe du secrétariat"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LONG_SENDER = "secretariat.cabinet.medical.des.quatre.chemins@medical13.apicrypt.org"
LONG_COLLEAGUE = "dr.jean-christophe.durand-delacroix@chu-montpellier.mssante.fr"


def keep(screenshot: Path) -> None:
    """A copy of a screenshot under tests/artifacts/, to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS / screenshot.name)


@asynccontextmanager
async def chromium(tmp_path: Path, width: int, problems: list[str]) -> AsyncIterator[Any]:
    """A signed-out page in headless chromium; console errors and failed
    requests (a CSP violation among them) land in `problems`."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path / f"chromium-{width}"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": 900},
            locale="fr-FR",
        )
        try:
            page = browser.pages[0] if browser.pages else await browser.new_page()
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
            )
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.on(
                "response",
                lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
            )
            yield page
        finally:
            await browser.close()


async def sign_in(page: Any, base: str) -> None:
    from playwright.async_api import expect

    await page.goto(base + "/login")
    await page.get_by_label("Nom du relecteur").fill("secretariat")
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_role("button", name="Se connecter").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        "Messages en attente de relecture"
    )


def review_settings(storage: Path, sink: Sink, **sections: dict[str, Any]) -> Any:
    return proxy_settings(
        storage,
        sink.port,
        review={
            "enabled": True,
            "port": 0,
            "hold_days": 60,  # the filled store's held message stays held
            "users": {"secretariat": hash_password(PASSWORD, n=1024)},
        },
        **sections,
    )


async def table_numbers(page: Any, table_id: str) -> dict[str, list[int]]:
    """{row header: [numbers]} of a table on the page."""
    rows = await page.locator(f"#{table_id} tbody tr").all()
    found: dict[str, list[int]] = {}
    for row in rows:
        header = (await row.locator("th").inner_text()).strip()
        cells = await row.locator("td").all_inner_texts()
        found[header] = [int(c) for c in cells if c.strip().isdigit()]
    return found


async def test_the_dashboard_charts_and_tables_show_the_store_s_figures(
    sink: Sink, storage: Path, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    store = SqliteStore(storage)
    try:
        expected: Filled = fill(store, recent_start())
    finally:
        store.close()
    async with running_proxy(review_settings(storage, sink)) as app:
        base = f"http://127.0.0.1:{app.review_port}"
        problems: list[str] = []
        async with chromium(tmp_path, 1280, problems) as page:
            await sign_in(page, base)
            await page.get_by_role("link", name="Tableau de bord").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Tableau de bord")

            # the totals
            for name, value in (
                ("messages", expected.messages),
                ("forwarded", expected.forwarded),
                ("held", expected.held),
                ("refused", expected.refused),
            ):
                await expect(page.locator(f'[data-figure="{name}"]')).to_have_text(str(value))

            # decisions per day: the chart's bars print the table's figures
            days = await table_numbers(page, "days-table")
            assert len(days) == 30
            assert [sum(column) for column in zip(*days.values(), strict=True)] == [
                expected.forwarded,
                expected.held,
                expected.refused,
            ]
            daily = page.locator("#daily-title ~ .chart-pair svg")
            await expect(daily).to_have_attribute("aria-label", "Décisions par jour")
            printed = [
                int(v) for v in await daily.locator("text.value").all_text_contents() if v.strip()
            ]
            assert sum(printed) == expected.messages
            assert sorted(printed) == sorted(n for row in days.values() for n in row if n)

            # findings by article and by rule: chart values and table rows agree
            articles = await table_numbers(page, "articles-table")
            assert {k: v[0] for k, v in articles.items() if v[0]} == {
                f"Art. {n}": count for n, count in expected.by_article.items()
            } | {"hors articles": expected.by_rule["privacy.identity-in-subject"]}
            rules = await table_numbers(page, "rules-table")
            assert {k: v[0] for k, v in rules.items()} == expected.by_rule
            rule_chart = page.locator("#rules-title ~ .chart-pair svg")
            values = [
                int(v)
                for v in await rule_chart.locator("text.value").all_text_contents()
                if v.strip()
            ]
            assert sorted(values) == sorted(expected.by_rule.values())
            labels = await rule_chart.locator(".axis.x text, .axis.y text").all_text_contents()
            assert set(expected.by_rule) <= set(labels)

            # senders, review backlog and queue health
            senders = await table_numbers(page, "senders-table")
            assert senders == {
                "labo@bio.mssante.fr": [4, 0],
                "dr.martin@medical13.apicrypt.org": [0, 3],
            }
            review = await page.locator("#review-table").inner_text()
            assert "En attente de relecture maintenant\t1" in review
            assert "Délai médian avant décision\t3 h 00 min" in review
            await expect(page.locator("#queue-table")).to_contain_text(
                "Dernière remise réussie au relais"
            )
            assert await page.locator("script").count() == 0
            assert await page.locator("svg [style]").count() == 0

            screenshot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            keep(screenshot)

            # on a phone: nothing scrolls sideways
            await page.set_viewport_size({"width": 390, "height": 900})
            widths = await page.evaluate(
                "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert widths[0] <= widths[1], widths
            await page.set_viewport_size({"width": 1280, "height": 900})

            # the report download links are there for each format
            for format in ("HTML", "CSV", "JSON", "PDF"):
                assert await page.get_by_role("link", name=format, exact=True).count() == 2
            async with page.expect_download() as download_info:
                await page.get_by_role("link", name="JSON", exact=True).first.click()
            download = await download_info.value
            assert download.suggested_filename == f"apiguard-rapport-{time.strftime('%Y-%m')}.json"
        assert problems == []
    assert screenshot.stat().st_size > 20_000


async def test_the_list_does_not_scroll_sideways_at_390_px_and_refusing_asks_first(
    sink: Sink, storage: Path, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    volume = VolumeStore(SqliteStore(storage))
    volume.store.close()
    with sqlite3.connect(storage / "apiguard.sqlite3") as db:
        db.execute(
            "INSERT INTO volume_circuits (sender, state, opened_at, times_opened,"
            " messages_short, messages_day) VALUES (?, 'open', ?, 1, 40, 200)",
            (LONG_SENDER, time.time() - 600),
        )
    settings = review_settings(
        storage, sink, charter={"rules": {"art5.review-all": {"enabled": True}}}
    )
    async with running_proxy(settings) as app:
        first = (await send(app.port, LONG_SENDER, [LONG_COLLEAGUE], letter(1)))[1].split()[-1]
        await send(app.port, LONG_SENDER, [LONG_COLLEAGUE], letter(2))
        base = f"http://127.0.0.1:{app.review_port}"
        problems: list[str] = []
        async with chromium(tmp_path, 390, problems) as page:
            await sign_in(page, base)
            await expect(page.locator("table.stack tbody tr[id^=m-]")).to_have_count(2)
            widths = await page.evaluate(
                "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            wide = await page.evaluate(
                "() => [...document.querySelectorAll('body *')]"
                ".filter(e => e.getBoundingClientRect().right"
                " > document.documentElement.clientWidth)"
                ".map(e => e.tagName + '.' + e.className)"
                ".slice(0, 12)"
            )
            assert widths[0] <= widths[1], (widths, wide)
            # the circuit's address is not wrapped one character per line
            address = page.locator("section.circuits td.address")
            box = await address.bounding_box()
            line = await address.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)")
            assert box is not None and box["height"] <= 3 * line + 16, (box, line)
            # each row shows its held recipient and subject; its checkbox says whose it is
            row = page.locator(f"#m-{first}")
            await expect(row).to_contain_text(LONG_COLLEAGUE)
            await expect(row).to_contain_text("Compte rendu de consultation")
            await expect(
                row.get_by_role("checkbox", name=f"Sélectionner le message de {LONG_SENDER} du")
            ).to_have_count(1)
            screenshot = tmp_path / "review-list-390.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            keep(screenshot)

            # "Refuser" in a row asks first, on a page of its own
            await row.get_by_role("link", name="Refuser").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Refuser ce message ?")
            held = await app.store.run(app.store.sync.get, first)
            assert held is not None and held.state.value == "held"
            await page.get_by_role("link", name="Ne pas refuser, revenir à la liste").click()
            await expect(page.locator("table.stack tbody tr[id^=m-]")).to_have_count(2)
            await page.locator(f"#m-{first}").get_by_role("link", name="Refuser").click()
            await page.get_by_role("button", name="Confirmer le refus").click()
            await expect(page.locator(".flash")).to_contain_text("1 message(s) refusé(s)")
            await expect(page.locator("table.stack tbody tr[id^=m-]")).to_have_count(1)
        assert problems == []
