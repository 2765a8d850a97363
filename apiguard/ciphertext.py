"""Whether bytes or text really are ciphertext: structure and entropy.

A `$APICRYPT` line or an `.apz` name is only a claim, and a message whose
content is encrypted skips the content rules, so the claim is checked:

- an armoured block (the body of an APICRYPT message, or a text `.apz`) is
  marker lines and base64 lines only, at least 48 bytes once decoded, and its
  base64 characters are spread like an encoding's (base64 of anything
  readable or random uses about 5 to 6 bits a character; words written
  without spaces, about 4);
- a binary payload has the byte entropy of ciphertext: at least 7 bits a byte
  over its first 64 KiB (text has 4 to 5), less for a very short one, whose
  byte counts cannot reach 8.

Pure, and linear in the size of what it reads.
"""

from __future__ import annotations

import binascii
import math
import re
from collections import Counter

_MARKER = re.compile(r"\$APICRYPT[$A-Za-z0-9._-]*")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_MIN_ARMOURED_BYTES = 48
_MIN_ARMOURED_ENTROPY = 4.6
_MIN_BINARY_BYTES = 64
_SAMPLE = 64 * 1024
_MIN_BINARY_ENTROPY = 7.0


def entropy(symbols: bytes | str) -> float:
    """Shannon entropy of the symbols' frequencies, in bits per symbol."""
    if not symbols:
        return 0.0
    total = len(symbols)
    return -sum(n / total * math.log2(n / total) for n in Counter(symbols).values())


def armoured_ciphertext(text: str, *, marker_required: bool = True) -> bool:
    """Marker lines (`$APICRYPT…`) and base64 lines only, with enough encoded
    bytes spread like an encoding's; a line of plain text anywhere says no."""
    payload: list[str] = []
    markers = 0
    for raw_line in text.split("\n"):
        line = raw_line.strip()
        if not line:
            continue
        if _MARKER.fullmatch(line):
            markers += 1
        elif _BASE64_LINE.fullmatch(line):
            payload.append(line)
        else:
            return False
    if marker_required and not markers:
        return False
    block = "".join(payload)
    if len(block) % 4 or len(block) * 3 // 4 < _MIN_ARMOURED_BYTES:
        return False
    try:
        binascii.a2b_base64(block, strict_mode=True)
    except binascii.Error:
        return False
    return entropy(block.rstrip("=")) >= _MIN_ARMOURED_ENTROPY


def binary_ciphertext(content: bytes) -> bool:
    """Bytes whose values are spread as ciphertext's are."""
    if len(content) < _MIN_BINARY_BYTES:
        return False
    sample = content[:_SAMPLE]
    # n bytes can show at most log2(n) bits; random ones come close to it.
    ceiling = math.log2(min(len(sample), 256))
    threshold = min(_MIN_BINARY_ENTROPY, 0.85 * ceiling)
    return entropy(sample) >= threshold


def looks_like_ciphertext(content: bytes) -> bool:
    """An attachment's bytes are ciphertext: random-looking binary, or an
    armoured block (marker optional)."""
    if binary_ciphertext(content):
        return True
    if not content.isascii():
        return False
    return armoured_ciphertext(content[: _SAMPLE * 16].decode("ascii"), marker_required=False)
