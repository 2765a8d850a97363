"""The monthly report as JSON (the totals), CSV, a standalone HTML page (charts
included) and PDF (ReportLab). French first, English second, in every format
but the JSON, whose keys are the SPEC's."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2

from apiguard.reports import charts
from apiguard.reports.monthly import MonthlyReport
from apiguard.reports.words import both, duration, when

FORMATS = ("html", "csv", "json", "pdf")
MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "pdf": "application/pdf",
}

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(report: MonthlyReport, format: str) -> bytes:
    """The report in `format` (one of FORMATS)."""
    if format == "json":
        return (json.dumps(report.totals_json(), ensure_ascii=False) + "\n").encode()
    if format == "csv":
        text = io.StringIO(newline="")
        csv.writer(text).writerows(csv_rows(report))
        return text.getvalue().encode("utf-8")
    if format == "html":
        return html(report).encode("utf-8")
    if format == "pdf":
        from apiguard.reports.pdf import pdf

        return pdf(report)
    raise ValueError(f"unknown report format {format!r} (one of {', '.join(FORMATS)})")


def filename(report: MonthlyReport, format: str) -> str:
    return f"apiguard-rapport-{report.month}.{format}"


def rule_settings(rule: dict[str, Any]) -> str:
    """A rule's thresholds as "key=value; …" (empty when it has none)."""
    thresholds = rule.get("thresholds") or {}
    pairs = sorted(thresholds.items())
    return "; ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in pairs)


def csv_rows(report: MonthlyReport) -> Iterator[list[str | int]]:
    """One table: section, key, value, then what qualifies it."""
    figures = report.figures
    yield ["section", "clé / key", "valeur / value", "détail / detail"]
    yield ["month", "month", report.month, ""]
    for key, value in report.totals_json().items():
        if isinstance(value, int):
            yield ["totals", key, value, ""]
    for day in figures.days:
        yield [
            "day",
            day.day,
            day.forwarded + day.held + day.refused,
            f"forwarded={day.forwarded}; held={day.held}; refused={day.refused}",
        ]
    for article, count in figures.by_article:
        yield ["by_article", article, count, ""]
    for rule in figures.by_rule:
        yield ["by_rule", rule.rule, rule.messages, f"article={rule.article or '-'}"]
    for sender in figures.senders:
        yield [
            "sender",
            sender.sender,
            sender.total,
            f"held={sender.held}; refused={sender.refused}",
        ]
    for software, count in figures.software:
        yield ["software", software or "-", count, ""]
    for outcome, count in figures.outcomes:
        yield ["outcome", outcome, count, ""]
    review = figures.review
    yield ["review", "released", review.released, ""]
    yield ["review", "rejected", review.rejected, ""]
    yield ["review", "expired", review.expired, ""]
    delay = "" if review.median_delay is None else round(review.median_delay)
    yield ["review", "median_delay_seconds", delay, ""]
    for action in report.review_actions:
        yield ["review_action", action.day, action.messages, f"{action.actor}: {action.action}"]
    for expired in report.expired:
        yield [
            "expired",
            expired.message_id,
            when(expired.expired_at),
            f"{expired.sender}; {','.join(expired.rules)}",
        ]
    if report.charter is not None:
        for rule_id, rule in sorted(report.charter["rules"].items()):
            state = "on" if rule["enabled"] else "off"
            yield ["charter_rule", rule_id, rule["action"], f"{state}; {rule_settings(rule)}"]
    for change in report.charter_changes:
        yield [
            "charter_change",
            change.key,
            change.after,
            f"before={change.before}; at={when(change.at)}",
        ]


def html(report: MonthlyReport) -> str:
    """A standalone page (its styles inline: a file kept on the practice's disk)."""
    figures = report.figures
    daily = charts.daily_chart(
        [d.day for d in figures.days],
        [
            (both("forwarded"), [d.forwarded for d in figures.days]),
            (both("held"), [d.held for d in figures.days]),
            (both("refused"), [d.refused for d in figures.days]),
        ],
        both("per_day"),
    )
    articles = charts.bar_chart(
        [(article_name(key), n) for key, n in figures.by_article], both("by_article")
    )
    return _TEMPLATES.get_template("report.html").render(
        report=report,
        figures=figures,
        both=both,
        when=when,
        duration=duration,
        article=article_name,
        rule_settings=rule_settings,
        daily_chart=daily,
        article_chart=articles,
        chart_css=charts.chart_css(),
    )


def article_name(key: str | int | None) -> str:
    if key in ("-", None):
        return both("article.none")
    return f"Art. {key}"
