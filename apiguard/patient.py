"""Does a message carry nominative patient data? (Article 1 of the charter.)

APICEM asks users to block "tout courrier ne contenant pas de données médicales
nominatives". A message carries such data when one of these signals fires:

- `hprim-header`: an HPRIM Médecin header naming a patient (last name and a
  first name or a date of birth), in the body or a text attachment;
- `hprim-sante-patient`: an HPRIM Santé `P` record naming a patient;
- `cda-patient`: a CDA document (attached, or inside an IHE XDM zip) naming
  a patient;
- `text-patient-label`: a labelled identification in the letter,
  "Patient : DUPONT Jeanne", "Patiente : Mme DUPONT", "Objet : Mme DUPONT Jeanne";
- `text-name-birth-date`: a name followed by a date of birth,
  "Mme DUPONT Jeanne, née le 12/03/1954", "Enfant MARTIN Léo né le 3 mai 2019",
  "DUPONT Jean, DDN : 01/02/1960";
- `text-patient-reference`: "votre patiente Jeanne DUPONT (12/03/1954)",
  "concernant notre patient M. Jean DUPONT, 62 ans, né le …";
- `text-identity-fields`: form fields, "Nom : DUPONT  Prénom : Jeanne
  Date de naissance : 12/03/1954" (a last name plus a first name or a date of
  birth, within a few lines).

A name alone, without a date of birth or a clear patient label, is not
enough: letters name colleagues too. Identities found in the text are a best
effort (the last name is the upper-case part when there is one); they are
patient data and never leave the process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from apiguard.flowed import join_hard_wraps
from apiguard.identity import PatientIdentity

if TYPE_CHECKING:
    from apiguard.policy.context import MessageContext

SIGNAL_HPRIM = "hprim-header"
SIGNAL_HPRIM_SANTE = "hprim-sante-patient"
SIGNAL_CDA = "cda-patient"
SIGNAL_TEXT_LABEL = "text-patient-label"
SIGNAL_TEXT_NAME_BIRTH = "text-name-birth-date"
SIGNAL_TEXT_REFERENCE = "text-patient-reference"
SIGNAL_TEXT_FIELDS = "text-identity-fields"


@dataclass(frozen=True, slots=True)
class PatientData:
    """Which patient-data signals fired, and the identities they found."""

    present: bool
    signals: tuple[str, ...]
    identities: tuple[PatientIdentity, ...]


# --- building blocks (case-sensitive: capitals tell names from prose) -------
# Every repetition is bounded (`_bounded` below, {1,40} in words) so that a
# search stays linear on hostile input such as thousands of spaces.
_UP = "A-ZÀ-ÖØ-Þ"
_LOW = "a-zß-öø-ÿ"
_UPPER_WORD = rf"[{_UP}](?:[{_UP}]|['’\-](?=[{_UP}])){{1,40}}"
_CAPITAL_WORD = rf"[{_UP}][{_LOW}]{{1,40}}(?:[\-'’][{_UP}]?[{_LOW}]{{1,40}}){{0,3}}"
_NAME_WORD = rf"(?:{_UPPER_WORD}|{_CAPITAL_WORD})"
_NAME = rf"{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,3}}"
_CIVILITY = (
    r"(?:Madame|Mademoiselle|Monsieur|Mme|Mlle|Mr\.?|M\.|"
    r"(?i:l'enfant|l’enfant|enfant|le petit|la petite|b[ée]b[ée]))"
)
_MONTHS = (
    "janvier|f[ée]vrier|mars|avril|mai|juin|juillet|ao[uû]t|septembre|octobre|novembre|d[ée]cembre"
    "|january|february|march|april|may|june|july|august|september|october|november|december"
)
_DATE = (
    r"(?P<date>\d{1,2}[ \t]*[/.\-][ \t]*\d{1,2}[ \t]*[/.\-][ \t]*(?:\d{4}|\d{2})(?!\d)"
    rf"|\d{{1,2}}(?:er)?[ \t]+(?i:{_MONTHS})[ \t]+\d{{4}}"
    r"|\d{4}-\d{2}-\d{2})"
)
_BIRTH_LABEL = (
    r"(?i:n[ée](?:e|\(e\))?[ \t]+le|date[ \t]+de[ \t]+naissance|d\.?d\.?n\.?|"
    r"n[ée](?:e|\(e\))?[ \t]+en|date[ \t]+of[ \t]+birth|d\.?o\.?b\.?|born(?:[ \t]+on)?|"
    # "(née 14/03/1939)": the label straight before the date.
    r"n[ée](?:e|\(e\))?(?=[ \t]*\d))"
)
_BIRTH = rf"{_BIRTH_LABEL}[ \t]*:?[ \t]*\n?[ \t]*{_DATE}"
_AGE = r"(?:[ \t]*,?[ \t]*\d{1,3}[ \t]*ans)?"
_GAP = r"[ \t]*[,;(\-]?[ \t]*(?:\n[ \t]*[(\-]?[ \t]*)?"


def _bounded(pattern: str) -> re.Pattern[str]:
    """Compile with white-space runs capped at 20 characters."""
    capped = pattern.replace("[ \\t]*", "[ \\t]{0,20}").replace("[ \\t]+", "[ \\t]{1,20}")
    return re.compile(capped.replace("[ \\t>]*", "[ \\t>]{0,20}"))


# A civility makes a person of any words, whatever their case ("mr chapuis
# gerard ne le …", "Mr BLANCHARD kevin", "Mrs Claire Roussel (born …)"), when
# a birth label or a date in brackets follows.
_ANY_CIVILITY = r"(?i:madame|mademoiselle|monsieur|mme|mlle|mrs|ms|miss|mr|m\.)"
_ANY_WORD = r"[^\W\d_][\w'’\-]{0,40}"
_ANY_NAME = rf"{_ANY_WORD}(?:[ \t]+{_ANY_WORD}){{0,3}}"
_CIVILITY_BIRTH = _bounded(
    rf"(?<![\w.])(?P<civ>{_ANY_CIVILITY})\.?[ \t]+(?P<name>{_ANY_NAME}){_AGE}{_GAP}{_BIRTH}"
)
_CIVILITY_BRACKETED_DATE = _bounded(
    rf"(?<![\w.])(?P<civ>{_ANY_CIVILITY})\.?[ \t]+(?P<name>{_ANY_NAME})"
    rf"[ \t]*\([ \t]*{_DATE}[ \t]*\)"
)
_NAME_BIRTH = _bounded(
    rf"(?<![\w.])(?:(?P<civ>{_CIVILITY})[ \t]+)?(?P<name>{_NAME}){_AGE}{_GAP}{_BIRTH}"
)
_LABEL = _bounded(
    r"(?m)^[ \t>]*(?P<label>(?i:patient(?:e|\(e\))?|nom[ \t]+d[eu][ \t]+(?:la[ \t]+)?patiente?|"
    r"identit[ée](?:[ \t]+d[eu][ \t]+(?:la[ \t]+)?patiente?)?|concerne|objet|"
    r"r[ée]f(?:\.|[ée]rence)?[ \t]+patient))"
    rf"[ \t]*:[ \t]*(?:(?P<civ>{_CIVILITY})[ \t]+)?(?P<name>{_NAME})"
)
_REFERENCE = _bounded(
    r"(?i:(?:votre|notre|mon|ma|cette|le|la)[ \t]+(?:jeune[ \t]+)?"
    r"patient(?:e|\(e\))?)[ \t]*,?[ \t]*"
    rf"(?:(?P<civ>{_CIVILITY})[ \t]+)?(?P<name>{_NAME})[^\n]{{0,40}}?{_DATE}"
)
# A form field's value: up to four words, stopping at the next field's label.
_NEXT_LABEL = r"(?i:pr[ée]noms?\b|n[ée](?:e|\(e\))?[ \t]+le\b|date\b|ddn\b|sexe\b)"
_FIELD_VALUE = (
    rf"[^\W\d_][\w'’\-]{{0,40}}(?:[ \t]+(?!{_NEXT_LABEL})[^\W\d_][\w'’\-]{{0,40}}){{0,3}}"
)
_FIELD_LAST = _bounded(
    r"(?<![\w])(?i:nom(?:[ \t]+(?:de[ \t]+naissance|d'usage|d’usage|de[ \t]+famille|"
    r"du[ \t]+patient|de[ \t]+la[ \t]+patiente))?)(?P<both>[ \t]+(?i:et[ \t]+pr[ée]noms?))?"
    r"[ \t]*:[ \t]*"
    rf"(?P<value>{_FIELD_VALUE})"
)
_FIELD_FIRST = _bounded(rf"(?<![\w])(?i:pr[ée]noms?)[ \t]*:[ \t]*(?P<value>{_FIELD_VALUE})")
_FIELD_BIRTH = _bounded(rf"(?<![\w]){_BIRTH}")
# How far (characters) identity form fields may sit from the last-name field.
_FIELD_WINDOW = 300
# Letters identify their patient near the top: the text search reads this much
# of the body, which bounds its cost on huge bodies.
TEXT_SCAN_LIMIT = 100_000

_CIVILITY_WORDS = frozenset(
    {"madame", "mademoiselle", "monsieur", "mme", "mlle", "mr", "m", "enfant", "bébé", "bebe"}
)
_MONTH_NUMBERS = {
    "janvier": 1, "fevrier": 2, "février": 2, "mars": 3, "avril": 4, "mai": 5,
    "juin": 6, "juillet": 7, "aout": 8, "août": 8, "septembre": 9, "octobre": 10,
    "novembre": 11, "decembre": 12, "décembre": 12,
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7,
    "august": 8, "september": 9, "october": 10, "november": 11, "december": 12,
}  # fmt: skip


def parse_birth_date(text: str, today: date) -> date | None:
    """A date of birth as written in a letter, or None when it is not a
    real past date (`31/02/1980`, a date after `today`)."""
    text = text.strip()
    try:
        iso = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", text)
        if iso:
            found = date(int(iso[1]), int(iso[2]), int(iso[3]))
        elif numeric := re.fullmatch(r"(\d{1,2})\s*[/.\-]\s*(\d{1,2})\s*[/.\-]\s*(\d{2,4})", text):
            year = int(numeric[3])
            if len(numeric[3]) == 2:  # two-digit years: the latest century in the past
                year += 2000 if 2000 + year <= today.year else 1900
            found = date(year, int(numeric[2]), int(numeric[1]))
        elif long := re.fullmatch(r"(\d{1,2})(?:er)?\s+(\S+)\s+(\d{4})", text):
            month = _MONTH_NUMBERS.get(long[2].lower())
            if month is None:
                return None
            found = date(int(long[3]), month, int(long[1]))
        else:
            return None
    except ValueError:
        return None
    return found if date(1880, 1, 1) <= found <= today else None


def _split_name(words: str) -> tuple[str, str]:
    """(last name, first name) from "DUPONT Jeanne", "Jeanne DUPONT" or "Dupont Jeanne"."""
    tokens = [t for t in words.split() if t.lower().rstrip(".") not in _CIVILITY_WORDS]
    upper = [t for t in tokens if t.isupper() and len(t) > 1]
    if upper:
        return " ".join(upper), " ".join(t for t in tokens if t not in upper)
    if not tokens:
        return "", ""
    return tokens[0], " ".join(tokens[1:])


def _names_a_person(civility: str | None, name: str) -> bool:
    """A civility and a name, or two name words one of which is in capitals."""
    words = [w for w in name.split() if w.lower().rstrip(".") not in _CIVILITY_WORDS]
    if not words:
        return False
    if civility:
        return True
    return len(words) >= 2 and any(w.isupper() and len(w) > 1 for w in words)


def find_text_identities(text: str, today: date) -> list[tuple[str, PatientIdentity]]:
    """Every (signal, identity) in the first `TEXT_SCAN_LIMIT` characters of
    the letter's text; when there is none, in the same text with its
    hard-wrapped paragraphs joined ("Madame Jeanne⏎DUPONT, née le …"). Never raises."""
    text = text[:TEXT_SCAN_LIMIT]
    found = _scan_identities(text, today)
    if not found and "\n" in text:
        joined = join_hard_wraps(text)
        if joined != text:
            found = _scan_identities(joined, today)
    return found


def _scan_identities(text: str, today: date) -> list[tuple[str, PatientIdentity]]:
    found: list[tuple[str, PatientIdentity]] = []

    def add(signal: str, name: str, birth: str | None) -> None:
        last, first = _split_name(name)
        born = parse_birth_date(birth, today) if birth else None
        found.append((signal, PatientIdentity(last, first, born, "", "text")))

    for match in _NAME_BIRTH.finditer(text):
        if _names_a_person(match["civ"], match["name"]):
            add(SIGNAL_TEXT_NAME_BIRTH, match["name"], match["date"])
    if not found:
        for pattern in (_CIVILITY_BIRTH, _CIVILITY_BRACKETED_DATE):
            for match in pattern.finditer(text):
                add(SIGNAL_TEXT_NAME_BIRTH, match["name"], match["date"])
    for match in _LABEL.finditer(text):
        # "Objet :" and "Concerne :" head many lines: only with a civility.
        if match["civ"] or (
            match["label"].lower() not in ("concerne", "objet") and len(match["name"].split()) > 1
        ):
            add(SIGNAL_TEXT_LABEL, match["name"], None)
    for match in _REFERENCE.finditer(text):
        if match["civ"] or _names_a_person(None, match["name"]):
            add(SIGNAL_TEXT_REFERENCE, match["name"], match["date"])
    found.extend(_identity_fields(text, today))
    return found


def _identity_fields(text: str, today: date) -> list[tuple[str, PatientIdentity]]:
    identities: list[tuple[str, PatientIdentity]] = []
    for last in _FIELD_LAST.finditer(text):
        window = text[last.end() : last.end() + _FIELD_WINDOW]
        first = _FIELD_FIRST.search(window) or _FIELD_FIRST.search(
            text[max(0, last.start() - _FIELD_WINDOW) : last.start()]
        )
        birth = _FIELD_BIRTH.search(window)
        if last["both"]:  # "Nom et prénom : DUPONT Jeanne"
            last_name, first_name = _split_name(last["value"])
        else:
            last_name, first_name = last["value"].strip(), first["value"].strip() if first else ""
        if not first_name and birth is None:
            continue
        born = parse_birth_date(birth["date"], today) if birth else None
        identities.append(
            (SIGNAL_TEXT_FIELDS, PatientIdentity(last_name, first_name, born, "", "text"))
        )
    return identities


def detect_patient_data(ctx: MessageContext) -> PatientData:
    """Gather the patient-data signals of one message (see the module docstring)."""
    signals: list[str] = []
    identities: list[PatientIdentity] = []
    for identity in ctx.hprim.identities:
        if identity.is_nominative:
            sante = identity.source == "hprim-sante"
            signals.append(SIGNAL_HPRIM_SANTE if sante else SIGNAL_HPRIM)
            identities.append(identity)
    for identity in ctx.attachments.cda_patients:
        if identity.is_nominative:
            signals.append(SIGNAL_CDA)
            identities.append(identity)
    # A structured identity settles it; the (costlier) text scan is for letters
    # without one.
    if not identities:
        for signal, identity in find_text_identities(ctx.message.text, ctx.charter.now.date()):
            signals.append(signal)
            identities.append(identity)
    unique_signals = tuple(dict.fromkeys(signals))
    return PatientData(
        present=bool(unique_signals),
        signals=unique_signals,
        identities=tuple(dict.fromkeys(identities)),
    )
