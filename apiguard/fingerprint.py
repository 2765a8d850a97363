"""The content fingerprint: a normalised hash of what a message says.

Two copies of the same letter get the same fingerprint even when one says
"Cher Dr Durand," and the other "Chère consœur,", when line breaks, spacing or
case differ, or when a signature block was added. Attachments count by their
content hash, not their names. Only the hash is kept: no text is stored.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable

from apiguard.mail import ParsedMessage

# Bumped whenever normalisation changes, so old and new hashes never collide.
_VERSION = b"apiguard-fingerprint-1\n"

# A signature block starts at a "-- " line (RFC 3676).
_SIGNATURE_SEPARATOR = re.compile(r"(?m)^-- ?$")
# A line that only greets: "Cher confrère,", "Bonjour Docteur Durand", "Madame, Monsieur,".
_GREETING_WORDS = (
    r"bonjour|bonsoir|salut|cher|chère|chers|chères|mon cher|ma chère|madame|monsieur"
    r"|mesdames|messieurs|docteur|dr|hello|hi|dear|good morning|good afternoon"
)
_GREETING_START = re.compile(rf"^(?:{_GREETING_WORDS})\b")
_GREETING_PREFIX = re.compile(r"^(?:bonjour|bonsoir|salut|hello|hi)\b[\s,!.:;-]*")
# What a line must start with for `_GREETING_PREFIX` to match (a cheap test first).
_GREETING_PREFIX_WORDS = ("bonjour", "bonsoir", "salut", "hello", "hi")
# A closing formula; what follows it (name, title, telephone) is the signature.
_CLOSING = re.compile(
    r"^(?:(?:bien|très|tres|trés)\s+)?(?:cordialement|confraternellement|amicalement"
    r"|sincèrement|respectueusement|à vous|a vous)\b"
    r"|^(?:(?:sincères|meilleures|mes|nos|bien)\s+)?salutations\b"
    r"|^(?:(?:best|kind|warm)\s+)?regards\b"
    r"|^(?:avec\s+)?(?:mes|nos)\s+(?:remerciements|amitiés)\b"
    r"|^envoyé (?:de|depuis) mon\b|^sent from my\b"
)
# The same formula closing a sentence: "L'examen est normal. Bien confraternellement."
# It starts where a run of separators starts and takes the run whole (`*+`):
# from every comma of ",,,,x cordialement" the plain `*` scanned and gave
# back the run again (55 s for a 40 KB line).
_TRAILING_CLOSING = re.compile(
    r"(?<![\s,.;])[\s,.;]*+(?:(?:bien|très|tres)\s+)?"
    r"(?:cordialement|confraternellement|amicalement)[\s.!]*+$"
)
# A line `_TRAILING_CLOSING` can match ends with one of these words once the
# tail is stripped (lines are space-normalised): a cheap test before the regex.
_TRAILING_CLOSING_WORDS = ("cordialement", "confraternellement", "amicalement")
_TRAILING_CLOSING_TAIL = " .!"
_WORD = re.compile(r"\w+")
_SIGNATURE_MAX_LINES = 8
_SIGNATURE_MAX_WIDTH = 80
_GREETING_MAX_WIDTH = 60
_GREETING_MAX_WORDS = 4
_EDGE_PUNCTUATION = ".,;:!?<>()[]\"'«»"


def _is_greeting(line: str) -> bool:
    if len(line) > _GREETING_MAX_WIDTH or not _GREETING_START.match(line):
        return False
    return line.endswith((",", "!", ":", ";")) or len(line.split()) <= _GREETING_MAX_WORDS


def _strip_signature(lines: list[str], closings: list[int]) -> list[str]:
    """Cut at the last closing formula when only a short signature follows it
    (`closings`: where each closing formula starts, in line indexes)."""
    if not closings:
        return lines
    cut = closings[-1]
    rest = lines[cut:]
    if _CLOSING.match(rest[0] if rest else ""):
        rest = rest[1:]
    if len(rest) <= _SIGNATURE_MAX_LINES and all(
        len(line) <= _SIGNATURE_MAX_WIDTH for line in rest
    ):
        return lines[:cut]
    return lines


def _without_tokens(line: str, tokens: set[str]) -> str:
    return " ".join(word for word in line.split() if word.strip(_EDGE_PUNCTUATION) not in tokens)


def _mentions(tokens: set[str]) -> Callable[[str], bool]:
    """Whether a line holds one of `tokens`. A line holds one exactly when it
    holds one that contains no other (an address holds its local part), so
    only those are looked for: most often a single one."""
    probes = [t for t in tokens if not any(o != t and o in t for o in tokens)]
    if len(probes) == 1:
        (probe,) = probes
        return lambda line: probe in line
    return lambda line: any(probe in line for probe in probes)


def normalised_text(text: str, fold_tokens: Iterable[str] = ()) -> str:
    """The body's words as the fingerprint sees them: case, spacing, punctuation,
    greetings, closing formulas, signature and the given tokens (recipient
    addresses) folded away."""
    if not unicodedata.is_normalized("NFKC", text):  # a quick check: mail usually is
        # Only the lines that need it ("µg", "m²"): a line feed neither composes
        # nor decomposes, so normalising line by line gives the same text.
        text = "\n".join(
            line if unicodedata.is_normalized("NFKC", line) else unicodedata.normalize("NFKC", line)
            for line in text.split("\n")
        )
    text = text.casefold()
    if "--" in text:  # a signature separator needs one (cheap test before the regex)
        text = _SIGNATURE_SEPARATOR.split(text, maxsplit=1)[0]
    kept: list[str] = []
    closings: list[int] = []
    for raw_line in text.split("\n"):
        line = " ".join(raw_line.split())
        if not line or _is_greeting(line):
            continue
        if line.startswith(_GREETING_PREFIX_WORDS):
            line = _GREETING_PREFIX.sub("", line)
        if _CLOSING.match(line):
            closings.append(len(kept))
        elif line.rstrip(_TRAILING_CLOSING_TAIL).endswith(_TRAILING_CLOSING_WORDS):
            without = _TRAILING_CLOSING.sub("", line)
            if without != line:
                closings.append(len(kept) + (1 if without else 0))
                line = without
        if line:
            kept.append(line)
    kept = _strip_signature(kept, closings)
    body = " ".join(kept)
    folded = {token.casefold() for token in fold_tokens if len(token) >= 3}
    if any(token in body for token in folded):
        # Only a word containing a token can strip to it, and words never span lines.
        mentions = _mentions(folded)
        body = " ".join(_without_tokens(line, folded) if mentions(line) else line for line in kept)
    # Words only: punctuation and spacing do not make another content.
    return " ".join(_WORD.findall(body))


def _recipient_tokens(recipients: Iterable[str]) -> set[str]:
    tokens: set[str] = set()
    for address in recipients:
        address = address.strip().strip("<>").casefold()
        if not address:
            continue
        tokens.add(address)
        local = address.partition("@")[0]
        if local:
            tokens.add(local)
    return tokens


def content_fingerprint(message: ParsedMessage, recipients: Iterable[str] = ()) -> str | None:
    """A 128-bit hex fingerprint of the body and attachments, or None when the
    message carries nothing meaningful (no text, no attachment).

    Mentions of the `recipients` (addresses, or their local part such as an
    HPRIM recipient code) are folded away, so that one letter personalised per
    recipient still reads as one content.
    """
    try:
        text = normalised_text(message.text, _recipient_tokens(recipients))
        attachments = sorted(
            hashlib.sha256(attachment.content).hexdigest() for attachment in message.attachments
        )
    except Exception:  # pure code never raises: an unreadable body has no fingerprint
        return None
    if not text and not attachments:
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(_VERSION)
    digest.update(text.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update("\n".join(attachments).encode("ascii"))
    return digest.hexdigest()
