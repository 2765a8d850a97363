"""Durable state: the spool, the quarantine and the delivery state per recipient."""

from apiguard.store.base import (
    AuditEntry,
    DeliveryJob,
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
    Store,
    StoredMessage,
    StoreError,
)

__all__ = [
    "AuditEntry",
    "DeliveryJob",
    "MessageKind",
    "MessageState",
    "NewMessage",
    "RecipientOutcome",
    "RecipientState",
    "Store",
    "StoreError",
    "StoredMessage",
]
