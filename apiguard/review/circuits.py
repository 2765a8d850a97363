"""The circuits of `art2.rate` (a runaway sender's mail is held until a person
closes its circuit), as the volume rules keep them, when they are installed.

The page needs an object with `circuits(open_only=False)` (items with `sender`,
`state` "open"/"closed", `opened_at`, `closed_at`, `held_messages`) and
`close_circuit(sender, actor, now) -> bool`, as `apiguard.store.volume.VolumeStore`
has; without one, the section is hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Closed circuits are history: the page shows the latest few.
SHOWN = 50


@dataclass(frozen=True, slots=True)
class CircuitView:
    sender: str
    open: bool
    opened_at: float
    closed_at: float | None
    held_messages: int | None = None


def _view(item: Any) -> CircuitView:
    closed_at = getattr(item, "closed_at", None)
    held = getattr(item, "held_messages", None)
    return CircuitView(
        sender=str(item.sender),
        open=str(getattr(item, "state", "")) == "open",
        opened_at=float(item.opened_at),
        closed_at=float(closed_at) if closed_at is not None else None,
        held_messages=int(held) if held is not None else None,
    )


class CircuitBoard:
    """Lists and closes circuits through the volume store."""

    def __init__(self, volume: Any) -> None:
        self.volume = volume

    def circuits(self) -> list[CircuitView]:
        """Open circuits first, then the most recently changed."""
        views = [_view(item) for item in self.volume.circuits(open_only=False)]
        views.sort(key=lambda v: (not v.open, -(v.closed_at or v.opened_at)))
        return views[:SHOWN]

    def close(self, sender: str, actor: str, now: float) -> bool:
        return bool(self.volume.close_circuit(sender, actor, now))


def find_board(volume: object | None) -> CircuitBoard | None:
    """A board over `volume` when it speaks circuits, else None."""
    if callable(getattr(volume, "circuits", None)) and callable(
        getattr(volume, "close_circuit", None)
    ):
        return CircuitBoard(volume)
    return None
