"""Limits that keep one client (or many) from exhausting the SMTP process.

- `InflightBudget`: the bytes of message data held in memory by all sessions
  together, from the first piece read until the pipeline has answered. Past
  the budget a new transaction gets `452 4.3.1` at MAIL (when its declared
  SIZE would not fit) or at DATA, before any data is read; a transfer that
  runs out of budget half-way is read to its end, discarded and gets the
  same 452. 40 concurrent 25 MB uploads took 1 GB before this.
- `SessionLimits`: concurrent sessions per client address, and sessions that
  have not authenticated on a listener that requires AUTH, so that one client
  holding 100 idle sessions cannot lock the practice's own software out.
"""

from __future__ import annotations

from collections import Counter

from apiguard.smtp.replies import Reply

# DATA is refused when less than this is left: room for an ordinary letter.
DATA_MIN_ROOM = 64 * 1024

OUT_OF_MEMORY_BUDGET = Reply(
    452,
    "4.3.1",
    "serveur charge, memoire insuffisante pour ce message: reessayez dans quelques minutes "
    "/ server busy, not enough memory for this message: try again in a few minutes",
)


class InflightBudget:
    """Bytes of message data in memory, all sessions together (event-loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def room_for(self, size: int) -> bool:
        """Would a transaction of `size` bytes (at least `DATA_MIN_ROOM`) fit now?"""
        return self.used + max(size, DATA_MIN_ROOM) <= self.limit

    def take(self, size: int) -> bool:
        """Charge `size` more bytes; False (nothing charged) when they do not fit."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)


def declared_size(mail_options: list[str]) -> int:
    """The SIZE= a client declared at MAIL (RFC 1870), or 0."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


class SessionLimits:
    """Concurrent sessions per client address, and sessions not (yet)
    authenticated on AUTH-required listeners (event-loop only)."""

    def __init__(self, per_address: int, unauthenticated: int) -> None:
        self.per_address = per_address
        self.unauthenticated_limit = unauthenticated
        self.by_address: Counter[str] = Counter()
        self.unauthenticated = 0

    def admit(self, address: str, *, must_authenticate: bool) -> str | None:
        """None to admit (counted), else the refusal outcome."""
        if self.by_address[address] >= self.per_address:
            return "refused_address_sessions"
        if must_authenticate and self.unauthenticated >= self.unauthenticated_limit:
            return "refused_unauthenticated"
        self.by_address[address] += 1
        if must_authenticate:
            self.unauthenticated += 1
        return None

    def authenticated(self) -> None:
        """A session that had to authenticate did: it no longer counts as such."""
        self.unauthenticated = max(0, self.unauthenticated - 1)

    def release(self, address: str, *, unauthenticated: bool) -> None:
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]
        if unauthenticated:
            self.unauthenticated = max(0, self.unauthenticated - 1)
