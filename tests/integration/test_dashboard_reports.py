"""The decision records, the dashboard page (over HTTP, through the real ASGI
app on a real store) and the monthly report in its four formats, by the
command line and by the dashboard's download links."""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pypdf
import pytest

from apiguard.cli import main
from apiguard.config import ReviewSettings, Settings
from apiguard.notices import NoticeIdentity
from apiguard.policy.charter import Charter
from apiguard.reports import records
from apiguard.reports.charter import charter_snapshot
from apiguard.reports.monthly import monthly_report_in
from apiguard.reports.upkeep import ReportUpkeep
from apiguard.review.auth import hash_password
from apiguard.review.service import ReviewService
from apiguard.review.web import create_app
from apiguard.store.aio import AsyncStore
from apiguard.store.base import MessageState, RecipientOutcome, RecipientState
from apiguard.store.sqlite import SqliteStore
from tests.decisions import COLLEAGUE, MONTH, Filled, fill, month_start, recent_start
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

PASSWORD = "mot de passe du secrétariat"
BASE = "http://review.test"


def report_cli(storage: Path, tmp_path: Path, format: str, month: str = MONTH) -> Path:
    config = tmp_path / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n', encoding="utf-8")
    output = tmp_path / f"report.{format}"
    code = main(
        [
            "report",
            "--config",
            str(config),
            "--month",
            month,
            "--format",
            format,
            "--output",
            str(output),
        ]
    )
    assert code == 0
    return output


def counted(store: SqliteStore, sql: str) -> int:
    return int(store.read(lambda db: db.execute(sql).fetchone()[0]))


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, Filled]:
    storage = tmp_path / "var"
    store = SqliteStore(storage)
    try:
        return storage, fill(store)
    finally:
        store.close()


# -- the decision records ------------------------------------------------------


def test_every_decided_message_has_a_record_without_content_or_subject(
    filled: tuple[Path, Filled],
) -> None:
    storage, expected = filled
    store = SqliteStore(storage)
    try:
        rows = store.read(
            lambda db: db.execute(
                "SELECT message_id, verdict, outcome, review, software, size_class, recipients"
                " FROM decisions ORDER BY at"
            ).fetchall()
        )
        columns = store.read(
            lambda db: [r[1] for r in db.execute("PRAGMA table_info(decisions)").fetchall()]
        )
    finally:
        store.close()
    assert len(rows) == expected.messages + 2  # two before the period
    by_id = {row[0]: row[1:] for row in rows}
    assert by_id["fwd1"] == ("forward", "delivered", "", "MedicLog 4.2", "<100k", 1)
    assert by_id["fwd5"][:2] == ("forward", "failed")
    assert by_id["held0"][:3] == ("hold", "pending", "release")
    assert by_id["held1"][:3] == ("hold", "refused", "reject")
    assert by_id["held2"][:3] == ("hold", "refused", "expire")
    assert by_id["held3"][:3] == ("hold", "held", "")
    assert by_id["ref0"][:2] == ("reject", "refused")
    assert not {"subject", "raw", "content", "body", "filename"} & set(columns)


def test_a_released_message_s_record_ends_with_its_delivery(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "var")
    try:
        fill(store)
        store.claim_due(time.time() + 10, 100)
        store.complete(
            "held0",
            [RecipientOutcome(COLLEAGUE, RecipientState.DELIVERED, "250 ok")],
            now=time.time(),
        )
        row = store.read(
            lambda db: db.execute(
                "SELECT outcome, review FROM decisions WHERE message_id = 'held0'"
            ).fetchone()
        )
    finally:
        store.close()
    assert tuple(row) == ("delivered", "release")


