"""The SQLite store and the delivery worker, on real database files and the
in-memory relay twin."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import stat
from pathlib import Path

import pytest

from apiguard.config import DeliverySettings
from apiguard.delivery import DeliveryWorker, backoff
from apiguard.notices import NoticeIdentity
from apiguard.relay.base import RelayReply
from apiguard.relay.memory import MemoryRelay
from apiguard.store.aio import AsyncStore
from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientState,
    StoreError,
)
from apiguard.store.sqlite import SqliteStore
from tests.support import letter

SENDER = "dr.martin@medical13.apicrypt.org"
A = "dr.durand@medical69.apicrypt.org"
B = "dr.petit@medical75.apicrypt.org"


def new_message(message_id: str, *, state: MessageState = MessageState.QUEUED) -> NewMessage:
    raw = letter(1)
    return NewMessage(
        id=message_id,
        created_at=1000.0,
        kind=MessageKind.MAIL,
        mail_from=SENDER,
        recipients=(A, B),
        raw=raw,
        size=len(raw),
        verdict="forward",
        state=state,
    )


def test_store_files_are_private_to_the_service_user(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "var")
    store.accept(new_message("m1"))
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    for path in (tmp_path / "var").iterdir():
        expected = 0o700 if path.is_dir() else 0o600  # spool/: big contents
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    store.close()


def test_claimed_recipients_come_back_after_a_crash(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(new_message("m1"))
    jobs = store.claim_due(now=2000.0, limit=10)
    assert [(j.message_id, [r.rcpt for r in j.recipients]) for j in jobs] == [("m1", [A, B])]
    assert store.claim_due(now=2000.0, limit=10) == []  # claimed: not handed out twice
    store.close()
    reopened = SqliteStore(tmp_path)  # "after the crash"
    assert reopened.recover_in_flight() == 2
    assert len(reopened.claim_due(now=2000.0, limit=10)) == 1
    reopened.close()


def test_held_messages_are_not_delivered_until_released_and_only_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(new_message("h1", state=MessageState.HELD))
    assert store.claim_due(now=2000.0, limit=10) == []
    assert store.transition_held("h1", MessageState.QUEUED, "me", "release", "", 2000.0)
    assert not store.transition_held("h1", MessageState.QUEUED, "me", "release", "", 2001.0)
    assert len(store.claim_due(now=2000.0, limit=10)) == 1
    held = store.get("h1")
    assert held is not None
    assert [(a.actor, a.action) for a in held.audit] == [("me", "release")]
    store.close()


def test_content_is_dropped_once_every_recipient_is_final(tmp_path: Path) -> None:
    from apiguard.store.base import RecipientOutcome

    store = SqliteStore(tmp_path)
    store.accept(new_message("m1"))
    store.claim_due(2000.0, 10)
    store.complete(
        "m1",
        [
            RecipientOutcome(A, RecipientState.DELIVERED, "250 ok"),
            RecipientOutcome(B, RecipientState.DEFERRED, "451 later", 3000.0),
        ],
        now=2000.0,
    )
    assert store.get_raw("m1") is not None
    assert store.next_due() == 3000.0
    store.claim_due(3000.0, 10)
    store.complete("m1", [RecipientOutcome(B, RecipientState.FAILED, "550 no")], now=3000.0)
    assert store.get_raw("m1") is None
    stored = store.get("m1")
    assert stored is not None and stored.state is MessageState.DONE
    store.close()


def test_backoff_doubles_from_the_initial_delay_up_to_the_maximum() -> None:
    settings = DeliverySettings(retry_initial=60, retry_max=3600)
    assert [backoff(settings, n) for n in range(8)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]


async def run_worker(
    tmp_path: Path, relay: MemoryRelay, clock: list[float], settings: DeliverySettings
) -> tuple[AsyncStore, DeliveryWorker]:
    store = AsyncStore(SqliteStore(tmp_path))
    worker = DeliveryWorker(store, relay, settings, NoticeIdentity(), clock=lambda: clock[0])
    await worker.start()
    return store, worker


async def test_a_permanent_refusal_fails_one_recipient_and_bounces_to_the_sender(
    tmp_path: Path,
) -> None:
    relay = MemoryRelay(refuse={B: RelayReply(550, "5.1.1 unknown user")})
    clock = [1000.0]
    store, worker = await run_worker(tmp_path, relay, clock, DeliverySettings(poll_interval=0.01))
    await store.accept(new_message("m1"))
    worker.wake()
    for _ in range(200):
        if len(relay.sent) == 2:
            break
        await asyncio.sleep(0.01)
    await worker.stop()
    assert relay.sent[0][:2] == (SENDER, (A,))
    bounce_from, bounce_to, bounce = relay.sent[1]
    assert (bounce_from, bounce_to) == ("", (SENDER,))
    assert b"multipart/report" in bounce and B.encode() in bounce
    stored = store.sync.get("m1")
    assert stored is not None
    assert {r.rcpt: r.state for r in stored.recipients} == {
        A: RecipientState.DELIVERED,
        B: RecipientState.FAILED,
    }
    await store.close()


async def test_temporary_failures_are_retried_then_expire_with_a_notice(tmp_path: Path) -> None:
    relay = MemoryRelay(replies=[RelayReply(451, "4.3.0 later")] * 50)
    clock = [1000.0]
    settings = DeliverySettings(retry_initial=10, retry_max=10, lifetime=100, poll_interval=0.01)
    store, worker = await run_worker(tmp_path, relay, clock, settings)
    await store.accept(new_message("m1"))
    worker.wake()
    await asyncio.sleep(0.1)
    stored = store.sync.get("m1")
    assert stored is not None
    assert {r.state for r in stored.recipients} == {RecipientState.DEFERRED}
    assert relay.sent == []
    clock[0] = 1000.0 + 101  # past the lifetime
    relay.replies = [RelayReply(451, "4.3.0 later")]
    worker.wake()
    for _ in range(200):
        if relay.sent:
            break
        await asyncio.sleep(0.01)
    await worker.stop()
    stored = store.sync.get("m1")
    assert stored is not None
    assert {r.state for r in stored.recipients} == {RecipientState.FAILED}
    (notice,) = relay.sent
    assert notice[0] == "" and b"4.4.7" in notice[2]
    await store.close()


def test_a_later_message_to_the_same_recipient_waits_for_the_earlier_one_until_it_is_deferred(
    tmp_path: Path,
) -> None:
    from apiguard.store.base import RecipientOutcome

    store = SqliteStore(tmp_path)
    store.accept(new_message("m1"))
    store.accept(new_message("m2"))
    first = store.claim_due(now=2000.0, limit=10)
    assert [j.message_id for j in first] == ["m1"]  # m2 waits while m1 is being sent
    store.complete(
        "m1",
        [
            RecipientOutcome(A, RecipientState.DEFERRED, "451 4.7.1 later", 3000.0),
            RecipientOutcome(B, RecipientState.DELIVERED, "250 2.0.0 ok"),
        ],
        now=2000.0,
    )
    # m1 waits out its deferral for A: it holds m2 back from neither recipient.
    second = store.claim_due(now=2000.0, limit=10)
    assert [(j.message_id, [r.rcpt for r in j.recipients]) for j in second] == [("m2", [A, B])]
    store.close()


def test_an_earlier_message_due_for_its_retry_goes_first_again(tmp_path: Path) -> None:
    from apiguard.store.base import RecipientOutcome

    store = SqliteStore(tmp_path)
    store.accept(new_message("m1"))
    store.accept(new_message("m2"))
    store.claim_due(now=2000.0, limit=10)
    deferred = [
        RecipientOutcome(r, RecipientState.DEFERRED, "451 4.4.1 later", 2500.0) for r in (A, B)
    ]
    store.complete("m1", deferred, now=2000.0)
    assert [j.message_id for j in store.claim_due(now=2000.0, limit=10)] == ["m2"]
    store.complete(
        "m2",
        [RecipientOutcome(r, RecipientState.DEFERRED, "451 later", 2600.0) for r in (A, B)],
        now=2000.0,
    )
    # Both due again: the earlier goes first, the later waits for it.
    assert [j.message_id for j in store.claim_due(now=3000.0, limit=10)] == ["m1"]
    assert store.claim_due(now=3000.0, limit=10) == []
    store.close()


def test_a_claim_is_a_lease_that_returns_to_the_queue_when_it_runs_out(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(new_message("m1"))
    assert len(store.claim_due(now=2000.0, limit=10, lease=60.0)) == 1
    assert store.claim_due(now=2059.0, limit=10, lease=60.0) == []  # still leased
    assert store.next_due() == 2060.0  # the lease's end wakes the worker
    (again,) = store.claim_due(now=2060.0, limit=10, lease=60.0)
    assert again.message_id == "m1" and [r.rcpt for r in again.recipients] == [A, B]
    store.close()


def test_each_outcome_is_kept_in_the_attempt_history(tmp_path: Path) -> None:
    from apiguard.store.base import RecipientOutcome

    store = SqliteStore(tmp_path)
    store.accept(new_message("m1"))
    store.claim_due(now=2000.0, limit=10)
    store.complete(
        "m1",
        [
            RecipientOutcome(A, RecipientState.DEFERRED, "connection refused", 2100.0),
            RecipientOutcome(B, RecipientState.DELIVERED, "250 2.0.0 Ok: queued as 0C1F3"),
        ],
        now=2000.0,
    )
    rows = store._read(
        "SELECT message_id, rcpt, at, outcome, reason FROM delivery_attempts ORDER BY seq"
    )
    assert [tuple(r) for r in rows] == [
        ("m1", A, 2000.0, "deferred", "connection refused"),
        ("m1", B, 2000.0, "delivered", "250 2.0.0 Ok: queued as 0C1F3"),
    ]
    stored = store.get("m1")
    assert stored is not None
    assert [r.last_reply for r in stored.recipients] == [
        "connection refused",
        "250 2.0.0 Ok: queued as 0C1F3",
    ]
    store.close()


# -- group commit of every kind of write -------------------------------------------


async def test_concurrent_writes_share_transactions_and_fsyncs_only_when_needed(
    tmp_path: Path,
) -> None:
    sync = SqliteStore(tmp_path)
    store = AsyncStore(sync)
    seen: list[str] = []
    sync._db.set_trace_callback(seen.append)
    try:
        # A claim alone: a transaction without fsync.
        assert await store.claim(10**10, 10) == []
        assert seen.count("BEGIN IMMEDIATE") == 1
        assert "PRAGMA synchronous = NORMAL" in seen
        seen.clear()
        # Twenty accepts and twenty claims at once: far fewer transactions,
        # durable since accepts are among them.
        await asyncio.gather(
            *(store.accept(new_message(f"m{i}")) for i in range(20)),
            *(store.claim(0.0, 1) for _ in range(20)),
        )
        assert 1 <= seen.count("BEGIN IMMEDIATE") <= 3
        assert "PRAGMA synchronous = NORMAL" not in seen
        assert await store.run(sync.count_messages, MessageState.QUEUED) == 20
    finally:
        await store.close()


async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    store = AsyncStore(SqliteStore(tmp_path))

    def broken(db: object) -> None:
        raise sqlite3.IntegrityError("injected")

    try:
        results = await asyncio.gather(
            store.accept(new_message("a")),
            store.write(broken, durable=True),
            store.accept(new_message("b")),
            return_exceptions=True,
        )
        # Whether or not they shared a transaction, only the failing one fails.
        assert isinstance(results[1], StoreError)
        assert results[0] is None and results[2] is None
        assert store.sync.get("a") is not None and store.sync.get("b") is not None
    finally:
        await store.close()


# -- big contents in spool files ----------------------------------------------------


def spool_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "spool").iterdir())


async def test_a_big_content_lives_in_a_private_spool_file_until_final(tmp_path: Path) -> None:
    store = AsyncStore(SqliteStore(tmp_path))
    big = letter(1) + (b"B" * 76 + b"\r\n") * 20_000  # 1.5 MB
    relay = MemoryRelay()
    try:
        await store.accept(dataclasses.replace(new_message("big"), raw=big, size=len(big)))
        path = tmp_path / "spool" / "big"
        assert spool_files(tmp_path) == ["big"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        assert store.sync.get_raw("big") == big  # the review page reads it too
        rows = store.sync._db.execute("SELECT COUNT(*) FROM message_data").fetchone()
        assert rows[0] == 0  # not in the database
        worker = DeliveryWorker(
            store,
            relay,
            DeliverySettings(poll_interval=0.01),
            NoticeIdentity(),
            clock=lambda: 1000.0,
        )
        await worker.start()
        for _ in range(300):
            if len(relay.sent) == 1 and not spool_files(tmp_path):
                break
            await asyncio.sleep(0.01)
        await worker.stop()
        assert relay.sent[0][2] == big
        assert spool_files(tmp_path) == []  # dropped once every recipient is final
        assert store.sync.get_raw("big") is None
    finally:
        await store.close()


async def test_a_spool_file_whose_message_was_not_accepted_is_removed(tmp_path: Path) -> None:
    store = AsyncStore(SqliteStore(tmp_path))
    big = b"C" * (2 * 1024 * 1024)

    def refuse(db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    try:
        await store.accept(new_message("first"))
        # A follow-up that fails rolls the accept back: its file must not stay.
        try:
            await store.accept(
                dataclasses.replace(new_message("big"), raw=big, size=len(big)), then=refuse
            )
        except StoreError:
            pass
        else:  # pragma: no cover
            raise AssertionError("the accept should have failed")
        assert spool_files(tmp_path) == []
    finally:
        await store.close()
    # A file left by a crash between its write and its commit goes at start-up.
    (tmp_path / "spool" / "orphan").write_bytes(b"patient data")
    reopened = SqliteStore(tmp_path)
    # Opening a store (the CLI does while the service runs) never sweeps: the
    # file could be a message being accepted right now.
    assert spool_files(tmp_path) == ["orphan"]
    assert reopened.sweep_spool() == 1  # the service, when it starts
    assert spool_files(tmp_path) == []
    reopened.close()


async def test_an_accept_whose_session_is_cancelled_still_completes_whole(
    tmp_path: Path,
) -> None:
    store = AsyncStore(SqliteStore(tmp_path))
    big = letter(1) + (b"E" * 76 + b"\r\n") * 20_000
    try:
        for n in range(5):
            session = asyncio.create_task(
                store.accept(dataclasses.replace(new_message(f"c{n}"), raw=big, size=len(big)))
            )
            await asyncio.sleep(0.001 * n)  # cancelled at various points
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
        await store.run(lambda: None)  # the store thread has finished its work
        await asyncio.sleep(0.2)
        for n in range(5):
            stored = store.sync.get(f"c{n}")
            # Either stored whole (content readable) or not at all: never a row
            # without its content.
            if stored is not None:
                assert store.sync.read_content(f"c{n}") == big
            else:
                assert f"c{n}" not in spool_files(tmp_path)
    finally:
        await store.close()


async def test_a_spool_write_failure_is_a_store_error(tmp_path: Path) -> None:
    import errno

    store = AsyncStore(SqliteStore(tmp_path))

    def full_disk(message_id: str, raw: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    store.sync.spool_write = full_disk  # type: ignore[method-assign]
    big = b"D" * (2 * 1024 * 1024)
    try:
        try:
            await store.accept(dataclasses.replace(new_message("big"), raw=big, size=len(big)))
        except StoreError as error:
            assert "No space left" in str(error)  # the SMTP side answers 451 4.3.0
        else:  # pragma: no cover
            raise AssertionError("the accept should have failed")
        assert store.sync.get("big") is None
    finally:
        await store.close()


async def test_a_lost_content_fails_for_good_and_tells_the_sender(tmp_path: Path) -> None:
    relay = MemoryRelay()
    store = AsyncStore(SqliteStore(tmp_path))
    big = letter(1) + (b"F" * 76 + b"\r\n") * 20_000
    await store.accept(dataclasses.replace(new_message("gone"), raw=big, size=len(big)))
    (tmp_path / "spool" / "gone").unlink()  # a damaged disk
    worker = DeliveryWorker(
        store, relay, DeliverySettings(poll_interval=0.01), NoticeIdentity(), clock=lambda: 1000.0
    )
    await worker.start()
    for _ in range(300):
        if relay.sent:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    await worker.stop()
    # No retry loop: the recipients failed once, and the sender got a notice.
    assert [(s[0], s[1]) for s in relay.sent] == [("", (SENDER,))]
    assert b"renvoyez-le" in relay.sent[0][2]
    stored = store.sync.get("gone")
    assert stored is not None
    assert {r.state for r in stored.recipients} == {RecipientState.FAILED}
    await store.close()


def test_a_just_accepted_content_is_handed_to_delivery_from_memory(tmp_path: Path) -> None:
    """Its first attempt needs no read of the blob; after a restart, or once
    evicted, the database's copy is read, as before."""
    store = SqliteStore(tmp_path)
    store.accept(new_message("m1"))
    # What is in memory is what the commit stored: the blob is not read again.
    store._db.execute("UPDATE message_data SET raw = x'00' WHERE id = 'm1'")
    assert [job.raw for job in store.claim_due(2000.0, 10)] == [letter(1)]
    store.close()
    reopened = SqliteStore(tmp_path)
    reopened.recover_in_flight()
    assert [job.raw for job in reopened.claim_due(2000.0, 10)] == [b"\x00"]
    reopened.close()


