"""The story of one message: parse → decide → store → reply.

Nothing is acknowledged before it is durably stored; a failure to store answers
451 4.3.0. Rejections and holds cause notices, stored in the same transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from apiguard.config import Settings
from apiguard.delivery import new_message_id, notice_message
from apiguard.mail import Envelope, ParsedMessage, parse_message
from apiguard.notices import NoticeIdentity, hold_notice, reject_notice
from apiguard.policy.charter import Charter
from apiguard.policy.verdict import Decision, Verdict
from apiguard.smtp import replies
from apiguard.smtp.replies import Reply
from apiguard.store.aio import AsyncStore
from apiguard.store.base import MessageKind, MessageState, NewMessage, StoreError

log = structlog.get_logger("apiguard.pipeline")

# Messages larger than this are parsed and judged on a worker thread, so that a
# big attachment never stalls the other SMTP sessions.
OFF_LOOP_SIZE = 256 * 1024


def evaluate(
    charter: Charter, envelope: Envelope, raw: bytes, now: datetime | None = None
) -> tuple[ParsedMessage, Decision]:
    """Parse and judge one message (pure: used by the proxy and `apiguard check`)."""
    parsed = parse_message(raw)
    context = dataclasses.replace(charter.context, now=now or datetime.now(UTC))
    return parsed, charter.check_message(envelope, parsed, context, include_recipient_rules=True)


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
    ) -> None:
        self.charter = charter
        self.store = store
        self.settings = settings
        self.on_queued = on_queued
        self.clock = clock
        self.identity = NoticeIdentity(
            from_address=settings.notices.from_address,
            from_name=settings.notices.from_name,
            reporting_mta=settings.smtp.hostname,
        )

    def check_recipient(self, mail_from: str, rcpt: str, accepted: list[str]) -> Reply | None:
        """RCPT time: the first refusing recipient-scope finding, or None to accept."""
        findings = self.charter.check_recipient(mail_from, rcpt, accepted)
        refusing = [f for f in findings if f.action.value == "reject"]
        if refusing:
            log.info("smtp.recipient_refused", rule=refusing[0].rule)
            return replies.recipient_refused(refusing[0])
        return None

    async def receive(
        self, envelope: Envelope, raw: bytes, *, peer: str = "", helo: str = ""
    ) -> Reply:
        message_id = new_message_id()
        now = self.clock()
        try:
            if len(raw) > OFF_LOOP_SIZE:
                _, decision = await asyncio.to_thread(evaluate, self.charter, envelope, raw)
            else:
                _, decision = evaluate(self.charter, envelope, raw)
        except Exception as error:
            log.error("smtp.evaluation_failed", message_id=message_id, error=type(error).__name__)
            return Reply(
                451, "4.3.0", "erreur interne, reessayez plus tard / internal error, retry later"
            )
        stored_raw = self._trace(message_id, peer, helo, now) + raw
        message, notices = self._to_store(message_id, envelope, stored_raw, decision, now)
        try:
            await self.store.accept(message, notices)
        except StoreError as error:
            log.error("smtp.store_failed", message_id=message_id, error=str(error)[:200])
            return replies.STORE_FAILED
        if message.state is MessageState.QUEUED or notices:
            self.on_queued()
        reply = self._reply(message_id, decision)
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
        message = NewMessage(
            id=message_id,
            created_at=now,
            kind=MessageKind.NOTICE if envelope.is_notification else MessageKind.MAIL,
            mail_from=envelope.mail_from,
            recipients=envelope.rcpt_tos,
            # A refused message is not kept: only its envelope and findings.
            raw=None if verdict is Verdict.REJECT else raw,
            size=len(raw),
            verdict=verdict.value,
            state=state,
            findings=decision.findings,
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
            elif verdict is Verdict.HOLD and self.settings.notices.on_hold:
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
            if notice_raw is not None:
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
