"""Article 2 over time, with an injected clock: fan-out, duplicates, rate and circuits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from apiguard.mail import Envelope, parse_message
from apiguard.pipeline import judge, read_message
from apiguard.policy.charter import Charter, CharterConfigError, rule_classes
from apiguard.policy.context import CharterContext, MessageContext
from apiguard.policy.rules.volume import Duplicate, FanOut, Rate, RateParams
from apiguard.policy.verdict import Action, Decision, Verdict
from apiguard.store.base import MessageKind, MessageState, NewMessage
from apiguard.store.sqlite import SqliteStore
from apiguard.store.volume import VolumeStore
from apiguard.volume import (
    NO_HISTORY,
    NO_STORE,
    VOLUME_RULES,
    Settlement,
    SettleOutcome,
    VolumeSnapshot,
    VolumeWindows,
    held_by_open_circuit_only,
    human_duration,
)

T0 = 1_800_000_000.0
PRACTICE = "dr.martin@medical13.apicrypt.org"
LAB = "labo@medical13.apicrypt.org"
LETTER = (
    "Cher confrère,\n"
    "Votre patiente {patient} a été vue en consultation pour un bilan cardiologique.\n"
    "L'examen clinique est normal.\n"
    "Bien confraternellement.\n"
)


def colleague(n: int) -> str:
    return f"dr.correspondant{n}@medical69.apicrypt.org"


def volume_only(rules: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Only the volume rules run, so these tests judge them alone."""
    settings: dict[str, dict[str, Any]] = {
        c.id: {"enabled": False} for c in rule_classes() if c.id not in VOLUME_RULES
    }
    settings.update(rules or {})
    return settings


class Desk:
    """What the pipeline does with one message, synchronously, over a real store
    file and an injected clock: fingerprint, observe, judge, store, settle."""

    def __init__(self, directory: Path, rules: dict[str, dict[str, Any]] | None = None) -> None:
        self.charter = Charter.build(volume_only(rules))
        self.sqlite = SqliteStore(directory)
        self.volume = VolumeStore(self.sqlite)
        self.windows = VolumeWindows.from_charter(self.charter)
        self.now = T0
        self.sent = 0
        self.last: SettleOutcome = SettleOutcome()

    def send(
        self, recipients: list[str], *, sender: str = PRACTICE, patient: str = "A", after: float = 0
    ) -> Decision:
        self.now += after
        self.sent += 1
        message_id = f"m{self.sent:04d}"
        raw = (f"From: {sender}\r\nSubject: CR\r\n\r\n" + LETTER.format(patient=patient)).encode()
        parsed, fingerprint = read_message(raw, recipients)
        envelope = Envelope(sender, tuple(recipients))
        snapshot = self.volume.observe(
            message_id, fingerprint, sender, recipients, self.now, self.windows
        )
        when = datetime.fromtimestamp(self.now, UTC)
        decision = judge(self.charter, envelope, parsed, when, snapshot)
        state = {
            Verdict.FORWARD: MessageState.QUEUED,
            Verdict.HOLD: MessageState.HELD,
            Verdict.REJECT: MessageState.REJECTED,
        }[decision.verdict]
        self.sqlite.accept(
            NewMessage(
                id=message_id,
                created_at=self.now,
                kind=MessageKind.MAIL,
                mail_from=sender,
                recipients=tuple(recipients),
                raw=None if state is MessageState.REJECTED else raw,
                size=len(raw),
                verdict=decision.verdict.value,
                state=state,
                findings=decision.findings,
            )
        )
        alert = NewMessage(
            id=f"alert-{message_id}",
            created_at=self.now,
            kind=MessageKind.NOTICE,
            mail_from="",
            recipients=("admin@cabinet.example",),
            raw=b"Subject: circuit\r\n\r\nopen\r\n",
            size=30,
            verdict="forward",
            state=MessageState.QUEUED,
        )
        self.last = self.volume.settle(
            Settlement.of(message_id, sender, snapshot, decision), self.now, self.windows, (alert,)
        )
        return decision

    def alerts(self) -> int:
        return sum(1 for m in self.sqlite.list_messages(None, 10_000) if m.id.startswith("alert-"))


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    counter = Desk(tmp_path / "var")
    yield counter
    counter.sqlite.close()


