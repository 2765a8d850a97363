"""Control characters in text that came from a message or an envelope.

Addresses carry none: a BEL, ESC, NUL or C1 control in a MAIL FROM or RCPT
TO path (quoted local parts included) is refused at the SMTP edge, before
a 250 that no relay (nor the bounce) could honour. Text a person reads on a
terminal (`apiguard review list/show`, `check`, `circuit list`) has escape
sequences and other controls removed, so a message cannot move the cursor,
retitle the window or hide lines on the reviewer's screen.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls: none belongs in an address.
_ADDRESS_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# ESC sequences first (CSI with its parameters, OSC up to its terminator, and
# two-character escapes), then any remaining C0 (but tab and newline), DEL, C1.
_TERMINAL_SEQUENCES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"  # CSI … final byte
    r"|\x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC … BEL or ST
    r"|\x1b[ -/]*[0-~]?"  # other escapes (charset, keypad, …)
    r"|\x9b[0-?]*[ -/]*[@-~]?"  # 8-bit CSI
    r"|\x9d[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # 8-bit OSC
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
# For one-line fields (`apiguard queue`): C0 and C1 controls, DEL, and the
# bidirectional overrides that reorder what a terminal shows.
_FIELD_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def has_control(address: str) -> bool:
    """Does an envelope address contain a control character?"""
    return _ADDRESS_CONTROLS.search(address) is not None


def terminal_safe(text: str) -> str:
    """`text` without terminal escape sequences and control characters (newline
    and tab kept; a carriage return is dropped, so a line cannot overwrite itself)."""
    return _TERMINAL_SEQUENCES.sub("", text)


def printable(text: str) -> str:
    """A one-line field without terminal control characters (each becomes '?',
    so that what was there stays visible)."""
    return _FIELD_CONTROLS.sub("?", text)
