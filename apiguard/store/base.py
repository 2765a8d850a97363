"""The store's value types and its interface (SQLite is one engine of it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from apiguard.policy.verdict import Finding


class StoreError(Exception):
    """The store could not durably write or read: the caller answers 4xx."""


class MessageKind(enum.Enum):
    MAIL = "mail"
    NOTICE = "notice"


class MessageState(enum.Enum):
    QUEUED = "queued"  # some recipients still to deliver
    HELD = "held"  # in quarantine, waiting for a person
    REJECTED = "rejected"  # refused (at SMTP time or by a reviewer)
    DONE = "done"  # every recipient delivered or failed
    CANCELLED = "cancelled"


class RecipientState(enum.Enum):
    QUEUED = "queued"
    DEFERRED = "deferred"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    HELD = "held"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_RECIPIENT_STATES


FINAL_RECIPIENT_STATES = frozenset(
    {
        RecipientState.DELIVERED,
        RecipientState.FAILED,
        RecipientState.REJECTED,
        RecipientState.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store: accepted mail (forward/hold/reject) or a notice."""

    id: str
    created_at: float
    kind: MessageKind
    mail_from: str
    recipients: tuple[str, ...]
    raw: bytes | None
    size: int
    verdict: str
    state: MessageState
    findings: tuple[Finding, ...] = ()
    not_before: float | None = None
    related_id: str | None = None
    spooled: bool = False  # the content is in its spool file already, not in `raw`
    software: str = ""  # the sending software's product name (decision record)


@dataclass(frozen=True, slots=True)
class RecipientRow:
    rcpt: str
    state: RecipientState
    attempts: int
    next_attempt_at: float | None
    last_reply: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    created_at: float
    kind: MessageKind
    mail_from: str
    size: int
    verdict: str
    state: MessageState
    findings: tuple[Finding, ...]
    recipients: tuple[RecipientRow, ...]
    related_id: str | None = None
    audit: tuple[AuditEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    message_id: str
    at: float
    actor: str
    action: str
    comment: str


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """Recipients of one message claimed for a delivery attempt."""

    message_id: str
    created_at: float
    kind: MessageKind
    mail_from: str
    raw: bytes | None  # None: a big content, read when the attempt starts
    recipients: tuple[RecipientRow, ...]


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    rcpt: str
    state: RecipientState
    reply: str
    next_attempt_at: float | None = None


@dataclass(slots=True)
class QueueCounts:
    by_state: dict[str, int] = field(default_factory=dict)


class Store(Protocol):
    """Synchronous store interface; `AsyncStore` runs it off the event loop."""

    def accept(self, message: NewMessage, notices: tuple[NewMessage, ...] = ()) -> None:
        """Durably store a message and the notices it causes, atomically."""

    def claim_due(self, now: float, limit: int) -> list[DeliveryJob]: ...

    def complete(
        self,
        message_id: str,
        outcomes: list[RecipientOutcome],
        notices: tuple[NewMessage, ...] = (),
        now: float = 0.0,
    ) -> None: ...

    def recover_in_flight(self) -> int: ...

    def next_due(self) -> float | None: ...

    def get(self, message_id: str) -> StoredMessage | None: ...

    def get_raw(self, message_id: str) -> bytes | None: ...

    def list_messages(
        self, state: MessageState | None, limit: int = 100, offset: int = 0
    ) -> list[StoredMessage]: ...

    def transition_held(
        self,
        message_id: str,
        to_state: MessageState,
        actor: str,
        action: str,
        comment: str,
        now: float,
        notices: tuple[NewMessage, ...] = (),
    ) -> bool: ...

    def queue_counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...