def rules_hit(decision: Decision) -> list[str]:
    return [f.rule for f in decision.findings]


# -- fan-out -------------------------------------------------------------------


def test_fanout_across_six_single_recipient_messages_is_caught_at_the_sixth(desk: Desk) -> None:
    for n in range(5):
        assert desk.send([colleague(n)], after=60).verdict is Verdict.FORWARD
    sixth = desk.send([colleague(5)], after=60)
    assert sixth.verdict is Verdict.REJECT
    (finding,) = sixth.findings
    assert finding.rule == "art2.fanout"
    assert finding.article == 2
    assert dict(finding.details) == {"recipients": "6", "max_recipients": "5", "window": "24 h"}
    assert "6 destinataires différents en 24 h" in finding.message_fr


def test_after_the_line_is_crossed_further_copies_are_refused_even_to_known_recipients(
    desk: Desk,
) -> None:
    for n in range(6):
        desk.send([colleague(n)], after=60)
    seventh = desk.send([colleague(6)], after=60)
    assert rules_hit(seventh) == ["art2.fanout"]
    assert dict(seventh.findings[0].details)["already_refused"] == "yes"


def test_the_fanout_window_expiring_lets_the_content_pass(desk: Desk) -> None:
    for n in range(5):
        desk.send([colleague(n)], after=60)
    assert desk.send([colleague(5)], after=60).verdict is Verdict.REJECT
    # 24 h after the refusal, the earlier copies and the refusal are out of the window.
    later = desk.send([colleague(6)], after=86400 + 1)
    assert later.verdict is Verdict.FORWARD


def test_different_letters_to_many_recipients_are_not_a_fanout(desk: Desk) -> None:
    for n in range(12):
        assert desk.send([colleague(n)], patient=f"P{n}", after=60).verdict is Verdict.FORWARD


def test_a_refused_grouped_send_blocks_its_content_across_a_restart(desk: Desk) -> None:
    assert desk.send([colleague(n) for n in range(6)]).verdict is Verdict.REJECT
    desk.volume.store.close()
    desk2 = Desk(desk.sqlite.directory)
    desk2.now = desk.now
    desk2.sent = desk.sent
    # The refusal blocked this content for the window: a copy is still refused.
    assert desk2.send([colleague(9)], after=60).verdict is Verdict.REJECT
    assert desk2.send([colleague(9)], patient="other", after=60).verdict is Verdict.FORWARD
    desk2.sqlite.close()


def test_a_configured_fanout_limit_and_window_apply(tmp_path: Path) -> None:
    desk = Desk(
        tmp_path / "var",
        {"art2.fanout": {"fanout_max_recipients": 2, "fanout_window": "30min"}},
    )
    assert desk.send([colleague(0), colleague(1)]).verdict is Verdict.FORWARD
    assert desk.send([colleague(2)], after=60).verdict is Verdict.REJECT
    assert desk.send([colleague(3)], after=31 * 60).verdict is Verdict.FORWARD
    desk.sqlite.close()


# -- duplicates ----------------------------------------------------------------


def test_the_same_letter_to_the_same_recipient_within_the_hour_is_held(desk: Desk) -> None:
    assert desk.send([colleague(1)]).verdict is Verdict.FORWARD
    again = desk.send([colleague(1)], after=59 * 60)
    assert again.verdict is Verdict.HOLD
    (finding,) = again.findings
    assert finding.rule == "art2.duplicate"
    assert finding.action is Action.HOLD
    assert dict(finding.details) == {"recipients": "1", "window": "1 h"}


def test_the_same_letter_again_after_the_window_is_forwarded(desk: Desk) -> None:
    desk.send([colleague(1)])
    assert desk.send([colleague(1)], after=3601).verdict is Verdict.FORWARD


def test_a_duplicate_counts_only_recipients_that_already_got_it(desk: Desk) -> None:
    desk.send([colleague(1)])
    again = desk.send([colleague(1), colleague(2)], after=60)
    assert dict(again.findings[0].details)["recipients"] == "1"
    other_letter = desk.send([colleague(1)], patient="B", after=60)
    assert other_letter.verdict is Verdict.FORWARD


# -- rate and circuits ---------------------------------------------------------


