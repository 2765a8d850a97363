"""The "Tableau de bord" page of the review web application and its report
downloads, behind the same login. The figures are read in one store visit;
the charts are inline SVG (no script) with a table of the same figures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apiguard.reports import charts
from apiguard.reports.figures import Figures, Period, figures_in
from apiguard.reports.monthly import monthly_report_in, parse_month
from apiguard.reports.records import local_day
from apiguard.reports.render import FORMATS, MEDIA_TYPES, filename, render
from apiguard.reports.words import duration, word
from apiguard.reports.words import when as when_text
from apiguard.store.aio import AsyncStore

log = structlog.get_logger("apiguard.reports")

PERIODS = (30, 90, 365)
MONTHS_OFFERED = 13
# A message waiting longer than this makes the queue "unhealthy" on the page.
QUEUE_ALARM = 3600.0

Handler = Callable[[Request, str], Awaitable[Response]]
Guard = Callable[[Handler], Callable[[Request], Awaitable[Response]]]
Renderer = Callable[..., Response]


def dashboard_routes(
    guard: Guard, render_page: Renderer, language: Callable[[Request], str], store: AsyncStore
) -> list[Route]:
    """The routes, given the application's login guard, page renderer and the
    reader's language."""
    board = Dashboard(render_page, language, store)
    return [
        Route("/dashboard", guard(board.page), methods=["GET"]),
        Route("/dashboard/report", guard(board.report), methods=["GET"]),
        Route("/dashboard/charts.css", board.stylesheet, methods=["GET"]),
    ]


def months_before(today: str, count: int) -> list[str]:
    """`count` months as YYYY-MM, the current one first."""
    year, month = int(today[:4]), int(today[5:7])
    months = []
    for _ in range(count):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months


class Dashboard:
    def __init__(
        self, render_page: Renderer, language: Callable[[Request], str], store: AsyncStore
    ) -> None:
        self.render_page = render_page
        self.language = language
        self.store = store

    async def page(self, request: Request, user: str) -> Response:
        try:
            days = int(request.query_params.get("days", "30"))
        except ValueError:
            days = 30
        days = days if days in PERIODS else 30
        now = time.time()
        period = Period.last_days(days, now)
        figures = await self.store.run(self.store.sync.read, lambda db: figures_in(db, period))
        lang = self.language(request)
        # Drawing takes tens of milliseconds: off the loop the SMTP sessions share.
        drawn = await asyncio.to_thread(self._charts, figures, lang)
        log.info("review.dashboard_viewed", actor=user, days=days)
        return self.render_page(
            request,
            "dashboard.html",
            {
                "days": days,
                "periods": PERIODS,
                "figures": figures,
                "charts": drawn,
                "d": lambda key, **values: word(lang, key, **values),
                "stamp": lambda ts: when_text(ts, lang),
                "duration": lambda seconds: duration(seconds, lang),
                "months": months_before(local_day(now), MONTHS_OFFERED),
                "formats": FORMATS,
                "queue_alarm": QUEUE_ALARM,
            },
        )

    @staticmethod
    def _charts(figures: Figures, lang: str) -> dict[str, Markup]:
        def w(key: str) -> str:
            return word(lang, key)

        def article(key: str | int | None) -> str:
            return w("article.none") if key in ("-", None) else word(lang, "article.n", n=key)

        daily = charts.daily_chart(
            [d.day for d in figures.days],
            [
                (w("forwarded"), [d.forwarded for d in figures.days]),
                (w("held"), [d.held for d in figures.days]),
                (w("refused"), [d.refused for d in figures.days]),
            ],
            w("per_day"),
        )
        found: dict[str, str] = {"daily": daily}
        found["articles"] = charts.bar_chart(
            [(article(key), n) for key, n in figures.by_article], w("by_article")
        )
        if figures.by_rule:
            found["rules"] = charts.bar_chart(
                [(r.rule, r.messages) for r in figures.by_rule], w("by_rule")
            )
        if figures.senders:
            found["senders"] = charts.bar_chart(
                [(s.sender or "<>", s.total) for s in figures.senders],
                w("senders"),
                charts.REFUSED_INDEX,
            )
        # The SVG is pygal's, stripped of script and style (see charts._clean).
        return {name: Markup(svg) for name, svg in found.items()}  # noqa: S704

    async def report(self, request: Request, user: str) -> Response:
        query = request.query_params
        format = query.get("format", "html")
        try:
            month = parse_month(query.get("month", ""))
        except ValueError:
            month = ""
        if format not in FORMATS or not month:
            return Response(
                "Mois (AAAA-MM) ou format inconnu. / Unknown month (YYYY-MM) or format.",
                status_code=400,
                media_type="text/plain; charset=utf-8",
            )
        now = time.time()
        report = await self.store.run(
            self.store.sync.read, lambda db: monthly_report_in(db, month, now)
        )
        # A PDF takes a second or two to lay out: never on the SMTP sessions' loop.
        content = await asyncio.to_thread(render, report, format)
        log.info("review.report_downloaded", actor=user, month=month, format=format)
        return Response(
            content,
            media_type=MEDIA_TYPES[format],
            headers={
                "Content-Disposition": f'attachment; filename="{filename(report, format)}"',
                # A report opened from here shows its inline styles, never runs anything.
                "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'",
            },
        )

    async def stylesheet(self, request: Request) -> Response:
        return Response(charts.chart_css(), media_type="text/css; charset=utf-8")
