"""Decision records: one row per message the proxy decided on, for the
dashboard and the monthly charter report.

A record holds the time, the envelope sender, the sending software's product
name, how many recipients, the verdict, the rule ids and articles, a size
class, the final delivery outcome and the review decision with its delay.
Never content, subjects, names or attachment names: the rule ids are the only
trace of what the message said. Records are written in the transaction that
stores the decision (`record_in`), updated in the ones that deliver or review
the message, and pruned after `reports.retention_days`.

The day (the practice's local date) is kept beside the time, and triggers
keep per-day counts (verdicts and outcomes, rules, articles) in the same
transactions, so that the figures of a year are a few hundred summary rows,
not 100 000 records (see `bench/dashboard.py`).
"""

from __future__ import annotations

import re
import sqlite3
import time

from apiguard.store.base import MessageKind, NewMessage

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    message_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    day TEXT NOT NULL,
    sender TEXT NOT NULL,
    software TEXT NOT NULL DEFAULT '',
    recipients INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    size_class TEXT NOT NULL,
    outcome TEXT NOT NULL,
    settled_at REAL,
    review TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    reviewed_at REAL
);
-- Covering indexes for the figures read from the records themselves.
CREATE INDEX IF NOT EXISTS decisions_flagged
    ON decisions(verdict, day, sender, software, review, reviewed_at, at);