def send_many(
    desk: Desk, count: int, *, sender: str = PRACTICE, spacing: float = 5
) -> list[Verdict]:
    start = desk.sent
    return [
        desk.send([colleague(n % 3)], sender=sender, patient=f"P{start + n}", after=spacing).verdict
        for n in range(count)
    ]


def test_the_circuit_opens_at_the_limit_holds_and_alerts_once(desk: Desk) -> None:
    assert set(send_many(desk, 30)) == {Verdict.FORWARD}
    crossing = desk.send([colleague(0)], patient="X31", after=5)
    assert crossing.verdict is Verdict.HOLD
    (finding,) = crossing.findings
    assert finding.rule == "art2.rate"
    assert dict(finding.details)["circuit"] == "opening"
    assert dict(finding.details)["messages_10min"] == "31"
    assert desk.last.circuit_opened
    assert not held_by_open_circuit_only(crossing.findings)
    # Every further message is held, with no alert of its own.
    for n in range(3):
        held = desk.send([colleague(0)], patient=f"Y{n}", after=3600)
        assert held.verdict is Verdict.HOLD
        assert dict(held.findings[0].details)["circuit"] == "open"
        assert held_by_open_circuit_only(held.findings)
        assert not desk.last.circuit_opened
    assert desk.alerts() == 1
    (circuit,) = desk.volume.circuits()
    assert (circuit.sender, circuit.state, circuit.messages_short) == (PRACTICE, "open", 31)
    assert circuit.held_messages == 4


def test_closing_the_circuit_lets_the_sender_send_again_with_fresh_counts(desk: Desk) -> None:
    send_many(desk, 31)
    assert desk.volume.circuits()[0].state == "open"
    assert desk.volume.close_circuit(PRACTICE.upper(), "secretariat", desk.now + 1)
    assert not desk.volume.close_circuit(PRACTICE, "secretariat", desk.now + 1)
    assert desk.volume.circuits() == []
    after = send_many(desk, 30, spacing=1)
    assert set(after) == {Verdict.FORWARD}
    assert desk.send([colleague(0)], patient="Z", after=1).verdict is Verdict.HOLD
    assert desk.alerts() == 2
    (circuit,) = desk.volume.circuits()
    assert circuit.times_opened == 2


def test_the_daily_limit_opens_the_circuit_too(desk: Desk) -> None:
    # 200 messages spread so that no 10 minutes hold more than 30.
    assert set(send_many(desk, 200, spacing=60)) == {Verdict.FORWARD}
    over = desk.send([colleague(0)], patient="over", after=60)
    assert over.verdict is Verdict.HOLD
    assert "200 messages en 24 h" in over.findings[0].message_fr


def test_other_senders_are_not_held_by_a_circuit(desk: Desk) -> None:
    send_many(desk, 31)
    other = "dr.durand@medical69.apicrypt.org"
    assert desk.send([colleague(0)], sender=other, patient="Q", after=1).verdict is Verdict.FORWARD


def test_a_laboratory_override_allows_hundreds_of_results(tmp_path: Path) -> None:
    desk = Desk(
        tmp_path / "var",
        {"art2.rate": {"overrides": {LAB.upper(): {"per_10min": 500, "per_day": 3000}}}},
    )
    assert set(send_many(desk, 120, sender=LAB, spacing=1)) == {Verdict.FORWARD}
    assert set(send_many(desk, 30, sender=PRACTICE, spacing=1)) == {Verdict.FORWARD}
    assert desk.send([colleague(0)], patient="P31", after=1).verdict is Verdict.HOLD
    desk.sqlite.close()


def test_an_override_keeps_the_rule_value_for_an_omitted_key() -> None:
    params = RateParams.model_validate({"per_day": 300, "overrides": {LAB: {"per_day": 3000}}})
    assert params.limits_for(LAB) == (30, 3000)
    assert params.limits_for(PRACTICE) == (30, 300)


# -- the rules as pure functions of the snapshot -------------------------------


