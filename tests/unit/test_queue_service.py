"""The queue service (`apiguard queue`, the review page's queue view) over a
real SQLite store, with an injected clock; and the command's output."""

from __future__ import annotations

import email
import email.policy
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiguard.cli import main
from apiguard.notices import NoticeIdentity
from apiguard.review.queue import QueueOutcome, QueueService
from apiguard.review.service import ReviewService
from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
)
from apiguard.store.segments import SEGMENT_MIN
from apiguard.store.sqlite import SPOOL_SIZE, SqliteStore

SENDER = "dr.martin@medical13.apicrypt.org"
A = "dr.durand@medical69.apicrypt.org"
B = "dr.petit@medical75.apicrypt.org"
START = 1_800_000_000.0
RAW = (
    b"From: Dr Martin <dr.martin@medical13.apicrypt.org>\r\n"
    b"To: dr.durand@medical69.apicrypt.org\r\n"
    b"Message-ID: <cr-1@medical13.apicrypt.org>\r\n"
    b"Subject: Compte rendu TESTPATIENT Camille\r\n\r\nTESTPATIENT Camille, nee le 12/05/1961\r\n"
)
DEFERRED_REPLY = "451 4.3.0 relais indisponible, try again later"


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "var")
    yield opened
    opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: SqliteStore, clock: Clock) -> QueueService:
    return QueueService(store, NoticeIdentity(), clock=clock)


def queue(
    store: SqliteStore,
    message_id: str,
    *,
    raw: bytes = RAW,
    sender: str = SENDER,
    recipients: tuple[str, ...] = (A,),
    kind: MessageKind = MessageKind.MAIL,
    created_at: float = START - 600,
    not_before: float | None = None,
) -> None:
    spooled = len(raw) > SPOOL_SIZE
    if spooled:
        store.spool_write(message_id, raw)
    store.accept(
        NewMessage(
            id=message_id,
            created_at=created_at,
            kind=kind,
            mail_from=sender,
            recipients=recipients,
            raw=None if spooled else raw,
            size=len(raw),
            verdict="forward",
            state=MessageState.QUEUED,
            not_before=not_before,
            spooled=spooled,
        )
    )


def defer(
    store: SqliteStore, message_id: str, rcpt: str = A, *, until: float = START + 3600
) -> None:
    """One attempt that the relay deferred, as the delivery worker records it."""
    store.claim_due(START, 100)
    store.complete(
        message_id,
        [RecipientOutcome(rcpt, RecipientState.DEFERRED, DEFERRED_REPLY, until)],
        now=START - 60,
    )


def recipient(store: SqliteStore, message_id: str, rcpt: str = A) -> tuple[str, float | None]:
    message = store.get(message_id)
    assert message is not None
    row = next(r for r in message.recipients if r.rcpt == rcpt)
    return row.state.value, row.next_attempt_at


def audit(store: SqliteStore, message_id: str) -> list[tuple[str, str, str]]:
    message = store.get(message_id)
    assert message is not None
    return [(a.actor, a.action, a.comment) for a in message.audit]


def content_rows(store: SqliteStore, message_id: str) -> int:
    with sqlite3.connect(store.path) as db:
        return sum(
            db.execute(f"SELECT COUNT(*) FROM {table} WHERE id = ?", (message_id,)).fetchone()[0]
            for table in ("message_data", "message_files", "message_segments")
        )


# -- reading -------------------------------------------------------------------------


