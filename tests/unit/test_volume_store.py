"""The volume memory on real SQLite files: reservations, settlements, circuits,
restarts, pruning, known correspondents, index use and the commands."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.cli import main
from apiguard.policy.verdict import Action, Decision, Finding
from apiguard.store import volume as volume_module
from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
)
from apiguard.store.sqlite import SqliteStore
from apiguard.store.volume import PRUNE_BATCH, VolumeStore
from apiguard.volume import Settlement, SettleOutcome, VolumeSnapshot, VolumeWindows
from tests.support import letter

T0 = 1_800_000_000.0
SENDER = "dr.martin@medical13.apicrypt.org"
FP = "f" * 32
OTHER_FP = "e" * 32
WINDOWS = VolumeWindows()


def rcpt(n: int) -> str:
    return f"dr.correspondant{n}@medical69.apicrypt.org"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    sqlite = SqliteStore(tmp_path / "var")
    yield sqlite
    sqlite.close()


@pytest.fixture
def volume(store: SqliteStore) -> VolumeStore:
    return VolumeStore(store)


def stored(
    store: SqliteStore, message_id: str, state: MessageState, recipients: tuple[str, ...]
) -> None:
    raw = letter(1)
    store.accept(
        NewMessage(
            id=message_id,
            created_at=T0,
            kind=MessageKind.MAIL,
            mail_from=SENDER,
            recipients=recipients,
            raw=None if state is MessageState.REJECTED else raw,
            size=len(raw),
            verdict={"queued": "forward", "held": "hold", "rejected": "reject"}[state.value],
            state=state,
        )
    )


def finding(rule: str, action: Action, **details: str) -> Finding:
    return Finding(rule, 2, action, "m", "m", details=tuple(details.items()))


def settle(
    volume: VolumeStore,
    message_id: str,
    snapshot: VolumeSnapshot,
    findings: tuple[Finding, ...] = (),
    *,
    now: float = T0,
    stored: bool = True,
    alerts: tuple[NewMessage, ...] = (),
) -> SettleOutcome:
    decision = Decision(findings=findings, checked=())
    settlement = Settlement.of(message_id, SENDER, snapshot, decision, stored=stored)
    return volume.settle(settlement, now, WINDOWS, alerts)


def observe(
    volume: VolumeStore,
    message_id: str,
    recipients: list[str],
    *,
    fp: str | None = FP,
    at: float = T0,
) -> VolumeSnapshot:
    return volume.observe(message_id, fp, SENDER, recipients, at, WINDOWS)


# -- reservations --------------------------------------------------------------


def test_counts_include_earlier_reservations_not_yet_decided(volume: VolumeStore) -> None:
    first = observe(volume, "a", [rcpt(1)])
    second = observe(volume, "b", [rcpt(2), rcpt(1).upper()], at=T0 + 1)
    assert (first.fanout_recipients, first.sender_short, first.duplicate_recipients) == (1, 1, 0)
    assert (second.fanout_recipients, second.sender_short, second.sender_day) == (2, 2, 2)
    assert second.duplicate_recipients == 1


@pytest.mark.parametrize("how", ["refused", "not stored"])
def test_a_refused_or_unstored_reservation_stops_counting(
    store: SqliteStore, volume: VolumeStore, how: str
) -> None:
    snapshot = observe(volume, "a", [rcpt(1)])
    if how == "refused":
        stored(store, "a", MessageState.REJECTED, (rcpt(1),))
        settle(volume, "a", snapshot, (finding("art3.forbidden-type", Action.REJECT),))
    else:
        settle(volume, "a", snapshot, stored=False)
    later = observe(volume, "b", [rcpt(1)], at=T0 + 1)
    assert (later.fanout_recipients, later.duplicate_recipients, later.sender_short) == (1, 0, 1)


def test_a_message_without_fingerprint_counts_for_the_rate_only(volume: VolumeStore) -> None:
    observe(volume, "a", [rcpt(1)], fp=None)
    later = observe(volume, "b", [rcpt(1)], fp=None, at=T0 + 1)
    assert later == VolumeSnapshot(None, sender_short=2, sender_day=2)


def test_windows_bound_what_counts(volume: VolumeStore) -> None:
    observe(volume, "a", [rcpt(1)])
    hour_later = observe(volume, "b", [rcpt(1)], at=T0 + 3601)
    assert hour_later.duplicate_recipients == 0
    assert hour_later.fanout_recipients == 1
    assert (hour_later.sender_short, hour_later.sender_day) == (1, 2)
    day_later = observe(volume, "c", [rcpt(2)], at=T0 + 86401)
    assert (day_later.fanout_recipients, day_later.sender_day) == (2, 2)


# -- settlements ---------------------------------------------------------------


def cross_fanout(
    store: SqliteStore, volume: VolumeStore, message_id: str, now: float
) -> SettleOutcome:
    snapshot = observe(volume, message_id, [rcpt(99)], at=now)
    stored(store, message_id, MessageState.REJECTED, (rcpt(99),))
    return settle(volume, message_id, snapshot, (finding("art2.fanout", Action.REJECT),), now=now)


def test_crossing_the_fanout_refuses_the_held_copies_in_the_same_transaction(
    store: SqliteStore, volume: VolumeStore
) -> None:
    held = observe(volume, "held", [rcpt(1)])
    stored(store, "held", MessageState.HELD, (rcpt(1),))
    settle(volume, "held", held, (finding("recipient.lookalike", Action.HOLD),))
    other = observe(volume, "other", [rcpt(2)], fp=OTHER_FP)
    stored(store, "other", MessageState.HELD, (rcpt(2),))
    settle(volume, "other", other, (finding("recipient.lookalike", Action.HOLD),))

    outcome = cross_fanout(store, volume, "crossing", T0 + 10)

    assert outcome.copies_refused == 1
    copy = store.get("held")
    assert copy is not None and copy.state is MessageState.REJECTED
    assert [r.state for r in copy.recipients] == [RecipientState.REJECTED]
    assert store.get_raw("held") is None
    assert [(a.actor, a.action) for a in copy.audit] == [("apiguard", "reject")]
    untouched = store.get("other")
    assert untouched is not None and untouched.state is MessageState.HELD
    # Later copies within the window are refused outright.
    assert observe(volume, "later", [rcpt(3)], at=T0 + 20).fanout_blocked
    assert not observe(volume, "much-later", [rcpt(3)], at=T0 + 86400 + 11).fanout_blocked


def test_a_held_copy_stored_after_the_refusal_is_refused_at_its_settlement(
    store: SqliteStore, volume: VolumeStore
) -> None:
    pending = observe(volume, "slow", [rcpt(1)])
    cross_fanout(store, volume, "crossing", T0 + 1)
    stored(store, "slow", MessageState.HELD, (rcpt(1),))
    outcome = settle(volume, "slow", pending, (finding("art2.duplicate", Action.HOLD),), now=T0 + 2)
    assert outcome.self_refused is True
    slow = store.get("slow")
    assert slow is not None and slow.state is MessageState.REJECTED


def alert(n: int) -> NewMessage:
    raw = b"Subject: circuit\r\n\r\nopen\r\n"
    return NewMessage(
        id=f"alert{n}",
        created_at=T0,
        kind=MessageKind.NOTICE,
        mail_from="",
        recipients=("admin@cabinet.example",),
        raw=raw,
        size=len(raw),
        verdict="forward",
        state=MessageState.QUEUED,
    )


def test_only_the_message_that_opens_the_circuit_stores_the_alerts(
    store: SqliteStore, volume: VolumeStore
) -> None:
    opening = (finding("art2.rate", Action.HOLD, circuit="opening"),)
    outcomes = []
    for n in range(3):
        snapshot = observe(volume, f"m{n}", [rcpt(n)], at=T0 + n)
        stored(store, f"m{n}", MessageState.HELD, (rcpt(n),))
        outcomes.append(settle(volume, f"m{n}", snapshot, opening, now=T0 + n, alerts=(alert(n),)))
    assert [o.circuit_opened for o in outcomes] == [True, False, False]
    assert [m.id for m in store.list_messages(MessageState.QUEUED)] == ["alert0"]
    (circuit,) = volume.circuits()
    assert circuit.held_messages == 3
    assert observe(volume, "next", [rcpt(9)], at=T0 + 5).circuit_open


def test_a_refused_message_never_opens_a_circuit(store: SqliteStore, volume: VolumeStore) -> None:
    snapshot = observe(volume, "m", [rcpt(1)])
    stored(store, "m", MessageState.REJECTED, (rcpt(1),))
    settle(
        volume,
        "m",
        snapshot,
        (
            finding("art2.rate", Action.HOLD, circuit="opening"),
            finding("art3.forbidden-type", Action.REJECT),
        ),
    )
    assert volume.circuits() == []


def test_closing_a_circuit_restarts_the_sender_counts(volume: VolumeStore) -> None:
    for n in range(3):
        observe(volume, f"m{n}", [rcpt(n)], at=T0 + n)
    volume.settle(
        Settlement("m2", SENDER, FP, stored=True, open_circuit=True, sender_short=3, sender_day=3),
        T0 + 2,
        WINDOWS,
    )
    assert volume.close_circuit(SENDER, "cli", T0 + 3)
    (closed,) = volume.circuits(open_only=False)
    assert (closed.state, closed.closed_by) == ("closed", "cli")
    after = observe(volume, "m3", [rcpt(3)], at=T0 + 4)
    assert (after.sender_short, after.sender_day, after.circuit_open) == (1, 1, False)


# -- restarts and housekeeping -------------------------------------------------


def test_counts_survive_a_restart_and_orphan_reservations_are_dropped(tmp_path: Path) -> None:
    directory = tmp_path / "var"
    sqlite = SqliteStore(directory)
    volume = VolumeStore(sqlite)
    settled = observe(volume, "settled", [rcpt(1)])
    stored(sqlite, "settled", MessageState.QUEUED, (rcpt(1),))
    settle(volume, "settled", settled)
    observe(volume, "crashed-before-store", [rcpt(2)], at=T0 + 1)
    observe(volume, "crashed-before-settle", [rcpt(3)], at=T0 + 2)
    stored(sqlite, "crashed-before-settle", MessageState.QUEUED, (rcpt(3),))
    observe(volume, "refused-before-settle", [rcpt(4)], at=T0 + 3)
    stored(sqlite, "refused-before-settle", MessageState.REJECTED, (rcpt(4),))
    sqlite.close()

    reopened = SqliteStore(directory)
    volume = VolumeStore(reopened)
    assert volume.recover() == 2
    assert volume.recover() == 0
    after = observe(volume, "after", [rcpt(5)], at=T0 + 10)
    assert (after.fanout_recipients, after.sender_short) == (3, 3)
    reopened.close()


def count(store: SqliteStore, table: str) -> int:
    return int(store._read(f"SELECT COUNT(*) FROM {table}")[0][0])


def test_expired_rows_are_pruned_a_bounded_batch_per_message(
    store: SqliteStore, volume: VolumeStore
) -> None:
    old = PRUNE_BATCH + 500
    for n in range(old):
        observe(volume, f"old{n}", [rcpt(n)], at=T0 + n * 0.001)
    later = T0 + WINDOWS.longest + 10
    observe(volume, "new0", [rcpt(1)], at=later)
    assert count(store, "volume_messages") == old + 1 - PRUNE_BATCH
    observe(volume, "new1", [rcpt(1)], at=later + 1)  # the backlog goes on at once
    assert count(store, "volume_messages") == 2
    assert count(store, "volume_recipients") == 2
    assert volume.prune(later + 2, WINDOWS) == 0


def test_prune_removes_everything_older_than_the_longest_window(
    store: SqliteStore, volume: VolumeStore
) -> None:
    for n in range(30):
        observe(volume, f"m{n}", [rcpt(n)], at=T0 + n)
    assert volume.prune(T0 + WINDOWS.longest + 15, WINDOWS, batch=7) == 15
    assert count(store, "volume_messages") == 15


def test_a_delivered_mail_makes_its_recipients_known_but_not_notices(
    store: SqliteStore, volume: VolumeStore
) -> None:
    heard: list[list[str]] = []
    volume.delivered_listeners.append(heard.append)
    stored(store, "mail", MessageState.QUEUED, (rcpt(1), rcpt(2)))
    store.complete(
        "mail",
        [
            RecipientOutcome(rcpt(1).upper(), RecipientState.DELIVERED, "250 ok"),
            RecipientOutcome(rcpt(2), RecipientState.FAILED, "550 unknown"),
        ],
        now=T0,
    )
    notice = alert(1)
    store.accept(notice)
    store.complete(
        "alert1", [RecipientOutcome(notice.recipients[0], RecipientState.DELIVERED, "250")]
    )
    assert volume.known_addresses() == [rcpt(1)]
    assert heard == [[rcpt(1)]]


def test_the_counting_queries_search_indexes_never_scan(
    store: SqliteStore, volume: VolumeStore
) -> None:
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    snapshot = observe(volume, "a", [rcpt(1)])
    stored(store, "a", MessageState.REJECTED, (rcpt(1),))
    settle(volume, "a", snapshot, (finding("art2.fanout", Action.REJECT),))
    volume._prune(store._db, T0, 10)
    store._db.set_trace_callback(None)
    selects = [
        s
        for s in statements
        if "volume_" in s and s.lstrip().upper().startswith(("SELECT", "DELETE", "UPDATE"))
    ]
    assert len(selects) >= 8
    for statement in selects:
        plan = " | ".join(
            str(row[3]) for row in store._db.execute(f"EXPLAIN QUERY PLAN {statement}")
        )
        assert "SCAN volume_" not in plan and "SCAN v" not in plan, (statement, plan)


# -- read-only use -------------------------------------------------------------


def test_peek_counts_like_observe_without_reserving(tmp_path: Path) -> None:
    directory = tmp_path / "var"
    writer = SqliteStore(directory)
    volume = VolumeStore(writer)
    observe(volume, "a", [rcpt(1)])
    reader = VolumeStore(SqliteStore(directory, readonly=True), readonly=True)
    first = reader.peek(FP, SENDER, [rcpt(1)], T0 + 1, WINDOWS)
    second = reader.peek(FP, SENDER, [rcpt(1)], T0 + 1, WINDOWS)
    assert first == second
    assert (first.duplicate_recipients, first.sender_short) == (1, 2)
    assert count(writer, "volume_messages") == 1
    reader.store.close()
    writer.close()


def test_peek_on_a_store_from_before_the_volume_tables_sees_no_history(tmp_path: Path) -> None:
    directory = tmp_path / "var"
    SqliteStore(directory).close()
    reader = VolumeStore(SqliteStore(directory, readonly=True), readonly=True)
    assert not reader.available
    snapshot = reader.peek(FP, SENDER, [rcpt(1), rcpt(2)], T0, WINDOWS)
    assert snapshot == VolumeSnapshot(FP, fanout_recipients=2, sender_short=1, sender_day=1)
    assert reader.known_addresses() == [] and reader.circuits() == []
    reader.store.close()


# -- the commands --------------------------------------------------------------


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "apiguard.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "var"}"\n')
    return path


def open_a_circuit(directory: Path) -> None:
    sqlite = SqliteStore(directory)
    volume = VolumeStore(sqlite)
    observe(volume, "m", [rcpt(1)])
    stored(sqlite, "m", MessageState.HELD, (rcpt(1),))
    settle(
        volume,
        "m",
        observe(volume, "m2", [rcpt(2)]),
        (finding("art2.rate", Action.HOLD, circuit="opening"),),
    )
    sqlite.close()


def test_review_circuit_list_and_close(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_file(tmp_path))
    open_a_circuit(tmp_path / "var")

    assert main(["review", "circuit", "list", "--json", "--config", config]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["sender"] == SENDER
    assert listed["state"] == "open"
    assert listed["held_messages"] == 1
    assert listed["messages_10min"] == 2

    assert main(["review", "--config", config, "circuit", "list"]) == 0
    assert SENDER in capsys.readouterr().out

    assert main(["review", "circuit", "close", SENDER, "--config", config]) == 0
    out = capsys.readouterr().out
    assert "circuit fermé / circuit closed" in out and "1 message(s)" in out

    assert main(["review", "circuit", "close", SENDER, "--json", "--config", config]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "sender": SENDER,
        "closed": False,
        "held_messages": 1,
    }
    assert main(["review", "circuit", "list", "--config", config]) == 0
    assert "Aucun circuit ouvert" in capsys.readouterr().out


def test_review_circuit_without_a_store_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["review", "circuit", "list", "--config", str(config_file(tmp_path))]) == 2
    assert "no store here" in capsys.readouterr().err


def run_check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["check", *argv]) == 0
    result = json.loads(capsys.readouterr().out)
    assert isinstance(result, dict)
    return result


def test_check_counts_in_the_store_read_only_when_the_config_points_at_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = tmp_path / "letter.eml"
    message.write_bytes(letter(1))
    argv = ["--json", "--from", SENDER, "--to", rcpt(1), str(message)]

    without = run_check(argv, capsys)
    assert {"art2.fanout", "art2.duplicate", "art2.rate"} <= set(without["skipped"])  # type: ignore[arg-type]

    config = str(config_file(tmp_path))
    no_store_yet = run_check(["--config", config, *argv], capsys)
    assert "art2.rate" in no_store_yet["skipped"]  # type: ignore[operator]

    sqlite = SqliteStore(tmp_path / "var")
    VolumeStore(sqlite)
    sqlite.close()
    with_store = run_check(["--config", config, *argv], capsys)
    assert {"art2.fanout", "art2.duplicate", "art2.rate"} <= set(with_store["checked"])  # type: ignore[arg-type]
    assert "art2.rate" not in with_store["skipped"]  # type: ignore[operator]
    # Read-only: checking twice reserves nothing.
    again = run_check(["--config", config, *argv], capsys)
    assert again["findings"] == with_store["findings"]
    sqlite = SqliteStore(tmp_path / "var")
    assert count(sqlite, "volume_messages") == 0
    sqlite.close()


def test_check_names_a_lookalike_of_an_address_delivered_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sqlite = SqliteStore(tmp_path / "var")
    VolumeStore(sqlite)
    stored(sqlite, "mail", MessageState.QUEUED, ("dr.durand@medical69.apicrypt.org",))
    sqlite.complete(
        "mail",
        [RecipientOutcome("dr.durand@medical69.apicrypt.org", RecipientState.DELIVERED, "250")],
        now=T0,
    )
    sqlite.close()
    message = tmp_path / "letter.eml"
    message.write_bytes(letter(1))
    result = run_check(
        [
            "--config",
            str(config_file(tmp_path)),
            "--json",
            "--from",
            SENDER,
            "--to",
            "dr.duarnd@medical69.apicrypt.org",
            str(message),
        ],
        capsys,
    )
    lookalikes = [f for f in result["findings"] if f["rule"] == "recipient.lookalike"]  # type: ignore[union-attr,index]
    assert len(lookalikes) == 1
    assert "dr.durand@medical69.apicrypt.org" in lookalikes[0]["message"]
    assert result["verdict"] in ("hold", "reject")


def test_the_volume_tables_live_in_the_store_database(
    store: SqliteStore, volume: VolumeStore
) -> None:
    tables = {
        row[0]
        for row in sqlite3.connect(store.path).execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    assert {
        "volume_messages",
        "volume_recipients",
        "volume_blocks",
        "volume_circuits",
        "volume_known",
    } <= tables


# -- per-minute counts ---------------------------------------------------------

MINUTE_EDGE = st.sampled_from([0.0, 1e-9, 1e-6, 0.5, 30.0, 59.5, 59.999999, 60.0 - 1e-9])


def _counts_agree(db: sqlite3.Connection, sender: str, since: float) -> None:
    args = {"sender": sender, "since": since}
    by_rows = db.execute(volume_module._SENDER_COUNT_BY_ROWS, args).fetchone()[0]
    assert db.execute(volume_module._SENDER_COUNT, args).fetchone()[0] == by_rows, since


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([SENDER, "labo@biologie.apicrypt.org"]),
            st.integers(min_value=0, max_value=30),
            MINUTE_EDGE,
        ),
        max_size=60,
    ),
    forgotten=st.sets(st.integers(min_value=0, max_value=59), max_size=20),
    prune_minute=st.none() | st.integers(min_value=0, max_value=30),
    probes=st.lists(st.tuples(st.integers(min_value=-1, max_value=32), MINUTE_EDGE), max_size=8),
)
def test_rate_counts_from_minutes_are_the_counts_of_rows(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, int, float]],
    forgotten: set[int],
    prune_minute: int | None,
    probes: list[tuple[int, float]],
) -> None:
    """Inserted, forgotten (refused) and pruned rows, with times on and around
    minute boundaries: the count from the minutes is the count of the rows."""
    sqlite = SqliteStore(tmp_path_factory.mktemp("minutes"))
    volume = VolumeStore(sqlite)
    with sqlite._transaction() as db:
        for n, (sender, minute, offset) in enumerate(rows):
            volume.observe_in(
                db, f"m{n}", None, sender, [rcpt(1)], T0 + minute * 60 + offset, WINDOWS
            )
        volume._forget(db, [f"m{n}" for n in forgotten])
        if prune_minute is not None:
            volume._prune(db, T0 + prune_minute * 60, 1_000)
    db = sqlite._db
    for sender in (SENDER, "labo@biologie.apicrypt.org"):
        for _, minute, offset in rows:
            _counts_agree(db, sender, T0 + minute * 60 + offset)  # a row's own time
        for minute, offset in probes:
            _counts_agree(db, sender, T0 + minute * 60 + offset)
    # No empty minute is kept.
    assert db.execute("SELECT COUNT(*) FROM volume_sender_minutes WHERE n <= 0").fetchone()[0] == 0
    sqlite.close()


def test_a_store_from_before_the_minute_counts_gets_them_counted(tmp_path: Path) -> None:
    sqlite = SqliteStore(tmp_path / "var")
    sqlite._db.executescript(volume_module.VOLUME_SCHEMA)  # as an earlier version left it
    sqlite._db.executemany(
        "INSERT INTO volume_messages (message_id, sender, fingerprint, at) VALUES (?, ?, NULL, ?)",
        [(f"m{n}", SENDER, T0 + n * 7.5) for n in range(40)],
    )
    volume = VolumeStore(sqlite)
    snapshot = volume.observe("new", None, SENDER, [rcpt(1)], T0 + 300.0, WINDOWS)
    assert snapshot.sender_day == 41
    for since in (T0, T0 + 59.0, T0 + 60.0, T0 + 150.0, T0 + 299.0):
        _counts_agree(sqlite._db, SENDER, since)
    VolumeStore(sqlite)  # opening again counts nothing twice
    _counts_agree(sqlite._db, SENDER, T0)
    sqlite.close()