def test_a_content_whose_transaction_failed_is_not_remembered(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    with contextlib.suppress(RuntimeError), store._transaction() as db:
        store.accept_in(db, new_message("m1"))
        raise RuntimeError("disk full")
    assert store.claim_due(2000.0, 10) == []
    other = dataclasses.replace(new_message("m1"), raw=b"Subject: other\r\n\r\nx\r\n")
    store.write_many([(lambda db: store.accept_in(db, other), True)])
    store._db.execute("UPDATE message_data SET raw = x'01' WHERE id = 'm1'")
    # Remembered from the transaction that committed, not from the one that failed.
    assert [job.raw for job in store.claim_due(2000.0, 10)] == [other.raw]
    store.close()


def test_remembered_contents_are_bounded_and_dropped_when_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apiguard.store import sqlite as sqlite_store
    from apiguard.store.base import RecipientOutcome

    size = len(letter(1))
    monkeypatch.setattr(sqlite_store, "RECENT_BYTES", 3 * size)
    store = SqliteStore(tmp_path)
    for n in range(5):
        store.accept(new_message(f"m{n}"))
    assert list(store._recent) == ["m2", "m3", "m4"]  # the oldest went first
    assert store._recent_bytes == 3 * size
    # Evicted ones are read from the database: every job has its content.
    for n in range(5):  # in order of acceptance (same sender, same recipients)
        assert [(job.message_id, job.raw) for job in store.claim_due(2000.0, 10)] == [
            (f"m{n}", letter(1))
        ]
        outcomes = [RecipientOutcome(r, RecipientState.DELIVERED, "250 ok") for r in (A, B)]
        store.complete(f"m{n}", outcomes, now=2000.0)
    assert not store._recent and store._recent_bytes == 0
    store.close()
