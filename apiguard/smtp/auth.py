"""SMTP submission accounts: scrypt password hashes and the senders a user may use.

Hashes use the `scrypt:N:r:p$salt$hex` form (the same as the review page's
users), so one `hash-password` output fits both. Make one with
`python -m apiguard.smtp.auth` (reads the password on the terminal or stdin).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_ALPHABET = string.ascii_letters + string.digits


class HashFormatError(ValueError):
    """Not a `scrypt:N:r:p$salt$hex` password hash."""


@dataclass(frozen=True, slots=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: str
    digest: bytes

    @classmethod
    def parse(cls, encoded: str) -> ScryptHash:
        method, _, rest = encoded.partition("$")
        salt, _, hexdigest = rest.partition("$")
        name, *params = method.split(":")
        try:
            n, r, p = (int(x) for x in params)
            digest = bytes.fromhex(hexdigest)
        except ValueError:
            raise HashFormatError("not a scrypt:N:r:p$salt$hex hash") from None
        if name != "scrypt" or not salt or not digest or n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise HashFormatError("not a scrypt:N:r:p$salt$hex hash")
        if n * r * p > 2**24:
            raise HashFormatError("scrypt parameters too costly")
        return cls(n, r, p, salt, digest)

    def matches(self, password: bytes) -> bool:
        computed = _scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(computed, self.digest)


def _scrypt(password: bytes, salt: str, n: int, r: int, p: int, length: int = 64) -> bytes:
    return hashlib.scrypt(
        password, salt=salt.encode(), n=n, r=r, p=p, maxmem=132 * n * r * p, dklen=length
    )


def hash_password(password: str) -> str:
    """A new salted scrypt hash of `password`."""
    salt = "".join(secrets.choice(_SALT_ALPHABET) for _ in range(16))
    digest = _scrypt(password.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}${salt}${digest.hex()}"


def verify_password(password: bytes, encoded: str) -> bool:
    """Does `password` match the hash? False for a malformed hash."""
    try:
        return ScryptHash.parse(encoded).matches(password)
    except HashFormatError:
        return False


def normalise_sender(address: str) -> str:
    return address.strip().lower()


def sender_allowed(address: str, patterns: Sequence[str]) -> bool:
    """`patterns` are full addresses or `@domain` (that whole domain). An empty
    list allows any sender."""
    if not patterns:
        return True
    wanted = normalise_sender(address)
    domain = wanted.rpartition("@")[2]
    for pattern in patterns:
        pattern = normalise_sender(pattern)
        if pattern.startswith("@"):
            if domain == pattern[1:]:
                return True
        elif wanted == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class SubmissionUser:
    """An authenticated account (kept in the SMTP session)."""

    name: str
    senders: tuple[str, ...]

    def may_send_as(self, address: str) -> bool:
        return sender_allowed(address, self.senders)


@dataclass(frozen=True, slots=True)
class _Account:
    user: SubmissionUser
    password_hash: ScryptHash


class UserDirectory:
    """The configured submission accounts. Verification runs scrypt on a worker
    thread, so that a login never stalls the other SMTP sessions."""

    def __init__(self, accounts: Mapping[str, tuple[str, Sequence[str]]]) -> None:
        self._accounts = {
            name: _Account(SubmissionUser(name, tuple(senders)), ScryptHash.parse(encoded))
            for name, (encoded, senders) in accounts.items()
        }
        # Unknown names still cost one scrypt run: no timing hint about who exists.
        self._decoy = ScryptHash.parse(hash_password(secrets.token_urlsafe(16)))

    def __bool__(self) -> bool:
        return bool(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)

    def check(self, login: bytes, password: bytes) -> SubmissionUser | None:
        """The user for these credentials, or None (blocking: call off the loop)."""
        try:
            name = login.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        account = self._accounts.get(name)
        if account is None:
            self._decoy.matches(password)
            return None
        return account.user if account.password_hash.matches(password) else None

    async def authenticate(self, login: bytes, password: bytes) -> SubmissionUser | None:
        return await asyncio.to_thread(self.check, login, password)


def main() -> int:
    """Print the hash of a password read from the terminal (or one line of stdin)."""
    import getpass

    if sys.stdin.isatty():
        password = getpass.getpass("Mot de passe / Password: ")
        if getpass.getpass("Confirmer / Confirm: ") != password:
            print("apiguard: les mots de passe different / passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("apiguard: mot de passe vide / empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
