"""The figures of the dashboard and of the monthly report, read from the
decision records and the store (one read transaction, on the store's thread).

Every figure is a count, a rule id, an article, a sender address, a software
name or a time: nothing a message said.
"""

from __future__ import annotations

import calendar
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

from apiguard.reports.records import local_day

VERDICTS = ("forward", "hold", "reject")
TOP_SENDERS = 10


@dataclass(frozen=True, slots=True)
class Period:
    """Whole local days, `first` to `last` included (YYYY-MM-DD)."""

    first: str
    last: str

    @classmethod
    def last_days(cls, days: int, now: float) -> Period:
        today = date.fromisoformat(local_day(now))
        return cls((today - timedelta(days=days - 1)).isoformat(), today.isoformat())

    @classmethod
    def month(cls, month: str) -> Period:
        """The period of `month` (YYYY-MM; ValueError when it is not one)."""
        year, number = (int(part) for part in month.split("-", 1))
        first = date(year, number, 1)
        last = first.replace(day=calendar.monthrange(year, number)[1])
        return cls(first.isoformat(), last.isoformat())

    def days(self) -> list[str]:
        first, last = date.fromisoformat(self.first), date.fromisoformat(self.last)
        return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


@dataclass(frozen=True, slots=True)
class Totals:
    messages: int = 0
    forwarded: int = 0
    held: int = 0
    refused: int = 0


@dataclass(frozen=True, slots=True)
class DayCount:
    day: str
    forwarded: int
    held: int
    refused: int


@dataclass(frozen=True, slots=True)
class RuleCount:
    rule: str
    article: int | None
    messages: int


@dataclass(frozen=True, slots=True)
class SenderCount:
    sender: str
    held: int
    refused: int

    @property
    def total(self) -> int:
        return self.held + self.refused


@dataclass(frozen=True, slots=True)
class Review:
    """How the held messages of the period were handled, and the backlog now."""

    released: int = 0
    rejected: int = 0
    expired: int = 0
    cancelled: int = 0
    median_delay: float | None = None  # seconds from hold to a person's decision
    backlog: int = 0  # held now
    oldest_held_at: float | None = None


@dataclass(frozen=True, slots=True)
class QueueHealth:
    queued: int = 0
    deferred: int = 0
    oldest_pending_at: float | None = None
    last_delivery_at: float | None = None


@dataclass(frozen=True, slots=True)
class Figures:
    period: Period
    totals: Totals
    days: tuple[DayCount, ...]
    by_rule: tuple[RuleCount, ...]
    by_article: tuple[tuple[str, int], ...]  # ("1".."5" or "-", messages)
    senders: tuple[SenderCount, ...]
    software: tuple[tuple[str, int], ...]  # (software, messages with a finding)
    outcomes: tuple[tuple[str, int], ...]
    review: Review
    queue: QueueHealth = field(default_factory=QueueHealth)


def figures_in(db: sqlite3.Connection, period: Period) -> Figures:
    """Every figure of `period`, plus the backlog and queue as they are now."""
    span = (period.first, period.last)
    per_day: dict[str, dict[str, int]] = {}
    outcomes: dict[str, int] = {}
    for day, verdict, outcome, count in db.execute(
        "SELECT day, verdict, outcome, messages FROM decision_days WHERE day BETWEEN ? AND ?",
        span,
    ):
        counts = per_day.setdefault(day, {})
        counts[verdict] = counts.get(verdict, 0) + int(count)
        outcomes[outcome] = outcomes.get(outcome, 0) + int(count)
    days = tuple(
        DayCount(
            day,
            per_day.get(day, {}).get("forward", 0),
            per_day.get(day, {}).get("hold", 0),
            per_day.get(day, {}).get("reject", 0),
        )
        for day in period.days()
    )
    forwarded = sum(d.forwarded for d in days)
    held = sum(d.held for d in days)
    refused = sum(d.refused for d in days)
    return Figures(
        period=period,
        totals=Totals(forwarded + held + refused, forwarded, held, refused),
        days=days,
        by_rule=_by_rule(db, span),
        by_article=_by_article(db, span),
        senders=_senders(db, span),
        software=_software(db, span),
        outcomes=tuple(sorted(outcomes.items())),
        review=_review(db, span),
        queue=queue_health_in(db),
    )


def _by_rule(db: sqlite3.Connection, span: tuple[str, str]) -> tuple[RuleCount, ...]:
    rows = db.execute(
        "SELECT rule, MAX(article), SUM(messages) AS total FROM rule_days"
        " WHERE day BETWEEN ? AND ? GROUP BY rule HAVING total > 0 ORDER BY total DESC, rule",
        span,
    )
    return tuple(
        RuleCount(str(rule), int(article) or None, int(count)) for rule, article, count in rows
    )


