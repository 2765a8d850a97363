"""Weighted phrase lists that score a message's text per named signal.

The packaged lists live in `apiguard/data/phrases.toml`, one table per list
("private", "announcement") and one sub-table per signal, mapping a phrase to
its weight. Matching is on folded text (lower case, no accents, ligatures
split, apostrophes unified, white space collapsed), whole words only, so that
"soiree FMC" typed without accents counts like "soirée FMC".

Only phrases count, never single words that a medical letter uses: the lists
are what keeps "formation d'un thrombus" apart from "soirée de formation".
"""

from __future__ import annotations

import functools
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

PHRASES_RESOURCE = "phrases.toml"

_LIGATURES = str.maketrans(
    {"œ": "oe", "æ": "ae", "’": "'", "‘": "'", "ʼ": "'", "`": "'", "´": "'", "\u00a0": " "}
)
_SPACES = re.compile(r"\s+")


def fold(text: str) -> str:
    """Lower case, strip accents, unify apostrophes, collapse white space."""
    lowered = text.lower().translate(_LIGATURES)
    decomposed = unicodedata.normalize("NFKD", lowered)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", bare).strip()


@dataclass(frozen=True, slots=True)
class PhraseScore:
    """How much of each signal a text carries. `signals` is sorted by name."""

    total: float
    signals: tuple[tuple[str, float], ...]

    @property
    def signal_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.signals)


def _phrase_pattern(phrase: str) -> str:
    # Word boundaries only where the phrase starts or ends with a word
    # character: "% de reduction" must still match "20% de reduction".
    head = r"(?<!\w)" if phrase[0].isalnum() else ""
    tail = r"(?!\w)" if phrase[-1].isalnum() else ""
    return head + re.escape(phrase) + tail


class PhraseBook:
    """Named signals, each a set of weighted phrases, compiled for scoring."""

    def __init__(self, signals: Mapping[str, Mapping[str, float]]) -> None:
        self.signals: dict[str, dict[str, float]] = {}
        for signal, phrases in signals.items():
            folded = {fold(p): float(w) for p, w in phrases.items() if fold(p) and w > 0}
            if folded:
                self.signals[signal] = folded
        self._patterns = {
            signal: re.compile(
                "|".join(_phrase_pattern(p) for p in sorted(phrases, key=len, reverse=True))
            )
            for signal, phrases in self.signals.items()
        }

    def merged(self, extra: Mapping[str, Mapping[str, float]], *, replace: bool) -> PhraseBook:
        """This book with `extra` phrases added (a weight of 0 removes one), or
        only `extra` when `replace` is set."""
        if replace:
            return PhraseBook(extra)
        combined: dict[str, dict[str, float]] = {s: dict(p) for s, p in self.signals.items()}
        for signal, phrases in extra.items():
            target = combined.setdefault(signal, {})
            for phrase, weight in phrases.items():
                target[fold(phrase)] = float(weight)
        return PhraseBook(combined)

    def score(self, text: str) -> PhraseScore:
        """Sum, per signal, the weights of the distinct phrases found in `text`."""
        folded = fold(text)
        hits: list[tuple[str, float]] = []
        for signal, pattern in self._patterns.items():
            found = {match.group(0) for match in pattern.finditer(folded)}
            weight = sum(self.signals[signal].get(phrase, 0.0) for phrase in found)
            if weight > 0:
                hits.append((signal, weight))
        hits.sort()
        return PhraseScore(total=sum(w for _, w in hits), signals=tuple(hits))


@functools.cache
def _packaged_tables() -> dict[str, dict[str, dict[str, float]]]:
    raw = resources.files("apiguard").joinpath("data", PHRASES_RESOURCE).read_text("utf-8")
    document = tomllib.loads(raw)
    return {
        name: {
            signal: {str(p): float(w) for p, w in phrases.items()}
            for signal, phrases in table.items()
        }
        for name, table in document.items()
    }


def packaged_book(name: str) -> PhraseBook:
    """The packaged phrase list `name` ("private" or "announcement")."""
    return PhraseBook(_packaged_tables().get(name, {}))
