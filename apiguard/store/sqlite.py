"""SQLite engine of the store: WAL with synchronous=FULL, so a committed
transaction is on disk before the caller answers 250.

Files are created 0600 inside a 0700 folder: readable by the service user alone.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from apiguard.policy.verdict import Finding
from apiguard.reports import records
from apiguard.store.base import (
    AuditEntry,
    DeliveryJob,
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientRow,
    RecipientState,
    StoredMessage,
    StoreError,
)
from apiguard.store.segments import SEGMENT_MIN, Segments, segment_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    size INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    state TEXT NOT NULL,
    findings TEXT NOT NULL,
    related_id TEXT
);
CREATE INDEX IF NOT EXISTS messages_state ON messages(state, seq);
CREATE TABLE IF NOT EXISTS message_data (
    id TEXT PRIMARY KEY,
    raw BLOB NOT NULL
);
-- Contents over SPOOL_SIZE live in spool/<id> instead of message_data.
CREATE TABLE IF NOT EXISTS message_files (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
-- Queued contents over SEGMENT_MIN (up to SPOOL_SIZE) live in segment files.
CREATE TABLE IF NOT EXISTS message_segments (
    id TEXT PRIMARY KEY,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS message_segments_segment ON message_segments(segment);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_reply TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    PRIMARY KEY (message_id, rcpt)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS recipients_pending ON recipients(rcpt, state);
-- Mail whose sender was told it is delayed (`delivery.delay_warning`): once.
CREATE TABLE IF NOT EXISTS delay_warnings (
    message_id TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_message ON audit(message_id);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_attempts_message ON delivery_attempts(message_id, seq);
CREATE TABLE IF NOT EXISTS sync_barrier (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    commits INTEGER NOT NULL
);
"""

T = TypeVar("T")
_PENDING = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value)
# Claimable once due: pending, or being sent under a lease that ran out (an
# attempt whose outcome was never recorded).
_CLAIMABLE = (*_PENDING, RecipientState.SENDING.value)

# How long a claim holds a recipient (`delivery.lease`'s default): an attempt
# that records no outcome by then is given back to the queue.
DEFAULT_LEASE = 900.0
# Where a content kept in a segment file is: for `Segments.read`.
_SEGMENT_OF = "SELECT segment, offset, size FROM message_segments WHERE id = ?"

# Claimed jobs carry contents up to this size; bigger ones are read by the
# attempt itself, so that jobs waiting their turn hold no 10 MB copies.
CLAIM_CONTENT_SIZE = 1024 * 1024

# Contents larger than this are written to a file of their own (spool/<id>,
# fsynced before the transaction that accepts the message) rather than into the
# database: a 10 MB blob costs SQLite 50 ms to write and 45 ms to delete, on
# the one store thread every session waits for; a file is written on any
# thread and unlinked in no time.
SPOOL_SIZE = 1024 * 1024

# The contents just accepted are kept in memory, up to this much, for their
# first delivery attempt: it then needs no read of the blob from the database.
RECENT_BYTES = 16 * 1024 * 1024


def _wanted_on_disk(batch: Sequence[WriteOp], results: Sequence[Any]) -> bool:
    """Does any operation whose durability depends on its result want it?"""
    return any(
        callable(wants) and wants(result) for (_, wants), result in zip(batch, results, strict=True)
    )


@dataclass(frozen=True, slots=True)
class WriteFailed:
    """`write_many`'s result for an operation that failed on its own."""

    error: Exception


# A write for `SqliteStore.write_many`: an operation run inside the shared
# transaction, and whether it needs the transaction to be durable: always
# (True), never (False), or as its result says (a function of the result: a
# write whose durability depends on what it decided inside the transaction).
Durability = bool | Callable[[Any], bool]
WriteOp = tuple[Callable[[sqlite3.Connection], Any], Durability]


