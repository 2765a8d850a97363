"""What a message is, read from its structure: an announcement, or a letter
with private paragraphs.

A careful medical secretary does not look for a word: she sees that a message
is the practice telling every correspondent about itself and asking them to do
something, or that a paragraph of a letter is about the writers' weekend. This
module reads the paragraphs the sender wrote (quoted text and the signature
left out) and marks, in each, the presence of a few named features, each a
short list of phrases in `apiguard/data/phrases.toml`:

- `sender-practice`: the sender's practice or service speaks ("nous
  consulterons", "notre équipe", "pour l'équipe");
- `change`: something opens, moves, closes or arrives from a date ("à compter
  du", "désormais", "nouvelle unité", "rejoint l'équipe"; "à partir du" when
  the practice speaks in the same paragraph);
- `event`: a session with a place, a time, a programme, or a survey ("sera
  consacré à", "atelier", "une enquête", a time range such as "de 12h30 à 14h");
- `call-to-action`: colleagues are asked to act (update their records,
  register, attend, refer their patients, relay, answer);
- `to-all`: correspondents in general ("chers confrères", "bonjour à toutes
  et à tous", "vos patients");
- `patient-story`: the story of one patient ("votre patiente", "je l'ai
  revue", "examen clinique", "antécédents");
- `leisure`, `family`, `social-plans`, `affection`: the writers' own life
  (a tennis booking, "ta femme", "venez dîner", "bises").

An announcement is a change or an event, a call to act, and the voice of the
practice or an address to everyone, in paragraphs that outnumber those telling
a patient's story. A private paragraph has two features of personal life (or
three phrases of them), in the writers' own voice (first and second person
more than third), and no patient's story. Findings name the features,
never the phrases found: those would quote the message.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from apiguard.phrases import PhraseBook, packaged_book, tokens

SENDER_PRACTICE = "sender-practice"
CHANGE = "change"
EVENT = "event"
CALL_TO_ACTION = "call-to-action"
TO_ALL = "to-all"
PATIENT_STORY = "patient-story"
FROM_DATE = "from-date"
PERSONAL_SIGNALS = ("leisure", "family", "social-plans", "affection")
ANNOUNCEMENT_SIGNALS = (SENDER_PRACTICE, CHANGE, EVENT, CALL_TO_ACTION, TO_ALL)

# A time range, "de 12h30 à 14h00", "9h-12h", "de 20 h à 22 h": an event's
# schedule. Every repetition is bounded: linear on any input.
_TIME_RANGE = re.compile(
    r"(?<!\d)\d{1,2}[ \t]{0,2}h[ \t]{0,2}\d{0,2}[ \t]{0,3}(?:-|–|à|a|et)[ \t]{0,3}"
    r"\d{1,2}[ \t]{0,2}h(?![a-zA-Z])",
    re.IGNORECASE,
)
# A dated session, "le mardi 9 décembre", "jeudi 20 mars": with a call to act
# and the practice's voice, an event. Bounded repetitions: linear.
_DATED_DAY = re.compile(
    r"(?i)\b(?:lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche)[ \t]{1,3}\d{1,2}(?:er)?"
    r"[ \t]{1,3}(?:janvier|f[ée]vrier|mars|avril|mai|juin|juillet|ao[uû]t|septembre|octobre"
    r"|novembre|d[ée]cembre)\b"
)
# A link to follow (a form, a registration page): a call to act.
_LINK_WORDS = frozenset({"http", "https", "www"})
# The sender's own text ends at the signature separator (RFC 3676 "-- ").
_SIGNATURE = "\n-- \n"
# Paragraphs read, at most: a letter's structure shows in its first pages.
MAX_PARAGRAPHS = 200
_PARAGRAPH_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Paragraph:
    """One paragraph of the sender's text: its position and the features in it."""

    position: int
    features: frozenset[str]
    personal_score: float
    # The writers speak of themselves ("je", "tu", "on", "vous") at least as
    # much as of a third person ("il", "elle", "ses"): the patient's golf is care.
    writers_voice: bool = False

    @property
    def is_private(self) -> bool:
        """Two kinds of personal life (or three phrases of it), in the writers'
        own voice, and no patient's story."""
        if PATIENT_STORY in self.features or not self.writers_voice:
            return False
        kinds = sum(1 for signal in PERSONAL_SIGNALS if signal in self.features)
        return kinds >= 2 or self.personal_score >= 3

    @property
    def announces(self) -> bool:
        return PATIENT_STORY not in self.features and bool(
            self.features & {CHANGE, EVENT, CALL_TO_ACTION}
        )


