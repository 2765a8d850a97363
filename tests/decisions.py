"""A store filled with known decisions, for the dashboard and report tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from apiguard.policy.verdict import Action, Finding
from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
)
from apiguard.store.sqlite import SqliteStore

MONTH = "2026-11"
SENDER = "dr.martin@medical13.apicrypt.org"
LAB = "labo@bio.mssante.fr"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
RAW = (
    b"From: Dr Martin <dr.martin@medical13.apicrypt.org>\r\nX-Mailer: MedicLog 4.2\r\n"
    b"To: dr.durand@medical69.apicrypt.org\r\nSubject: Compte rendu\r\n\r\nBonjour.\r\n"
)


def finding(rule: str, article: int | None, action: Action) -> Finding:
    return Finding(rule, article, action, "motif", "reason")


NO_PATIENT = finding("art1.no-patient-data", 1, Action.HOLD)
ANNOUNCEMENT = finding("art2.announcement", 2, Action.HOLD)
DUPLICATE = finding("art2.duplicate", 2, Action.HOLD)
TOO_LARGE = finding("art3.too-large", 3, Action.REJECT)
HPRIM = finding("art4.hprim-identity", 4, Action.REJECT)
SUBJECT = finding("privacy.identity-in-subject", None, Action.REJECT)
EMPTY_SUBJECT = finding("art5.empty-subject", 5, Action.WARN)


def month_start(month: str = MONTH) -> float:
    """Local midnight on the first day of `month`."""
    year, number = (int(p) for p in month.split("-"))
    return time.mktime((year, number, 1, 0, 0, 0, 0, 0, -1))


def recent_start(now: float | None = None) -> float:
    """Local midnight 25 days ago: every day of `fill` is in the last 30 days."""
    moment = time.localtime((now or time.time()) - 25 * 86400)
    return time.mktime((*moment[:3], 0, 0, 0, 0, 0, -1))


@dataclass
class Filled:
    """What was put in the store: the figures the reports must show."""

    forwarded: int = 0
    held: int = 0
    refused: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    by_article: dict[str, int] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return self.forwarded + self.held + self.refused


def _accept(
    store: SqliteStore,
    message_id: str,
    verdict: str,
    created_at: float,
    findings: tuple[Finding, ...] = (),
    sender: str = SENDER,
    recipients: tuple[str, ...] = (COLLEAGUE,),
) -> None:
    state = {"forward": MessageState.QUEUED, "hold": MessageState.HELD}.get(
        verdict, MessageState.REJECTED
    )
    store.accept(
        NewMessage(
            id=message_id,
            created_at=created_at,
            kind=MessageKind.MAIL,
            mail_from=sender,
            recipients=recipients,
            raw=None if verdict == "reject" else RAW,
            size=len(RAW),
            verdict=verdict,
            state=state,
            findings=findings,
            software="MedicLog 4.2",
        )
    )


def fill(store: SqliteStore, start: float | None = None, prefix: str = "") -> Filled:
    """Three weeks of a small practice from `start` (local midnight of "day
    1"; default: November 2026): 6 forwarded (one with a warning, one not
    delivered), 4 held (released, rejected, expired, still held), 3 refused;
    plus two messages 40 days before, which must not count. Ids start with
    `prefix` (to fill one store twice)."""
    first = month_start() if start is None else start

    def at(day: int, hour: int = 10) -> float:
        return first + (day - 1) * 86400 + hour * 3600

    filled = Filled()
    for n in range(6):
        message_id = f"{prefix}fwd{n}"
        findings = (EMPTY_SUBJECT,) if n == 0 else ()
        _accept(store, message_id, "forward", at(2 + n), findings)
        state = RecipientState.FAILED if n == 5 else RecipientState.DELIVERED
        store.complete(
            message_id, [RecipientOutcome(COLLEAGUE, state, "250 ok")], now=at(2 + n, 11)
        )
    filled.forwarded = 6
    for n, findings in enumerate(
        # held1: two rules of Article 2, counted once under the article
        [(NO_PATIENT,), (ANNOUNCEMENT, DUPLICATE, NO_PATIENT), (NO_PATIENT,), (ANNOUNCEMENT,)]
    ):
        _accept(store, f"{prefix}held{n}", "hold", at(10 + n), findings, sender=LAB)
    filled.held = 4
    store.transition_held(
        prefix + "held0", MessageState.QUEUED, "secretariat", "release", "", at(10, 12)
    )
    store.transition_held(
        prefix + "held1", MessageState.REJECTED, "secretariat", "reject", "", at(11, 14)
    )
    store.transition_held(
        prefix + "held2", MessageState.REJECTED, "apiguard", "expire", "", at(19, 10)
    )
    for n, findings in enumerate([(TOO_LARGE,), (HPRIM, SUBJECT), (SUBJECT,)]):
        _accept(store, f"{prefix}ref{n}", "reject", at(20 + n), findings)
    filled.refused = 3
    # before the period: never counted
    _accept(store, prefix + "old0", "forward", at(-40))
    _accept(store, prefix + "old1", "reject", at(-39), (TOO_LARGE,))
    filled.by_rule = {
        "art1.no-patient-data": 3,
        "art2.announcement": 2,
        "art2.duplicate": 1,
        "art3.too-large": 1,
        "art4.hprim-identity": 1,
        "art5.empty-subject": 1,
        "privacy.identity-in-subject": 2,
    }
    filled.by_article = {"1": 3, "2": 2, "3": 1, "4": 1, "5": 1}
    return filled
