"""Segment files: queued contents of 64 KiB to 1 MiB, on real SQLite stores.

What must hold: a committed content is on disk before its commit, reads back
byte for byte (after a restart too), a rolled-back one is never referred to,
and a segment goes once nothing is left in it, never while it is appended to.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiguard.store import segments as segments_module
from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
    StoreError,
)
from apiguard.store.segments import SEGMENT_MIN, segment_name
from apiguard.store.sqlite import SPOOL_SIZE, SqliteStore

SENDER = "dr.martin@medical13.apicrypt.org"


def rcpt(n: int) -> str:
    # One recipient each: a message to the same recipient waits for the one before.
    return f"dr.durand{n}@medical69.apicrypt.org"


def content(n: int, size: int = 200_000) -> bytes:
    head = f"Subject: compte rendu {n}\r\n\r\n".encode()
    return head + random.Random(n).randbytes(size - len(head))


def message(n: int, raw: bytes, state: MessageState = MessageState.QUEUED) -> NewMessage:
    return NewMessage(
        id=f"m{n}",
        created_at=1000.0,
        kind=MessageKind.MAIL,
        mail_from=SENDER,
        recipients=(rcpt(n),),
        raw=raw,
        size=len(raw),
        verdict="forward",
        state=state,
    )


def segment_files(store: SqliteStore) -> list[str]:
    return sorted(p.name for p in store.spool.iterdir() if p.name.startswith("segment-"))


def in_database(store: SqliteStore, message_id: str) -> bool:
    return bool(store._read("SELECT 1 FROM message_data WHERE id = ?", (message_id,)))


def deliver(store: SqliteStore, message_id: str) -> None:
    store.claim_due(2000.0, 100)
    n = int(message_id.removeprefix("m"))
    outcome = RecipientOutcome(rcpt(n), RecipientState.DELIVERED, "250 ok")
    store.complete(message_id, [outcome], now=2000.0)


def syncs(monkeypatch: pytest.MonkeyPatch, into: list[str], failing: int = 0) -> None:
    """Record each segment sync in `into`; the first `failing` ones fail (EIO)."""
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        into.append("fdatasync")
        if into.count("fdatasync") <= failing:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(segments_module.os, "fdatasync", fdatasync)


@contextlib.contextmanager
def disk_full() -> Iterator[None]:
    """Segment writes fail (ENOSPC) meanwhile."""

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segments_module.os, "write", full)
        yield


def accept_together(store: SqliteStore, numbers: range) -> list[object]:
    """Accept messages `numbers` in one group commit."""
    return store.write_many(
        [((lambda db, n=n: store.accept_in(db, message(n, content(n)))), True) for n in numbers]
    )


def test_a_queued_letter_with_an_attachment_is_kept_in_a_segment_and_reads_back(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path)
    raws = [content(n, size) for n, size in enumerate([SEGMENT_MIN + 1, 200_000, SPOOL_SIZE])]
    for n, raw in enumerate(raws):
        store.accept(message(n, raw))
    assert segment_files(store) == [segment_name(1)]
    for n, raw in enumerate(raws):
        assert not in_database(store, f"m{n}")
        assert store.get_raw(f"m{n}") == raw
        assert store.read_content(f"m{n}") == raw
    assert (store.spool / segment_name(1)).stat().st_mode & 0o777 == 0o600
    store.close()

    reopened = SqliteStore(tmp_path)  # a restart: nothing in memory any more
    jobs = {job.message_id: job.raw for job in reopened.claim_due(2000.0, 100)}
    assert jobs == {f"m{n}": raw for n, raw in enumerate(raws)}  # claimed with their content
    reopened.accept(message(9, content(9)))
    assert segment_files(reopened) == [segment_name(1), segment_name(2)]  # never appended to again
    reopened.close()


def test_small_held_and_spooled_contents_are_not_in_segments(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(message(1, content(1, SEGMENT_MIN)))  # not over the threshold
    store.accept(message(2, content(2), MessageState.HELD))  # may wait for weeks
    assert in_database(store, "m1") and in_database(store, "m2")
    assert segment_files(store) == []
    store.close()


def test_a_segment_goes_once_nothing_is_left_in_it_and_never_while_appended_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments_module, "SEGMENT_SIZE", 450_000)  # three contents each
    store = SqliteStore(tmp_path)
    for n in range(3):
        store.accept(message(n, content(n)))
    for n in range(3):
        deliver(store, f"m{n}")
    # Empty, but still the one being appended to: neither dropped nor swept.
    assert segment_files(store) == [segment_name(1)]
    assert store.sweep_spool() == 0
    assert segment_files(store) == [segment_name(1)]
    store.accept(message(3, content(3)))  # the first is full: a second one, the first goes
    assert segment_files(store) == [segment_name(2)]
    for n in range(4, 7):
        store.accept(message(n, content(n)))  # m6 starts the third
    assert segment_files(store) == [segment_name(2), segment_name(3)]
    for n in (3, 4):
        deliver(store, f"m{n}")
    assert segment_files(store) == [segment_name(2), segment_name(3)]  # m5 is still in it
    deliver(store, "m5")
    assert segment_files(store) == [segment_name(3)]
    assert store.get_raw("m6") == content(6)
    store.close()


def test_a_rolled_back_content_is_never_referred_to_and_the_next_one_reads_right(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path)

    def accept_then_fail(db: object) -> None:
        store.accept_in(db, message(1, content(1)))  # type: ignore[arg-type]
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        store.write_many([(accept_then_fail, True)])
    assert store.get("m1") is None and store.get_raw("m1") is None
    store.accept(message(2, content(2)))
    assert store.get_raw("m2") == content(2)  # after the bytes nobody refers to
    store.close()


def test_appended_contents_are_synced_before_the_commit_that_refers_to_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path)
    events: list[str] = []
    store._db.set_trace_callback(lambda sql: events.append(sql) if sql == "COMMIT" else None)
    syncs(monkeypatch, events)
    accept_together(store, range(4))
    assert events == ["fdatasync", "COMMIT"]  # one sync for the whole group, first
    events.clear()
    store.accept(message(9, content(9, 3_000)))  # in the database: no segment to sync
    assert events == ["COMMIT"]
    store.close()


def test_a_segment_left_in_the_middle_of_a_transaction_is_synced_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments_module, "SEGMENT_SIZE", 450_000)
    store = SqliteStore(tmp_path)
    synced: list[str] = []
    syncs(monkeypatch, synced)
    accept_together(store, range(4))
    assert segment_files(store) == [segment_name(1), segment_name(2)]
    assert len(synced) == 2  # the first one's tail before it is left, then the second
    store.close()
    reopened = SqliteStore(tmp_path)
    assert [reopened.get_raw(f"m{n}") for n in range(4)] == [content(n) for n in range(4)]
    reopened.close()


def test_a_failing_segment_write_is_a_store_error_and_nothing_is_kept(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(message(1, content(1)))
    with disk_full(), pytest.raises(StoreError):
        store.accept(message(2, content(2)))
    assert store.get("m2") is None
    store.accept(message(3, content(3)))  # in a new segment: the old one's end is unknown
    assert [store.get_raw(f"m{n}") for n in (1, 3)] == [content(1), content(3)]
    assert segment_files(store) == [segment_name(1), segment_name(2)]
    store.close()


def test_a_failing_sync_is_a_store_error_and_rolls_the_content_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path)
    syncs(monkeypatch, [], failing=1)
    with pytest.raises(StoreError):
        store.accept(message(1, content(1)))
    assert store.get("m1") is None
    store.close()


def test_the_start_up_sweep_removes_only_segments_nothing_refers_to(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(message(1, content(1)))
    store.close()
    crashed = SqliteStore(tmp_path)
    crashed.segments.append(content(2))  # a crash before the commit: never referred to
    crashed.segments.sync()
    (crashed.spool / "unknown").write_bytes(b"x")
    crashed.segments.close()
    crashed.close()
    restarted = SqliteStore(tmp_path)
    assert segment_files(restarted) == [segment_name(1), segment_name(2)]
    assert restarted.sweep_spool() == 2  # the empty segment and the stray file
    assert segment_files(restarted) == [segment_name(1)]
    assert restarted.get_raw("m1") == content(1)
    restarted.close()


def test_a_new_segment_never_takes_the_number_of_one_still_referred_to(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(message(1, content(1)))
    store.close()
    (tmp_path / "spool" / segment_name(1)).unlink()  # lost by hand
    reopened = SqliteStore(tmp_path)
    reopened.accept(message(2, content(2)))
    assert segment_files(reopened) == [segment_name(2)]
    assert reopened.get_raw("m1") is None  # missing, not someone else's bytes
    assert reopened.get_raw("m2") == content(2)
    reopened.close()


def test_another_process_never_removes_the_segment_the_service_appends_to(
    tmp_path: Path,
) -> None:
    service = SqliteStore(tmp_path)
    service.accept(message(1, content(1)))
    review = SqliteStore(tmp_path)  # `apiguard review` next to the running service
    assert review.cancel_pending("m1", "secretariat", "", 500.0)
    assert segment_files(service) == [segment_name(1)]  # still the service's current one
    service.accept(message(2, content(2)))
    assert service.get_raw("m2") == content(2)
    review.close()
    service.close()
    restarted = SqliteStore(tmp_path)
    restarted.accept(message(3, content(3)))  # segment 2: now 1 is nobody's
    assert restarted.cancel_pending("m2", "secretariat", "", 500.0)
    assert segment_files(restarted) == [segment_name(2)]
    restarted.close()


def test_a_segment_emptied_and_appended_to_in_one_group_commit_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments_module, "SEGMENT_SIZE", 350_000)
    store = SqliteStore(tmp_path)
    store.accept(message(1, content(1)))
    store.claim_due(2000.0, 100)
    done = [RecipientOutcome(rcpt(1), RecipientState.DELIVERED, "250 ok")]
    store.write_many(
        [
            ((lambda db: store.complete_in(db, "m1", done, (), 2000.0)), True),  # empties it
            ((lambda db: store.accept_in(db, message(2, content(2)))), True),  # appends to it
            ((lambda db: store.accept_in(db, message(3, content(3)))), True),  # leaves it
        ]
    )
    assert segment_files(store) == [segment_name(1), segment_name(2)]
    assert [store.get_raw(f"m{n}") for n in (2, 3)] == [content(2), content(3)]
    store.close()


def test_an_operation_whose_commit_fails_on_its_own_gets_one_failure_as_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path)
    syncs(monkeypatch, [], failing=1)  # m1's own transaction, once the group is retried

    def fails(db: object) -> None:
        raise RuntimeError("another operation of the group")

    results = store.write_many(
        [
            ((lambda db: store.accept_in(db, message(1, content(1)))), True),
            ((lambda db: store.accept_in(db, message(2, content(2)))), True),
            (fails, True),
        ]
    )
    assert [type(result).__name__ for result in results] == [
        "WriteFailed",
        "NoneType",
        "WriteFailed",
    ]
    assert store.get("m1") is None and store.get_raw("m2") == content(2)
    store.close()


def test_the_review_cli_checks_again_before_removing_a_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments_module, "SEGMENT_SIZE", 350_000)
    service = SqliteStore(tmp_path)
    service.accept(message(1, content(1)))
    review = SqliteStore(tmp_path)
    check = review._unlink_unused

    def service_commits_first(segment: int) -> None:
        # Between the review's COMMIT and its check, the service appends to
        # the segment the review just emptied, and leaves it for a new one.
        service.accept_many([(message(2, content(2)), ()), (message(3, content(3)), ())])
        check(segment)

    monkeypatch.setattr(review, "_unlink_unused", service_commits_first)
    assert review.cancel_pending("m1", "secretariat", "", 500.0)
    assert [service.get_raw(f"m{n}") for n in (2, 3)] == [content(2), content(3)]
    review.close()
    service.close()


def test_a_segment_left_after_a_failure_goes_at_the_next_commit_when_empty(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path)
    store.accept(message(1, content(1)))
    deliver(store, "m1")  # segment 1 is empty, still the current one
    with disk_full(), pytest.raises(StoreError):
        store.accept(message(2, content(2)))
    store.accept(message(3, content(3)))
    assert segment_files(store) == [segment_name(2)]
    assert store.get_raw("m3") == content(3)
    store.close()
