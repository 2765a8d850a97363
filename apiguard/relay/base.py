"""What a delivery attempt returns, per recipient: a typed relay reply.

Temporary (4xx, connection trouble) and permanent (5xx) outcomes are told apart
by the reply code alone; a connection failure is a synthetic 4.x.x reply whose
`cause` says what kind of trouble it was and whose text says it in words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# The most a stored or logged reason keeps of a reply.
REASON_LENGTH = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

# What went wrong when no reply came from the relay: the connection, its TLS
# (certificate, STARTTLS) or the relay's refusal of apiguard's login.
CAUSES = ("connection", "tls", "auth")


def readable(text: str, limit: int = REASON_LENGTH) -> str:
    """`text` on one line: control characters (a multi-line reply's line ends
    among them) become one space; at most `limit` characters."""
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


@dataclass(frozen=True, slots=True)
class RelayReply:
    """The relay's answer for one recipient; with a `cause`, apiguard's own
    account of why no answer came (see `CAUSES`)."""

    code: int
    text: str
    cause: str = ""

    @property
    def reason(self) -> str:
        """What people read: the relay's reply (code, enhanced code, text) or,
        for trouble before any reply, the trouble in words (no code: none came)."""
        if self.cause:
            return readable(self.text.partition(" ")[2] or self.text)
        return readable(str(self))

    @property
    def reason_class(self) -> str:
        """tls, auth, connection, 4xx or 5xx (a closed set: for metrics)."""
        if self.cause:
            return self.cause
        return "5xx" if self.permanent else "4xx"

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


def reason_class(reason: str) -> str:
    """The class (`RelayReply.reason_class`) of a stored reason: a relay's
    reply starts with its code; apiguard's own account of trouble does not."""
    code = reason[:3]
    if code.isdigit():
        return "5xx" if code.startswith("5") else "4xx"
    lowered = reason.lower()
    if lowered.startswith(("certificate", "tls", "the relay does not offer starttls")):
        return "tls"
    if lowered.startswith(("authentication", "the relay offers no authentication")):
        return "auth"
    return "connection"


@dataclass(frozen=True, slots=True)
class SendResult:
    """One reply per recipient of the attempt."""

    replies: dict[str, RelayReply]


def connection_trouble(reason: str, cause: str = "connection", status: str = "4.4.1") -> RelayReply:
    """No reply from the relay for the message: `reason` in words, e.g.
    "connection refused" or "certificate verify failed: …"."""
    kind = cause if cause in CAUSES else "connection"
    return RelayReply(451, f"{status} {readable(reason)}", kind)


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