def _by_article(db: sqlite3.Connection, span: tuple[str, str]) -> tuple[tuple[str, int], ...]:
    """Messages with at least one finding under each article (1-5), then "-"
    for the rules outside the articles (recipients, privacy, MIME)."""
    rows = db.execute(
        "SELECT article, SUM(messages) FROM article_days WHERE day BETWEEN ? AND ?"
        " GROUP BY article",
        span,
    )
    counts = {(str(article) if article else "-"): int(count) for article, count in rows}
    return tuple((key, counts.get(key, 0)) for key in ("1", "2", "3", "4", "5", "-"))


def _senders(db: sqlite3.Connection, span: tuple[str, str]) -> tuple[SenderCount, ...]:
    rows = db.execute(
        "SELECT sender, SUM(verdict = 'hold'), SUM(verdict = 'reject') FROM decisions"
        " WHERE day BETWEEN ? AND ? AND verdict IN ('hold', 'reject')"
        " GROUP BY sender ORDER BY COUNT(*) DESC, sender LIMIT ?",
        (*span, TOP_SENDERS),
    )
    return tuple(SenderCount(str(s), int(h), int(r)) for s, h, r in rows)


def _software(db: sqlite3.Connection, span: tuple[str, str]) -> tuple[tuple[str, int], ...]:
    rows = db.execute(
        "SELECT software, COUNT(*) FROM decisions WHERE day BETWEEN ? AND ?"
        " AND verdict IN ('hold', 'reject') GROUP BY software ORDER BY COUNT(*) DESC, software"
        " LIMIT ?",
        (*span, TOP_SENDERS),
    )
    return tuple((str(name), int(count)) for name, count in rows)


def _review(db: sqlite3.Connection, span: tuple[str, str]) -> Review:
    counts: dict[str, int] = {}
    delays: list[float] = []
    for review, delay in db.execute(
        "SELECT review, reviewed_at - at FROM decisions WHERE day BETWEEN ? AND ?"
        " AND verdict = 'hold'",
        span,
    ):
        counts[review] = counts.get(review, 0) + 1
        if review in ("release", "reject"):  # a person's decision, not an expiry
            delays.append(float(delay))
    backlog, oldest = db.execute(
        "SELECT COUNT(*), MIN(created_at) FROM messages WHERE state = 'held'"
    ).fetchone()
    return Review(
        released=int(counts.get("release", 0)),
        rejected=int(counts.get("reject", 0)),
        expired=int(counts.get("expire", 0)),
        cancelled=int(counts.get("cancel", 0)),
        median_delay=statistics.median(delays) if delays else None,
        backlog=int(backlog),
        oldest_held_at=float(oldest) if oldest is not None else None,
    )


def last_delivery_in(db: sqlite3.Connection) -> float | None:
    """When a message was last delivered to the relay: looked for in the last
    week's records first (an index range), in all of them only when the relay
    has delivered nothing for a week."""
    query = (
        "SELECT MAX(settled_at) FROM decisions WHERE day >= ? AND verdict IN ('forward', 'hold')"
        " AND outcome IN ('delivered', 'partial')"
    )
    week = db.execute(query, (local_day(time.time() - 7 * 86400),)).fetchone()[0]
    if week is None:
        week = db.execute(query, ("",)).fetchone()[0]
    return float(week) if week is not None else None


def queue_health_in(db: sqlite3.Connection) -> QueueHealth:
    """The delivery queue now: recipients waiting, deferred ones (a temporary
    failure), the oldest message still waiting and the last delivery."""
    counts = dict(
        db.execute(
            "SELECT state, COUNT(*) FROM recipients"
            " WHERE state IN ('queued', 'deferred', 'sending') GROUP BY state"
        ).fetchall()
    )
    oldest = db.execute(
        "SELECT MIN(m.created_at) FROM recipients r JOIN messages m ON m.id = r.message_id"
        " WHERE r.state IN ('queued', 'deferred', 'sending')"
    ).fetchone()[0]
    last = last_delivery_in(db)
    return QueueHealth(
        queued=int(counts.get("queued", 0)) + int(counts.get("sending", 0)),
        deferred=int(counts.get("deferred", 0)),
        oldest_pending_at=float(oldest) if oldest is not None else None,
        last_delivery_at=float(last) if last is not None else None,
    )
