"""The reinjection mark: how mail that apiguard hands back to the MTA (a held
letter released by a reviewer, a notice) passes the milter once, and how a
client cannot make its own mail pass.

The mark is one header, `X-Apiguard-Release: v1 <issued> <nonce> <hmac>`. The
HMAC-SHA256, under a key only apiguard reads (a 0600 file), covers the issue
time, a random nonce, the envelope (sender and recipients) and a digest of
the body. The milter lets a marked message pass only when the HMAC matches
that message, the mark is recent (`milter.mark_max_age`) and its nonce was
never seen before (recorded in the store, in the same database as the
quarantine): a copied mark on other mail, other recipients, or the same mail
again is ignored and the message judged like any other. The milter deletes
every mark header before Postfix delivers, valid or not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from apiguard.config import ConfigError

HEADER = "X-Apiguard-Release"
_VERSION = "v1"
_KEY_BYTES = 32


class MarkKeyError(ConfigError):
    """The key file cannot be read or made."""


def load_key(path: Path) -> bytes:
    """The mark key, made (random, mode 0600) on first use."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return _read_key(path)
    except OSError as error:
        raise MarkKeyError(f"{path}: cannot create the mark key: {error.strerror}") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.hex().encode("ascii") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as error:
        raise MarkKeyError(f"{path}: cannot read the mark key: {error}") from None
    if path.stat().st_mode & 0o077:
        raise MarkKeyError(f"{path}: the mark key must be readable by its owner only (chmod 600)")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise MarkKeyError(f"{path}: not a hexadecimal key") from None
    if len(key) < 16:
        raise MarkKeyError(f"{path}: the mark key is too short (32 bytes expected)")
    return key


def body_digest(body: bytes) -> bytes:
    """The body's digest, blind to line endings and trailing blank lines (the
    SMTP hop back through the MTA may change neither otherwise)."""
    return hashlib.sha256(body.replace(b"\r\n", b"\n").rstrip(b"\n")).digest()


def split_body(raw: bytes) -> bytes:
    """The body of a whole message (after the first empty line)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        _, found, body = raw.partition(separator)
        if found:
            return body
    return b""


@dataclass(frozen=True, slots=True)
class Mark:
    issued: int
    nonce: str
    signature: str

    def header_value(self) -> str:
        return f"{_VERSION} {self.issued} {self.nonce} {self.signature}"

    @classmethod
    def parse(cls, value: str) -> Mark | None:
        parts = value.split()
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
            return None
        nonce, signature = parts[2], parts[3]
        if len(nonce) != 32 or len(signature) != 64:
            return None
        return cls(int(parts[1]), nonce, signature)


class Marker:
    """Signs and checks marks with one key."""

    def __init__(
        self, key: bytes, *, max_age: float = 900.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self.max_age = max_age
        self.clock = clock

    def _sign(
        self, issued: int, nonce: str, mail_from: str, recipients: Iterable[str], digest: bytes
    ) -> str:
        envelope = "\0".join([mail_from.lower(), *sorted(r.lower() for r in recipients)])
        text = f"{_VERSION}\0{issued}\0{nonce}\0{envelope}\0".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, text + digest, hashlib.sha256).hexdigest()

    def mark(self, mail_from: str, recipients: Iterable[str], body: bytes) -> Mark:
        issued = int(self.clock())
        nonce = secrets.token_hex(16)
        signature = self._sign(issued, nonce, mail_from, recipients, body_digest(body))
        return Mark(issued, nonce, signature)

    def verify(self, mark: Mark, mail_from: str, recipients: Iterable[str], body: bytes) -> bool:
        """Signature and age (the nonce's single use is the store's to check)."""
        age = self.clock() - mark.issued
        if age > self.max_age or age < -60:
            return False
        expected = self._sign(mark.issued, mark.nonce, mail_from, recipients, body_digest(body))
        return hmac.compare_digest(expected, mark.signature)


def marked(raw: bytes, mark: Mark) -> bytes:
    """The message with the mark as its first header."""
    return f"{HEADER}: {mark.header_value()}\r\n".encode("ascii") + raw


# -- single use, in the store's database ---------------------------------------------

_SCHEMA = "CREATE TABLE IF NOT EXISTS milter_marks (nonce TEXT PRIMARY KEY, used_at REAL NOT NULL)"


def claim_nonce(db: sqlite3.Connection, nonce: str, now: float, max_age: float) -> bool:
    """Record a mark's nonce as used (True), or say it was used already (False).
    Runs inside the store's write transaction; forgets nonces too old to
    verify anyway."""
    db.execute(_SCHEMA)
    db.execute("DELETE FROM milter_marks WHERE used_at < ?", (now - 2 * max_age - 120,))
    cursor = db.execute(
        "INSERT OR IGNORE INTO milter_marks (nonce, used_at) VALUES (?, ?)", (nonce, now)
    )
    return cursor.rowcount == 1
