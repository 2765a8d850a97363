"""The delivery queue as the operator steers it: retry now, delete, hold.

Each change is one durable transaction that checks the message's state and
changes it together (SQLite's write lock serialises it with the delivery
worker's claims), so a recipient the running service has claimed (`sending`)
is never touched: the action is refused and can be asked again a moment later.
Every change writes its audit row in the same transaction.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from apiguard.policy.verdict import Finding
from apiguard.store.base import (
    MessageState,
    NewMessage,
    RecipientRow,
    RecipientState,
    StoredMessage,
)
from apiguard.store.sqlite import SqliteStore

_PENDING = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value)
# Recipients waiting for a retry, not for their first attempt: `retry --all`
# leaves the grace period (`review.send_delay`, an "undo send") alone.
_WAITING_RETRY = "(r.state = 'deferred' OR r.attempts > 0)"

# What a deletion notice is built from: the message, its content (None when
# lost) and the recipients it will not reach. None: no notice.
NoticeFor = Callable[[StoredMessage, bytes | None, list[RecipientRow]], NewMessage | None]


class QueueOutcome(enum.Enum):
    DONE = "done"
    NOT_FOUND = "not_found"
    NOT_QUEUED = "not_queued"  # held, delivered, rejected or cancelled: not in the queue
    SENDING = "sending"  # a recipient is being delivered right now


@dataclass(frozen=True, slots=True)
class QueueChange:
    """What one action did to one message."""

    outcome: QueueOutcome
    message_id: str
    state: str = ""  # the message's state afterwards (or as found)
    recipients: int = 0  # recipients the action changed
    notified: bool = False  # a deletion notice was queued for the sender

    @property
    def done(self) -> bool:
        return self.outcome is QueueOutcome.DONE


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One row of a message's attempt history (written by the delivery worker)."""

    rcpt: str
    at: float
    outcome: str  # delivered | deferred | failed
    reason: str