@dataclass(frozen=True, slots=True)
class MessageShape:
    """The paragraphs of a message and what they add up to."""

    paragraphs: tuple[Paragraph, ...]

    @property
    def features(self) -> frozenset[str]:
        found: set[str] = set()
        for paragraph in self.paragraphs:
            found |= paragraph.features
        return frozenset(found)

    def announcement_signals(self) -> tuple[str, ...]:
        """The announcement's features when the message is one, else ()."""
        features = self.features
        voice = {SENDER_PRACTICE, TO_ALL} & features
        if CALL_TO_ACTION not in features or not voice:
            return ()
        announcing = sum(p.announces for p in self.paragraphs)
        story = sum(PATIENT_STORY in p.features for p in self.paragraphs)
        if announcing <= story:
            return ()
        # A change is the practice's own (its voice, or a message to everyone
        # that tells no patient's story), not a patient's move.
        practice_change = CHANGE in features and (SENDER_PRACTICE in features or not story)
        if EVENT not in features and not practice_change:
            return ()
        return tuple(s for s in ANNOUNCEMENT_SIGNALS if s in features)

    def private_paragraphs(self, *, names_patient: bool = True) -> tuple[Paragraph, ...]:
        """The private paragraphs. In a message that names no patient, personal
        life spread over several paragraphs counts together: a chat between
        friends is private as a whole."""
        private = tuple(p for p in self.paragraphs if p.is_private)
        if private or names_patient:
            return private
        personal = tuple(
            p
            for p in self.paragraphs
            if p.writers_voice
            and PATIENT_STORY not in p.features
            and p.features.intersection(PERSONAL_SIGNALS)
        )
        kinds = {f for p in personal for f in p.features if f in PERSONAL_SIGNALS}
        return personal if len(kinds) >= 2 else ()

    @property
    def count(self) -> int:
        return len(self.paragraphs)


_FIRST_SECOND_PERSON = frozenset(
    {"je", "j", "tu", "te", "t", "toi", "moi", "me", "m", "on", "nous", "vous"}
    | {"mon", "ma", "mes", "ton", "ta", "tes", "notre", "nos", "votre", "vos"}
)
_THIRD_PERSON = frozenset(
    {"il", "elle", "ils", "elles", "lui", "leur", "leurs", "son", "sa", "ses"}
)


def _writers_voice(words: tuple[str, ...]) -> bool:
    mine = sum(1 for word in words if word in _FIRST_SECOND_PERSON)
    theirs = sum(1 for word in words if word in _THIRD_PERSON)
    return mine >= theirs


@functools.cache
def _book() -> PhraseBook:
    return packaged_book("shape", "personal")


class _Gate:
    """Which gated features a whole text may carry, from its set of words.

    Each phrase is filed under its longest word (a rare one: "tennis", not
    "le"); a phrase counts when that word is in the text, all its words are,
    and they follow each other somewhere. Distinct phrases add up, overlaps
    included: an upper bound of what paragraphs can hold, which is all a gate
    needs, at the cost of one set of the letter's words."""

    def __init__(self, book: PhraseBook, signals: tuple[str, ...]) -> None:
        self._by_anchor: dict[str, list[tuple[tuple[str, ...], str, float]]] = {}
        for signal in signals:
            for phrase, weight in book.signals.get(signal, {}).items():
                anchor = max(phrase, key=len)
                self._by_anchor.setdefault(anchor, []).append((phrase, signal, weight))
        self._anchors = frozenset(self._by_anchor)

    def weights(self, words: tuple[str, ...]) -> dict[str, float]:
        present = set(words)
        found: dict[str, float] = {}
        if not _LINK_WORDS.isdisjoint(present):
            found[CALL_TO_ACTION] = 1.0
        for anchor in self._anchors.intersection(present):
            for phrase, signal, weight in self._by_anchor[anchor]:
                if present.issuperset(phrase) and _occurs(words, phrase, anchor):
                    found[signal] = found.get(signal, 0.0) + weight
        return found