def secure_directory(path: Path) -> None:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _secure_file(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class SqliteStore:
    """The store in one SQLite database file. Thread-safe through one lock;
    meant to be driven from a single worker thread by `AsyncStore`."""

    def __init__(self, directory: Path, *, readonly: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "apiguard.sqlite3"
        self.spool = self.directory / "spool"
        self.segments = Segments(self.spool)
        self._lock = threading.RLock()
        # What the running transaction does once it has committed (unlink the
        # spool files of the contents it drops, remember the contents it
        # inserts); dropped with it if it does not commit.
        self._after_commit: list[Callable[[], None]] = []
        # The contents just committed, oldest first: see RECENT_BYTES.
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_bytes = 0
        # Run inside complete()'s transaction (apiguard.store.volume remembers
        # the addresses delivered to).
        self.completion_hooks: list[
            Callable[[sqlite3.Connection, str, list[RecipientOutcome]], None]
        ] = []
        try:
            if not readonly:
                secure_directory(self.directory)
                _secure_file(self.path)
            uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
            self._db = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.executescript(SCHEMA)
                self._db.executescript(records.SCHEMA)
                secure_directory(self.spool)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"{self.path}: {error}") from error

    # -- transactions -----------------------------------------------------

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. Not `durable` ones skip the fsync (WAL,
        synchronous=NORMAL): they stay atomic, and the next durable commit
        carries them to disk with it (the WAL is written in order); for state a
        crash may lose, such as a claim that recovery undoes anyway."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                with self._commit() as db:
                    yield db
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _commit(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    # The contents this transaction appended are on disk
                    # before anything that refers to them is.
                    self.segments.sync()
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except (sqlite3.Error, OSError) as error:
                raise StoreError(str(error)) from error
            finally:
                committed, self._after_commit = self._after_commit, []
            for action in committed:  # reached only once committed
                action()
            # The segments this store stopped appending to (full, or failed):
            # gone if nothing refers to them.
            for segment in self.segments.take_left():
                self._unlink_unused(segment)

    def _unlink_spool(self, message_id: str) -> None:
        # Committed already: a file that cannot go now goes at the next start
        # (sweep_spool), it never fails the transaction.
        with contextlib.suppress(OSError):
            (self.spool / message_id).unlink(missing_ok=True)

    def _remember_recent(self, message_id: str, raw: bytes) -> None:
        self._recent[message_id] = raw
        self._recent_bytes += len(raw)
        while self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= len(self._recent.popitem(last=False)[1])

    def _forget_recent(self, message_id: str) -> None:
        raw = self._recent.pop(message_id, None)
        if raw is not None:
            self._recent_bytes -= len(raw)

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the database in one read transaction (a consistent
        view: the dashboard's and the report's figures)."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    return work(self._db)
                finally:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error as error:
                raise StoreError(str(error)) from error

    def _read(self, sql: str, args: Iterable[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, tuple(args))
                return list(cursor.fetchall())
            except sqlite3.Error as error:
                raise StoreError(str(error)) from error

    def query(self, sql: str, args: Iterable[object] = ()) -> list[sqlite3.Row]:
        """A query for the store's companion modules (the queue's, the volume's)."""
        return self._read(sql, args)

    # -- spooled contents ---------------------------------------------------

    def spool_write(self, message_id: str, raw: bytes) -> None:
        """Write a big content to its spool file, durably (file and directory
        fsynced), before the transaction that accepts the message. Any thread."""
        path = self.spool / message_id
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        directory = os.open(self.spool, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def spool_discard(self, message_id: str) -> None:
        """Remove a spool file whose message was not accepted after all."""
        (self.spool / message_id).unlink(missing_ok=True)

    def read_content(self, message_id: str) -> bytes | None:
        """A message's content, from its spool file (read without the store's
        lock: any thread) or from the database."""
        with contextlib.suppress(FileNotFoundError):
            return (self.spool / message_id).read_bytes()
        return self.get_raw(message_id)

    def drop_content(self, db: sqlite3.Connection, message_id: str) -> None:
        """Delete a content inside the caller's transaction (its spool file,
        or its segment once no other content is in it, goes once the
        transaction has committed)."""
        self._forget_recent(message_id)
        if db.execute("DELETE FROM message_data WHERE id = ?", (message_id,)).rowcount:
            return  # a content is in one place only (see `_insert`)
        if db.execute("DELETE FROM message_files WHERE id = ?", (message_id,)).rowcount:
            self._after_commit.append(functools.partial(self._unlink_spool, message_id))
            return
        row = db.execute(_SEGMENT_OF, (message_id,)).fetchone()
        if row is not None:
            db.execute("DELETE FROM message_segments WHERE id = ?", (message_id,))
            segment, offset, size = map(int, row)
            if self._refers_to(db, segment):  # others stay: this one's bytes go now
                self._after_commit.append(
                    functools.partial(self.segments.erase, segment, offset, size)
                )
            self._unlink_if_unused(db, segment)

    def _unlink_if_unused(self, db: sqlite3.Connection, segment: int) -> None:
        """Once committed, remove `segment` if no content is left in it then."""
        if not self._refers_to(db, segment):
            self._after_commit.append(functools.partial(self._unlink_unused, segment))

    @staticmethod
    def _refers_to(db: sqlite3.Connection, segment: int) -> bool:
        query = "SELECT 1 FROM message_segments WHERE segment = ? LIMIT 1"
        return db.execute(query, (segment,)).fetchone() is not None

    def _unlink_unused(self, segment: int) -> None:
        """Remove `segment` if no content refers to it and nobody appends to it,
        checked again now (the transaction that emptied it may also have
        appended to it), holding the database's write lock: no transaction,
        of this store or of the service next to the review CLI, is appending
        meanwhile. A segment that cannot be checked is left to the start-up sweep."""
        with self._lock:
            if segment == self.segments.current:
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if not self._refers_to(self._db, segment):
                        self.segments.unlink(segment)
                finally:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error:
                return

    def sweep_spool(self) -> int:
        """Remove the spool files and segments no message refers to (a crash
        between writing one and committing its message, or between a commit and
        an unlink).
        Only when the service starts: while it runs, a file being accepted is
        not referred to yet (never from the CLI or a second store)."""
        known = {row[0] for row in self._read("SELECT id FROM message_files")}
        segments = self._read("SELECT DISTINCT segment FROM message_segments")
        known.update(segment_name(int(row[0])) for row in segments)
        if self.segments.current is not None:
            known.add(segment_name(self.segments.current))
        removed = 0
        for path in self.spool.iterdir():
            if path.name not in known:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # -- writing ----------------------------------------------------------

    def _insert(self, db: sqlite3.Connection, message: NewMessage) -> None:
        db.execute(
            "INSERT INTO messages (id, created_at, kind, mail_from, size, verdict, state,"
            " findings, related_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.id,
                message.created_at,
                message.kind.value,
                message.mail_from,
                message.size,
                message.verdict,
                message.state.value,
                json.dumps([f.to_json() for f in message.findings], ensure_ascii=False),
                message.related_id,
            ),
        )
        if message.spooled:
            db.execute(
                "INSERT INTO message_files (id, size) VALUES (?, ?)", (message.id, message.size)
            )
        elif message.raw is not None:
            if len(message.raw) > SEGMENT_MIN and message.state is MessageState.QUEUED:
                # Held and other contents may stay for weeks: they never pin a segment.
                if self.segments.current is None:
                    highest = db.execute("SELECT MAX(segment) FROM message_segments").fetchone()
                    self.segments.floor = int(highest[0] or 0)
                segment, offset = self.segments.append(message.raw)
                db.execute(
                    "INSERT INTO message_segments (id, segment, offset, size) VALUES (?, ?, ?, ?)",
                    (message.id, segment, offset, len(message.raw)),
                )
            else:
                db.execute(
                    "INSERT INTO message_data (id, raw) VALUES (?, ?)", (message.id, message.raw)
                )
            if message.state is MessageState.QUEUED:
                remember = functools.partial(self._remember_recent, message.id, message.raw)
                self._after_commit.append(remember)
        rcpt_state = {
            MessageState.QUEUED: RecipientState.QUEUED,
            MessageState.HELD: RecipientState.HELD,
            MessageState.REJECTED: RecipientState.REJECTED,
            MessageState.CANCELLED: RecipientState.CANCELLED,
            MessageState.DONE: RecipientState.DELIVERED,
        }[message.state]
        due = message.not_before if message.not_before is not None else message.created_at
        db.executemany(
            "INSERT OR IGNORE INTO recipients (message_id, rcpt, state, attempts,"
            " next_attempt_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
            [
                (message.id, rcpt, rcpt_state.value, due, message.created_at)
                for rcpt in message.recipients
            ],
        )

    def accept(self, message: NewMessage, notices: tuple[NewMessage, ...] = ()) -> None:
        with self._transaction() as db:
            self.accept_in(db, message, notices)

    def accept_many(
        self,
        batch: Sequence[
            tuple[NewMessage, tuple[NewMessage, ...]]
            | tuple[NewMessage, tuple[NewMessage, ...], Callable[[sqlite3.Connection], Any] | None]
        ],
    ) -> list[Any]:
        """Group commit: several accepted messages in one durable transaction. An
        item's optional follow-up runs right after its insert, in the same
        transaction; its result is returned in order."""
        with self._transaction() as db:
            return [
                self.accept_in(db, item[0], item[1], item[2] if len(item) > 2 else None)
                for item in batch
            ]

    def accept_in(
        self,
        db: sqlite3.Connection,
        message: NewMessage,
        notices: tuple[NewMessage, ...] = (),
        follow_up: Callable[[sqlite3.Connection], Any] | None = None,
    ) -> Any:
        """Insert one accepted message and its notices inside the caller's
        transaction, then run `follow_up` there; returns its result."""
        self._insert(db, message)
        records.record_in(db, message)
        for notice in notices:
            self._insert(db, notice)
        return follow_up(db) if follow_up is not None else None

    def write_many(self, batch: Sequence[WriteOp]) -> list[Any]:
        """Group commit of unrelated writes (accepts, completions, volume
        reservations, claims): one transaction for all, in order, durable (one
        fsync) when any of them must be; each operation's result in order. An
        operation durable by its result (see `WriteOp`) that wants it after a
        transaction that was not durable gets a `sync_barrier` before any
        result is returned.
        When the shared transaction fails, each operation is run again in a
        transaction of its own, so that only the failing ones fail (their
        result is then a `WriteFailed`)."""
        durable = any(wants is True for _, wants in batch)
        try:
            with self._transaction(durable=durable) as db:
                results = [operation(db) for operation, _ in batch]
        except Exception:
            if len(batch) == 1:
                raise
        else:
            if not durable and _wanted_on_disk(batch, results):
                self.sync_barrier()  # a failure fails them all, as the COMMIT's would
            return results
        results = []
        for operation, wants in batch:
            try:
                with self._transaction(durable=wants is True) as db:
                    result = operation(db)
                if wants is not True and _wanted_on_disk([(operation, wants)], [result]):
                    self.sync_barrier()
            except Exception as error:  # the operation, its sync or its COMMIT
                results.append(WriteFailed(error))
            else:
                results.append(result)
        return results

    def sync_barrier(self) -> None:
        """Carry every commit made so far to disk: a durable commit of a real
        change (an empty or unchanged transaction commits, and syncs, nothing),
        the WAL being written and synced in order. Raises StoreError."""
        with self._transaction(durable=True) as db:
            db.execute(
                "INSERT INTO sync_barrier (id, commits) VALUES (1, 1)"
                " ON CONFLICT (id) DO UPDATE SET commits = commits + 1"
            )

    def claim_due(self, now: float, limit: int, lease: float = DEFAULT_LEASE) -> list[DeliveryJob]:
        """Mark due recipients as sending, for `lease` seconds, and return them
        grouped by message, oldest accepted first. Not durable: after a crash,
        recovery makes the recipients due again whether or not the claim
        reached the disk; while the service runs, a claim whose attempt
        recorded nothing is due again once its lease has run out."""
        with self._transaction(durable=False) as db:
            return self.claim_in(db, now, limit, lease)

    def claim_in(
        self, db: sqlite3.Connection, now: float, limit: int, lease: float = DEFAULT_LEASE
    ) -> list[DeliveryJob]:
        """`claim_due` inside the caller's transaction. A sending recipient's
        `next_attempt_at` is its lease's end."""
        rows = db.execute(
            "SELECT r.message_id, r.rcpt, r.attempts, r.next_attempt_at, r.last_reply,"
            # A big content is read when its attempt starts, not claimed ahead.
            " m.created_at, m.kind, m.mail_from,"
            " COALESCE(length(d.raw), g.size), m.seq"
            " FROM recipients r JOIN messages m ON m.id = r.message_id"
            " LEFT JOIN message_data d ON d.id = r.message_id"
            " LEFT JOIN message_segments g ON g.id = r.message_id"
            " WHERE r.state IN (?, ?, ?) AND r.next_attempt_at <= ?"
            # Order of acceptance per sender and recipient (a lab's successive
            # results): a message waits while an earlier one from the same
            # sender to the same recipient is queued, being sent, or due for
            # its retry; not while that one waits out a deferral (a letter the
            # relay defers for days holds back no other).
            " AND NOT EXISTS (SELECT 1 FROM recipients p"
            " JOIN messages e ON e.id = p.message_id"
            " WHERE p.rcpt = r.rcpt AND e.mail_from = m.mail_from AND e.seq < m.seq"
            " AND (p.state IN (?, ?) OR (p.state = ? AND p.next_attempt_at <= ?)))"
            " ORDER BY m.seq LIMIT ?",
            (
                *_CLAIMABLE,
                now,
                RecipientState.QUEUED.value,
                RecipientState.SENDING.value,
                RecipientState.DEFERRED.value,
                now,
                limit,
            ),
        ).fetchall()
        if not rows:
            return []
        db.executemany(
            "UPDATE recipients SET state = ?, next_attempt_at = ?, updated_at = ?"
            " WHERE message_id = ? AND rcpt = ?",
            [(RecipientState.SENDING.value, now + lease, now, row[0], row[1]) for row in rows],
        )
        jobs: dict[str, DeliveryJob] = {}
        grouped: dict[str, list[RecipientRow]] = {}
        for row in rows:
            grouped.setdefault(row[0], []).append(
                RecipientRow(row[1], RecipientState.SENDING, row[2], row[3], row[4])
            )
            if row[0] not in jobs:
                jobs[row[0]] = DeliveryJob(
                    message_id=row[0],
                    created_at=row[5],
                    kind=MessageKind(row[6]),
                    mail_from=row[7],
                    raw=self._claimed_content(db, row[0], row[8]),
                    recipients=(),
                )
        return [
            DeliveryJob(
                message_id=job.message_id,
                created_at=job.created_at,
                kind=job.kind,
                mail_from=job.mail_from,
                raw=job.raw,
                recipients=tuple(grouped[job.message_id]),
            )
            for job in jobs.values()
        ]

    def _claimed_content(
        self, db: sqlite3.Connection, message_id: str, size: int | None
    ) -> bytes | None:
        """A job's content: the one accepted a moment ago is in memory; another
        one is read if it is small (a big one is read by the attempt itself)."""
        raw = self._recent.get(message_id)
        if raw is not None or size is None or size > CLAIM_CONTENT_SIZE:
            return raw
        row = db.execute("SELECT raw FROM message_data WHERE id = ?", (message_id,)).fetchone()
        if row is not None:
            return bytes(row[0])
        located = db.execute(_SEGMENT_OF, (message_id,)).fetchone()
        return self.segments.read(*map(int, located)) if located is not None else None

    def complete(
        self,
        message_id: str,
        outcomes: list[RecipientOutcome],
        notices: tuple[NewMessage, ...] = (),
        now: float = 0.0,
    ) -> None:
        """Record one attempt's outcome per recipient, the notices it causes, and
        finish the message (dropping its content) once every recipient is final."""
        with self._transaction() as db:
            self.complete_in(db, message_id, outcomes, notices, now)

    def complete_in(
        self,
        db: sqlite3.Connection,
        message_id: str,
        outcomes: list[RecipientOutcome],
        notices: tuple[NewMessage, ...],
        now: float,
    ) -> None:
        db.executemany(
            "UPDATE recipients SET state = ?, attempts = attempts + 1, next_attempt_at = ?,"
            " last_reply = ?, updated_at = ? WHERE message_id = ? AND rcpt = ?",
            [
                (o.state.value, o.next_attempt_at, o.reply[:500], now, message_id, o.rcpt)
                for o in outcomes
            ],
        )
        # The attempt history (`apiguard queue show`), kept while the message is.
        db.executemany(
            "INSERT INTO delivery_attempts (message_id, rcpt, at, outcome, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            [(message_id, o.rcpt, now, o.state.value, o.reply[:500]) for o in outcomes],
        )
        for notice in notices:
            self._insert(db, notice)
        for hook in self.completion_hooks:
            hook(db, message_id, outcomes)
        self._finish_if_final(db, message_id)
        records.delivery_settled_in(db, message_id, now)

    def _finish_if_final(self, db: sqlite3.Connection, message_id: str) -> None:
        open_count = db.execute(
            "SELECT COUNT(*) FROM recipients WHERE message_id = ? AND state NOT IN (?, ?, ?, ?)",
            (message_id, "delivered", "failed", "rejected", "cancelled"),
        ).fetchone()[0]
        if open_count == 0:
            db.execute(
                "UPDATE messages SET state = ? WHERE id = ? AND state = ?",
                (MessageState.DONE.value, message_id, MessageState.QUEUED.value),
            )
            self.drop_content(db, message_id)

    def recover_in_flight(self) -> int:
        """Recipients caught mid-delivery by a crash become due again (at least
        once), at once: due since their claim, not at their lease's end."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE recipients SET state = ?, next_attempt_at = updated_at WHERE state = ?",
                (RecipientState.QUEUED.value, RecipientState.SENDING.value),
            )
            return cursor.rowcount

    def unclaim(self, message_ids: Sequence[str]) -> int:
        """Claimed recipients that were never attempted become due again."""
        with self._transaction() as db:
            return sum(
                db.execute(
                    "UPDATE recipients SET state = ?, next_attempt_at = updated_at"
                    " WHERE message_id = ? AND state = ?",
                    (RecipientState.QUEUED.value, message_id, RecipientState.SENDING.value),
                ).rowcount
                for message_id in message_ids
            )

    def next_due(self) -> float | None:
        """When a recipient is next due: a retry, or a lease running out."""
        rows = self._read(
            "SELECT MIN(next_attempt_at) FROM recipients WHERE state IN (?, ?, ?)", _CLAIMABLE
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    # -- reading ----------------------------------------------------------

    def _message(self, row: Any, with_audit: bool) -> StoredMessage:
        message_id = str(row[0])
        rcpts = self._read(
            "SELECT rcpt, state, attempts, next_attempt_at, last_reply FROM recipients"
            " WHERE message_id = ? ORDER BY rowid",
            (message_id,),
        )
        audit: tuple[AuditEntry, ...] = ()
        if with_audit:
            audit = tuple(
                AuditEntry(message_id, a[0], a[1], a[2], a[3])
                for a in self._read(
                    "SELECT at, actor, action, comment FROM audit WHERE message_id = ?"
                    " ORDER BY seq",
                    (message_id,),
                )
            )
        return StoredMessage(
            id=message_id,
            created_at=float(row[1]),
            kind=MessageKind(row[2]),
            mail_from=str(row[3]),
            size=int(row[4]),
            verdict=str(row[5]),
            state=MessageState(row[6]),
            findings=tuple(Finding.from_json(f) for f in json.loads(str(row[7]))),
            related_id=str(row[8]) if row[8] is not None else None,
            recipients=tuple(
                RecipientRow(r[0], RecipientState(r[1]), r[2], r[3], r[4]) for r in rcpts
            ),
            audit=audit,
        )

    _COLUMNS = "id, created_at, kind, mail_from, size, verdict, state, findings, related_id"

    def get(self, message_id: str) -> StoredMessage | None:
        rows = self._read(f"SELECT {self._COLUMNS} FROM messages WHERE id = ?", (message_id,))
        return self._message(rows[0], with_audit=True) if rows else None

    def get_raw(self, message_id: str) -> bytes | None:
        rows = self._read("SELECT raw FROM message_data WHERE id = ?", (message_id,))
        if rows:
            return bytes(rows[0][0])
        located = self._read(_SEGMENT_OF, (message_id,))
        if located:
            return self.segments.read(*map(int, located[0]))
        if self._read("SELECT 1 FROM message_files WHERE id = ?", (message_id,)):
            with contextlib.suppress(FileNotFoundError):
                return (self.spool / message_id).read_bytes()
        return None

    def list_messages(
        self, state: MessageState | None, limit: int = 100, offset: int = 0
    ) -> list[StoredMessage]:
        if state is None:
            rows = self._read(
                f"SELECT {self._COLUMNS} FROM messages ORDER BY seq DESC LIMIT ? OFFSET ?",
                (limit, offset),
            )
        else:
            rows = self._read(
                f"SELECT {self._COLUMNS} FROM messages WHERE state = ?"
                " ORDER BY seq DESC LIMIT ? OFFSET ?",
                (state.value, limit, offset),
            )
        return [self._message(row, with_audit=False) for row in rows]

    def count_messages(self, state: MessageState) -> int:
        rows = self._read("SELECT COUNT(*) FROM messages WHERE state = ?", (state.value,))
        return int(rows[0][0])

    # -- review page: filters, paging, expiry, grace period -----------------

    @staticmethod
    def _held_filter(rule: str | None, sender: str | None) -> tuple[str, list[object]]:
        where = "state = ?"
        args: list[object] = [MessageState.HELD.value]
        if rule:
            where += (
                " AND EXISTS (SELECT 1 FROM json_each(messages.findings)"
                " WHERE json_extract(json_each.value, '$.rule') = ?)"
            )
            args.append(rule)
        if sender is not None:
            where += " AND mail_from = ?"
            args.append(sender)
        return where, args

    def list_held_filtered(
        self, rule: str | None, sender: str | None, limit: int, offset: int
    ) -> list[StoredMessage]:
        """Held messages, newest first, optionally only those with a finding of
        `rule` and/or from envelope sender `sender`."""
        where, args = self._held_filter(rule, sender)
        rows = self._read(
            f"SELECT {self._COLUMNS} FROM messages WHERE {where}"
            " ORDER BY seq DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [self._message(row, with_audit=False) for row in rows]

    def count_held_filtered(self, rule: str | None, sender: str | None) -> int:
        where, args = self._held_filter(rule, sender)
        return int(self._read(f"SELECT COUNT(*) FROM messages WHERE {where}", args)[0][0])

    def held_facets(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(rule id, count) and (sender, count) over held messages, for the filters."""
        rules = self._read(
            "SELECT json_extract(f.value, '$.rule') AS rule, COUNT(DISTINCT m.seq)"
            " FROM messages m, json_each(m.findings) f WHERE m.state = ?"
            " GROUP BY rule ORDER BY rule",
            (MessageState.HELD.value,),
        )
        senders = self._read(
            "SELECT mail_from, COUNT(*) FROM messages WHERE state = ?"
            " GROUP BY mail_from ORDER BY mail_from",
            (MessageState.HELD.value,),
        )
        return (
            [(str(r[0]), int(r[1])) for r in rules if r[0] is not None],
            [(str(s[0]), int(s[1])) for s in senders],
        )

    def held_before(self, cutoff: float, limit: int) -> list[str]:
        """Ids of messages held since before `cutoff`, oldest first."""
        rows = self._read(
            "SELECT id FROM messages WHERE state = ? AND created_at < ? ORDER BY seq LIMIT ?",
            (MessageState.HELD.value, cutoff, limit),
        )
        return [str(row[0]) for row in rows]

    _UNTOUCHED = (
        "NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id"
        " AND (r.state != 'queued' OR r.attempts > 0 OR r.next_attempt_at <= ?))"
    )

    def list_cancellable(self, now: float, limit: int) -> list[StoredMessage]:
        """Mail waiting out the grace period: queued, no recipient tried or due yet."""
        rows = self._read(
            f"SELECT {self._COLUMNS} FROM messages WHERE state = ? AND kind = ?"
            f" AND {self._UNTOUCHED} ORDER BY seq DESC LIMIT ?",
            (MessageState.QUEUED.value, MessageKind.MAIL.value, now, limit),
        )
        return [self._message(row, with_audit=False) for row in rows]

    def cancel_pending(self, message_id: str, actor: str, comment: str, now: float) -> bool:
        """Cancel a queued mail none of whose recipients is due or tried yet (the
        grace period); False when delivery has begun. Atomic with `claim_due`."""
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE messages SET state = ? WHERE id = ? AND state = ? AND kind = ?"
                f" AND {self._UNTOUCHED}",
                (
                    MessageState.CANCELLED.value,
                    message_id,
                    MessageState.QUEUED.value,
                    MessageKind.MAIL.value,
                    now,
                ),
            )
            if cursor.rowcount != 1:
                return False
            db.execute(
                "UPDATE recipients SET state = ?, next_attempt_at = NULL, updated_at = ?"
                " WHERE message_id = ?",
                (RecipientState.CANCELLED.value, now, message_id),
            )
            db.execute(
                "INSERT INTO audit (message_id, at, actor, action, comment) VALUES (?, ?, ?, ?, ?)",
                (message_id, now, actor, "cancel", comment),
            )
            records.reviewed_in(db, message_id, "cancel", actor, now)
            self.drop_content(db, message_id)
        return True

    def transition_held(
        self,
        message_id: str,
        to_state: MessageState,
        actor: str,
        action: str,
        comment: str,
        now: float,
        notices: tuple[NewMessage, ...] = (),
    ) -> bool:
        """Move a held message to queued (release) or rejected; False when the
        message is not held any more (a second release is refused)."""
        rcpt_state = {
            MessageState.QUEUED: RecipientState.QUEUED,
            MessageState.REJECTED: RecipientState.REJECTED,
            MessageState.CANCELLED: RecipientState.CANCELLED,
        }[to_state]
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE messages SET state = ? WHERE id = ? AND state = ?",
                (to_state.value, message_id, MessageState.HELD.value),
            )
            if cursor.rowcount != 1:
                return False
            db.execute(
                "UPDATE recipients SET state = ?, next_attempt_at = ?, updated_at = ?"
                " WHERE message_id = ? AND state = ?",
                (rcpt_state.value, now, now, message_id, RecipientState.HELD.value),
            )
            db.execute(
                "INSERT INTO audit (message_id, at, actor, action, comment) VALUES (?, ?, ?, ?, ?)",
                (message_id, now, actor, action, comment),
            )
            records.reviewed_in(db, message_id, action, actor, now)
            for notice in notices:
                self._insert(db, notice)
            if to_state is not MessageState.QUEUED:
                self.drop_content(db, message_id)
        return True

    # -- delivery: delay warnings and the queue's health ----------------------

    def delayed_mail(self, cutoff: float, limit: int) -> list[StoredMessage]:
        """Queued mail accepted before `cutoff`, with an empty-path-free sender
        not warned yet (never the null sender: no notice about a notice)."""
        rows = self._read(
            f"SELECT {self._COLUMNS} FROM messages WHERE state = ? AND kind = ?"
            " AND mail_from != '' AND created_at <= ? AND NOT EXISTS"
            " (SELECT 1 FROM delay_warnings w WHERE w.message_id = messages.id)"
            " ORDER BY seq LIMIT ?",
            (MessageState.QUEUED.value, MessageKind.MAIL.value, cutoff, limit),
        )
        return [self._message(row, with_audit=False) for row in rows]

    def warn_delayed_in(
        self, db: sqlite3.Connection, message_id: str, notice: NewMessage, now: float
    ) -> bool:
        """Queue `notice` (the delay report) unless this message's sender was
        warned already; False then."""
        cursor = db.execute(
            "INSERT OR IGNORE INTO delay_warnings (message_id, at) VALUES (?, ?)",
            (message_id, now),
        )
        if cursor.rowcount != 1:
            return False
        self._insert(db, notice)
        return True

    def queue_health(self) -> tuple[float | None, dict[str, int]]:
        """When the oldest queued message was accepted, and the deferred
        recipients counted by their last reason."""
        oldest = self._read(
            "SELECT MIN(created_at) FROM messages WHERE state = ?", (MessageState.QUEUED.value,)
        )[0][0]
        rows = self._read(
            "SELECT last_reply, COUNT(*) FROM recipients WHERE state = ? GROUP BY last_reply",
            (RecipientState.DEFERRED.value,),
        )
        deferred = {str(row[0]): int(row[1]) for row in rows}
        return (float(oldest) if oldest is not None else None), deferred

    def queue_counts(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) FROM recipients GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    def close(self) -> None:
        with self._lock:
            self.segments.close()
            self._db.close()
