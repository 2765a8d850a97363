"""The monthly report as PDF, laid out by ReportLab (pure Python: no system
library), with the daily decisions drawn by ReportLab's own chart."""

from __future__ import annotations

import io
from collections.abc import Sequence

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus.flowables import Flowable

from apiguard.reports.monthly import MonthlyReport
from apiguard.reports.render import article_name, rule_settings
from apiguard.reports.words import both, duration, when

_STYLES = getSampleStyleSheet()
_GRID = TableStyle(
    [
        ("FONT", (0, 0), (-1, -1), "Helvetica", 8),
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#d9dee7")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> Flowable:
    cells = [[_cell(h) for h in header], *([_cell(v) for v in row] for row in rows)]
    table = Table(cells, repeatRows=1, hAlign="LEFT")
    table.setStyle(_GRID)
    return table


def _cell(value: object) -> Paragraph:
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return Paragraph(text, _STYLES["BodyText"].clone("cell", fontSize=8, leading=10))


def _daily(report: MonthlyReport) -> Drawing:
    days = report.figures.days
    drawing = Drawing(170 * mm, 60 * mm)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 10 * mm, 8 * mm, 155 * mm, 48 * mm
    chart.data = [
        [d.forwarded for d in days],
        [d.held for d in days],
        [d.refused for d in days],
    ]
    chart.categoryAxis.style = "stacked"
    chart.categoryAxis.categoryNames = [d.day[8:] for d in days]
    chart.categoryAxis.labels.fontSize = 6
    chart.valueAxis.valueMin = 0
    highest = max((d.forwarded + d.held + d.refused for d in days), default=0)
    chart.valueAxis.valueStep = max(1, -(-highest // 8))  # whole messages
    chart.valueAxis.valueMax = max(highest, 1)
    chart.valueAxis.labels.fontSize = 6
    for index, color in enumerate(("#1e7b43", "#c26a00", "#a3261b")):
        chart.bars[index].fillColor = colors.HexColor(color)
        chart.bars[index].strokeColor = None
    drawing.add(chart)
    return drawing


def pdf(report: MonthlyReport) -> bytes:
    figures = report.figures
    title, heading, body = _STYLES["Title"], _STYLES["Heading2"], _STYLES["BodyText"]
    story: list[Flowable] = [
        Paragraph(f"{both('report.title')} — {report.month}", title),
        Paragraph(
            both("dashboard.since", first=figures.period.first, last=figures.period.last), body
        ),
        Paragraph(both("totals"), heading),
        _table(
            [both("messages"), both("forwarded"), both("held"), both("refused")],
            [
                [
                    figures.totals.messages,
                    figures.totals.forwarded,
                    figures.totals.held,
                    figures.totals.refused,
                ]
            ],
        ),
        Paragraph(both("per_day"), heading),
        Paragraph(
            f"{both('forwarded')} (vert / green), {both('held')} (orange), "
            f"{both('refused')} (rouge / red)",
            body,
        ),
        _daily(report),
        _table(
            [both("day"), both("forwarded"), both("held"), both("refused")],
            [[d.day, d.forwarded, d.held, d.refused] for d in figures.days],
        ),
        Paragraph(both("by_article"), heading),
        _table(
            [both("article"), both("count")],
            [[article_name(k), n] for k, n in figures.by_article],
        ),
        Paragraph(both("by_rule"), heading),
        _table(
            [both("rule"), both("article"), both("count")],
            [[r.rule, article_name(r.article), r.messages] for r in figures.by_rule],
        ),
        Paragraph(both("senders"), heading),
        _table(
            [both("sender"), both("held"), both("refused")],
            [[s.sender or "<>", s.held, s.refused] for s in figures.senders],
        ),
        Paragraph(both("software"), heading),
        _table(
            [both("software.name"), both("count")],
            [[name or both("software.unknown"), n] for name, n in figures.software],
        ),
        Paragraph(both("outcomes"), heading),
        _table(
            [both("outcome"), both("count")],
            [[both(f"outcome.{o}"), n] for o, n in figures.outcomes],
        ),
        Paragraph(both("review"), heading),
        _table(
            [
                both("review.released"),
                both("review.rejected"),
                both("review.expired"),
                both("review.median"),
            ],
            [
                [
                    figures.review.released,
                    figures.review.rejected,
                    figures.review.expired,
                    duration(figures.review.median_delay),
                ]
            ],
        ),
        Paragraph(both("actions"), heading),
        _table(
            [both("day"), both("actor"), both("verb"), both("count")],
            [[a.day, a.actor, both(f"verb.{a.action}"), a.messages] for a in report.review_actions],
        ),
        Paragraph(both("expired"), heading),
        _table(
            [both("message_id"), both("sender"), both("held_at"), both("expired_at"), both("rule")],
            [
                [
                    e.message_id,
                    e.sender or "<>",
                    when(e.held_at),
                    when(e.expired_at),
                    ", ".join(e.rules),
                ]
                for e in report.expired
            ],
        ),
        Paragraph(both("charter"), heading),
    ]
    if report.charter is None:
        story.append(Paragraph(both("charter.unknown"), body))
    else:
        story.append(Paragraph(both("charter.since", when=when(report.charter_since)), body))
        story.append(
            _table(
                [
                    both("rule"),
                    both("article"),
                    both("enabled"),
                    both("action"),
                    both("thresholds"),
                ],
                [
                    [
                        rule_id,
                        article_name(rule["article"]),
                        both("yes") if rule["enabled"] else both("no"),
                        rule["action"],
                        rule_settings(rule),
                    ]
                    for rule_id, rule in sorted(report.charter["rules"].items())
                ],
            )
        )
    story.append(Paragraph(both("charter.changes"), heading))
    if report.charter_changes:
        story.append(
            _table(
                [both("when"), both("setting"), both("before"), both("after")],
                [[when(c.at), c.key, c.before, c.after] for c in report.charter_changes],
            )
        )
    else:
        story.append(Paragraph(both("charter.no_change"), body))
    story += [Spacer(1, 6 * mm), Paragraph(both("generated", when=when(report.generated_at)), body)]
    output = io.BytesIO()
    document = SimpleDocTemplate(
        output,
        pagesize=A4,
        title=f"apiguard {report.month}",
        author="apiguard",
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
    )
    document.build(story)
    return output.getvalue()
