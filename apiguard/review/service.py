"""Review service: list, show, release and reject held messages.

The CLI and the review page share it; it is the only code that moves a message
out of the quarantine, and every move is recorded (who, when, what, comment).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from apiguard.delivery import notice_message
from apiguard.notices import NoticeIdentity, reject_notice
from apiguard.store.base import MessageState, NewMessage, StoredMessage
from apiguard.store.sqlite import SqliteStore


class ReviewOutcome(enum.Enum):
    DONE = "done"
    NOT_FOUND = "not_found"
    NOT_HELD = "not_held"


@dataclass(frozen=True, slots=True)
class ReviewResult:
    outcome: ReviewOutcome
    message_id: str
    state: str = ""


class ReviewService:
    """Quarantine operations over the store."""

    def __init__(
        self,
        store: SqliteStore,
        identity: NoticeIdentity,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.identity = identity
        self.clock = clock

    def list_held(self, limit: int = 100, offset: int = 0) -> list[StoredMessage]:
        return self.store.list_messages(MessageState.HELD, limit=limit, offset=offset)

    def count_held(self) -> int:
        return self.store.count_messages(MessageState.HELD)

    def show(self, message_id: str) -> tuple[StoredMessage, bytes | None] | None:
        message = self.store.get(message_id)
        if message is None:
            return None
        return message, self.store.get_raw(message_id)

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
        if message.mail_from:
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
