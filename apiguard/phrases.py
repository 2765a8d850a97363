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
from itertools import chain, compress

PHRASES_RESOURCE = "phrases.toml"

# Replaced one after the other: no replacement contains a replaced character,
# so the order does not matter (and `str.replace` is much faster than a
# `str.translate` table on long text).
_LIGATURES = (
    ("œ", "oe"),
    ("æ", "ae"),
    ("’", "'"),
    ("‘", "'"),
    ("ʼ", "'"),
    ("`", "'"),
    ("´", "'"),
    ("\u00a0", " "),
)


_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")


def fold(text: str) -> str:
    """Lower case, strip accents, unify apostrophes, collapse white space."""
    lowered = text.lower()
    for char, replacement in _LIGATURES:
        if char in lowered:
            lowered = lowered.replace(char, replacement)
    if not lowered.isascii():
        lowered = _COMBINING.sub("", unicodedata.normalize("NFKD", lowered))
    # `str.split()` splits on exactly what `\s` matches.
    return " ".join(lowered.split())


@dataclass(frozen=True, slots=True)
class PhraseScore:
    """How much of each signal a text carries. `signals` is sorted by name."""

    total: float
    signals: tuple[tuple[str, float], ...]

    @property
    def signal_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.signals)


_TOKEN = re.compile(r"\w+|[^\w\s]")
# One indexed phrase: its tokens, its signal, its weight.
_Entry = tuple[tuple[str, ...], str, float]
# Texts up to this size are tokenised word by word, each distinct word once
# (letters repeat their words); a bigger one in one pass.
_BY_WORD_SIZE = 64 * 1024
_WORDS_CACHED = 32 * 1024


@functools.lru_cache(maxsize=16)
def tokens(text: str) -> tuple[str, ...]:
    """Folded words and single punctuation marks: "20% de réduction" gives
    ("20", "%", "de", "reduction"). Cached: several rules score the same body."""
    if len(text) > _BY_WORD_SIZE:
        return _text_tokens(text)
    # Neither folding nor a token reaches across white space: lower case looks
    # no further than the word (white space is neither cased nor case-ignorable),
    # decomposition and the other replacements are one character at a time, and
    # white space that folding makes only separates tokens again.
    return tuple(chain.from_iterable(map(_word_tokens, text.split())))


def _text_tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(fold(text)))


_word_tokens = functools.lru_cache(maxsize=_WORDS_CACHED)(_text_tokens)


class PhraseBook:
    """Named signals, each a set of weighted phrases, indexed for scoring.

    A phrase matches a run of whole tokens, so "rsvp" never matches inside a
    word and scoring is linear in the length of the text.
    """

    def __init__(self, signals: Mapping[str, Mapping[str, float]]) -> None:
        self.signals: dict[str, dict[tuple[str, ...], float]] = {}
        for signal, phrases in signals.items():
            weighted = {tokens(p): float(w) for p, w in phrases.items() if tokens(p) and w > 0}
            if weighted:
                self.signals[signal] = weighted
        # First token -> (phrase tokens, signal, weight), longest phrases first.
        by_first: dict[str, list[_Entry]] = {}
        for signal, weighted in self.signals.items():
            for phrase, weight in weighted.items():
                by_first.setdefault(phrase[0], []).append((phrase, signal, weight))
        for entries in by_first.values():
            entries.sort(key=lambda entry: -len(entry[0]))
        # First token -> (second token -> the entries that can match when the
        # text goes on with it, the one-token entries), both in the order above:
        # scoring then tries only the phrases the next token allows.
        self._index: dict[str, tuple[dict[str, list[_Entry]], list[_Entry]]] = {}
        for first, entries in by_first.items():
            alone = [entry for entry in entries if len(entry[0]) == 1]
            by_next = {
                second: [e for e in entries if len(e[0]) == 1 or e[0][1] == second]
                for second in {entry[0][1] for entry in entries if len(entry[0]) > 1}
            }
            self._index[first] = (by_next, alone)

    def merged(self, extra: Mapping[str, Mapping[str, float]], *, replace: bool) -> PhraseBook:
        """This book with `extra` phrases added (a weight of 0 removes one), or
        only `extra` when `replace` is set."""
        if replace:
            return PhraseBook(extra)
        combined: dict[str, dict[str, float]] = {
            signal: {" ".join(phrase): weight for phrase, weight in weighted.items()}
            for signal, weighted in self.signals.items()
        }
        for signal, phrases in extra.items():
            target = combined.setdefault(signal, {})
            for phrase, weight in phrases.items():
                target[" ".join(tokens(phrase))] = float(weight)
        return PhraseBook(combined)

    def score(self, text: str) -> PhraseScore:
        """Sum, per signal, the weights of the distinct phrases found in `text`."""
        return self.score_words(tokens(text))

    def score_words(self, words: tuple[str, ...]) -> PhraseScore:
        """`score` of a text already split by `tokens`."""
        index = self._index
        end = len(words)
        found: dict[tuple[tuple[str, ...], str], float] = {}
        free_from = 0  # matches do not overlap
        for position in compress(range(end), map(index.__contains__, words)):
            if position < free_from:
                continue
            by_next, alone = index[words[position]]
            entries = by_next.get(words[position + 1], alone) if position + 1 < end else alone
            for phrase, signal, weight in entries:
                if words[position : position + len(phrase)] == phrase:
                    # The longest phrase starting here.
                    found[(phrase, signal)] = weight
                    free_from = position + len(phrase)
                    break
        per_signal: dict[str, float] = {}
        for (_, signal), weight in found.items():
            per_signal[signal] = per_signal.get(signal, 0.0) + weight
        hits = tuple(sorted(per_signal.items()))
        return PhraseScore(total=sum(w for _, w in hits), signals=hits)


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


def packaged_book(name: str, *more: str) -> PhraseBook:
    """The packaged phrase list `name` ("private", "announcement", "shape",
    "personal"), or several lists in one book (their signal names differ)."""
    tables = _packaged_tables()
    signals = dict(tables.get(name, {}))
    for other in more:
        signals.update(tables.get(other, {}))
    return PhraseBook(signals)
