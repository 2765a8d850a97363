"""Server-side sessions of the review page.

The signed cookie carries only a random session id (and the CSRF token, the
language, the flash messages); who is signed in lives here, in the memory of
the serve process that runs the page. So:

- logging out ends the session at once: a copy of the cookie taken before
  stops working;
- each session is bound to the reviewer's credential as configured when it
  opened (a digest of their password hash, or of the token): a changed
  password or a reviewer removed from `[review.users]` ends their sessions;
- a restart ends every session. The configuration is only read at start-up,
  so a restart is when users and passwords change: keeping sessions in
  memory (not in the store) makes that change effective at once, keeps no
  session secret at rest, and adds no table to the SQLite and PostgreSQL
  stores. Reviewers sign in again after a restart, which is rare.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_SESSIONS = 1000  # per process; the oldest go first beyond it


@dataclass(slots=True)
class _Session:
    actor: str
    credential: str  # digest of the credential it was opened with
    expires: float


def credential_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class ReviewSessions:
    """Open sessions by id; `credential(actor)` is the actor's current
    credential (None: the actor no longer exists)."""

    def __init__(
        self,
        credential: Callable[[str], str | None],
        lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self.lifetime = lifetime
        self.clock = clock
        self._open: dict[str, _Session] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(self, actor: str) -> str:
        """A new session for `actor` (just authenticated); returns its id."""
        current = self._credential(actor)
        if current is None:
            raise ValueError("no such reviewer")
        now = self.clock()
        if len(self._open) >= MAX_SESSIONS:
            self._prune(now)
        session_id = secrets.token_urlsafe(32)
        self._open[session_id] = _Session(actor, credential_digest(current), now + self.lifetime)
        return session_id

    def actor(self, session_id: object) -> str | None:
        """Who this session belongs to, while it is open and its credential holds."""
        if not isinstance(session_id, str):
            return None
        session = self._open.get(session_id)
        if session is None:
            return None
        current = self._credential(session.actor)
        if (
            self.clock() >= session.expires
            or current is None
            or not secrets.compare_digest(credential_digest(current), session.credential)
        ):
            del self._open[session_id]
            return None
        return session.actor

    def close(self, session_id: object) -> None:
        if isinstance(session_id, str):
            self._open.pop(session_id, None)

    def _prune(self, now: float) -> None:
        for session_id in [k for k, s in self._open.items() if now >= s.expires]:
            del self._open[session_id]
        while len(self._open) >= MAX_SESSIONS:
            del self._open[next(iter(self._open))]
