"""The monthly charter report: the month's figures, the charter configuration
in force and its changes, who reviewed what, and the held messages that
expired without a decision. Built in one read of the store; rendered by
`apiguard.reports.render`."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from apiguard.reports.charter import Change, changes
from apiguard.reports.figures import Figures, Period, figures_in

MONTH_FORMAT = "%Y-%m"


@dataclass(frozen=True, slots=True)
class ReviewAction:
    """How many messages one person (or apiguard, for expiries) moved, one day."""

    day: str
    actor: str
    action: str  # release, reject, expire, cancel
    messages: int


@dataclass(frozen=True, slots=True)
class Expired:
    """A held message refused because nobody decided in time."""

    message_id: str
    held_at: float
    expired_at: float
    sender: str
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MonthlyReport:
    month: str
    generated_at: float
    figures: Figures
    charter: dict[str, Any] | None  # in force at the end of the month
    charter_since: float | None
    charter_changes: tuple[Change, ...]
    review_actions: tuple[ReviewAction, ...]
    expired: tuple[Expired, ...]

    def totals_json(self) -> dict[str, Any]:
        """The machine-readable totals (SPEC §4)."""
        totals = self.figures.totals
        return {
            "month": self.month,
            "messages": totals.messages,
            "forwarded": totals.forwarded,
            "held": totals.held,
            "refused": totals.refused,
            "by_rule": {r.rule: r.messages for r in self.figures.by_rule},
            "by_article": {key: n for key, n in self.figures.by_article if key != "-"},
        }


def _rules(joined: object) -> tuple[str, ...]:
    return tuple(sorted(r for r in str(joined or "").split(",") if r))


def parse_month(value: str) -> str:
    """`value` when it is a month as YYYY-MM, else ValueError."""
    parsed = datetime.strptime(value, MONTH_FORMAT)
    if parsed.strftime(MONTH_FORMAT) != value:
        raise ValueError(value)
    return value


def _bounds(period: Period) -> tuple[float, float]:
    """The month's first and last instants, local time, as timestamps."""
    first = date.fromisoformat(period.first)
    last = date.fromisoformat(period.last)
    start = time.mktime((first.year, first.month, first.day, 0, 0, 0, 0, 0, -1))
    end = time.mktime((last.year, last.month, last.day, 23, 59, 59, 0, 0, -1)) + 1
    return start, end


def monthly_report_in(db: sqlite3.Connection, month: str, now: float) -> MonthlyReport:
    period = Period.month(parse_month(month))
    start, end = _bounds(period)
    versions = [
        (float(at), json.loads(config))
        for at, config in db.execute(
            "SELECT at, config FROM charter_versions WHERE at < ? ORDER BY seq", (end,)
        )
    ]
    in_force = versions[-1] if versions else None
    found: list[Change] = []
    for (_, before), (at, after) in itertools.pairwise(versions):
        if at >= start:
            found.extend(changes(before, after, at))
    actions = tuple(
        ReviewAction(str(day), str(actor), str(action), int(count))
        for day, actor, action, count in db.execute(
            "SELECT date(at, 'unixepoch', 'localtime') AS day, actor, action, COUNT(*)"
            " FROM audit WHERE at >= ? AND at < ? GROUP BY day, actor, action"
            " ORDER BY day, actor, action",
            (start, end),
        )
    )
    expired = tuple(
        Expired(str(mid), float(at), float(expired_at), str(sender), _rules(rules))
        for mid, at, expired_at, sender, rules in db.execute(
            "SELECT d.message_id, d.at, d.reviewed_at, d.sender,"
            " (SELECT group_concat(rule) FROM decision_findings f"
            "  WHERE f.message_id = d.message_id)"
            " FROM decisions d WHERE d.review = 'expire' AND d.reviewed_at >= ?"
            " AND d.reviewed_at < ? ORDER BY d.reviewed_at",
            (start, end),
        )
    )
    return MonthlyReport(
        month=month,
        generated_at=now,
        figures=figures_in(db, period),
        charter=in_force[1] if in_force else None,
        charter_since=in_force[0] if in_force else None,
        charter_changes=tuple(found),
        review_actions=actions,
        expired=expired,
    )
