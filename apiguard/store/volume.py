"""Memory across messages for Article 2 over time, in the store's own database.

Each message reserves its rows when it arrives (`observe`): the counts it gets
back include every earlier reservation, because the store runs on one thread
and each observation is one transaction. Once decided, `settle` drops refused
reservations, refuses held copies of a crossed fan-out, and opens circuits.

Every query reads an index range bounded by one fingerprint or one sender and a
time window, so a check costs the same with a thousand or a million rows; rows
older than the longest window are pruned a batch at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
    StoreError,
)
from apiguard.store.sqlite import SqliteStore
from apiguard.volume import (
    Circuit,
    Settlement,
    SettleOutcome,
    VolumeSnapshot,
    VolumeWindows,
    normalise_address,
)

VOLUME_SCHEMA = """
CREATE TABLE IF NOT EXISTS volume_messages (
    message_id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    fingerprint TEXT,
    at REAL NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS volume_messages_sender ON volume_messages(sender, at);
CREATE INDEX IF NOT EXISTS volume_messages_at ON volume_messages(at);
CREATE INDEX IF NOT EXISTS volume_messages_unsettled ON volume_messages(settled)
    WHERE settled = 0;
CREATE TABLE IF NOT EXISTS volume_recipients (
    message_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS volume_recipients_content
    ON volume_recipients(fingerprint, at, rcpt);
CREATE INDEX IF NOT EXISTS volume_recipients_message ON volume_recipients(message_id);
CREATE INDEX IF NOT EXISTS volume_recipients_at ON volume_recipients(at);
CREATE TABLE IF NOT EXISTS volume_blocks (
    fingerprint TEXT PRIMARY KEY,
    blocked_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS volume_blocks_at ON volume_blocks(blocked_at);
CREATE TABLE IF NOT EXISTS volume_circuits (
    sender TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL,
    closed_by TEXT NOT NULL DEFAULT '',
    times_opened INTEGER NOT NULL DEFAULT 1,
    messages_short INTEGER NOT NULL DEFAULT 0,
    messages_day INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS volume_known (
    address TEXT PRIMARY KEY,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL
);
"""
_TABLES = ("volume_messages", "volume_recipients", "volume_blocks", "volume_circuits")

# Messages per sender and minute, kept by triggers in every transaction that
# adds or removes a volume_messages row (pipeline, prune, CLI alike): a rate
# count sums at most a day's minutes and scans one minute of rows, instead of
# every row of the day (a laboratory's burst of results, all from one sender).
SENDER_MINUTES_SCHEMA = (
    """
CREATE TABLE volume_sender_minutes (
    sender TEXT NOT NULL,
    minute INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (sender, minute)
) WITHOUT ROWID
""",
    """
CREATE TRIGGER volume_messages_counted AFTER INSERT ON volume_messages BEGIN
    INSERT INTO volume_sender_minutes (sender, minute, n)
    VALUES (NEW.sender, CAST(NEW.at / 60 AS INTEGER), 1)
    ON CONFLICT (sender, minute) DO UPDATE SET n = n + 1;
END
""",
    """
CREATE TRIGGER volume_messages_uncounted AFTER DELETE ON volume_messages BEGIN
    UPDATE volume_sender_minutes SET n = n - 1
    WHERE sender = OLD.sender AND minute = CAST(OLD.at / 60 AS INTEGER);
    DELETE FROM volume_sender_minutes
    WHERE sender = OLD.sender AND minute = CAST(OLD.at / 60 AS INTEGER) AND n <= 0;
END
""",
    """
CREATE TRIGGER volume_messages_recounted AFTER UPDATE OF sender, at ON volume_messages BEGIN
    UPDATE volume_sender_minutes SET n = n - 1
    WHERE sender = OLD.sender AND minute = CAST(OLD.at / 60 AS INTEGER);
    DELETE FROM volume_sender_minutes
    WHERE sender = OLD.sender AND minute = CAST(OLD.at / 60 AS INTEGER) AND n <= 0;
    INSERT INTO volume_sender_minutes (sender, minute, n)
    VALUES (NEW.sender, CAST(NEW.at / 60 AS INTEGER), 1)
    ON CONFLICT (sender, minute) DO UPDATE SET n = n + 1;
END
""",
)
# Messages of `:sender` at or after `:since`: the whole minutes after the one
# `:since` falls in, from the counts; that minute itself, from the rows. The
# minute of a row is computed by the same expression as in the triggers.
_SENDER_COUNT = (
    "SELECT (SELECT COALESCE(SUM(n), 0) FROM volume_sender_minutes"
    " WHERE sender = :sender AND minute > CAST(:since / 60 AS INTEGER))"
    " + (SELECT COUNT(*) FROM volume_messages WHERE sender = :sender AND at >= :since"
    " AND at < (CAST(:since / 60 AS INTEGER) + 2) * 60"
    " AND CAST(at / 60 AS INTEGER) = CAST(:since / 60 AS INTEGER))"
)
_SENDER_COUNT_BY_ROWS = (
    "SELECT COUNT(*) FROM volume_messages WHERE sender = :sender AND at >= :since"
)
PRUNE_BATCH = 1000
PRUNE_INTERVAL = 60.0


class VolumeStore:
    """Fan-out, duplicate, rate and known-correspondent state, sharing the
    `SqliteStore`'s connection and lock (so the same single store thread)."""

    def __init__(self, store: SqliteStore, *, readonly: bool = False) -> None:
        self.store = store
        self.readonly = readonly
        # Called (on the store thread) with addresses just delivered to.
        self.delivered_listeners: list[Callable[[list[str]], None]] = []
        self._next_prune = 0.0
        self._prune_backlog = False
        self.available = True
        with store._lock:
            try:
                if readonly:
                    names = {
                        row[0]
                        for row in store._db.execute(
                            "SELECT name FROM sqlite_master WHERE type = 'table'"
                        )
                    }
                    self.available = all(t in names for t in _TABLES)
                else:
                    store._db.executescript(VOLUME_SCHEMA)
                    self._count_sender_minutes()
            except sqlite3.Error as error:
                raise StoreError(f"volume tables: {error}") from error
        if not readonly:
            store.completion_hooks.append(self._remember_delivered)

    def _count_sender_minutes(self) -> None:
        """Create the per-minute counts and their triggers, counting the rows
        already there (a store from an earlier version), in one transaction."""
        with self.store._commit() as db:
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                ("volume_sender_minutes",),
            ).fetchone()
            if exists:
                return
            for statement in SENDER_MINUTES_SCHEMA:
                db.execute(statement)
            db.execute(
                "INSERT INTO volume_sender_minutes (sender, minute, n)"
                " SELECT sender, CAST(at / 60 AS INTEGER), COUNT(*) FROM volume_messages"
                " GROUP BY 1, 2"
            )

    # -- transactions -----------------------------------------------------

    def _transaction(self, *, durable: bool) -> AbstractContextManager[sqlite3.Connection]:
        """The store's transaction (not `durable` ones skip the fsync)."""
        return self.store._transaction(durable=durable)

    # -- one message ------------------------------------------------------

    def observe(
        self,
        message_id: str,
        fingerprint: str | None,
        sender: str,
        recipients: Sequence[str],
        now: float,
        windows: VolumeWindows,
    ) -> VolumeSnapshot:
        """Reserve this message's rows and return the counts including it and
        every earlier message not refused (pending ones too)."""
        with self._transaction(durable=False) as db:
            return self.observe_in(db, message_id, fingerprint, sender, recipients, now, windows)

    def observe_in(
        self,
        db: sqlite3.Connection,
        message_id: str,
        fingerprint: str | None,
        sender: str,
        recipients: Sequence[str],
        now: float,
        windows: VolumeWindows,
    ) -> VolumeSnapshot:
        """`observe` inside the caller's transaction (the pipeline's shared one)."""
        sender = normalise_address(sender)
        rcpts = sorted({normalise_address(r) for r in recipients if r.strip()})
        snapshot = self._snapshot(db, fingerprint, sender, rcpts, now, windows, counted=1)
        db.execute(
            "INSERT INTO volume_messages (message_id, sender, fingerprint, at, settled)"
            " VALUES (?, ?, ?, ?, 0)",
            (message_id, sender, fingerprint, now),
        )
        if fingerprint is not None:
            db.executemany(
                "INSERT INTO volume_recipients (message_id, fingerprint, rcpt, at)"
                " VALUES (?, ?, ?, ?)",
                [(message_id, fingerprint, rcpt, now) for rcpt in rcpts],
            )
        self._maybe_prune(db, now, windows)
        return snapshot

    def peek(
        self,
        fingerprint: str | None,
        sender: str,
        recipients: Sequence[str],
        now: float,
        windows: VolumeWindows,
    ) -> VolumeSnapshot:
        """The snapshot `observe` would return, without reserving anything
        (`apiguard check` on a read-only store)."""
        sender = normalise_address(sender)
        rcpts = sorted({normalise_address(r) for r in recipients if r.strip()})
        if not self.available:
            return VolumeSnapshot(
                fingerprint=fingerprint,
                fanout_recipients=len(rcpts) if fingerprint else 0,
                sender_short=1,
                sender_day=1,
            )
        with self.store._lock:
            try:
                return self._snapshot(
                    self.store._db, fingerprint, sender, rcpts, now, windows, counted=1
                )
            except sqlite3.Error as error:
                raise StoreError(str(error)) from error

    def _snapshot(
        self,
        db: sqlite3.Connection,
        fingerprint: str | None,
        sender: str,
        rcpts: list[str],
        now: float,
        windows: VolumeWindows,
        *,
        counted: int,
    ) -> VolumeSnapshot:
        circuit = db.execute(
            "SELECT state, closed_at FROM volume_circuits WHERE sender = ?", (sender,)
        ).fetchone()
        circuit_open = circuit is not None and circuit[0] == "open"
        # After a person closes the circuit, counting starts again from then.
        since_closed = float(circuit[1]) if circuit is not None and circuit[1] else 0.0
        # A read-only store (the CLI) may predate the per-minute counts.
        count = _SENDER_COUNT_BY_ROWS if self.readonly else _SENDER_COUNT
        sender_short, sender_day = (
            counted
            + db.execute(
                count, {"sender": sender, "since": max(now - window, since_closed)}
            ).fetchone()[0]
            for window in (windows.rate_short, windows.rate_day)
        )
        if fingerprint is None:
            return VolumeSnapshot(
                fingerprint=None,
                sender_short=sender_short,
                sender_day=sender_day,
                circuit_open=circuit_open,
            )
        last_sent = dict(
            db.execute(
                "SELECT rcpt, MAX(at) FROM volume_recipients WHERE fingerprint = ? AND at >= ?"
                " GROUP BY rcpt",
                (fingerprint, now - max(windows.fanout, windows.duplicate)),
            ).fetchall()
        )
        fanout = {r for r, at in last_sent.items() if at >= now - windows.fanout}
        fanout.update(rcpts)
        duplicates = sum(
            1 for r in rcpts if r in last_sent and last_sent[r] >= now - windows.duplicate
        )
        blocked = db.execute(
            "SELECT 1 FROM volume_blocks WHERE fingerprint = ? AND blocked_at >= ?",
            (fingerprint, now - windows.fanout),
        ).fetchone()
        return VolumeSnapshot(
            fingerprint=fingerprint,
            fanout_recipients=len(fanout),
            fanout_blocked=blocked is not None,
            duplicate_recipients=duplicates,
            sender_short=sender_short,
            sender_day=sender_day,
            circuit_open=circuit_open,
        )

    def settle(
        self,
        settlement: Settlement,
        now: float,
        windows: VolumeWindows,
        alert_notices: tuple[NewMessage, ...] = (),
    ) -> SettleOutcome:
        """Record the decision: a refused (or unstored) message stops counting; a
        crossed fan-out refuses the held copies; a crossed rate opens the circuit
        and stores `alert_notices`, once. A held copy of content refused in the
        meantime is refused too."""
        durable = settlement.fanout_crossed or settlement.open_circuit or settlement.held
        with self._transaction(durable=durable) as db:
            return self.settle_in(db, settlement, now, windows, alert_notices)

    def settle_in(
        self,
        db: sqlite3.Connection,
        settlement: Settlement,
        now: float,
        windows: VolumeWindows,
        alert_notices: tuple[NewMessage, ...] = (),
    ) -> SettleOutcome:
        """`settle` inside the caller's transaction (the message's own group commit)."""
        if not settlement.stored or settlement.refused:
            self._forget(db, [settlement.message_id])
        else:
            db.execute(
                "UPDATE volume_messages SET settled = 1 WHERE message_id = ?",
                (settlement.message_id,),
            )
        copies = 0
        self_refused = False
        fingerprint = settlement.fingerprint
        if settlement.fanout_crossed and fingerprint is not None:
            db.execute(
                "INSERT INTO volume_blocks (fingerprint, blocked_at) VALUES (?, ?)"
                " ON CONFLICT(fingerprint) DO UPDATE SET blocked_at = excluded.blocked_at",
                (fingerprint, now),
            )
            copies = self._refuse_held_copies(db, fingerprint, now - windows.fanout, now)
        elif settlement.held and settlement.stored and fingerprint is not None:
            blocked = db.execute(
                "SELECT 1 FROM volume_blocks WHERE fingerprint = ? AND blocked_at >= ?",
                (fingerprint, now - windows.fanout),
            ).fetchone()
            if blocked is not None:
                self_refused = self._refuse_held(db, settlement.message_id, now)
        opened = False
        if settlement.open_circuit and settlement.stored:
            opened = self._open_circuit(db, settlement, now)
            if opened:
                for notice in alert_notices:
                    self.store._insert(db, notice)
        return SettleOutcome(
            circuit_opened=opened, copies_refused=copies, self_refused=self_refused
        )

    def _forget(self, db: sqlite3.Connection, message_ids: Sequence[str]) -> None:
        rows = [(m,) for m in message_ids]
        db.executemany("DELETE FROM volume_recipients WHERE message_id = ?", rows)
        db.executemany("DELETE FROM volume_messages WHERE message_id = ?", rows)

    def _refuse_held_copies(
        self, db: sqlite3.Connection, fingerprint: str, since: float, now: float
    ) -> int:
        held = [
            str(row[0])
            for row in db.execute(
                "SELECT DISTINCT v.message_id FROM volume_recipients v"
                " JOIN messages m ON m.id = v.message_id"
                " WHERE v.fingerprint = ? AND v.at >= ? AND m.state = ?",
                (fingerprint, since, MessageState.HELD.value),
            ).fetchall()
        ]
        return sum(1 for message_id in held if self._refuse_held(db, message_id, now))

    def _refuse_held(self, db: sqlite3.Connection, message_id: str, now: float) -> bool:
        """Refuse one held message as a copy of a refused grouped send."""
        moved = db.execute(
            "UPDATE messages SET state = ? WHERE id = ? AND state = ?",
            (MessageState.REJECTED.value, message_id, MessageState.HELD.value),
        ).rowcount
        if moved != 1:
            return False
        db.execute(
            "UPDATE recipients SET state = ?, updated_at = ? WHERE message_id = ? AND state = ?",
            (RecipientState.REJECTED.value, now, message_id, RecipientState.HELD.value),
        )
        db.execute(
            "INSERT INTO audit (message_id, at, actor, action, comment) VALUES (?, ?, ?, ?, ?)",
            (message_id, now, "apiguard", "reject", "art2.fanout: copie d'un envoi groupé refusé"),
        )
        self.store.drop_content(db, message_id)
        self._forget(db, [message_id])
        return True

    def _open_circuit(self, db: sqlite3.Connection, settlement: Settlement, now: float) -> bool:
        """Open the sender's circuit; True only for the message that opened it."""
        cursor = db.execute(
            "INSERT INTO volume_circuits (sender, state, opened_at, times_opened,"
            " messages_short, messages_day) VALUES (?, 'open', ?, 1, ?, ?)"
            " ON CONFLICT(sender) DO UPDATE SET state = 'open', opened_at = excluded.opened_at,"
            " closed_at = NULL, closed_by = '', times_opened = times_opened + 1,"
            " messages_short = excluded.messages_short, messages_day = excluded.messages_day"
            " WHERE volume_circuits.state = 'closed'",
            (settlement.sender, now, settlement.sender_short, settlement.sender_day),
        )
        return cursor.rowcount == 1

    # -- housekeeping -----------------------------------------------------

    def recover(self) -> int:
        """At start-up: reservations of messages that were never stored (a crash
        between observe and store) are dropped; the others count as settled."""
        with self._transaction(durable=True) as db:
            rows = db.execute(
                "SELECT v.message_id, m.state FROM volume_messages v"
                " LEFT JOIN messages m ON m.id = v.message_id WHERE v.settled = 0"
            ).fetchall()
            dropped = [
                str(message_id)
                for message_id, state in rows
                if state is None
                or state in (MessageState.REJECTED.value, MessageState.CANCELLED.value)
            ]
            self._forget(db, dropped)
            db.execute("UPDATE volume_messages SET settled = 1 WHERE settled = 0")
        return len(dropped)

    def _maybe_prune(self, db: sqlite3.Connection, now: float, windows: VolumeWindows) -> None:
        """Drop at most one batch of expired rows, every minute (or at every
        message while a backlog remains): a bounded cost per message."""
        if not self._prune_backlog and now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL
        self._prune_backlog = self._prune(db, now - windows.longest, PRUNE_BATCH) >= PRUNE_BATCH

    def _prune(self, db: sqlite3.Connection, cutoff: float, batch: int) -> int:
        removed = 0
        for table, column in (
            ("volume_recipients", "at"),
            ("volume_messages", "at"),
            ("volume_blocks", "blocked_at"),
        ):
            cursor = db.execute(
                f"DELETE FROM {table} WHERE rowid IN"
                f" (SELECT rowid FROM {table} WHERE {column} < ? LIMIT ?)",
                (cutoff, batch),
            )
            removed = max(removed, cursor.rowcount)
        return removed

    def prune(self, now: float, windows: VolumeWindows, batch: int = 10_000) -> int:
        """Drop every row older than the longest window (batches of `batch`)."""
        total = 0
        while True:
            with self._transaction(durable=False) as db:
                removed = self._prune(db, now - windows.longest, batch)
            total += removed
            if removed < batch:
                return total

    # -- known correspondents ----------------------------------------------

    def remember_forwarded_in(
        self, db: sqlite3.Connection, message_id: str, recipients: Sequence[str]
    ) -> None:
        """Behind the milter the MTA delivers forwarded mail: its recipients
        become known when it is forwarded (inside the accept transaction)."""
        outcomes = [RecipientOutcome(r, RecipientState.DELIVERED, "") for r in recipients]
        self._remember_delivered(db, message_id, outcomes)

    def _remember_delivered(
        self, db: sqlite3.Connection, message_id: str, outcomes: list[RecipientOutcome]
    ) -> None:
        """Inside `complete()`: a mail delivered to an address makes it known."""
        delivered = [
            normalise_address(o.rcpt) for o in outcomes if o.state is RecipientState.DELIVERED
        ]
        if not delivered:
            return
        row = db.execute(
            "SELECT m.kind, (SELECT MAX(updated_at) FROM recipients WHERE message_id = m.id)"
            " FROM messages m WHERE m.id = ?",
            (message_id,),
        ).fetchone()
        if row is None or row[0] != MessageKind.MAIL.value:
            return
        now = float(row[1] or 0.0)
        db.executemany(
            "INSERT INTO volume_known (address, first_at, last_at) VALUES (?, ?, ?)"
            " ON CONFLICT(address) DO UPDATE SET last_at = excluded.last_at",
            [(address, now, now) for address in delivered],
        )
        for listener in self.delivered_listeners:
            listener(delivered)

    def known_addresses(self) -> list[str]:
        """Every address a mail was delivered to."""
        if not self.available:
            return []
        with self.store._lock:
            try:
                return [
                    str(row[0])
                    for row in self.store._db.execute("SELECT address FROM volume_known")
                ]
            except sqlite3.Error as error:
                raise StoreError(str(error)) from error

    # -- circuits ---------------------------------------------------------

    def circuits(self, *, open_only: bool = True) -> list[Circuit]:
        """Circuits (open ones by default), with how many messages each sender has held."""
        if not self.available:
            return []
        where = "WHERE c.state = 'open'" if open_only else ""
        with self.store._lock:
            try:
                rows = self.store._db.execute(
                    "SELECT c.sender, c.state, c.opened_at, c.closed_at, c.closed_by,"
                    " c.times_opened, c.messages_short, c.messages_day,"
                    " (SELECT COUNT(*) FROM messages m WHERE m.state = ?"
                    "  AND lower(m.mail_from) = c.sender)"
                    f" FROM volume_circuits c {where} ORDER BY c.opened_at",
                    (MessageState.HELD.value,),
                ).fetchall()
            except sqlite3.Error as error:
                raise StoreError(str(error)) from error
        return [
            Circuit(
                sender=str(r[0]),
                state=str(r[1]),
                opened_at=float(r[2]),
                closed_at=float(r[3]) if r[3] is not None else None,
                closed_by=str(r[4]),
                times_opened=int(r[5]),
                messages_short=int(r[6]),
                messages_day=int(r[7]),
                held_messages=int(r[8]),
            )
            for r in rows
        ]

    def close_circuit(self, sender: str, actor: str, now: float) -> bool:
        """Close the sender's open circuit; False when none is open. Its rate
        counts start again from now; its held messages stay held for review."""
        with self._transaction(durable=True) as db:
            cursor = db.execute(
                "UPDATE volume_circuits SET state = 'closed', closed_at = ?, closed_by = ?"
                " WHERE sender = ? AND state = 'open'",
                (now, actor[:200], normalise_address(sender)),
            )
            return cursor.rowcount == 1
