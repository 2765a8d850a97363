"""The story of one message: parse → fingerprint → count → decide → store → settle → reply.

Nothing is acknowledged before it is durably stored; a failure to store answers
451 4.3.0. Rejections and holds cause notices, stored in the same transaction.
Counting (fan-out, duplicates, rate) reserves the message's place in the store
before the charter decides, so concurrent sessions see each other exactly.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from apiguard import metrics
from apiguard.analysis import Analyser, merge, state_half
from apiguard.config import Settings
from apiguard.delivery import new_message_id, notice_message
from apiguard.fingerprint import content_fingerprint
from apiguard.mail import Envelope, ParsedMessage, parse_message
from apiguard.notice_targets import NoticeTargets
from apiguard.notices import NoticeIdentity, circuit_alert, hold_notice, reject_notice
from apiguard.policy.charter import Charter
from apiguard.policy.verdict import Decision, Verdict
from apiguard.reports.records import software_of
from apiguard.smtp import replies
from apiguard.smtp.replies import Reply
from apiguard.store.aio import AsyncStore
from apiguard.store.base import MessageKind, MessageState, NewMessage, StoreError
from apiguard.store.sqlite import SPOOL_SIZE
from apiguard.store.volume import VolumeStore
from apiguard.volume import (
    RATE,
    Settlement,
    SettleOutcome,
    VolumeSnapshot,
    VolumeWindows,
    held_by_open_circuit_only,
)

log = structlog.get_logger("apiguard.pipeline")

_INTERNAL_ERROR = replies.INTERNAL_ERROR
T = TypeVar("T")
# The state rules read the envelope and the counts, never the content.
# What deciding and accepting a message gives: the decision, the stored message,
# its notices, and the volume settlement's outcome (None without volume rules).
Decided = tuple[Decision, NewMessage, tuple[NewMessage, ...], Any]

_ENVELOPE_ONLY = ParsedMessage(headers=(), text="", attachments=(), defects=(), size=0)


def read_message(raw: bytes, recipients: Sequence[str] = ()) -> tuple[ParsedMessage, str | None]:
    """Parse one message and fingerprint its content (pure)."""
    parsed = parse_message(raw)
    return parsed, content_fingerprint(parsed, recipients)


def judge(
    charter: Charter,
    envelope: Envelope,
    parsed: ParsedMessage,
    now: datetime,
    volume: VolumeSnapshot | None = None,
) -> Decision:
    """Run the whole charter on a parsed message (pure). Without a `volume`
    snapshot the volume rules are skipped."""
    context = dataclasses.replace(charter.context, now=now, volume=volume)
    return charter.check_message(envelope, parsed, context, include_recipient_rules=True)


def evaluate(
    charter: Charter,
    envelope: Envelope,
    raw: bytes,
    now: datetime | None = None,
    *,
    volume: VolumeSnapshot | None = None,
) -> tuple[ParsedMessage, Decision]:
    """Parse and judge one message (pure: used by the proxy and `apiguard check`)."""
    parsed = parse_message(raw)
    return parsed, judge(charter, envelope, parsed, now or datetime.now(UTC), volume)


def needs_disk(decided: Decided) -> bool:
    """Must this accept be durable before the MTA hears the verdict? Behind
    the milter a forwarded letter stays in the MTA's queue, which delivers it:
    apiguard keeps only records of it (the decision, the volume counts, a
    known correspondent), committed with the others but without an fsync of
    their own (they survive a crash of apiguard, and at worst a power cut
    loses the last ones, never a letter). Held and refused mail, notices and
    circuit alerts are on disk before the MTA is told to discard its copy."""
    _, message, notices, settled = decided
    opened = isinstance(settled, SettleOutcome) and settled.circuit_opened
    return message.state is not MessageState.DONE or bool(notices) or opened


class Pipeline:
    """Receives one message from the SMTP edge and returns the reply to give."""

    def __init__(
        self,
        charter: Charter,
        store: AsyncStore,
        settings: Settings,
        *,
        on_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        volume: VolumeStore | None = None,
        analyser: Analyser | None = None,
        spool_forwarded: bool = True,
    ) -> None:
        self.charter = charter
        # False behind the milter: the MTA delivers its own copy of forwarded
        # mail, so only the decision is recorded (held mail is still kept whole).
        self.spool_forwarded = spool_forwarded
        self.analyser = analyser or Analyser(charter, settings, workers=0)
        self.state_rules = state_half(charter)
        self.store = store
        # Without it (no memory across messages) the volume rules are skipped.
        self.volume = volume
        self.windows = VolumeWindows.from_charter(charter)
        self.settings = settings
        self.on_queued = on_queued
        self.clock = clock
        self.identity = NoticeIdentity.of(settings)
        self.notice_targets = NoticeTargets(tuple(settings.charter.allowed_sender_domains))

    def check_recipient(self, mail_from: str, rcpt: str, accepted: list[str]) -> Reply | None:
        """RCPT time: the first refusing recipient-scope finding, or None to accept."""
        findings = self.charter.check_recipient(mail_from, rcpt, accepted)
        refusing = [f for f in findings if f.action.value == "reject"]
        if refusing:
            log.info("smtp.recipient_refused", rule=refusing[0].rule)
            metrics.record_findings(refusing)
            return replies.recipient_refused(refusing[0])
        return None

    async def receive(
        self, envelope: Envelope, raw: bytes, *, peer: str = "", helo: str = ""
    ) -> Reply:
        message_id = new_message_id()
        now = self.clock()
        try:
            # Parse, fingerprint and the content rules: in a worker process if any.
            fingerprint, content = await self.analyser.analyse(raw, envelope, now)
        except Exception as error:
            log.error("smtp.evaluation_failed", message_id=message_id, error=type(error).__name__)
            metrics.record_error("evaluation")
            return _INTERNAL_ERROR
        stored_raw = self._trace(message_id, peer, helo, now) + raw
        # The null sender is counted too: a genuine report like any message,
        # anything else so that a flood under `<>` shows (and is refused).
        if self.volume is not None and len(stored_raw) <= SPOOL_SIZE:
            # One store visit: reserve the counts, judge the rules that read live
            # state and accept, in one transaction (a failure rolls it all back).
            try:
                decision, message, notices, settled = await self.store.write(
                    functools.partial(
                        self._decide_and_accept,
                        message_id=message_id,
                        envelope=envelope,
                        fingerprint=fingerprint,
                        content=content,
                        stored_raw=stored_raw,
                        now=now,
                    ),
                    # Behind the milter, what forwarded letters leave here is
                    # not worth an fsync each: see `needs_disk` (a letter the
                    # content rules do not forward is known to need one).
                    durable=(
                        True
                        if self.spool_forwarded or content.verdict is not Verdict.FORWARD
                        else needs_disk
                    ),
                )
            except StoreError as error:
                log.error("smtp.store_failed", message_id=message_id, error=str(error)[:200])
                metrics.record_error("store")
                return replies.STORE_FAILED
            except Exception as error:
                log.error(
                    "smtp.evaluation_failed", message_id=message_id, error=type(error).__name__
                )
                metrics.record_error("evaluation")
                return _INTERNAL_ERROR
        else:
            outcome = await self._decide_then_accept(
                message_id, envelope, fingerprint, content, stored_raw, now
            )
            if isinstance(outcome, Reply):
                return outcome
            decision, message, notices, settled = outcome
        settled = settled or SettleOutcome()
        if message.state is MessageState.QUEUED or notices or settled.circuit_opened:
            self.on_queued()
        if settled.circuit_opened or settled.copies_refused or settled.self_refused:
            log.info(
                "volume.settled",
                message_id=message_id,
                circuit_opened=settled.circuit_opened,
                copies_refused=settled.copies_refused,
                self_refused=settled.self_refused,
            )
        metrics.record_decision(decision)
        # The verdict and id ride along for edges that do not speak SMTP (the milter).
        reply = dataclasses.replace(
            self._reply(message_id, decision), verdict=decision.verdict, message_id=message_id
        )
        log.info(
            "smtp.decision",
            message_id=message_id,
            verdict=decision.verdict.value,
            rules=[f.rule for f in decision.findings],
            size=len(raw),
            recipients=len(envelope.rcpt_tos),
            notices=len(notices),
            reply=reply.code,
        )
        return reply

    def _decide(
        self,
        envelope: Envelope,
        content: Decision,
        snapshot: VolumeSnapshot | None,
        now: float,
    ) -> Decision:
        """The content rules' decision completed by the rules that read live
        state (volume counts, known correspondents)."""
        when = datetime.fromtimestamp(now, UTC)
        return merge(content, judge(self.state_rules, envelope, _ENVELOPE_ONLY, when, snapshot))

    def _decide_and_accept(
        self,
        db: sqlite3.Connection,
        *,
        message_id: str,
        envelope: Envelope,
        fingerprint: str | None,
        content: Decision,
        stored_raw: bytes,
        now: float,
    ) -> Decided:
        """On the store thread, inside the shared write transaction."""
        assert self.volume is not None
        snapshot = self.volume.observe_in(
            db, message_id, fingerprint, envelope.mail_from, envelope.rcpt_tos, now, self.windows
        )
        decision = self._decide(envelope, content, snapshot, now)
        message, notices = self._to_store(message_id, envelope, stored_raw, decision, now)
        settle = self._settlement(message_id, envelope, snapshot, decision, now)
        settled = self.store.sync.accept_in(db, message, notices, settle)
        if message.state is MessageState.DONE:  # forwarded behind the milter
            self.volume.remember_forwarded_in(db, message_id, envelope.rcpt_tos)
        return decision, message, notices, settled

    async def _decide_then_accept(
        self,
        message_id: str,
        envelope: Envelope,
        fingerprint: str | None,
        content: Decision,
        stored_raw: bytes,
        now: float,
    ) -> Decided | Reply:
        """Two store visits: for big messages (whose content is spooled to a file
        once the decision is known) and when there is no volume store."""
        try:
            snapshot = await self._observe(message_id, envelope, fingerprint, now)
        except StoreError as error:
            log.error("smtp.volume_failed", message_id=message_id, error=str(error)[:200])
            metrics.record_error("store")
            return replies.STORE_FAILED
        try:
            decision = self._decide(envelope, content, snapshot, now)
        except Exception as error:
            log.error("smtp.evaluation_failed", message_id=message_id, error=type(error).__name__)
            metrics.record_error("evaluation")
            await self._settle(message_id, envelope, snapshot, None, now)
            return _INTERNAL_ERROR
        message, notices = self._to_store(message_id, envelope, stored_raw, decision, now)
        try:
            # The volume counts are settled in the message's own transaction.
            settled = await self.store.accept(
                message, notices, self._settlement(message_id, envelope, snapshot, decision, now)
            )
        except StoreError as error:
            log.error("smtp.store_failed", message_id=message_id, error=str(error)[:200])
            metrics.record_error("store")
            await self._settle(message_id, envelope, snapshot, decision, now, stored=False)
            return replies.STORE_FAILED
        return decision, message, notices, settled

    async def _observe(
        self, message_id: str, envelope: Envelope, fingerprint: str | None, now: float
    ) -> VolumeSnapshot | None:
        """Reserve the message's place in the volume counts (raises StoreError)."""
        if self.volume is None:
            return None
        # Not durable: a reservation lost in a crash belongs to a message that
        # was not accepted either (the accept's own commit carries it to disk).
        volume, windows = self.volume, self.windows
        return await self.store.write(
            lambda db: volume.observe_in(
                db, message_id, fingerprint, envelope.mail_from, envelope.rcpt_tos, now, windows
            ),
            durable=False,
        )

    def _settlement(
        self,
        message_id: str,
        envelope: Envelope,
        snapshot: VolumeSnapshot | None,
        decision: Decision,
        now: float,
    ) -> Callable[[sqlite3.Connection], SettleOutcome] | None:
        """The follow-up that settles the volume counts inside the accept transaction."""
        volume = self.volume
        if volume is None or snapshot is None:
            return None
        settlement = Settlement.of(message_id, envelope.mail_from, snapshot, decision, stored=True)
        alerts = (
            self._circuit_alerts(message_id, envelope.mail_from, snapshot, now)
            if settlement.open_circuit
            else ()
        )
        windows = self.windows

        def settle(db: sqlite3.Connection) -> SettleOutcome:
            return volume.settle_in(db, settlement, now, windows, alerts)

        return settle

    async def _settle(
        self,
        message_id: str,
        envelope: Envelope,
        snapshot: VolumeSnapshot | None,
        decision: Decision | None,
        now: float,
        *,
        stored: bool = True,
    ) -> SettleOutcome:
        """Tell the volume store the decision. A failure here is logged only: the
        reservation is settled at the next start-up."""
        if self.volume is None or snapshot is None:
            return SettleOutcome()
        settlement = Settlement.of(
            message_id, envelope.mail_from, snapshot, decision, stored=stored
        )
        alerts = (
            self._circuit_alerts(message_id, envelope.mail_from, snapshot, now)
            if settlement.open_circuit
            else ()
        )
        try:
            return await self.store.run(
                self.volume.settle,
                settlement,
                now,
                self.windows,
                alerts if settlement.open_circuit else (),
            )
        except StoreError as error:
            log.error("smtp.volume_settle_failed", message_id=message_id, error=str(error)[:200])
            return SettleOutcome()

    def _circuit_alerts(
        self, message_id: str, sender: str, snapshot: VolumeSnapshot, now: float
    ) -> tuple[NewMessage, ...]:
        """The once-only alerts for a circuit opening: to `alerts.to` and the sender."""
        rule = self.charter.rule(RATE)
        limits = getattr(rule.params, "limits_for", None) if rule is not None else None
        per_short, per_day = limits(sender) if callable(limits) else (0, 0)
        owned = self.notice_targets.owned(sender, authenticated=False)
        if sender and not owned:
            log.info("notice.dropped", message_id=message_id, reason="sender_not_owned")
            metrics.record_notice_dropped()
        targets = dict.fromkeys(t for t in (self.settings.alerts.to, sender if owned else "") if t)
        return tuple(
            notice_message(
                circuit_alert(
                    identity=self.identity,
                    to=target,
                    sender=sender,
                    messages_short=snapshot.sender_short,
                    messages_day=snapshot.sender_day,
                    limit_short=per_short,
                    limit_day=per_day,
                    opened_at=now,
                ),
                target,
                message_id,
                now,
            )
            for target in targets
        )

    def _trace(self, message_id: str, peer: str, helo: str, now: float) -> bytes:
        helo_text = "".join(c for c in helo if c.isalnum() or c in ".-[]:")[:100] or "unknown"
        line = (
            f"Received: from {helo_text} ([{peer}]) by {self.settings.smtp.hostname}"
            f" (apiguard) with ESMTP id {message_id};\r\n\t"
            f"{email.utils.formatdate(now, localtime=False)}\r\n"
        )
        return line.encode("ascii", "replace")

    def _to_store(
        self, message_id: str, envelope: Envelope, raw: bytes, decision: Decision, now: float
    ) -> tuple[NewMessage, tuple[NewMessage, ...]]:
        verdict = decision.verdict
        state = {
            Verdict.FORWARD: MessageState.QUEUED,
            Verdict.HOLD: MessageState.HELD,
            Verdict.REJECT: MessageState.REJECTED,
        }[verdict]
        if state is MessageState.QUEUED and not self.spool_forwarded:
            state = MessageState.DONE
        message = NewMessage(
            id=message_id,
            created_at=now,
            kind=MessageKind.NOTICE if envelope.is_notification else MessageKind.MAIL,
            mail_from=envelope.mail_from,
            recipients=envelope.rcpt_tos,
            # A refused message is not kept: only its envelope and findings.
            raw=None if state in (MessageState.REJECTED, MessageState.DONE) else raw,
            size=len(raw),
            verdict=verdict.value,
            state=state,
            findings=decision.findings,
            # The grace period ("undo send"): forwarded mail waits `review.send_delay`.
            not_before=now + self.settings.review.send_delay,
            software=software_of(raw),
        )
        notices: list[NewMessage] = []
        if not envelope.is_notification:
            notice_raw: bytes | None = None
            if verdict is Verdict.REJECT and self.settings.notices.on_reject != "smtp":
                notice_raw = reject_notice(
                    identity=self.identity,
                    message_id=message_id,
                    sender=envelope.mail_from,
                    recipients=envelope.rcpt_tos,
                    findings=decision.findings,
                    original_raw=raw,
                    arrival=now,
                )
            elif (
                verdict is Verdict.HOLD
                and self.settings.notices.on_hold
                # The sender was alerted once when its circuit opened: no notice per message.
                and not held_by_open_circuit_only(decision.findings)
            ):
                notice_raw = hold_notice(
                    identity=self.identity,
                    message_id=message_id,
                    sender=envelope.mail_from,
                    recipients=envelope.rcpt_tos,
                    findings=decision.findings,
                    original_raw=raw,
                    arrival=now,
                    hold_days=self.settings.review.hold_days,
                )
            if notice_raw is not None and not self.notice_targets.owned(
                envelope.mail_from, authenticated=envelope.authenticated
            ):
                # Backscatter: the sender is a claim the practice cannot vouch for.
                log.info("notice.dropped", message_id=message_id, reason="sender_not_owned")
                metrics.record_notice_dropped()
            elif notice_raw is not None:
                notices.append(notice_message(notice_raw, envelope.mail_from, message_id, now))
        return message, tuple(notices)

    def _reply(self, message_id: str, decision: Decision) -> Reply:
        if decision.verdict is Verdict.FORWARD:
            return replies.queued(message_id)
        if decision.verdict is Verdict.HOLD:
            return replies.held(message_id)
        first = decision.first_reject
        if self.settings.notices.on_reject == "email" or first is None:
            return replies.accepted_then_refused(message_id)
        return replies.rejected(first)