def _occurs(words: tuple[str, ...], phrase: tuple[str, ...], anchor: str) -> bool:
    """The phrase's words follow each other somewhere in `words`."""
    offset = phrase.index(anchor)
    position = offset
    while True:
        try:
            position = words.index(anchor, position)  # a C-level search
        except ValueError:
            return False
        if words[position - offset : position - offset + len(phrase)] == phrase:
            return True
        position += 1


@functools.cache
def _gate() -> _Gate:
    """Only the features a whole-text pass needs to rule paragraphs out."""
    return _Gate(_book(), (CALL_TO_ACTION, SENDER_PRACTICE, TO_ALL, *PERSONAL_SIGNALS))


def sender_paragraphs(text: str, *, lines: bool = False) -> list[str]:
    """The paragraphs the sender wrote: blank-line separated (each line, with
    `lines`: the blocks of an HTML body), quoted lines (">") and everything
    after the signature separator left out."""
    text = text.split(_SIGNATURE, 1)[0]
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        stripped = line.strip()
        if lines and stripped and not stripped.startswith(">"):
            current.append(stripped)
            stripped = ""
        if not stripped or stripped.startswith(">"):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            if len(paragraphs) >= MAX_PARAGRAPHS:
                break
            continue
        current.append(stripped)
    if current and len(paragraphs) < MAX_PARAGRAPHS:
        paragraphs.append(" ".join(current))
    return paragraphs


def read_shape(subject: str, text: str, *, html: bool = False, gate: bool = True) -> MessageShape:
    """The features of each paragraph of the message (each block of an HTML
    body: `html`). The subject adds a change or an event to the first paragraph.

    Most letters carry neither a call to act in the practice's voice nor any
    personal life: one pass over the whole text (whose words the phrase rules
    have already split) says so, and their paragraphs are not read."""
    book = _book()
    whole = _gate().weights(tokens(f"{subject}\n{text}"))
    personal = sum(whole.get(signal, 0.0) for signal in PERSONAL_SIGNALS)
    may_announce = whole.get(CALL_TO_ACTION, 0) >= 1 and (
        whole.get(SENDER_PRACTICE, 0) >= 1 or whole.get(TO_ALL, 0) >= 1
    )
    if gate and not may_announce and personal < 2:
        return MessageShape(())
    paragraphs: list[Paragraph] = []
    for position, paragraph in enumerate(sender_paragraphs(text, lines=html), start=1):
        paragraphs.append(_read_paragraph(book, position, paragraph[:_PARAGRAPH_CHARS]))
    if subject and paragraphs:
        extra = {s for s, w in book.score(subject).signals if w >= 1} & {CHANGE, EVENT}
        if extra:
            first = paragraphs[0]
            paragraphs[0] = Paragraph(
                first.position, first.features | extra, first.personal_score, first.writers_voice
            )
    return MessageShape(tuple(paragraphs))


def _read_paragraph(book: PhraseBook, position: int, paragraph: str) -> Paragraph:
    words = tokens(paragraph)
    score = book.score_words(words)
    features = {signal for signal, weight in score.signals if weight >= 1}
    if EVENT not in features and (_TIME_RANGE.search(paragraph) or _DATED_DAY.search(paragraph)):
        features.add(EVENT)
    if not _LINK_WORDS.isdisjoint(words):
        features.add(CALL_TO_ACTION)
    if FROM_DATE in features:
        # "À partir du 1er mars, nous recevrons …": a date is a change when
        # the practice speaks of itself in the same paragraph.
        features.discard(FROM_DATE)
        if SENDER_PRACTICE in features:
            features.add(CHANGE)
    personal = sum(weight for signal, weight in score.signals if signal in PERSONAL_SIGNALS)
    voice = personal > 0 and _writers_voice(words)
    return Paragraph(position, frozenset(features), personal, voice)