def test_records_older_than_the_retention_are_pruned_and_the_charter_in_force_stays(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "var")
    try:
        fill(store, start=time.time() - 100 * 86400)  # days 1-22: 100 to 79 days ago
        with store._transaction() as db:
            records.charter_version_in(db, "a", "{}", time.time() - 200 * 86400)
            records.charter_version_in(db, "b", "{}", time.time() - 150 * 86400)
            records.charter_version_in(db, "c", "{}", time.time() - 10 * 86400)
            removed = records.prune_in(db, time.time() - 90 * 86400)
        left = counted(store, "SELECT COUNT(*) FROM decisions")
        oldest = counted(store, "SELECT MIN(at) FROM decisions")
        versions = store.read(
            lambda db: [r[0] for r in db.execute("SELECT digest FROM charter_versions")]
        )
        findings = counted(
            store, "SELECT COUNT(*) FROM decision_findings WHERE message_id = 'held0'"
        )
    finally:
        store.close()
    assert removed > 0 and left > 0
    assert oldest >= time.time() - 91 * 86400
    assert versions == ["b", "c"]  # "b" was in force when the kept records were decided
    assert findings == 0  # held0 was on day 10: 91 days ago


async def test_the_upkeep_remembers_a_changed_charter_and_the_report_lists_the_change(
    tmp_path: Path,
) -> None:
    store = AsyncStore(SqliteStore(tmp_path / "var"))
    settings = Settings()
    before = charter_snapshot(Charter.build({}), settings)
    after = charter_snapshot(
        Charter.build({"art2.too-many-recipients": {"max_recipients": 8, "action": "hold"}}),
        settings,
    )
    try:
        october = month_start("2026-10") + 86400
        changed_at = month_start() + 14 * 86400
        await ReportUpkeep(store, 400, before, clock=lambda: october).start()
        await ReportUpkeep(store, 400, before, clock=lambda: october + 3600).start()
        await ReportUpkeep(store, 400, after, clock=lambda: changed_at).start()
        report = await store.run(
            store.sync.read, lambda db: monthly_report_in(db, MONTH, time.time())
        )
        versions = await store.run(
            store.sync.read,
            lambda db: db.execute("SELECT COUNT(*) FROM charter_versions").fetchone()[0],
        )
    finally:
        await store.close()
    assert versions == 2  # the same configuration twice is remembered once
    assert report.charter is not None
    assert report.charter["rules"]["art2.too-many-recipients"]["action"] == "hold"
    changes = {(c.key, c.before, c.after) for c in report.charter_changes}
    assert changes == {
        ("art2.too-many-recipients.action", "reject", "hold"),
        ("art2.too-many-recipients.max_recipients", "5", "8"),
    }


@pytest.mark.parametrize(
    ("header", "software"),
    [
        (
            b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101"
            b" Thunderbird/115.3.1",
            "Thunderbird/115.3.1",
        ),
        (b"X-Mailer: Microsoft Outlook 16.0", "Microsoft Outlook 16.0"),
        (b"X-Mailer: MedicLog (poste de Mme Quimperlay) 4.2", "MedicLog 4.2"),
        (b"Subject: no software named", ""),
    ],
)
def test_the_software_is_its_product_name_never_the_comments(header: bytes, software: str) -> None:
    raw = b"From: a@b.apicrypt.org\r\n" + header + b"\r\n\r\nX-Mailer: in the body\r\n"
    assert records.software_of(raw) == software


# -- the monthly report by the command line ---------------------------------------


def test_the_json_report_gives_the_month_s_totals_from_the_store(
    filled: tuple[Path, Filled], tmp_path: Path
) -> None:
    storage, expected = filled
    totals = json.loads(report_cli(storage, tmp_path, "json").read_text(encoding="utf-8"))
    assert totals == {
        "month": MONTH,
        "messages": expected.messages,
        "forwarded": expected.forwarded,
        "held": expected.held,
        "refused": expected.refused,
        "by_rule": expected.by_rule,
        "by_article": expected.by_article,
    }


