"""The delivery worker: claim due messages (a lease) → relay → delivered |
retry later | notify.

Nothing stalls silently:
- a claim is a lease (`delivery.lease`): a recipient whose attempt recorded no
  outcome is due again when it runs out, while the service runs; at start-up,
  recipients caught mid-delivery by a crash are due again at once. Delivery is
  at least once, never at most once;
- an outcome the store could not record is kept in memory and recorded again
  (a delivered letter is not sent twice when that can be avoided), and claims
  and records that fail back off, logging a few lines a minute;
- a message deferred for its own sake holds back no later one (see
  `SqliteStore.claim_in`), and mail late by `delivery.delay_warning` gets one
  "delayed" report to its sender;
- each recipient's outcome is logged and stored with the relay's own reply or
  a readable reason ("certificate verify failed: …").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from apiguard import metrics
from apiguard.config import DeliverySettings
from apiguard.notices import FailedRecipient, NoticeIdentity, bounce, delay_notice
from apiguard.pacing import Backoff, LogBudget
from apiguard.relay.base import (
    Content,
    Relay,
    RelayReply,
    SendResult,
    SpooledContent,
    readable,
    reason_class,
)
from apiguard.store.aio import AsyncStore
from apiguard.store.base import (
    DeliveryJob,
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
    StoredMessage,
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


# The longest wait between two tries of a store that cannot be written.
STORE_RETRY_MAX = 30.0
# Delayed mail looked for at most this often (seconds).
DELAY_CHECK_MAX = 60.0
_ADDRESS = re.compile(r"<?[^\s<>]+@[^\s<>]+>?")


def loggable(reason: str) -> str:
    """A reason for the log: the relay's reply often repeats the address,
    which logs never carry."""
    return _ADDRESS.sub("<address>", reason)


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


@dataclass(slots=True, eq=False)  # the same attempt, not an equal one
class Attempt:
    """One attempt's outcomes and the notices they cause: recorded in the
    store, or kept here until the store takes them."""

    job: DeliveryJob
    outcomes: list[RecipientOutcome]
    notices: tuple[NewMessage, ...]
    at: float
    seconds: float


@dataclass(slots=True)
class RelayHealth:
    """What the attempts tell of the relay, for /readyz and /metrics: since
    when it has failed before any reply (connection, TLS, login), why, and its
    last success."""

    failing_since: float | None = None
    last_reason: str = ""
    last_success: float | None = None

    def observe(self, replies: Iterable[RelayReply], now: float) -> None:
        for reply in replies:
            if reply.cause:
                if self.failing_since is None:
                    self.failing_since = now
                self.last_reason = reply.reason
                continue
            self.failing_since = None  # the relay answered: it is there
            if reply.delivered:
                self.last_success = now
                metrics.RELAY_LAST_SUCCESS.set(now)


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
        relay_host: str = "",
    ) -> None:
        self.store = store
        self.relay = relay
        self.settings = settings
        self.identity = identity
        self.clock = clock
        self.relay_host = relay_host  # Remote-MTA of the reports
        self.relay_health = RelayHealth()
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: deque[DeliveryJob] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self.last_loop_at = 0.0
        # Recipients (message id, address) claimed and not settled yet: queued
        # here, being attempted, or with an outcome the store has not taken
        # yet; and those attempts, oldest first.
        self._held: set[tuple[str, str]] = set()
        self._unrecorded: list[Attempt] = []
        # Real time (not `clock`): how long to wait for a store to recover.
        cap = min(STORE_RETRY_MAX, max(settings.retry_max, settings.poll_interval))
        self._claim_pace = Backoff(settings.poll_interval, cap, time.monotonic)
        self._record_pace = Backoff(settings.poll_interval, cap, time.monotonic)
        self._claim_log, self._record_log = LogBudget(), LogBudget()
        self.store_failure = ""  # why the store last failed, while it fails
        self._next_delay_check = 0.0

    def wake(self) -> None:
        """Something became due (a message was accepted or released)."""
        self._wake.set()

    @property
    def store_writable(self) -> bool:
        """False while claims or the recording of outcomes fail."""
        return not (self._claim_pace.failures or self._record_pace.failures)

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
        for attempt in list(self._unrecorded):  # a last chance
            await self._record(attempt)
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
        """Record kept outcomes, claim due messages ahead (one transaction for
        many) into a queue, and keep `concurrency` attempts running from it."""
        while not self._stopping:
            self.last_loop_at = self.clock()
            await self._record_kept()
            claimed = await self._claim()
            await self._warn_delayed()
            while self._queue and len(self._tasks) < self._concurrency:
                task = asyncio.create_task(self._attempt(self._queue.popleft()))
                self._tasks.add(task)
                task.add_done_callback(self._done)
            await self._sleep(idle=not claimed and not self._queue and not self._tasks)

    async def _claim(self) -> bool:
        """Claim what is due into the queue; False when nothing was claimed."""
        if len(self._queue) >= self._concurrency or self._claim_pace.waiting:
            return False
        room = self.settings.batch_size - len(self._queue) - len(self._tasks)
        if room <= 0:
            return False
        try:
            claimed = await self.store.claim(self.clock(), room, self.settings.lease)
        except Exception as error:
            self._store_failed("claim", error, self._claim_pace, self._claim_log)
            return False
        self._store_worked(self._claim_pace)
        for job in claimed:
            # A lease that ran out while this worker still holds the recipient
            # (a slow attempt, an outcome not recorded yet): that one settles it.
            rows = tuple(r for r in job.recipients if (job.message_id, r.rcpt) not in self._held)
            if rows:
                self._held.update((job.message_id, r.rcpt) for r in rows)
                self._queue.append(dataclasses.replace(job, recipients=rows))
        return bool(claimed)

    def _release(self, job: DeliveryJob) -> None:
        self._held.difference_update((job.message_id, r.rcpt) for r in job.recipients)

    def _store_failed(
        self, operation: str, error: Exception, pace: Backoff, budget: LogBudget
    ) -> None:
        """Back off, and log a few lines a minute (each says how many were left out)."""
        wait = pace.failed()
        self.store_failure = readable(f"{operation}: {error}" if str(error) else operation)
        metrics.record_store_failure(operation)
        left_out = budget.allow()
        if left_out is not None:
            log.error(
                f"delivery.{operation}_failed",
                error=type(error).__name__,
                reason=readable(str(error)),
                retry_in=round(wait, 3),
                left_out=left_out,
            )

    def _store_worked(self, pace: Backoff) -> None:
        if pace.failures:
            log.info("delivery.store_recovered", failures=pace.failures)
        pace.succeeded()
        if self.store_writable:
            self.store_failure = ""

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _sleep(self, *, idle: bool) -> None:
        """Wait to be woken (an attempt finished, a message was queued) or until
        the next retry is due; only an idle worker asks the store when that
        is. Something due but not claimable (it waits behind an earlier
        message) is looked at again after `poll_interval`, not in a loop."""
        timeout = self.settings.poll_interval
        if idle and not self._claim_pace.failures:
            with contextlib.suppress(Exception):
                due = await self.store.run(self.store.sync.next_due)
                if due is not None and due > self.clock():
                    timeout = min(timeout, due - self.clock())
        timeout = max(timeout, self._claim_pace.waiting)
        if self._unrecorded:
            timeout = min(timeout, max(self._record_pace.waiting, 0.01))
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
        settled = False
        try:
            async with self._slots:
                started = self.clock()
                content, result = await self._send(job)
                attempt = await self._settle(job, content, result, started)
                self._report(attempt)
                settled = True
                await self._record(attempt)
        finally:
            if not settled:  # an attempt that broke off: its lease brings it back
                self._release(job)

    async def _send(self, job: DeliveryJob) -> tuple[Content, SendResult]:
        recipients = [r.rcpt for r in job.recipients]
        content = job.raw if job.raw is not None else await self._content(job.message_id)
        if content is None:
            # Kept until every recipient is final, so only a damaged disk
            # gets here: fail it for good and tell the sender to send again,
            # rather than retry what cannot succeed.
            log.error("delivery.content_missing", message_id=job.message_id)
            return b"", SendResult({r: CONTENT_LOST for r in recipients})
        result = await self.relay.send(job.mail_from, recipients, content)
        self.relay_health.observe(result.replies.values(), self.clock())
        return content, result

    async def _settle(
        self, job: DeliveryJob, content: Content, result: SendResult, started: float
    ) -> Attempt:
        """Each recipient's outcome, and the report its sender gets for those
        that failed for good."""
        now = self.clock()
        outcomes: list[RecipientOutcome] = []
        failures: list[FailedRecipient] = []
        expired_any = False
        for row in job.recipients:
            reply = result.replies.get(row.rcpt) or NO_REPLY
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
                original_raw=await _head(content),
                arrival=job.created_at,
                expired=expired_any,
            )
            notices = (notice_message(raw, job.mail_from, job.message_id, now),)
        return Attempt(job, outcomes, notices, now, now - started)

    def _report(self, attempt: Attempt) -> None:
        """One log line per recipient, with its reason (addresses left out)."""
        job = attempt.job
        metrics.record_delivery(job.kind.value, attempt.outcomes, job.created_at, attempt.at)
        for number, outcome in enumerate(attempt.outcomes, start=1):
            log.info(
                "delivery.attempt",
                message_id=job.message_id,
                kind=job.kind.value,
                recipient=number,
                recipients=len(attempt.outcomes),
                outcome=outcome.state.value,
                reason=loggable(outcome.reply),
                seconds=round(attempt.seconds, 4),
                notices=len(attempt.notices),
            )

    async def _record(self, attempt: Attempt) -> bool:
        """Store the outcome; kept in memory to be recorded again when the
        store fails (the lease is the backstop should that never succeed)."""
        message_id = attempt.job.message_id
        try:
            await self.store.complete(message_id, attempt.outcomes, attempt.notices, attempt.at)
        except Exception as error:
            if attempt not in self._unrecorded:
                self._unrecorded.append(attempt)
            self._store_failed("record", error, self._record_pace, self._record_log)
            return False
        if attempt in self._unrecorded:
            self._unrecorded.remove(attempt)
        self._release(attempt.job)
        self._store_worked(self._record_pace)
        if attempt.notices:
            self._wake.set()
        return True

    async def _record_kept(self) -> None:
        if not self._unrecorded or self._record_pace.waiting:
            return
        for attempt in list(self._unrecorded):
            if not await self._record(attempt):
                return

    def _judge(
        self, job: DeliveryJob, rcpt: str, attempts: int, reply: RelayReply, now: float
    ) -> tuple[RecipientOutcome, FailedRecipient | None, bool]:
        reason = reply.reason
        if reply.delivered:
            return RecipientOutcome(rcpt, RecipientState.DELIVERED, reason), None, False
        diagnostic = f"X-Apiguard; {reason}" if reply.cause else f"smtp; {reason}"
        if reply.permanent:
            status = _enhanced(reply.text, "5.0.0")
            failure = FailedRecipient(rcpt, "failed", status, diagnostic, self.relay_host)
            return RecipientOutcome(rcpt, RecipientState.FAILED, reason), failure, False
        next_at = now + backoff(self.settings, attempts)
        if now - job.created_at >= self.settings.lifetime:
            failure = FailedRecipient(rcpt, "failed", "4.4.7", diagnostic, self.relay_host)
            outcome = RecipientOutcome(rcpt, RecipientState.FAILED, readable(f"expired: {reason}"))
            return outcome, failure, True
        return RecipientOutcome(rcpt, RecipientState.DEFERRED, reason, next_at), None, False

    # -- delay warnings ----------------------------------------------------------

    async def _warn_delayed(self) -> None:
        """Tell the senders of mail late by `delay_warning`, once each."""
        delay = self.settings.delay_warning
        if not delay or time.monotonic() < self._next_delay_check or not self.store_writable:
            return
        self._next_delay_check = time.monotonic() + min(
            DELAY_CHECK_MAX, max(self.settings.poll_interval, delay / 10)
        )
        try:
            late = await self.store.run(
                self.store.sync.delayed_mail, self.clock() - delay, self.settings.batch_size
            )
            warned = 0
            for message in late:
                warned += await self._warn(message)
        except Exception as error:
            log.error("delivery.delay_warning_failed", error=type(error).__name__)
            return
        if warned:
            log.info("delivery.delay_warned", messages=warned)
            self._wake.set()

    async def _warn(self, message: StoredMessage) -> bool:
        """Queue one "delayed" report for `message` (False: warned already)."""
        waiting = [r for r in message.recipients if not r.state.is_final]
        if not waiting:
            return False
        until = message.created_at + self.settings.lifetime
        delayed = [
            FailedRecipient(r.rcpt, "delayed", *_delay_status(r.last_reply), self.relay_host, until)
            for r in waiting
        ]
        raw = delay_notice(
            identity=self.identity,
            message_id=message.id,
            sender=message.mail_from,
            delayed=delayed,
            original_raw=await _head(await self._content(message.id) or b""),
            arrival=message.created_at,
            give_up_at=until,
        )
        notice = notice_message(raw, message.mail_from, message.id, self.clock())
        warn = functools.partial(
            self.store.sync.warn_delayed_in, message_id=message.id, notice=notice, now=self.clock()
        )
        return bool(await self.store.write(warn, durable=True))


NO_REPLY = RelayReply(451, "4.4.0 no reply from the relay for this recipient")


async def _head(content: Content) -> bytes:
    """What a report quotes of a message: its headers (from the first bytes)."""
    if isinstance(content, SpooledContent):
        return await asyncio.to_thread(content.head)
    return content


# Status of a recipient delayed by apiguard's own account of trouble (RFC 3463).
_TROUBLE_STATUS = {"tls": "4.7.5", "auth": "4.7.0", "connection": "4.4.1"}


def _delay_status(last_reply: str) -> tuple[str, str]:
    """A delayed recipient's Status and Diagnostic-Code, from its last reason."""
    if not last_reply:
        return "4.4.1", "X-Apiguard; not tried yet (waiting for an earlier message)"
    kind = reason_class(last_reply)
    if kind in _TROUBLE_STATUS:
        return _TROUBLE_STATUS[kind], f"X-Apiguard; {last_reply}"
    return _enhanced(last_reply.partition(" ")[2], "4.0.0"), f"smtp; {last_reply}"


def _enhanced(text: str, default: str) -> str:
    head = text.split(" ", 1)[0]
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return head
    return default
