"""What a delivery attempt returns, per recipient: a typed relay reply.

Temporary (4xx, connection trouble) and permanent (5xx) outcomes are told apart
by the reply code alone; a connection failure is a synthetic 4.4.x reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RelayReply:
    """The relay's answer for one recipient."""

    code: int
    text: str

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return not self.delivered and self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass(frozen=True, slots=True)
class SendResult:
    """One reply per recipient of the attempt."""

    replies: dict[str, RelayReply]


def connection_trouble(reason: str) -> RelayReply:
    return RelayReply(451, f"4.4.1 relay unreachable: {reason}")


@dataclass(frozen=True, slots=True)
class SpooledContent:
    """A big message's content in its spool file: streamed to the relay in
    pieces, never held whole in memory."""

    path: Path
    size: int

    def head(self, limit: int = 64 * 1024) -> bytes:
        """The first bytes (the headers a delivery-status notice quotes)."""
        with self.path.open("rb") as handle:
            return handle.read(limit)

    def read(self) -> bytes:
        return self.path.read_bytes()


# What a relay is given: the bytes, or the spool file of a big message.
Content = bytes | SpooledContent


class Relay(Protocol):
    """One method: try to hand one message to its recipients."""

    async def send(self, mail_from: str, recipients: list[str], data: Content) -> SendResult: ...

    async def close(self) -> None: ...