def test_the_json_report_goes_to_standard_output_without_output(
    filled: tuple[Path, Filled], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, expected = filled
    config = tmp_path / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n', encoding="utf-8")
    code = main(["report", "--config", str(config), "--month", MONTH, "--format", "json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["messages"] == expected.messages


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "novembre", "2026-11-01"])
def test_a_month_that_is_not_yyyy_mm_is_a_usage_error(
    month: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "var"}"\n', encoding="utf-8")
    assert main(["report", "--config", str(config), "--month", month]) == 2
    assert "YYYY-MM" in capsys.readouterr().err


def _html_figure(html: str, table: str, label: str) -> int:
    section = html.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    found = re.search(
        rf"<th scope=\"row\">{re.escape(label)}</th><td class=\"num\">(\d+)</td>", section
    )
    assert found is not None, label
    return int(found.group(1))


def test_the_html_report_shows_the_store_s_totals_and_everything_the_charter_asks(
    filled: tuple[Path, Filled], tmp_path: Path
) -> None:
    storage, expected = filled
    html = report_cli(storage, tmp_path, "html").read_text(encoding="utf-8")
    assert _html_figure(html, "totals", "Messages") == expected.messages
    assert _html_figure(html, "totals", "Transmis / Forwarded") == expected.forwarded
    assert _html_figure(html, "totals", "Retenus / Held") == expected.held
    assert _html_figure(html, "totals", "Refusés / Refused") == expected.refused
    rules = html.split('<table id="rules">', 1)[1].split("</table>", 1)[0]
    for rule, count in expected.by_rule.items():
        assert re.search(
            rf'<td class="rule">{re.escape(rule)}</td><td>[^<]*</td><td class="num">{count}</td>',
            rules,
        ), rule
    assert "<svg" in html and "<script" not in html
    style = html.split("<style>", 1)[1].split("</style>", 1)[0]  # the charts' colours
    assert "svg.pygal-chart" in style and "&gt;" not in style
    # the review actions (who, when, how many) and the expired message
    actions = html.split('<table id="actions">', 1)[1].split("</table>", 1)[0]
    assert "secretariat" in actions and "apiguard" in actions
    assert "held2" in html.split('<table id="expired">', 1)[1].split("</table>", 1)[0]
    assert "Compte rendu" not in html  # the subjects are never kept


def test_the_csv_report_opens_with_the_csv_module(
    filled: tuple[Path, Filled], tmp_path: Path
) -> None:
    storage, expected = filled
    path = report_cli(storage, tmp_path, "csv")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["section", "clé / key", "valeur / value", "détail / detail"]
    assert all(len(row) == 4 for row in rows)
    totals = {row[1]: int(row[2]) for row in rows if row[0] == "totals"}
    assert totals == {
        "messages": expected.messages,
        "forwarded": expected.forwarded,
        "held": expected.held,
        "refused": expected.refused,
    }
    by_rule = {row[1]: int(row[2]) for row in rows if row[0] == "by_rule"}
    assert by_rule == expected.by_rule
    assert len([row for row in rows if row[0] == "day"]) == 30  # every day of November


def test_the_pdf_report_reads_back_with_the_month_and_the_totals(
    filled: tuple[Path, Filled], tmp_path: Path
) -> None:
    storage, expected = filled
    path = report_cli(storage, tmp_path, "pdf")
    assert path.read_bytes().startswith(b"%PDF-")
    reader = pypdf.PdfReader(path)
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert MONTH in text
    assert "Messages décidés / Messages decided" in text
    totals = text.split("Refusés / Refused", 1)[1].split()[:4]
    assert totals == [
        str(expected.messages),
        str(expected.forwarded),
        str(expected.held),
        str(expected.refused),
    ]
    assert "art1.no-patient-data" in text and "held2" in text


# -- the dashboard over HTTP ----------------------------------------------------------


@dataclass
class Board:
    client: httpx.AsyncClient
    expected: Filled


@pytest.fixture
async def board(tmp_path: Path) -> AsyncIterator[Board]:
    sync = SqliteStore(tmp_path / "var")
    expected = fill(sync, recent_start())
    store = AsyncStore(sync)
    service = ReviewService(sync, NoticeIdentity(), hold_days=7)
    settings = ReviewSettings(users={"secretariat": hash_password(PASSWORD, n=1024)})
    app = create_app(service, store, settings, secret="s" * 48)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        yield Board(client, expected)
    await store.close()


async def _login(client: httpx.AsyncClient) -> None:
    page = (await client.get("/login")).text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    response = await client.post(
        "/login", data={"csrf": token.group(1), "name": "secretariat", "password": PASSWORD}
    )
    assert response.status_code in (200, 303)


async def test_the_dashboard_and_its_reports_are_behind_the_login(board: Board) -> None:
    for path in ("/dashboard", f"/dashboard/report?month={MONTH}&format=json"):
        response = await board.client.get(path, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path


async def test_the_dashboard_shows_the_figures_with_no_script_and_a_strict_csp(
    board: Board,
) -> None:
    await _login(board.client)
    response = await board.client.get("/dashboard")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'none'" in csp and "unsafe-inline" not in csp
    html = response.text
    expected = board.expected
    for name, value in (
        ("messages", expected.messages),
        ("forwarded", expected.forwarded),
        ("held", expected.held),
        ("refused", expected.refused),
    ):
        assert f'data-figure="{name}">{value}</dd>' in html, name
    assert html.count("<svg") == 4  # per day, by article, by rule, by sender
    assert "<script" not in html and "<style" not in html and " style=" not in html
    assert "Tableau de bord" in html and "Décisions par jour" in html
    assert "labo@bio.mssante.fr" in html  # the sender with the most holds
    review = html.split('<table id="review-table"', 1)[1].split("</table>", 1)[0]
    assert re.search(r"il y a \d+ j \d+ h", review)  # the oldest held message's age
    css = await board.client.get("/dashboard/charts.css")
    assert css.status_code == 200 and "svg.pygal-chart" in css.text


@pytest.mark.parametrize("days", ["90", "365", "7", "x"])
async def test_the_dashboard_period_is_30_90_or_365_days(board: Board, days: str) -> None:
    await _login(board.client)
    html = (await board.client.get("/dashboard", params={"days": days})).text
    shown = days if days in ("90", "365") else "30"
    assert re.search(rf'href="/dashboard\?days={shown}" aria-current="page"', html)
    table = html.split('<table id="days-table">', 1)[1].split("</table>", 1)[0]
    rows = table.count('<th scope="row"')
    assert rows == int(shown)


@pytest.mark.parametrize("format", ["html", "csv", "json", "pdf"])
async def test_the_dashboard_downloads_the_monthly_report(board: Board, format: str) -> None:
    await _login(board.client)
    month = time.strftime("%Y-%m")
    dashboard = (await board.client.get("/dashboard")).text
    link = f"/dashboard/report?month={month}&amp;format={format}"
    assert link in dashboard
    response = await board.client.get(link.replace("&amp;", "&"))
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    assert disposition == f'attachment; filename="apiguard-rapport-{month}.{format}"'
    assert "sandbox" in response.headers["content-security-policy"]
    if format == "json":
        assert response.json()["month"] == month
    if format == "pdf":
        assert response.content.startswith(b"%PDF-")


async def test_a_bad_report_request_is_refused_in_both_languages(board: Board) -> None:
    await _login(board.client)
    response = await board.client.get("/dashboard/report?month=2026-13&format=json")
    assert response.status_code == 400
    assert "Mois (AAAA-MM)" in response.text and "Unknown month" in response.text
    response = await board.client.get(f"/dashboard/report?month={MONTH}&format=docx")
    assert response.status_code == 400


# -- the running proxy writes the records ----------------------------------------------


async def test_the_proxy_records_forwarded_held_and_refused_messages(
    sink: Sink, storage: Path, tmp_path: Path
) -> None:
    settings = proxy_settings(
        storage, sink.port, charter={"rules": {"art5.empty-subject": {"action": "hold"}}}
    )
    async with running_proxy(settings) as app:
        await send(app.port, "dr.martin@medical13.apicrypt.org", [COLLEAGUE], letter(1))
        held = letter(2).replace(b"Subject: ", b"X-Old-Subject: ")
        await send(app.port, "dr.martin@medical13.apicrypt.org", [COLLEAGUE], held)
        many = [f"dr.{n}@medical69.apicrypt.org" for n in range(7)]
        with pytest.raises(aiosmtplib.SMTPResponseException) as refusal:
            await send(app.port, "dr.martin@medical13.apicrypt.org", many, letter(3))
        assert refusal.value.code == 550
        await eventually(lambda: len(sink.handler.mails()) == 1)
        await eventually(
            lambda: (
                counted(
                    app.store.sync, "SELECT COUNT(*) FROM decisions WHERE outcome = 'delivered'"
                )
                == 1
            )
        )
    month = time.strftime("%Y-%m")
    totals = json.loads(report_cli(storage, tmp_path, "json", month).read_text("utf-8"))
    assert (totals["forwarded"], totals["held"], totals["refused"]) == (1, 1, 1)
    assert totals["by_rule"]["art2.too-many-recipients"] == 1
    assert totals["by_rule"]["art5.empty-subject"] == 1
    store = SqliteStore(storage)
    try:
        versions = counted(store, "SELECT COUNT(*) FROM charter_versions")
        held_state = store.list_messages(MessageState.HELD)
    finally:
        store.close()
    assert versions == 1 and len(held_state) == 1


def test_the_per_day_counts_agree_with_the_records_after_deliveries_reviews_and_pruning(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "var")
    try:
        fill(store, time.time() - 30 * 86400)
        fill(store, time.time() - 420 * 86400, prefix="y")  # records of the year before
        with store._transaction() as db:
            records.prune_in(db, time.time() - 400 * 86400)

        def both(summary: str, direct: str) -> tuple[list[Any], list[Any]]:
            return (
                sorted(store.read(lambda db: db.execute(summary).fetchall())),
                sorted(store.read(lambda db: db.execute(direct).fetchall())),
            )

        days, direct_days = both(
            "SELECT day, verdict, outcome, messages FROM decision_days WHERE messages > 0",
            "SELECT day, verdict, outcome, COUNT(*) FROM decisions GROUP BY 1, 2, 3",
        )
        rules, direct_rules = both(
            "SELECT day, rule, messages FROM rule_days",
            "SELECT day, rule, COUNT(*) FROM decision_findings GROUP BY 1, 2",
        )
        articles, direct_articles = both(
            "SELECT day, article, messages FROM article_days",
            "SELECT day, COALESCE(article, 0), COUNT(DISTINCT message_id)"
            " FROM decision_findings GROUP BY 1, 2",
        )
    finally:
        store.close()
    assert days == direct_days and len(days) > 10
    assert rules == direct_rules and articles == direct_articles
    assert min(day for day, *_ in days) >= records.local_day(time.time() - 400 * 86400)


async def test_the_dashboard_speaks_english_on_the_english_page(board: Board) -> None:
    await _login(board.client)
    page = (await board.client.get("/dashboard")).text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    await board.client.post("/lang", data={"csrf": token.group(1), "lang": "en", "next": "/"})
    english = (await board.client.get("/dashboard")).text
    for words in ("<h1>Dashboard</h1>", "Decisions per day", "Findings by rule", "Delivery queue"):
        assert words in english
    for french in ("Tableau de bord</h1>", "Décisions par jour", "Constats par règle"):
        assert french not in english


async def test_the_upkeep_prunes_at_start_then_once_a_day(tmp_path: Path) -> None:
    sync = SqliteStore(tmp_path / "var")
    store = AsyncStore(sync)
    clock = [time.time()]
    upkeep = ReportUpkeep(store, 30, {"rules": {}}, clock=lambda: clock[0])
    try:
        fill(sync, clock[0] - 80 * 86400)  # every record older than 30 days
        await upkeep.start()
        assert counted(sync, "SELECT COUNT(*) FROM decisions") == 0
        fill(sync, clock[0] - 80 * 86400, prefix="again")
        clock[0] += 3600
        await upkeep.tick()  # an hour later: not yet
        assert counted(sync, "SELECT COUNT(*) FROM decisions") > 0
        clock[0] += 86400
        await upkeep.tick()  # a day later
        assert counted(sync, "SELECT COUNT(*) FROM decisions") == 0
        assert counted(sync, "SELECT COUNT(*) FROM decision_days") == 0
    finally:
        await store.close()
