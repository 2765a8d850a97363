"""One Postfix connection's milter conversation → the pipeline → answers.

Stages and what apiguard answers:

- RCPT: the recipient rules (`Pipeline.check_recipient`), the proxy's own
  550/553 texts, per recipient (for the null sender, at the end of the
  message: apiguard's notices, marked, go to any sender);
- end of message: the whole charter (`Pipeline.receive`: analysis, volume
  counts, decision, durable record). Forward: continue, Postfix queues and
  delivers its own copy. Hold: the message is in the quarantine (stored
  durably first), Postfix is told to discard its copy. Reject: the proxy's
  `550 5.7.1 <rule> (Art. N): …` reply. Not stored: 451, Postfix answers the
  client with a temporary failure.
- A message carrying a valid reinjection mark (`apiguard.milter.marks`) is a
  released letter or a notice coming back from apiguard: it passes once.
  Every mark header is deleted before delivery.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from apiguard.mail import Envelope
from apiguard.milter import protocol
from apiguard.milter.marks import HEADER, Mark, Marker, claim_nonce
from apiguard.milter.protocol import ChangeHeader, Command, ReplyCode, Response
from apiguard.pipeline import Pipeline
from apiguard.policy.verdict import Verdict
from apiguard.smtp import replies
from apiguard.smtp.replies import Reply
from apiguard.store.base import StoreError

log = structlog.get_logger("apiguard.milter")

_MARK_NAME = HEADER.lower()


@dataclass
class Transaction:
    """One message: envelope, headers as received, body."""

    mail_from: str = ""
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    too_big: bool = False
    # Recipient refusals kept for the end of the message (null sender only).
    refusals: list[Reply] = field(default_factory=list)

    def raw(self) -> bytes:
        """The message as the client sent it (folded header lines kept), the
        reinjection marks left out."""
        lines = [
            f"{name}:{value}".replace("\r\n", "\n").replace("\n", "\r\n")
            for name, value in self.headers
            if name.lower() != _MARK_NAME
        ]
        head = "".join(f"{line}\r\n" for line in lines).encode("utf-8", "surrogateescape")
        return head + b"\r\n" + bytes(self.body)

    def marks(self) -> list[str]:
        return [value.strip() for name, value in self.headers if name.lower() == _MARK_NAME]

    def mark_deletions(self) -> list[Response]:
        """Delete every mark header (by its index among the headers so named),
        last first so the earlier indexes stay right."""
        count = len(self.marks())
        return [ChangeHeader(HEADER, index, "") for index in range(count, 0, -1)]


class MilterSession:
    """Answers one connection's commands (None: no reply for this command)."""

    def __init__(
        self,
        pipeline: Pipeline,
        marker: Marker,
        *,
        max_message_size: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pipeline = pipeline
        self.marker = marker
        self.max_message_size = max_message_size
        self.clock = clock
        self.negotiated = protocol.Negotiation(protocol.VERSION, protocol.ACTIONS, protocol.WANTED)
        self.peer = ""
        self.helo = ""
        self.transaction = Transaction()
        self.busy = False  # a message is being judged (for a clean stop)

    def replies_to(self, command: Command) -> bool:
        """Does the MTA wait for an answer to this command?"""
        if command in protocol.SILENT:
            return False
        flag = protocol.NO_REPLY.get(command)
        return flag is None or not (self.negotiated.protocol & flag)

    async def handle(self, command: Command, data: bytes) -> list[Response]:
        """The answers to one command (possibly none, or modifications then a
        final answer at the end of the message)."""
        if command is Command.OPTNEG:
            self.negotiated = protocol.Negotiation.parse(data).agreed()
            return [self.negotiated]
        if command is Command.BODYEOB:
            if data:
                self._body(data)
            return await self._end_of_message()
        if command is Command.RCPT:
            return [self._recipient(protocol.strings(data))]
        self._listen(command, data)
        return [protocol.CONTINUE] if self.replies_to(command) else []

    def _listen(self, command: Command, data: bytes) -> None:
        if command is Command.CONNECT:
            # The address only: it goes into the held copy's trace line.
            _, self.peer = protocol.parse_connect(data)
        elif command is Command.HELO:
            self.helo = (protocol.strings(data) or [""])[0]
        elif command is Command.MAIL:
            arguments = protocol.strings(data)
            self.transaction = Transaction(
                mail_from=protocol.address(arguments[0]) if arguments else ""
            )
        elif command is Command.HEADER:
            parts = protocol.strings(data)
            if parts:
                name, value = parts[0], parts[1] if len(parts) > 1 else ""
                self.transaction.headers.append((name, value))
                self.transaction.size += len(name) + len(value) + 3
        elif command is Command.BODY:
            self._body(data)
        elif command in (Command.ABORT, Command.QUIT_NC):
            self.transaction = Transaction()
            if command is Command.QUIT_NC:
                self.peer, self.helo = "", ""

    def _body(self, data: bytes) -> None:
        transaction = self.transaction
        transaction.size += len(data)
        if transaction.size > self.max_message_size:
            transaction.too_big = True
            transaction.body.clear()
        elif not transaction.too_big:
            transaction.body += data

    def _recipient(self, arguments: list[str]) -> Response:
        rcpt = protocol.address(arguments[0]) if arguments else ""
        transaction = self.transaction
        refusal = self.pipeline.check_recipient(transaction.mail_from, rcpt, transaction.recipients)
        if refusal is not None and transaction.mail_from:
            return ReplyCode(str(refusal))
        if refusal is not None:
            # The null sender: apiguard's own notices come back this way, to
            # senders the recipient rules may not allow. Only the end of the
            # message tells them (their mark) from others, refused then.
            transaction.refusals.append(refusal)
        transaction.recipients.append(rcpt)
        return protocol.CONTINUE

    async def _end_of_message(self) -> list[Response]:
        transaction, self.transaction = (
            self.transaction,
            Transaction(mail_from=self.transaction.mail_from),
        )
        deletions = transaction.mark_deletions()
        if transaction.too_big:
            return [ReplyCode(str(replies.message_too_big(self.max_message_size)))]
        if transaction.marks() and await self._mark_passes(transaction):
            log.info("milter.reinjected", recipients=len(transaction.recipients))
            return [*deletions, protocol.CONTINUE]
        if transaction.refusals:
            return [ReplyCode(str(transaction.refusals[0]))]
        self.busy = True
        try:
            reply = await self.pipeline.receive(
                Envelope(transaction.mail_from, tuple(transaction.recipients)),
                transaction.raw(),
                peer=self.peer or "local",
                helo=self.helo,
            )
        except Exception as error:
            with contextlib.suppress(Exception):
                log.error("milter.eom_failed", error=type(error).__name__)
            reply = replies.INTERNAL_ERROR
        finally:
            self.busy = False
        return [*deletions, answer(reply)] if reply.is_success else [answer(reply)]

    async def _mark_passes(self, transaction: Transaction) -> bool:
        """A mark made by apiguard for this very message, used for the first
        time. Anything else is logged and ignored (the message is judged)."""
        values = transaction.marks()
        mark = Mark.parse(values[0]) if len(values) == 1 else None
        body = bytes(transaction.body)
        if mark is None or not self.marker.verify(
            mark, transaction.mail_from, transaction.recipients, body
        ):
            log.warning("milter.mark_ignored", reason="invalid", marks=len(values))
            return False
        now, max_age = self.clock(), self.marker.max_age
        try:
            fresh = await self.pipeline.store.write(
                lambda db: claim_nonce(db, mark.nonce, now, max_age), durable=True
            )
        except StoreError:
            log.error("milter.mark_store_failed")
            return False
        if not fresh:
            log.warning("milter.mark_ignored", reason="replayed", marks=1)
        return bool(fresh)


def answer(reply: Reply) -> Response:
    """The pipeline's reply as a milter answer at the end of the message."""
    if reply.is_success:
        if reply.verdict is Verdict.FORWARD:
            return protocol.CONTINUE
        # Held (in the quarantine) or refused with the notice by e-mail
        # (`notices.on_reject = "email"`): stored, so Postfix's copy goes.
        if reply.verdict in (Verdict.HOLD, Verdict.REJECT) and reply.message_id:
            log.info("milter.discarded", message_id=reply.message_id, verdict=reply.verdict.value)
            return protocol.DISCARD
        return protocol.TEMPFAIL  # a 250 the pipeline did not decide: never accept it
    return ReplyCode(str(reply))