class QueueStore:
    """Queue queries and changes over the store's database."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    # -- reading ---------------------------------------------------------------

    def messages(self, limit: int, offset: int = 0) -> list[StoredMessage]:
        """Messages in the queue (some recipient still to deliver), newest first."""
        return self.store.list_messages(MessageState.QUEUED, limit=limit, offset=offset)

    def count(self) -> int:
        return self.store.count_messages(MessageState.QUEUED)

    def attempts(self, message_id: str) -> list[DeliveryAttempt]:
        rows = self.store.query(
            "SELECT rcpt, at, outcome, reason FROM delivery_attempts"
            " WHERE message_id = ? ORDER BY seq",
            (message_id,),
        )
        return [DeliveryAttempt(str(r[0]), float(r[1]), str(r[2]), str(r[3])) for r in rows]

    # -- changing --------------------------------------------------------------

    def _write(self, operation: Callable[[sqlite3.Connection], QueueChange]) -> QueueChange:
        result: QueueChange = self.store.write_many([(operation, True)])[0]
        return result

    def _queued(self, message_id: str) -> StoredMessage | QueueChange:
        """The message if it is in the queue (read inside the caller's transaction)."""
        message = self.store.get(message_id)
        if message is None:
            return QueueChange(QueueOutcome.NOT_FOUND, message_id)
        if message.state is not MessageState.QUEUED:
            return QueueChange(QueueOutcome.NOT_QUEUED, message_id, message.state.value)
        return message

    @staticmethod
    def _audit(
        db: sqlite3.Connection, message_id: str, now: float, actor: str, action: str, comment: str
    ) -> None:
        db.execute(
            "INSERT INTO audit (message_id, at, actor, action, comment) VALUES (?, ?, ?, ?, ?)",
            (message_id, now, actor, action, comment),
        )

    def retry(self, message_id: str, actor: str, comment: str, now: float) -> QueueChange:
        """Make the message's waiting recipients due now."""

        def operation(db: sqlite3.Connection) -> QueueChange:
            found = self._queued(message_id)
            if isinstance(found, QueueChange):
                return found
            if not any(r.state.value in _PENDING for r in found.recipients):
                return QueueChange(QueueOutcome.SENDING, message_id, found.state.value)
            changed = db.execute(
                "UPDATE recipients SET next_attempt_at = ?, updated_at = ?"
                " WHERE message_id = ? AND state IN (?, ?)",
                (now, now, message_id, *_PENDING),
            ).rowcount
            self._audit(db, message_id, now, actor, "retry", comment)
            return QueueChange(QueueOutcome.DONE, message_id, found.state.value, changed)

        return self._write(operation)

    def retry_waiting(self, actor: str, comment: str, now: float) -> list[QueueChange]:
        """`retry --all`: every recipient waiting for a retry becomes due now."""

        def operation(db: sqlite3.Connection) -> list[QueueChange]:
            rows = db.execute(
                "SELECT r.message_id FROM recipients r"
                " JOIN messages m ON m.id = r.message_id"
                f" WHERE m.state = ? AND r.state IN (?, ?) AND {_WAITING_RETRY}"
                " AND r.next_attempt_at > ? GROUP BY r.message_id ORDER BY MIN(m.seq)",
                (MessageState.QUEUED.value, *_PENDING, now),
            ).fetchall()
            changes = []
            for (message_id,) in rows:
                changed = db.execute(
                    "UPDATE recipients SET next_attempt_at = ?, updated_at = ?"
                    " WHERE message_id = ? AND state IN (?, ?)"
                    " AND (state = 'deferred' OR attempts > 0) AND next_attempt_at > ?",
                    (now, now, message_id, *_PENDING, now),
                ).rowcount
                self._audit(db, str(message_id), now, actor, "retry", comment)
                changes.append(
                    QueueChange(
                        QueueOutcome.DONE, str(message_id), MessageState.QUEUED.value, changed
                    )
                )
            return changes

        result: list[QueueChange] = self.store.write_many([(operation, True)])[0]
        return result

    def delete(
        self,
        message_id: str,
        actor: str,
        comment: str,
        now: float,
        notice_for: NoticeFor | None = None,
    ) -> QueueChange:
        """Take the message out of the queue: its waiting recipients are
        cancelled and its content goes, as when a message is finished; with
        `notice_for`, the notice it builds is queued in the same transaction."""

        def operation(db: sqlite3.Connection) -> QueueChange:
            found = self._queued(message_id)
            if isinstance(found, QueueChange):
                return found
            if any(r.state is RecipientState.SENDING for r in found.recipients):
                return QueueChange(QueueOutcome.SENDING, message_id, found.state.value)
            waiting = [r for r in found.recipients if r.state.value in _PENDING]
            notice = None
            if notice_for is not None:
                notice = notice_for(found, self.store.read_content(message_id), waiting)
            if notice is not None:
                self.store.accept_in(db, notice)
            db.execute(
                "UPDATE recipients SET state = ?, next_attempt_at = NULL, updated_at = ?"
                " WHERE message_id = ? AND state IN (?, ?)",
                (RecipientState.CANCELLED.value, now, message_id, *_PENDING),
            )
            db.execute(
                "UPDATE messages SET state = ? WHERE id = ?",
                (MessageState.CANCELLED.value, message_id),
            )
            self._audit(db, message_id, now, actor, "delete", comment)
            self.store.drop_content(db, message_id)
            return QueueChange(
                QueueOutcome.DONE,
                message_id,
                MessageState.CANCELLED.value,
                len(waiting),
                notified=notice is not None,
            )

        return self._write(operation)

    def hold(
        self, message_id: str, actor: str, comment: str, now: float, finding: Finding
    ) -> QueueChange:
        """Move the message to the quarantine: its waiting recipients are held
        until a reviewer releases or rejects it (`apiguard review`); `finding`
        says why on the review page. A content kept in a segment file moves
        into the database, where held contents live (they never pin a segment)."""

        def operation(db: sqlite3.Connection) -> QueueChange:
            found = self._queued(message_id)
            if isinstance(found, QueueChange):
                return found
            if any(r.state is RecipientState.SENDING for r in found.recipients):
                return QueueChange(QueueOutcome.SENDING, message_id, found.state.value)
            changed = db.execute(
                "UPDATE recipients SET state = ?, next_attempt_at = NULL, updated_at = ?"
                " WHERE message_id = ? AND state IN (?, ?)",
                (RecipientState.HELD.value, now, message_id, *_PENDING),
            ).rowcount
            findings = [f.to_json() for f in (*found.findings, finding)]
            db.execute(
                "UPDATE messages SET state = ?, findings = ? WHERE id = ?",
                (MessageState.HELD.value, json.dumps(findings, ensure_ascii=False), message_id),
            )
            self._move_out_of_segment(db, message_id)
            self._audit(db, message_id, now, actor, "hold", comment)
            return QueueChange(QueueOutcome.DONE, message_id, MessageState.HELD.value, changed)

        return self._write(operation)

    def _move_out_of_segment(self, db: sqlite3.Connection, message_id: str) -> None:
        located = db.execute(
            "SELECT segment, offset, size FROM message_segments WHERE id = ?", (message_id,)
        ).fetchone()
        if located is None:
            return  # in the database already, or in a spool file of its own
        raw = self.store.segments.read(*map(int, located))
        if raw is None:
            return  # its segment is gone (a damaged disk): nothing to move
        self.store.drop_content(db, message_id)
        db.execute("INSERT INTO message_data (id, raw) VALUES (?, ?)", (message_id, raw))
