"""Reviewer accounts: scrypt password hashes, the shared token, the session key.

Hashes read `scrypt:N:r:p$salt$hexdigest` (the format werkzeug also writes), so
an administrator can make one with `apiguard review hash-password` or any tool
that speaks it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Cost of new hashes: about 0.1 s and 32 MiB on a practice PC; slows guessing.
DEFAULT_N = 2**15
DEFAULT_R = 8
DEFAULT_P = 1
SECRET_FILE = "review-session.key"  # noqa: S105 (a file name)
TOKEN_ACTOR = "token"  # noqa: S105 (the audit name of token logins)


def _scrypt(password: str, salt: str, n: int, r: int, p: int, length: int = 64) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt.encode("utf-8"),
        n=n,
        r=r,
        p=p,
        maxmem=132 * n * r * p,
        dklen=length,
    )


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = 1) -> str:
    """A new salted scrypt hash of `password`, for `[review.users]`."""
    salt = secrets.token_urlsafe(12)
    return f"scrypt:{n}:{r}:{p}${salt}${_scrypt(password, salt, n, r, p).hex()}"


def verify_password(password: str, hashed: str) -> bool:
    """True when `password` matches `hashed`; False for any malformed hash or for
    parameters too costly to be honest (a config typo must not eat the memory)."""
    try:
        method, salt, hexdigest = hashed.split("$")
        name, *params = method.split(":")
        n, r, p = (int(x) for x in params)
        digest = bytes.fromhex(hexdigest)
        if name != "scrypt" or not salt or not digest or n < 2 or n & (n - 1):
            return False
        if r < 1 or p < 1 or n * r * p > 2**24:
            return False
        computed = _scrypt(password, salt, n, r, p, len(digest))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(computed, digest)


# A hash to spend the same time on when the name is unknown, so timing does not
# tell which reviewer names exist.
_DECOY = hash_password(secrets.token_hex(8))


@dataclass(frozen=True, slots=True)
class Authenticator:
    """Checks a name and password (or the shared token) against the config."""

    users: Mapping[str, str]
    token: str = ""

    def credential(self, actor: str) -> str | None:
        """The actor's configured credential (hash or token), None when gone."""
        if actor == TOKEN_ACTOR:
            return self.token or None
        return self.users.get(actor)

    def check(self, name: str, password: str) -> str | None:
        """The reviewer's name (the actor recorded in the audit), or None."""
        name = name.strip()
        if not password:
            return None
        if (
            self.token
            and not name
            and hmac.compare_digest(password.encode("utf-8"), self.token.encode("utf-8"))
        ):
            return TOKEN_ACTOR
        hashed = self.users.get(name)
        if hashed is None:
            verify_password(password, _DECOY)
            return None
        return name if verify_password(password, hashed) else None


def session_secret(configured: str, directory: Path) -> str:
    """The configured session key, else the one kept (0600) under `directory`,
    generated on first use so that sessions survive a restart."""
    if configured:
        return configured
    path = Path(directory) / SECRET_FILE
    try:
        existing = path.read_text("ascii").strip()
    except FileNotFoundError:
        existing = ""
    if len(existing) >= 32:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)
    return secret
