"""Outgoing delivery: the real relay (aiosmtplib) or the local maildir outbox."""

from apiguard.relay.base import Relay, RelayReply, SendResult

__all__ = ["Relay", "RelayReply", "SendResult"]