def judge_snapshot(
    rule: FanOut | Duplicate | Rate, snapshot: VolumeSnapshot | None, sender: str = PRACTICE
) -> list[str]:
    ctx = MessageContext(
        Envelope(sender, (colleague(1),)),
        parse_message(b"Subject: x\r\n\r\nbody\r\n"),
        CharterContext(volume=snapshot),
    )
    found = rule.check(ctx)
    if found is None:
        return []
    found = found if isinstance(found, list) else [found]
    return [f"{f.action.value}:{dict(f.details).get('circuit', '')}" for f in found]


FP = "0" * 32


@pytest.mark.parametrize(
    ("rule", "snapshot", "expected"),
    [
        (FanOut(), VolumeSnapshot(FP, fanout_recipients=5), []),
        (FanOut(), VolumeSnapshot(FP, fanout_recipients=6), ["reject:"]),
        (FanOut(), VolumeSnapshot(FP, fanout_recipients=1, fanout_blocked=True), ["reject:"]),
        (FanOut(), VolumeSnapshot(None, fanout_recipients=60), []),
        (Duplicate(), VolumeSnapshot(FP, duplicate_recipients=0), []),
        (Duplicate(), VolumeSnapshot(FP, duplicate_recipients=2), ["hold:"]),
        (Duplicate(), VolumeSnapshot(None, duplicate_recipients=2), []),
        (Rate(), VolumeSnapshot(None, sender_short=30, sender_day=200), []),
        (Rate(), VolumeSnapshot(None, sender_short=31, sender_day=31), ["hold:opening"]),
        (Rate(), VolumeSnapshot(None, sender_short=1, sender_day=201), ["hold:opening"]),
        (
            Rate(),
            VolumeSnapshot(None, sender_short=1, sender_day=1, circuit_open=True),
            ["hold:open"],
        ),
        (Rate(), NO_HISTORY, []),
    ],
)
def test_each_rule_judges_the_snapshot(
    rule: FanOut | Duplicate | Rate, snapshot: VolumeSnapshot, expected: list[str]
) -> None:
    assert judge_snapshot(rule, snapshot) == expected


def test_the_null_sender_is_counted_like_any_sender() -> None:
    """Issue 18: twelve webinar announcements under `<>` all went through when
    the null sender skipped the volume rules."""
    busy = VolumeSnapshot(FP, fanout_recipients=60, duplicate_recipients=1, circuit_open=True)
    for rule in (FanOut(), Duplicate(), Rate()):
        assert judge_snapshot(rule, busy, sender="") == judge_snapshot(rule, busy)
        assert judge_snapshot(rule, busy, sender="") != []


def test_without_a_store_the_volume_rules_are_skipped_not_passed() -> None:
    charter = Charter.build(volume_only())
    decision = charter.check_message(
        Envelope(PRACTICE, (colleague(1),)), parse_message(b"Subject: x\r\n\r\nbody\r\n")
    )
    assert set(decision.skipped) == VOLUME_RULES
    assert not VOLUME_RULES & set(decision.checked)
    ctx = MessageContext(Envelope(PRACTICE, ()), parse_message(b"\r\n\r\nx"))
    assert ctx.skip_reason("art2.rate") == NO_STORE
    with_store = MessageContext(
        Envelope(PRACTICE, ()), parse_message(b"\r\n\r\nx"), CharterContext(volume=NO_HISTORY)
    )
    assert with_store.skip_reason("art2.rate") is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("10min", 600.0), ("24h", 86400.0), ("2d", 172800.0)],
)
def test_windows_accept_seconds_or_a_unit(value: object, seconds: float) -> None:
    charter = Charter.build({"art2.duplicate": {"duplicate_window": value}})
    assert VolumeWindows.from_charter(charter).duplicate == seconds


@pytest.mark.parametrize(
    "settings",
    [
        {"art2.duplicate": {"duplicate_window": "soon"}},
        {"art2.fanout": {"fanout_window": 0}},
        {"art2.fanout": {"fanout_max_recipients": 0}},
        {"art2.rate": {"overrides": {LAB: {"per_hour": 5}}}},
    ],
)
def test_bad_volume_settings_are_refused_naming_the_rule(settings: dict[str, Any]) -> None:
    with pytest.raises(CharterConfigError, match=next(iter(settings))):
        Charter.build(settings)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(86400, "24 h"), (3600, "1 h"), (600, "10 min"), (5400, "1 h 30 min"), (45, "45 s")],
)
def test_windows_read_well_in_texts(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