def test_the_queue_lists_waiting_mail_with_each_recipients_state_and_reason(
    store: SqliteStore, service: QueueService
) -> None:
    queue(store, "m1", recipients=(A, B))
    defer(store, "m1", A)
    queue(store, "m2", created_at=START - 30)
    store.accept(
        NewMessage("h1", START, MessageKind.MAIL, SENDER, (A,), RAW, len(RAW), "hold",
                   MessageState.HELD)
    )  # fmt: skip
    listed = service.all()
    assert [m.id for m in listed] == ["m1", "m2"]  # oldest first; held mail is not queued
    first = {r.rcpt: r for r in listed[0].recipients}
    assert first[A].state is RecipientState.DEFERRED
    assert (first[A].attempts, first[A].next_attempt_at) == (1, START + 3600)
    assert first[A].last_reply == DEFERRED_REPLY
    # B was claimed with A and not recorded yet: it is being sent.
    assert first[B].state is RecipientState.SENDING
    page = service.page(1, 1)
    assert (page.total, page.pages, [m.id for m in page.messages]) == (2, 2, ["m2"])


def test_show_gives_the_attempt_history_and_the_current_state(
    store: SqliteStore, service: QueueService
) -> None:
    queue(store, "m1")
    with sqlite3.connect(store.path) as db:
        db.executemany(
            "INSERT INTO delivery_attempts (message_id, rcpt, at, outcome, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                ("m1", A, START - 300, "deferred", "connection refused"),
                ("other", A, START, "delivered", "250 2.0.0 Ok"),
            ],
        )
    defer(store, "m1")  # the attempt recorded with the outcome, after the earlier one
    shown = service.show("m1")
    assert shown is not None
    assert [(a.at, a.outcome, a.reason) for a in shown.attempts] == [
        (START - 300, "deferred", "connection refused"),
        (START - 60, "deferred", DEFERRED_REPLY),
    ]
    assert recipient(store, "m1") == ("deferred", START + 3600)
    assert service.show("unknown") is None


# -- retry ---------------------------------------------------------------------------


def test_retry_makes_waiting_recipients_due_now_and_is_audited(
    store: SqliteStore, service: QueueService, clock: Clock
) -> None:
    queue(store, "m1")
    defer(store, "m1")
    assert store.claim_due(clock.now, 10) == []  # waiting for its backoff
    (change,) = service.retry(["m1"], "alice", "relais réparé")
    assert (change.outcome, change.recipients) == (QueueOutcome.DONE, 1)
    assert recipient(store, "m1") == ("deferred", clock.now)
    assert [j.message_id for j in store.claim_due(clock.now, 10)] == ["m1"]
    assert audit(store, "m1") == [("alice", "retry", "relais réparé")]


def test_retry_all_skips_mail_still_in_its_grace_period(
    store: SqliteStore, service: QueueService, clock: Clock
) -> None:
    queue(store, "m1")
    defer(store, "m1")
    queue(store, "grace", recipients=(B,), not_before=clock.now + 300)  # "undo send" time
    changes = service.retry_all("alice")
    assert [(c.message_id, c.recipients) for c in changes] == [("m1", 1)]
    assert recipient(store, "m1") == ("deferred", clock.now)
    assert recipient(store, "grace", B) == ("queued", clock.now + 300)
    assert audit(store, "grace") == []
    assert service.retry_all("alice") == []  # nothing waits any more


def test_retry_refuses_unknown_held_finished_and_in_flight_messages(
    store: SqliteStore, service: QueueService
) -> None:
    store.accept(
        NewMessage("h1", START, MessageKind.MAIL, SENDER, (A,), RAW, len(RAW), "hold",
                   MessageState.HELD)
    )  # fmt: skip
    queue(store, "sent")
    store.claim_due(START, 10)
    store.complete("sent", [RecipientOutcome(A, RecipientState.DELIVERED, "250 ok")], now=START)
    queue(store, "flight", recipients=(B,))
    store.claim_due(START, 10)
    outcomes = {
        c.message_id: c.outcome for c in service.retry(["nope", "h1", "sent", "flight"], "a")
    }
    assert outcomes == {
        "nope": QueueOutcome.NOT_FOUND,
        "h1": QueueOutcome.NOT_QUEUED,
        "sent": QueueOutcome.NOT_QUEUED,
        "flight": QueueOutcome.SENDING,
    }
    assert audit(store, "flight") == []


