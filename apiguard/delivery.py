"""The delivery worker: claim due messages → relay → delivered | retry later | notify.

At start-up, recipients caught mid-delivery by a crash are due again: delivery
is at least once, never at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Callable

import structlog

from apiguard import metrics
from apiguard.config import DeliverySettings
from apiguard.notices import FailedRecipient, NoticeIdentity, bounce
from apiguard.relay.base import Content, Relay, RelayReply, SendResult, SpooledContent
from apiguard.store.aio import AsyncStore
from apiguard.store.base import (
    DeliveryJob,
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
)

log = structlog.get_logger("apiguard.delivery")


def new_message_id() -> str:
    """Short, unique, roughly time-ordered ids (no content in them)."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(4)}"


CONTENT_LOST = RelayReply(
    554,
    "5.3.0 contenu du message introuvable sur le serveur apiguard, renvoyez-le"
    " / message content lost on the apiguard server, please send it again",
)


def backoff(settings: DeliverySettings, attempts_before: int) -> float:
    """Seconds before the next try: initial, doubling, capped at retry_max."""
    return float(min(settings.retry_initial * (2 ** min(attempts_before, 30)), settings.retry_max))


def notice_message(
    notice_raw: bytes, to: str, related_id: str, now: float, *, not_before: float | None = None
) -> NewMessage:
    """A notice, queued like any mail but with the empty reverse-path."""
    return NewMessage(
        id=new_message_id(),
        created_at=now,
        kind=MessageKind.NOTICE,
        mail_from="",
        recipients=(to,),
        raw=notice_raw,
        size=len(notice_raw),
        verdict="forward",
        state=MessageState.QUEUED,
        related_id=related_id,
        not_before=not_before,
    )