CREATE INDEX IF NOT EXISTS decisions_reviewed ON decisions(review, reviewed_at);
CREATE TABLE IF NOT EXISTS decision_findings (
    message_id TEXT NOT NULL,
    day TEXT NOT NULL,
    rule TEXT NOT NULL,
    article INTEGER,
    action TEXT NOT NULL,
    PRIMARY KEY (message_id, rule)
);
CREATE INDEX IF NOT EXISTS decision_findings_day ON decision_findings(day);
-- Per-day counts, kept by the triggers below in the record's own transaction;
-- article 0 stands for the rules outside the articles.
CREATE TABLE IF NOT EXISTS decision_days (
    day TEXT NOT NULL,
    verdict TEXT NOT NULL,
    outcome TEXT NOT NULL,
    messages INTEGER NOT NULL,
    PRIMARY KEY (day, verdict, outcome)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rule_days (
    day TEXT NOT NULL,
    rule TEXT NOT NULL,
    article INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    PRIMARY KEY (day, rule)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS article_days (
    day TEXT NOT NULL,
    article INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    PRIMARY KEY (day, article)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS decision_counted AFTER INSERT ON decisions BEGIN
    INSERT INTO decision_days (day, verdict, outcome, messages)
    VALUES (NEW.day, NEW.verdict, NEW.outcome, 1)
    ON CONFLICT (day, verdict, outcome) DO UPDATE SET messages = messages + 1;
END;
CREATE TRIGGER IF NOT EXISTS decision_recounted AFTER UPDATE OF outcome ON decisions
WHEN OLD.outcome IS NOT NEW.outcome BEGIN
    UPDATE decision_days SET messages = messages - 1
    WHERE day = OLD.day AND verdict = OLD.verdict AND outcome = OLD.outcome;
    INSERT INTO decision_days (day, verdict, outcome, messages)
    VALUES (NEW.day, NEW.verdict, NEW.outcome, 1)
    ON CONFLICT (day, verdict, outcome) DO UPDATE SET messages = messages + 1;
END;
CREATE TRIGGER IF NOT EXISTS finding_counted AFTER INSERT ON decision_findings BEGIN
    INSERT INTO rule_days (day, rule, article, messages)
    VALUES (NEW.day, NEW.rule, COALESCE(NEW.article, 0), 1)
    ON CONFLICT (day, rule) DO UPDATE SET messages = messages + 1;
    -- A message counts once per article, whatever its number of rules there.
    INSERT INTO article_days (day, article, messages)
    SELECT NEW.day, COALESCE(NEW.article, 0), 1
    WHERE NOT EXISTS (
        SELECT 1 FROM decision_findings WHERE message_id = NEW.message_id
        AND rule != NEW.rule AND COALESCE(article, 0) = COALESCE(NEW.article, 0))
    ON CONFLICT (day, article) DO UPDATE SET messages = messages + 1;
END;
CREATE TABLE IF NOT EXISTS charter_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    digest TEXT NOT NULL,
    config TEXT NOT NULL
);
"""

# Outcomes: what finally became of the message.
PENDING = "pending"  # forwarded, not every recipient final yet
HELD = "held"  # waiting for a reviewer
DELIVERED = "delivered"  # every recipient delivered
PARTIAL = "partial"  # some delivered, some failed or refused by the relay
FAILED = "failed"  # no recipient delivered
REFUSED = "refused"  # refused by the charter or by a reviewer
CANCELLED = "cancelled"  # cancelled in the grace period or by a reviewer

_FINAL_RECIPIENT = ("delivered", "failed", "rejected", "cancelled")

# Size classes, by upper bound in bytes.
SIZE_CLASSES: tuple[tuple[str, int | None], ...] = (
    ("<100k", 100 * 1024),
    ("100k-1M", 1024 * 1024),
    ("1M-10M", 10 * 1024 * 1024),
    (">10M", None),
)

_SOFTWARE_HEADER = re.compile(
    rb"^(?:x-mailer|user-agent)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE
)
_PRODUCT = re.compile(r"[A-Za-z][A-Za-z0-9._-]*/[0-9][0-9A-Za-z._-]*")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENGINES = ("mozilla", "gecko", "applewebkit", "khtml", "safari", "chrome")
_HEADER_SCAN = 64 * 1024


def local_day(at: float) -> str:
    """The practice's local date of a time, as YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.localtime(at))


def size_class(size: int) -> str:
    for name, bound in SIZE_CLASSES:
        if bound is None or size < bound:
            return name
    return SIZE_CLASSES[-1][0]  # pragma: no cover


def software_of(raw: bytes | None) -> str:
    """The sending software's product name and version ("Thunderbird/115.3"),
    from X-Mailer or User-Agent: the product that names the mailer, never the
    parenthesised comments a client may add (a user or machine name)."""
    if not raw:
        return ""
    head = raw[:_HEADER_SCAN]
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    match = _SOFTWARE_HEADER.search(head if end < 0 else head[:end])
    if match is None:
        return ""
    value = re.sub(r"\([^)]*\)", " ", match.group(1).decode("ascii", "replace"))
    # "Mozilla/5.0 (...) Thunderbird/115.3": the last product named is the mailer.
    products: list[str] = [
        t for t in _PRODUCT.findall(value) if t.split("/")[0].lower() not in _ENGINES
    ]
    if products:
        return products[-1][:40]
    return " ".join(_WORD.findall(value))[:40]


def record_in(db: sqlite3.Connection, message: NewMessage) -> None:
    """Write the decision record of a message just accepted, inside the
    transaction that stores it (notices have none)."""
    if message.kind is not MessageKind.MAIL:
        return
    day = local_day(message.created_at)
    outcome = {"forward": PENDING, "hold": HELD, "reject": REFUSED}.get(message.verdict, PENDING)
    db.execute(
        "INSERT OR IGNORE INTO decisions (message_id, at, day, sender, software, recipients,"
        " verdict, size_class, outcome, settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.id,
            message.created_at,
            day,
            message.mail_from.lower(),
            message.software,
            len(message.recipients),
            message.verdict,
            size_class(message.size),
            outcome,
            message.created_at if outcome == REFUSED else None,
        ),
    )
    rules: dict[str, tuple[int | None, str]] = {}
    for finding in message.findings:
        article, action = rules.get(finding.rule, (finding.article, finding.action.value))
        if finding.action.severity > _severity(action):
            action = finding.action.value
        rules[finding.rule] = (article, action)
    db.executemany(
        "INSERT OR IGNORE INTO decision_findings (message_id, day, rule, article, action)"
        " VALUES (?, ?, ?, ?, ?)",
        [(message.id, day, rule, article, action) for rule, (article, action) in rules.items()],
    )


def _severity(action: str) -> int:
    return {"warn": 1, "hold": 2, "reject": 3}.get(action, 0)


def delivery_settled_in(db: sqlite3.Connection, message_id: str, now: float) -> None:
    """Once every recipient of a forwarded or released message is final, record
    how its delivery ended (inside the transaction that made it final)."""
    marks = ",".join("?" * len(_FINAL_RECIPIENT))
    db.execute(
        "UPDATE decisions SET settled_at = ?, outcome = ("
        " SELECT CASE WHEN SUM(state = 'delivered') = COUNT(*) THEN ?"
        " WHEN SUM(state = 'delivered') > 0 THEN ? ELSE ? END"
        " FROM recipients WHERE message_id = ?)"
        f" WHERE message_id = ? AND outcome = ? AND NOT EXISTS (SELECT 1 FROM recipients"
        f" WHERE message_id = ? AND state NOT IN ({marks}))",
        (
            now,
            DELIVERED,
            PARTIAL,
            FAILED,
            message_id,
            message_id,
            PENDING,
            message_id,
            *_FINAL_RECIPIENT,
        ),
    )


def reviewed_in(
    db: sqlite3.Connection, message_id: str, action: str, actor: str, now: float
) -> None:
    """Record a reviewer's decision (release, reject, expire, cancel) and when."""
    outcome = {"release": PENDING, "cancel": CANCELLED}.get(action, REFUSED)
    db.execute(
        "UPDATE decisions SET review = ?, reviewer = ?, reviewed_at = ?, outcome = ?,"
        " settled_at = CASE WHEN ? = ? THEN NULL ELSE ? END WHERE message_id = ?",
        (action, actor, now, outcome, outcome, PENDING, now, message_id),
    )


def prune_in(db: sqlite3.Connection, before: float) -> int:
    """Drop the records older than `before`; the charter version in force then
    stays (it is what the first kept records were decided under)."""
    cutoff = local_day(before)
    removed = db.execute("DELETE FROM decisions WHERE day < ?", (cutoff,)).rowcount
    for table in ("decision_findings", "decision_days", "rule_days", "article_days"):
        db.execute(f"DELETE FROM {table} WHERE day < ?", (cutoff,))
    db.execute(
        "DELETE FROM charter_versions WHERE at < ? AND seq < ("
        " SELECT COALESCE(MAX(seq), 0) FROM charter_versions WHERE at < ?)",
        (before, before),
    )
    return int(removed)


def charter_version_in(db: sqlite3.Connection, digest: str, config: str, now: float) -> bool:
    """Remember the charter configuration in force from `now` when it differs
    from the last one remembered; True when it did."""
    row = db.execute("SELECT digest FROM charter_versions ORDER BY seq DESC LIMIT 1").fetchone()
    if row is not None and row[0] == digest:
        return False
    db.execute(
        "INSERT INTO charter_versions (at, digest, config) VALUES (?, ?, ?)",
        (now, digest, config),
    )
    return True
