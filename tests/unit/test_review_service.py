"""The review service over a real SQLite store, with an injected clock."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiguard.notices import NoticeIdentity
from apiguard.policy.verdict import Action, Finding
from apiguard.review.service import DAY, EXPIRY_ACTOR, ReviewOutcome, ReviewService
from apiguard.store.base import MessageKind, MessageState, NewMessage, RecipientState
from apiguard.store.sqlite import SqliteStore

SENDER = "dr.martin@medical13.apicrypt.org"
OTHER_SENDER = "labo@bio.mssante.fr"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
START = 1_800_000_000.0

REVIEW_ALL = Finding(
    "art5.review-all", 5, Action.HOLD, "relecture demandée", "review required", "relisez", "check"
)
ANNOUNCEMENT = Finding(
    "art2.announcement", 2, Action.HOLD, "annonce groupée", "announcement", "n'envoyez pas", "don't"
)
RAW = (
    b"From: Dr Martin <dr.martin@medical13.apicrypt.org>\r\n"
    b"To: dr.durand@medical69.apicrypt.org\r\n"
    b"Subject: Compte rendu\r\n\r\nTESTPATIENT Camille\r\n"
)


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
def service(store: SqliteStore, clock: Clock) -> ReviewService:
    return ReviewService(store, NoticeIdentity(), hold_days=7, clock=clock)


def put(
    store: SqliteStore,
    message_id: str,
    *,
    created_at: float = START,
    state: MessageState = MessageState.HELD,
    sender: str = SENDER,
    recipients: tuple[str, ...] = (COLLEAGUE,),
    findings: tuple[Finding, ...] = (REVIEW_ALL,),
    not_before: float | None = None,
    kind: MessageKind = MessageKind.MAIL,
) -> None:
    store.accept(
        NewMessage(
            id=message_id,
            created_at=created_at,
            kind=kind,
            mail_from=sender,
            recipients=recipients,
            raw=RAW,
            size=len(RAW),
            verdict="hold" if state is MessageState.HELD else "forward",
            state=state,
            findings=findings,
            not_before=not_before,
        )
    )


def notices(store: SqliteStore) -> list[str]:
    """The text of every queued notice, French and English parts decoded."""
    texts = []
    for message in store.list_messages(MessageState.QUEUED):
        if message.kind is MessageKind.NOTICE:
            raw = store.get_raw(message.id)
            assert raw is not None
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            body = parsed.get_body(("plain",))  # type: ignore[attr-defined]
            texts.append(body.get_content())
    return texts


# -- release and reject ----------------------------------------------------------


def test_release_queues_the_message_for_delivery_and_records_who_when_and_why(
    store: SqliteStore, service: ReviewService, clock: Clock
) -> None:
    put(store, "m1")
    clock.now = START + 60
    result = service.release("m1", "secretariat", "vérifié avec le Dr Martin")
    assert (result.outcome, result.state) == (ReviewOutcome.DONE, "queued")
    message = store.get("m1")
    assert message is not None
    assert message.state is MessageState.QUEUED
    assert [r.state for r in message.recipients] == [RecipientState.QUEUED]
    assert [(a.actor, a.action, a.comment, a.at) for a in message.audit] == [
        ("secretariat", "release", "vérifié avec le Dr Martin", START + 60)
    ]
    jobs = store.claim_due(clock.now, 10)
    assert [j.message_id for j in jobs] == ["m1"]
    assert notices(store) == []


def test_a_second_release_is_refused_and_leaves_one_audit_record(
    store: SqliteStore, service: ReviewService
) -> None:
    put(store, "m1")
    assert service.release("m1", "a").done
    second = service.release("m1", "b")
    assert (second.outcome, second.state) == (ReviewOutcome.NOT_HELD, "queued")
    message = store.get("m1")
    assert message is not None and len(message.audit) == 1


@pytest.mark.parametrize("operation", ["release", "reject"])
def test_an_unknown_message_is_reported_as_not_found(
    service: ReviewService, operation: str
) -> None:
    result = getattr(service, operation)("nope", "a")
    assert result.outcome is ReviewOutcome.NOT_FOUND


def test_reject_refuses_drops_the_content_and_notifies_the_sender_with_the_comment(
    store: SqliteStore, service: ReviewService
) -> None:
    put(store, "m1")
    result = service.reject("m1", "dr.martin", "mauvais patient")
    assert result.done
    message = store.get("m1")
    assert message is not None and message.state is MessageState.REJECTED
    assert store.get_raw("m1") is None
    assert [(a.actor, a.action) for a in message.audit] == [("dr.martin", "reject")]
    [text] = notices(store)
    assert "une personne du cabinet l'a refusé" in text
    assert "Commentaire du relecteur : mauvais patient" in text
    assert "art5.review-all" in text
    assert "TESTPATIENT" not in text
    assert service.release("m1", "x").outcome is ReviewOutcome.NOT_HELD
    assert service.reject("m1", "x").outcome is ReviewOutcome.NOT_HELD


# -- bulk --------------------------------------------------------------------------


def test_bulk_release_moves_each_held_message_and_reports_the_others(
    store: SqliteStore, service: ReviewService
) -> None:
    for name in ("a", "b", "c"):
        put(store, name)
    service.reject("c", "x")
    results = service.release_many(["a", "b", "c", "missing", "a"], "secretariat", "lot")
    assert [(r.message_id, r.outcome) for r in results] == [
        ("a", ReviewOutcome.DONE),
        ("b", ReviewOutcome.DONE),
        ("c", ReviewOutcome.NOT_HELD),
        ("missing", ReviewOutcome.NOT_FOUND),
    ]
    for name in ("a", "b"):
        message = store.get(name)
        assert message is not None and message.state is MessageState.QUEUED
        assert [(a.action, a.comment) for a in message.audit] == [("release", "lot")]


def test_bulk_reject_sends_one_notice_per_message(
    store: SqliteStore, service: ReviewService
) -> None:
    put(store, "a")
    put(store, "b", sender=OTHER_SENDER)
    results = service.reject_many(["a", "b"], "secretariat")
    assert all(r.done for r in results)
    queued = [m for m in store.list_messages(MessageState.QUEUED) if m.kind is MessageKind.NOTICE]
    assert sorted(m.recipients[0].rcpt for m in queued) == sorted([SENDER, OTHER_SENDER])


# -- expiry ------------------------------------------------------------------------


def test_expiry_rejects_only_messages_held_longer_than_hold_days(
    store: SqliteStore, service: ReviewService, clock: Clock
) -> None:
    put(store, "old", created_at=START)
    put(store, "young", created_at=START + 2 * DAY)
    clock.now = START + 7 * DAY - 1
    assert service.expire_due() == []
    clock.now = START + 7 * DAY + 1
    results = service.expire_due()
    assert [(r.message_id, r.outcome) for r in results] == [("old", ReviewOutcome.DONE)]
    old, young = store.get("old"), store.get("young")
    assert old is not None and young is not None
    assert old.state is MessageState.REJECTED and young.state is MessageState.HELD
    assert [(a.actor, a.action, a.at) for a in old.audit] == [
        (EXPIRY_ACTOR, "expire", START + 7 * DAY + 1)
    ]
    [text] = notices(store)
    assert "personne ne l'a libéré dans le délai prévu" in text
    assert "nobody released it in time" in text
    assert "Commentaire du relecteur" not in text


def test_expiry_follows_the_configured_hold_days_and_handles_many_messages(
    store: SqliteStore, clock: Clock
) -> None:
    service = ReviewService(store, NoticeIdentity(), hold_days=0.5, clock=clock)
    for n in range(250):
        put(store, f"m{n:03}", created_at=START)
    assert service.expires_at(store.get("m000")) == START + 0.5 * DAY  # type: ignore[arg-type]
    clock.now = START + 0.5 * DAY + 1
    assert sum(r.done for r in service.expire_due()) == 250
    assert service.count_held() == 0


def test_an_expired_message_released_just_before_is_not_touched(
    store: SqliteStore, service: ReviewService, clock: Clock
) -> None:
    put(store, "m1")
    clock.now = START + 8 * DAY
    assert service.release("m1", "late reviewer").done
    assert service.expire_due() == []


# -- the list page's data ------------------------------------------------------------


def test_held_page_filters_by_rule_and_sender_and_pages_newest_first(
    store: SqliteStore, service: ReviewService
) -> None:
    for n in range(7):
        findings = (REVIEW_ALL, ANNOUNCEMENT) if n % 2 else (REVIEW_ALL,)
        sender = OTHER_SENDER if n >= 5 else SENDER
        put(store, f"m{n}", created_at=START + n, sender=sender, findings=findings)
    put(store, "gone")
    service.release("gone", "x")

    first = service.held_page(1, 3)
    assert [m.id for m in first.messages] == ["m6", "m5", "m4"]
    assert (first.total, first.pages) == (7, 3)
    assert first.rules == (("art2.announcement", 3), ("art5.review-all", 7))
    assert first.senders == ((SENDER, 5), (OTHER_SENDER, 2))  # by address

    last = service.held_page(99, 3)
    assert (last.page, [m.id for m in last.messages]) == (3, ["m0"])

    announcements = service.held_page(1, 10, rule="art2.announcement")
    assert [m.id for m in announcements.messages] == ["m5", "m3", "m1"]
    lab = service.held_page(1, 10, rule="art2.announcement", sender=OTHER_SENDER)
    assert [m.id for m in lab.messages] == ["m5"]
    assert service.held_page(1, 10, rule="no.such-rule").total == 0


# -- grace period ----------------------------------------------------------------------


def test_cancel_within_the_grace_period_stops_the_delivery(
    store: SqliteStore, service: ReviewService, clock: Clock
) -> None:
    put(store, "m1", state=MessageState.QUEUED, not_before=START + 300)
    assert [m.id for m in service.cancellable()] == ["m1"]
    clock.now = START + 10
    result = service.cancel("m1", "dr.martin", "oubli de pièce jointe")
    assert (result.outcome, result.state) == (ReviewOutcome.DONE, "cancelled")
    message = store.get("m1")
    assert message is not None and message.state is MessageState.CANCELLED
    assert [r.state for r in message.recipients] == [RecipientState.CANCELLED]
    assert [(a.actor, a.action, a.comment) for a in message.audit] == [
        ("dr.martin", "cancel", "oubli de pièce jointe")
    ]
    assert store.get_raw("m1") is None
    assert store.claim_due(START + 1000, 10) == []
    assert service.cancellable() == []


@pytest.mark.parametrize(
    ("situation", "outcome"),
    [
        ("due", ReviewOutcome.TOO_LATE),
        ("sending", ReviewOutcome.TOO_LATE),
        ("held", ReviewOutcome.TOO_LATE),
        ("notice", ReviewOutcome.NOT_FOUND),
        ("unknown", ReviewOutcome.NOT_FOUND),
    ],
)
def test_cancel_is_refused_once_delivery_may_have_begun(
    store: SqliteStore, service: ReviewService, clock: Clock, situation: str, outcome: ReviewOutcome
) -> None:
    if situation == "due":
        put(store, "m1", state=MessageState.QUEUED, not_before=START + 300)
        clock.now = START + 300
    elif situation == "sending":
        put(store, "m1", state=MessageState.QUEUED, not_before=START)
        assert store.claim_due(START, 10)
    elif situation == "held":
        put(store, "m1")
    elif situation == "notice":
        put(store, "m1", state=MessageState.QUEUED, kind=MessageKind.NOTICE, not_before=START + 9)
    assert service.cancel("m1", "x").outcome is outcome
    message = store.get("m1")
    assert message is None or message.state is not MessageState.CANCELLED