class DeliveryWorker:
    """Delivers due recipients with a bounded number of concurrent attempts."""

    def __init__(
        self,
        store: AsyncStore,
        relay: Relay,
        settings: DeliverySettings,
        identity: NoticeIdentity,
        *,
        concurrency: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.relay = relay
        self.settings = settings
        self.identity = identity
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: deque[DeliveryJob] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self.last_loop_at = 0.0

    def wake(self) -> None:
        """Something became due (a message was accepted or released)."""
        self._wake.set()

    async def start(self) -> None:
        recovered = await self.store.run(self.store.sync.recover_in_flight)
        if recovered:
            log.info("delivery.recovered", recipients=recovered)
        self._runner = asyncio.create_task(self._run(), name="apiguard-delivery")

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        # Claimed but not attempted: due again (a crash would do the same at start-up).
        unattempted = [job.message_id for job in self._queue]
        self._queue.clear()
        if unattempted:
            with contextlib.suppress(Exception):
                await self.store.run(self.store.sync.unclaim, unattempted)

    @property
    def alive(self) -> bool:
        return self._runner is not None and not self._runner.done()

    async def _run(self) -> None:
        """Claim due messages ahead (one transaction for many) into a queue, and
        keep `concurrency` attempts running from it."""
        while not self._stopping:
            self.last_loop_at = self.clock()
            claimed: list[DeliveryJob] = []
            if len(self._queue) < self._concurrency:
                room = self.settings.batch_size - len(self._queue) - len(self._tasks)
                if room > 0:
                    try:
                        claimed = await self.store.claim(self.clock(), room)
                    except Exception as error:
                        log.error("delivery.claim_failed", error=type(error).__name__)
                    self._queue.extend(claimed)
            while self._queue and len(self._tasks) < self._concurrency:
                task = asyncio.create_task(self._attempt(self._queue.popleft()))
                self._tasks.add(task)
                task.add_done_callback(self._done)
            await self._sleep(idle=not claimed and not self._queue and not self._tasks)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _sleep(self, *, idle: bool) -> None:
        """Wait to be woken (an attempt finished, a message was queued) or until
        the next retry is due; only an idle worker asks the store when that is."""
        timeout = self.settings.poll_interval
        if idle:
            with contextlib.suppress(Exception):
                due = await self.store.run(self.store.sync.next_due)
                if due is not None:
                    timeout = max(0.0, min(timeout, due - self.clock()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _content(self, message_id: str) -> Content | None:
        """A content not claimed with its job: a big one, streamed from its
        spool file (or, from an older store, read from the database)."""
        path = self.store.sync.spool / message_id
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            return await self.store.read_content(message_id)
        return SpooledContent(path, size)

    async def _attempt(self, job: DeliveryJob) -> None:
        async with self._slots:
            recipients = [r.rcpt for r in job.recipients]
            started = self.clock()
            content = job.raw if job.raw is not None else await self._content(job.message_id)
            if content is None:
                # Kept until every recipient is final, so only a damaged disk
                # gets here: fail it for good and tell the sender to send again,
                # rather than retry what cannot succeed.
                log.error("delivery.content_missing", message_id=job.message_id)
                content = b""
                result = SendResult({r: CONTENT_LOST for r in recipients})
            else:
                result = await self.relay.send(job.mail_from, recipients, content)
            now = self.clock()
            outcomes: list[RecipientOutcome] = []
            failures: list[FailedRecipient] = []
            expired_any = False
            for row in job.recipients:
                reply = result.replies.get(row.rcpt) or RelayReply(451, "4.4.0 no reply")
                outcome, failure, expired = self._judge(job, row.rcpt, row.attempts, reply, now)
                outcomes.append(outcome)
                expired_any = expired_any or expired
                if failure is not None:
                    failures.append(failure)
            notices: tuple[NewMessage, ...] = ()
            if failures and job.kind is MessageKind.MAIL and job.mail_from:
                raw = bounce(
                    identity=self.identity,
                    message_id=job.message_id,
                    sender=job.mail_from,
                    failures=failures,
                    original_raw=(
                        await asyncio.to_thread(content.head)
                        if isinstance(content, SpooledContent)
                        else content
                    ),
                    arrival=job.created_at,
                    expired=expired_any,
                )
                notices = (notice_message(raw, job.mail_from, job.message_id, now),)
            try:
                await self.store.complete(job.message_id, outcomes, notices, now)
            except Exception as error:
                log.error(
                    "delivery.record_failed", message_id=job.message_id, error=type(error).__name__
                )
                return
            metrics.record_delivery(job.kind.value, outcomes, job.created_at, now)
            for state in {o.state for o in outcomes}:
                log.info(
                    "delivery.attempt",
                    message_id=job.message_id,
                    kind=job.kind.value,
                    outcome=state.value,
                    recipients=sum(1 for o in outcomes if o.state is state),
                    codes=sorted({r.code for r in result.replies.values()}),
                    seconds=round(now - started, 4),
                    notices=len(notices),
                )

    def _judge(
        self, job: DeliveryJob, rcpt: str, attempts: int, reply: RelayReply, now: float
    ) -> tuple[RecipientOutcome, FailedRecipient | None, bool]:
        if reply.delivered:
            return RecipientOutcome(rcpt, RecipientState.DELIVERED, str(reply)), None, False
        diagnostic = f"smtp; {reply}"
        if reply.permanent:
            status = _enhanced(reply.text, "5.0.0")
            failure = FailedRecipient(rcpt, "failed", status, diagnostic)
            return RecipientOutcome(rcpt, RecipientState.FAILED, str(reply)), failure, False
        next_at = now + backoff(self.settings, attempts)
        if now - job.created_at >= self.settings.lifetime:
            status = "4.4.7"
            failure = FailedRecipient(rcpt, "failed", status, diagnostic)
            outcome = RecipientOutcome(rcpt, RecipientState.FAILED, f"expired: {reply}")
            return outcome, failure, True
        return RecipientOutcome(rcpt, RecipientState.DEFERRED, str(reply), next_at), None, False


def _enhanced(text: str, default: str) -> str:
    head = text.split(" ", 1)[0]
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return head
    return default
