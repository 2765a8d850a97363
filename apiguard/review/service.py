"""Review service: list, show, release, reject, expire and cancel messages.

The CLI and the review page share it; it is the only code that moves a message
out of the quarantine (or out of the grace period), and every move is recorded
in the audit trail (who, when, what, comment).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from apiguard.delivery import notice_message
from apiguard.notices import NoticeIdentity, reject_notice
from apiguard.store.base import MessageKind, MessageState, NewMessage, StoredMessage
from apiguard.store.sqlite import SqliteStore

DAY = 24 * 3600.0
EXPIRY_ACTOR = "apiguard"
EXPIRY_BATCH = 100


class ReviewOutcome(enum.Enum):
    DONE = "done"
    NOT_FOUND = "not_found"
    NOT_HELD = "not_held"
    TOO_LATE = "too_late"  # cancel asked once delivery has begun


@dataclass(frozen=True, slots=True)
class ReviewResult:
    outcome: ReviewOutcome
    message_id: str
    state: str = ""

    @property
    def done(self) -> bool:
        return self.outcome is ReviewOutcome.DONE


@dataclass(frozen=True, slots=True)
class HeldPage:
    """One page of the quarantine list, with what the filters can offer."""

    messages: tuple[StoredMessage, ...]
    total: int
    page: int
    pages: int
    rules: tuple[tuple[str, int], ...]
    senders: tuple[tuple[str, int], ...]


class ReviewService:
    """Quarantine and grace-period operations over the store (synchronous: the
    web page runs them on the store's thread)."""

    def __init__(
        self,
        store: SqliteStore,
        identity: NoticeIdentity,
        *,
        hold_days: float = 7.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.identity = identity
        self.hold_seconds = hold_days * DAY
        self.clock = clock

    # -- reading -----------------------------------------------------------

    def list_held(self, limit: int = 100, offset: int = 0) -> list[StoredMessage]:
        return self.store.list_messages(MessageState.HELD, limit=limit, offset=offset)

    def count_held(self) -> int:
        return self.store.count_messages(MessageState.HELD)

    def held_page(
        self, page: int, page_size: int, *, rule: str | None = None, sender: str | None = None
    ) -> HeldPage:
        """Page `page` (from 1) of held messages, newest first, filtered."""
        total = self.store.count_held_filtered(rule, sender)
        pages = max(1, -(-total // page_size))
        page = min(max(1, page), pages)
        messages = self.store.list_held_filtered(rule, sender, page_size, (page - 1) * page_size)
        rules, senders = self.store.held_facets()
        return HeldPage(tuple(messages), total, page, pages, tuple(rules), tuple(senders))

    def cancellable(self, limit: int = 100) -> list[StoredMessage]:
        """Mail still inside the grace period (`review.send_delay`)."""
        return self.store.list_cancellable(self.clock(), limit)

    def show(self, message_id: str) -> tuple[StoredMessage, bytes | None] | None:
        message = self.store.get(message_id)
        if message is None:
            return None
        return message, self.store.get_raw(message_id)

    def expires_at(self, message: StoredMessage) -> float:
        """When a held message is rejected automatically if nobody decides."""
        return message.created_at + self.hold_seconds

    # -- acting ------------------------------------------------------------

    def release(self, message_id: str, actor: str, comment: str = "") -> ReviewResult:
        """Queue a held message for delivery. A second release is refused."""
        message = self.store.get(message_id)
        if message is None:
            return ReviewResult(ReviewOutcome.NOT_FOUND, message_id)
        moved = self.store.transition_held(
            message_id, MessageState.QUEUED, actor, "release", comment, self.clock()
        )
        if not moved:
            return ReviewResult(ReviewOutcome.NOT_HELD, message_id, message.state.value)
        return ReviewResult(ReviewOutcome.DONE, message_id, MessageState.QUEUED.value)

    def reject(
        self, message_id: str, actor: str, comment: str = "", *, expired: bool = False
    ) -> ReviewResult:
        """Refuse a held message and send the sender the explanatory notice."""
        message = self.store.get(message_id)
        if message is None:
            return ReviewResult(ReviewOutcome.NOT_FOUND, message_id)
        if message.state is not MessageState.HELD:
            return ReviewResult(ReviewOutcome.NOT_HELD, message_id, message.state.value)
        now = self.clock()
        notices: tuple[NewMessage, ...] = ()
        if message.mail_from and message.kind is MessageKind.MAIL:
            raw = self.store.get_raw(message_id) or b""
            notice_raw = reject_notice(
                identity=self.identity,
                message_id=message_id,
                sender=message.mail_from,
                recipients=[r.rcpt for r in message.recipients],
                findings=message.findings,
                original_raw=raw,
                arrival=message.created_at,
                by_reviewer=not expired,
                expired=expired,
                comment=comment,
            )
            notices = (notice_message(notice_raw, message.mail_from, message_id, now),)
        moved = self.store.transition_held(
            message_id,
            MessageState.REJECTED,
            actor,
            "expire" if expired else "reject",
            comment,
            now,
            notices,
        )
        if not moved:
            return ReviewResult(ReviewOutcome.NOT_HELD, message_id)
        return ReviewResult(ReviewOutcome.DONE, message_id, MessageState.REJECTED.value)

    def release_many(
        self, message_ids: Iterable[str], actor: str, comment: str = ""
    ) -> list[ReviewResult]:
        """Release a selection; each message moves on its own (one refusal does
        not undo the others)."""
        return [self.release(i, actor, comment) for i in dict.fromkeys(message_ids)]

    def reject_many(
        self, message_ids: Iterable[str], actor: str, comment: str = ""
    ) -> list[ReviewResult]:
        return [self.reject(i, actor, comment) for i in dict.fromkeys(message_ids)]

    def expire_due(self) -> list[ReviewResult]:
        """Reject every message held longer than `review.hold_days`; each sender
        gets the notice saying nobody decided in time."""
        cutoff = self.clock() - self.hold_seconds
        results: list[ReviewResult] = []
        while True:
            batch = self.store.held_before(cutoff, EXPIRY_BATCH)
            done = [self.reject(i, EXPIRY_ACTOR, expired=True) for i in batch]
            results.extend(done)
            # A batch where nothing moved means someone else is acting: stop.
            if len(batch) < EXPIRY_BATCH or not any(r.done for r in done):
                return results

    def cancel(self, message_id: str, actor: str, comment: str = "") -> ReviewResult:
        """Cancel a forwarded message still inside the grace period ("undo send")."""
        message = self.store.get(message_id)
        if message is None or message.kind is not MessageKind.MAIL:
            return ReviewResult(ReviewOutcome.NOT_FOUND, message_id)
        if self.store.cancel_pending(message_id, actor, comment, self.clock()):
            return ReviewResult(ReviewOutcome.DONE, message_id, MessageState.CANCELLED.value)
        current = self.store.get(message_id)
        state = current.state.value if current is not None else ""
        return ReviewResult(ReviewOutcome.TOO_LATE, message_id, state)