# -- delete --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [len(RAW), SEGMENT_MIN + 10, SPOOL_SIZE + 10], ids=["database", "segment", "spool"]
)
def test_delete_cancels_waiting_recipients_and_drops_the_content(
    store: SqliteStore, service: QueueService, size: int
) -> None:
    raw = RAW + b"x" * (size - len(RAW))
    queue(store, "m1", raw=raw, recipients=(A, B))
    store.claim_due(START, 10)
    store.complete(
        "m1",
        [
            RecipientOutcome(A, RecipientState.DELIVERED, "250 ok"),
            RecipientOutcome(B, RecipientState.DEFERRED, DEFERRED_REPLY, START + 60),
        ],
        now=START - 1,
    )
    assert content_rows(store, "m1") == 1
    (change,) = service.delete(["m1"], "alice", "doublon")
    assert (change.outcome, change.recipients, change.notified) == (QueueOutcome.DONE, 1, False)
    message = store.get("m1")
    assert message is not None and message.state is MessageState.CANCELLED
    assert {r.rcpt: r.state for r in message.recipients} == {
        A: RecipientState.DELIVERED,  # what was delivered stays so
        B: RecipientState.CANCELLED,
    }
    assert content_rows(store, "m1") == 0
    assert store.get_raw("m1") is None
    assert not (store.spool / "m1").exists()
    assert audit(store, "m1") == [("alice", "delete", "doublon")]
    assert service.all() == []
    assert store.claim_due(START + 3600, 10) == []
    (again,) = service.delete(["m1"], "alice")
    assert (again.outcome, again.state) == (QueueOutcome.NOT_QUEUED, "cancelled")


