"""Article 2 over time: the values the volume rules read and the store writes.

The store (`apiguard.store.volume`) counts, atomically and on its one thread,
what earlier messages did: `VolumeSnapshot` is that count for one message. The
rules (`apiguard.policy.rules.volume`) judge the snapshot; `Settlement` tells
the store what the decision was, so refused messages stop counting, a crossed
fan-out refuses its held copies and a crossed rate limit opens the circuit.
Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field

from apiguard.policy.verdict import Action, Decision, Finding, Verdict

if TYPE_CHECKING:
    from apiguard.policy.charter import Charter

FANOUT = "art2.fanout"
DUPLICATE = "art2.duplicate"
RATE = "art2.rate"
VOLUME_RULES = frozenset({FANOUT, DUPLICATE, RATE})
# The reason `apiguard check` gives when it has no store to count in.
NO_STORE = "volume.no-store"

# The rate limits are "per 10 minutes" and "per day": fixed windows.
RATE_SHORT_WINDOW = 600.0
RATE_DAY_WINDOW = 86400.0

_UNITS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "j": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m|h|d|j)?\s*$", re.IGNORECASE)


def parse_duration(value: Any) -> Any:
    """Seconds from `90`, `"90s"`, `"10min"`, `"24h"` or `"2d"` (other input is
    left for pydantic to refuse with its own message)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError("a duration such as 90s, 10min, 24h or 2d")
        return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


def human_duration(seconds: float) -> str:
    """`86400` → `24 h`, `600` → `10 min`, `5400` → `1 h 30 min` (French and English alike)."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if secs or not parts:
        parts.append(f"{secs} s")
    return " ".join(parts)


def normalise_address(address: str) -> str:
    return address.strip().strip("<>").lower()


@dataclass(frozen=True, slots=True)
class VolumeWindows:
    """How far back the store looks, in seconds (from the rules' settings)."""

    fanout: float = 86400.0
    duplicate: float = 3600.0
    rate_short: float = RATE_SHORT_WINDOW
    rate_day: float = RATE_DAY_WINDOW

    @property
    def longest(self) -> float:
        """Rows older than this count for nothing and may be pruned."""
        return max(self.fanout, self.duplicate, self.rate_short, self.rate_day)

    @classmethod
    def from_charter(cls, charter: Charter) -> VolumeWindows:
        """The windows configured on the charter's `art2.fanout` and `art2.duplicate`."""
        defaults = cls()
        fanout, duplicate = charter.rule(FANOUT), charter.rule(DUPLICATE)
        return cls(
            fanout=float(getattr(fanout.params, "fanout_window", defaults.fanout))
            if fanout is not None
            else defaults.fanout,
            duplicate=float(getattr(duplicate.params, "duplicate_window", defaults.duplicate))
            if duplicate is not None
            else defaults.duplicate,
        )


@dataclass(frozen=True, slots=True)
class VolumeSnapshot:
    """What the store remembers that bears on one message. Counts include the
    message itself and every earlier message not refused (pending ones too)."""

    fingerprint: str | None
    # Distinct recipients of this content within the fan-out window.
    fanout_recipients: int = 0
    # This content already crossed the fan-out line within the window.
    fanout_blocked: bool = False
    # How many of this message's recipients already got this content within
    # the duplicate window.
    duplicate_recipients: int = 0
    # This sender's messages in the last 10 minutes and in the last day
    # (since its circuit was last closed).
    sender_short: int = 0
    sender_day: int = 0
    # The sender's circuit was already open when this message arrived.
    circuit_open: bool = False


# A notification (empty reverse-path) is not counted: the volume rules see this.
NO_HISTORY = VolumeSnapshot(fingerprint=None)


def _opens_circuit(finding: Finding) -> bool:
    return finding.rule == RATE and dict(finding.details).get("circuit") == "opening"


def held_by_open_circuit_only(findings: Iterable[Finding]) -> bool:
    """Every holding finding is "the sender's circuit is already open".

    Such a message gets no hold notice of its own: the sender was alerted once
    when the circuit opened, and a runaway loop must not get a notice per message.
    """
    holding = [f for f in findings if f.action is Action.HOLD]
    return bool(holding) and all(
        f.rule == RATE and dict(f.details).get("circuit") == "open" for f in holding
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    """What the store must record once a message is decided (or failed to store)."""

    message_id: str
    sender: str
    fingerprint: str | None
    stored: bool
    refused: bool = False
    held: bool = False
    # The message crossed the fan-out line and is refused: its held copies are
    # refused too, and later copies within the window are refused outright.
    fanout_crossed: bool = False
    # The message crossed the sender's rate limit: open the circuit (once).
    open_circuit: bool = False
    sender_short: int = 0
    sender_day: int = 0

    @classmethod
    def of(
        cls,
        message_id: str,
        sender: str,
        snapshot: VolumeSnapshot,
        decision: Decision | None,
        *,
        stored: bool = True,
    ) -> Settlement:
        """The settlement for a decided message (`decision` None: nothing was decided)."""
        findings = decision.findings if decision is not None else ()
        verdict = decision.verdict if decision is not None else None
        return cls(
            message_id=message_id,
            sender=normalise_address(sender),
            fingerprint=snapshot.fingerprint,
            stored=stored and decision is not None,
            refused=verdict is Verdict.REJECT,
            held=verdict is Verdict.HOLD,
            fanout_crossed=verdict is Verdict.REJECT
            and any(f.rule == FANOUT and f.action is Action.REJECT for f in findings),
            # A refused message does not count, so it cannot be the one crossing the line.
            open_circuit=verdict is not Verdict.REJECT and any(_opens_circuit(f) for f in findings),
            sender_short=snapshot.sender_short,
            sender_day=snapshot.sender_day,
        )


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """What settling did beyond the message itself."""

    circuit_opened: bool = False
    copies_refused: int = 0
    self_refused: bool = False


@dataclass(frozen=True, slots=True)
class Circuit:
    """A sender's circuit as stored: open until a person closes it."""

    sender: str
    state: str  # "open" or "closed"
    opened_at: float
    closed_at: float | None
    closed_by: str
    times_opened: int
    messages_short: int
    messages_day: int
    held_messages: int = 0
