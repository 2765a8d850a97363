"""`recipient.lookalike`: an address one or two typos away from a known correspondent.

Known correspondents are the addresses already delivered to successfully, plus
the correspondents directory. `KnownCorrespondents` indexes them by domain and
length so that judging one RCPT compares against a small part of them only.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable
from typing import Annotated

from pydantic import Field

from apiguard.policy.context import RecipientContext
from apiguard.policy.rule import Rule, RuleParams, Scope
from apiguard.policy.rules.recipients import is_valid_address
from apiguard.policy.verdict import Action, Finding

# `medicalXX.apicrypt.org`: the XX is a department number.
_NUMBERED_DOMAIN = re.compile(r"^([a-z-]*?)(\d+)(\..+)$")
# Two edits only in a local part long enough for two typos to leave it recognisable.
_TWO_EDITS_MIN_LOCAL = 8


def osa_distance(a: str, b: str, limit: int) -> int:
    """Edit distance counting a swap of two neighbours as one edit (optimal string
    alignment); any value above `limit` is returned as `limit + 1`."""
    if a == b:
        return 0
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    over = limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [over] * len(b)
        low = max(1, i - limit)
        high = min(len(b), i + limit)
        best = current[0] if low == 1 else over
        for j in range(low, high + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if (
                i > 1
                and j > 1
                and a[i - 1] == b[j - 2]
                and a[i - 2] == b[j - 1]
                and previous2[j - 2] + 1 < value
            ):
                value = previous2[j - 2] + 1
            current[j] = value
            best = min(best, value)
        if best > limit:
            return over
        previous2, previous = previous, current
    return min(previous[len(b)], over)


def domain_distance(a: str, b: str, limit: int) -> int:
    """Edits between two domains. Numbered domains (`medical13`, `medical69`) are
    a typo only when one digit differs or two digits are swapped: two different
    digits make another department, hence another practitioner."""
    if a == b:
        return 0
    numbered_a, numbered_b = _NUMBERED_DOMAIN.match(a), _NUMBERED_DOMAIN.match(b)
    if (
        numbered_a is not None
        and numbered_b is not None
        and numbered_a.group(1) == numbered_b.group(1)
        and numbered_a.group(3) == numbered_b.group(3)
        and len(numbered_a.group(2)) == len(numbered_b.group(2))
    ):
        digits_a, digits_b = numbered_a.group(2), numbered_b.group(2)
        return 1 if osa_distance(digits_a, digits_b, 1) == 1 else limit + 1
    return osa_distance(a, b, limit)


def _letters_mask(text: str) -> int:
    """Which characters occur (folded onto 64 bits). One edit changes at most two
    bits, so masks more than 2·k bits apart rule a pair out cheaply."""
    mask = 0
    for char in text:
        mask |= 1 << (ord(char) & 63)
    return mask


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.strip().strip("<>").lower().rpartition("@")
    return local, domain.rstrip(".")


class KnownCorrespondents:
    """The known correspondents' addresses, indexed for look-alike search.

    `add` may be called from any thread (the store's, when a delivery succeeds);
    additions are taken in under a lock at the next lookup.
    """

    def __init__(self, addresses: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._incoming: deque[str] = deque()
        self._addresses: set[str] = set()
        # domain -> local-part length -> {local part: letters mask}
        self._by_domain: dict[str, dict[int, dict[str, int]]] = {}
        self.add_all(addresses)

    def add(self, address: str) -> None:
        self._incoming.append(address)

    def add_all(self, addresses: Iterable[str]) -> None:
        self._incoming.extend(addresses)

    def _absorb(self) -> None:
        while self._incoming:
            local, domain = _split(self._incoming.popleft())
            if not local or not domain:
                continue
            address = f"{local}@{domain}"
            if address in self._addresses:
                continue
            self._addresses.add(address)
            by_length = self._by_domain.setdefault(domain, {})
            by_length.setdefault(len(local), {})[local] = _letters_mask(local)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        local, domain = _split(address)
        with self._lock:
            self._absorb()
            return f"{local}@{domain}" in self._addresses

    def __len__(self) -> int:
        with self._lock:
            self._absorb()
            return len(self._addresses)

    def nearest(self, address: str, max_edits: int = 2) -> tuple[str, int] | None:
        """The closest known address within the allowed edits, with its distance;
        None when the address is itself known or nothing is close."""
        local, domain = _split(address)
        if not local or not domain:
            return None
        mask = _letters_mask(local)
        with self._lock:
            self._absorb()
            if f"{local}@{domain}" in self._addresses:
                return None
            best: tuple[int, str] | None = None
            for known_domain, by_length in self._by_domain.items():
                domain_edits = domain_distance(domain, known_domain, max_edits)
                if domain_edits > max_edits:
                    continue
                for length, locals_ in by_length.items():
                    allowed = _allowed_edits(min(length, len(local)), max_edits)
                    budget = allowed - domain_edits
                    if budget < 0 or abs(length - len(local)) > budget:
                        continue
                    for known_local, known_mask in locals_.items():
                        if (mask ^ known_mask).bit_count() > 2 * budget:
                            continue
                        edits = domain_edits + osa_distance(local, known_local, budget)
                        if edits > allowed or edits == 0:
                            continue
                        candidate = (edits, f"{known_local}@{known_domain}")
                        if best is None or candidate < best:
                            best = candidate
        return (best[1], best[0]) if best is not None else None


def _allowed_edits(local_length: int, max_edits: int) -> int:
    """Short local parts allow one edit only: two edits from `dr.roy` reach
    too many real names."""
    return max_edits if local_length >= _TWO_EDITS_MIN_LOCAL else min(max_edits, 1)


def known_correspondents(directory: object, delivered: Iterable[str] = ()) -> KnownCorrespondents:
    """The index over delivered addresses and the directory's addresses (if any)."""
    index = KnownCorrespondents(delivered)
    known_addresses = getattr(directory, "known_addresses", None)
    if callable(known_addresses):
        index.add_all(str(a) for a in known_addresses())
    return index


class LookalikeParams(RuleParams):
    max_edits: Annotated[int, Field(ge=1, le=2)] = 2


class Lookalike(Rule):
    """`recipient.lookalike`: one or two edits (or a swapped pair, or one digit of
    `medicalXX`) away from a known correspondent, and not itself known."""

    id = "recipient.lookalike"
    article = None
    default_action = Action.HOLD
    scope = Scope.RECIPIENT
    Params = LookalikeParams

    def check_recipient(self, ctx: RecipientContext) -> Finding | None:
        assert isinstance(self.params, LookalikeParams)
        if not is_valid_address(ctx.recipient):
            return None  # recipient.syntax speaks for it
        known = ctx.charter.known_correspondents
        if known is None:
            if ctx.charter.directory is None:
                return None
            known = known_correspondents(ctx.charter.directory)
        match = known.nearest(ctx.recipient, self.params.max_edits)
        if match is None:
            return None
        address, edits = match
        return self.finding(
            f"adresse proche d'un correspondant connu : vouliez-vous dire {address} ?",
            f"address close to a known correspondent: did you mean {address}?",
            "Vérifiez l'adresse du destinataire. S'il s'agit bien d'un nouveau "
            "correspondant, faites libérer le message : l'adresse sera connue après le "
            "premier envoi réussi.",
            "Check the recipient's address. If it really is a new correspondent, have "
            "the message released: the address becomes known after the first successful "
            "delivery.",
            recipient=ctx.recipient,
            details={"did_you_mean": address, "edits": str(edits)},
        )


RULES: list[type[Rule]] = [Lookalike]