def test_delete_with_notify_queues_a_dsn_to_the_sender_without_the_content(
    store: SqliteStore, service: QueueService
) -> None:
    queue(store, "m1", recipients=(A, B))
    defer(store, "m1", A)
    store.complete("m1", [RecipientOutcome(B, RecipientState.DEFERRED, "", START + 60)], now=START)
    (change,) = service.delete(["m1"], "alice", "adresse erronée", notify=True)
    assert change.notified
    notices = [m for m in store.list_messages(MessageState.QUEUED) if m.kind is MessageKind.NOTICE]
    assert [(n.mail_from, [r.rcpt for r in n.recipients], n.related_id) for n in notices] == [
        ("", [SENDER], "m1")
    ]
    raw = store.get_raw(notices[0].id)
    assert raw is not None
    report = email.message_from_bytes(raw, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    human, status, headers = report.iter_parts()
    text = human.get_content()
    assert text.index("Bonjour") < text.index("Hello")  # French first
    assert "retiré de la file d'envoi" in text and "took it out of the delivery queue" in text
    assert "m1" in text and "adresse erronée" in text and DEFERRED_REPLY in text
    assert "TESTPATIENT" not in raw.decode() and "12/05/1961" not in raw.decode()
    blocks = list(status.iter_parts())[1:]
    assert [b["Final-Recipient"] for b in blocks] == [f"rfc822; {A}", f"rfc822; {B}"]
    assert {b["Action"] for b in blocks} == {"failed"}
    assert {b["Status"] for b in blocks} == {"5.0.0"}
    assert "Message-ID: <cr-1@medical13.apicrypt.org>" in headers.get_content()


def test_a_deleted_notice_never_gets_a_notice(store: SqliteStore, service: QueueService) -> None:
    queue(store, "n1", sender="", kind=MessageKind.NOTICE, recipients=(SENDER,))
    (change,) = service.delete(["n1"], "alice", notify=True)
    assert change.done and not change.notified
    assert store.list_messages(MessageState.QUEUED) == []


def test_delete_and_hold_refuse_a_message_being_delivered_and_change_nothing(
    store: SqliteStore, service: QueueService
) -> None:
    queue(store, "m1")
    assert store.claim_due(START, 10) != []  # the running service is sending it
    for act in (service.delete, service.hold):
        (change,) = act(["m1"], "alice")
        assert change.outcome is QueueOutcome.SENDING
    message = store.get("m1")
    assert message is not None and message.state is MessageState.QUEUED
    assert recipient(store, "m1")[0] == "sending"
    assert store.get_raw("m1") == RAW
    assert audit(store, "m1") == []
    # The attempt's outcome records as usual afterwards.
    store.complete("m1", [RecipientOutcome(A, RecipientState.DELIVERED, "250 ok")], now=START)
    done = store.get("m1")
    assert done is not None and done.state is MessageState.DONE


# -- hold ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [len(RAW), SEGMENT_MIN + 10, SPOOL_SIZE + 10])
def test_hold_moves_the_message_to_review_where_release_delivers_it(
    store: SqliteStore, service: QueueService, size: int
) -> None:
    raw = RAW + b"y" * (size - len(RAW))
    queue(store, "m1", raw=raw)
    defer(store, "m1")
    (change,) = service.hold(["m1"], "alice", "à vérifier")
    assert (change.outcome, change.state, change.recipients) == (QueueOutcome.DONE, "held", 1)
    message = store.get("m1")
    assert message is not None and message.state is MessageState.HELD
    assert [(r.state, r.next_attempt_at) for r in message.recipients] == [
        (RecipientState.HELD, None)
    ]
    assert [f.rule for f in message.findings] == ["queue.hold"]
    assert "alice" in message.findings[0].message_fr
    assert (message.findings[0].fix_fr, message.findings[0].fix_en) == ("", "")
    with sqlite3.connect(store.path) as db:  # held contents never pin a segment
        assert db.execute("SELECT COUNT(*) FROM message_segments").fetchone()[0] == 0
    assert store.get_raw("m1") == raw
    assert store.claim_due(START + 7200, 10) == []
    assert audit(store, "m1") == [("alice", "hold", "à vérifier")]

    review = ReviewService(store, NoticeIdentity(), clock=lambda: START + 10)
    assert [m.id for m in review.list_held()] == ["m1"]
    assert review.release("m1", "bob").done
    (job,) = store.claim_due(START + 10, 10)
    assert job.message_id == "m1" and [r.rcpt for r in job.recipients] == [A]
    content = job.raw if job.raw is not None else store.read_content("m1")
    assert content == raw


# -- the command ---------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, store: SqliteStore) -> str:
    path = tmp_path / "apiguard.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "var"}"\n')
    return str(path)


def test_queue_list_json_has_the_documented_shape(
    store: SqliteStore, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    queue(store, "m1", recipients=(A, B))
    defer(store, "m1", A)
    assert main(["queue", "list", "--json", "--config", config]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert set(listed) == {"id", "received", "sender", "recipients", "kind"}
    assert (listed["id"], listed["sender"], listed["kind"]) == ("m1", SENDER, "mail")
    assert listed["received"] == "2027-01-15T07:50:00+00:00"
    assert listed["recipients"] == [
        {
            "address": A,
            "state": "deferred",
            "attempts": 1,
            "next_attempt": "2027-01-15T09:00:00+00:00",
            "reason": DEFERRED_REPLY,
        },
        {"address": B, "state": "sending", "attempts": 0, "next_attempt": None, "reason": None},
    ]


def test_queue_list_text_reads_like_mailq_and_strips_control_characters(
    store: SqliteStore, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    queue(store, "m1")
    store.claim_due(START, 10)
    hostile = "451 4.3.0 \x1b]0;pwned\x07 \x1b[2J try \u202e later"
    store.complete("m1", [RecipientOutcome(A, RecipientState.DEFERRED, hostile, START)], now=START)
    assert main(["queue", "list", "--config", config]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Id  type  taille/size  reçu/received  de/from\n")
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "451 4.3.0 ?]0;pwned? ?[2J try ? later" in out
    assert f"m1  mail  {len(RAW)} o/B" in out and SENDER in out
    assert f"    {A}  deferred  essais/attempts 1" in out
    assert out.rstrip().endswith(
        "-- 1 message(s) dans la file, 1 destinataire(s) à remettre"
        " / 1 message(s) in the queue, 1 recipient(s) to deliver"
    )
    assert main(["queue", "list", "--json", "--config", config]) == 0
    assert "\x1b" not in capsys.readouterr().out
    store.complete("m1", [RecipientOutcome(A, RecipientState.FAILED, "550", None)], now=START)
    assert main(["queue", "list", "--config", config]) == 0
    assert "Mail queue is empty" in capsys.readouterr().out


def test_queue_actions_exit_1_with_one_line_per_refusal_and_2_on_usage(
    store: SqliteStore, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    queue(store, "m1")
    defer(store, "m1")
    assert main(["queue", "retry", "--config", config]) == 2
    assert "give message ids or --all" in capsys.readouterr().err
    assert main(["queue", "retry", "m1", "--all", "--config", config]) == 2
    assert main(["queue", "frobnicate", "--config", config]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
    assert main(["queue", "show", "nope", "--config", config]) == 1
    assert capsys.readouterr().err == "nope: message inconnu / unknown message\n"
    code = main(["queue", "retry", "m1", "nope", "--actor", "alice", "--config", config])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("m1: à réessayer maintenant / due now")
    assert captured.err == "nope: message inconnu / unknown message\n"
    assert audit(store, "m1") == [("alice", "retry", "")]
    assert main(["queue", "hold", "m1", "--json", "--comment", "vu", "--config", config]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"id": "m1", "outcome": "done", "state": "held", "recipients": 1}
    ]
    assert main(["queue", "delete", "m1", "--config", config]) == 1
    assert capsys.readouterr().err == (
        "m1: n'est pas dans la file d'attente (held) / not in the delivery queue"
        " : voir / see `apiguard review`\n"
    )
    assert main(["queue", "show", "m1", "--json", "--config", config]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "held"
    assert [a["action"] for a in shown["audit"]] == ["retry", "hold"]
    # The attempt `defer` recorded, as the delivery worker records it.
    assert [(a["outcome"], a["reason"]) for a in shown["attempt_history"]] == [
        ("deferred", DEFERRED_REPLY)
    ]


def test_queue_show_text_gives_the_attempts_and_the_audit_trail(
    store: SqliteStore, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    queue(store, "m1")
    defer(store, "m1")
    with sqlite3.connect(store.path) as db:
        db.execute(
            "INSERT INTO delivery_attempts (message_id, rcpt, at, outcome, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            ("m1", A, START - 60, "deferred", "connection refused\x1b[31m"),
        )
    assert main(["queue", "retry", "m1", "--actor", "bob", "--comment", "relais\x9b OK",
                 "--config", config]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["queue", "show", "m1", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "État/state: queued" in out
    assert f"2027-01-15 07:59:00 UTC  {A}  deferred  connection refused?[31m" in out
    assert "bob  retry  « relais? OK »" in out
    assert "\x1b" not in out and "\x9b" not in out


def test_a_store_that_cannot_be_opened_gives_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    (broken / "apiguard.sqlite3").mkdir(parents=True)  # not a database file
    config = tmp_path / "broken.toml"
    config.write_text(f'[storage]\npath = "{broken}"\n')
    assert main(["queue", "list", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("apiguard: stockage inutilisable / cannot use the store: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_actions_are_audited_with_the_os_user_or_the_person_behind_sudo(
    store: SqliteStore, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue(store, "m1")
    defer(store, "m1")
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("LOGNAME", "secretariat")
    assert main(["queue", "retry", "m1", "--config", config]) == 0
    monkeypatch.setenv("SUDO_USER", "dr.martin")
    assert main(["queue", "retry", "m1", "--config", config]) == 0
    assert [actor for actor, _, _ in audit(store, "m1")] == ["secretariat", "dr.martin"]
