"""Privacy: APICRYPT does not encrypt the Subject, so patient identity must never be in it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import replace
from datetime import date

from apiguard.hprim import compact_nir
from apiguard.identity import PatientIdentity
from apiguard.patient import parse_birth_date
from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule
from apiguard.policy.verdict import Action, Finding

_MIN_NAME_LETTERS = 3
# Name particles that are ordinary words on their own ("Résultats des analyses").
_PARTICLES = frozenset(
    {"de", "des", "du", "la", "le", "les", "van", "von", "der", "den", "del", "della", "dos",
     "da", "di", "das", "ben", "bin", "el", "al", "ep", "epouse", "nee", "vve", "veuve", "dit"}
)  # fmt: skip
_MONTHS = {
    "janvier": 1, "janv": 1, "jan": 1, "january": 1,
    "fevrier": 2, "fevr": 2, "fev": 2, "february": 2, "feb": 2,
    "mars": 3, "march": 3, "mar": 3,
    "avril": 4, "avr": 4, "april": 4, "apr": 4,
    "mai": 5, "may": 5,
    "juin": 6, "june": 6, "jun": 6,
    "juillet": 7, "juil": 7, "july": 7, "jul": 7,
    "aout": 8, "august": 8, "aug": 8,
    "septembre": 9, "sept": 9, "sep": 9, "september": 9,
    "octobre": 10, "oct": 10, "october": 10,
    "novembre": 11, "nov": 11, "november": 11,
    "decembre": 12, "dec": 12, "december": 12,
}  # fmt: skip
_MONTH_WORDS = "|".join(sorted(_MONTHS, key=len, reverse=True))
_D = r"(?<!\d)"
_ND = r"(?!\d)"
_DS = r"\s*[/.\-]\s*"  # a date separator
_NUMERIC_DATES = (
    # (pattern, group order) on the accent-folded, lower-case subject
    (re.compile(rf"{_D}(\d{{1,2}}){_DS}(\d{{1,2}}){_DS}(\d{{4}}|\d{{2}}){_ND}"), "dmy"),
    (re.compile(rf"{_D}(\d{{4}}){_DS}(\d{{1,2}}){_DS}(\d{{1,2}}){_ND}"), "ymd"),
    (re.compile(rf"{_D}(\d{{2}})(\d{{2}})(\d{{4}}|\d{{2}}){_ND}"), "dmy"),
    (re.compile(rf"{_D}(\d{{4}})(\d{{2}})(\d{{2}}){_ND}"), "ymd"),
    (re.compile(rf"{_D}(\d{{1,2}})(?:er)?\s+({_MONTH_WORDS})\.?\s+(\d{{4}}|\d{{2}}){_ND}"), "dmy"),
    (re.compile(rf"\b({_MONTH_WORDS})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}}){_ND}"), "mdy"),
)  # fmt: skip
# Any NIR-shaped number: sex (1-4, or 7/8 temporary), year, month, department
# (2A/2B), commune, order, optional key; spaces, dots or dashes between groups.
_SEP = r"[\s.\-]?"
_NIR_SHAPED = re.compile(
    rf"(?<![0-9a-z])[1-478]{_SEP}\d{{2}}{_SEP}(?:0[1-9]|1[0-2]|[2-9]\d){_SEP}(?:\d{{2}}|2[ab])"
    rf"{_SEP}\d{{3}}{_SEP}\d{{3}}(?:{_SEP}\d{{2}})?(?![0-9a-z])"
)


def fold(text: str) -> str:
    """Lower case, accents removed, every non-alphanumeric run a single space."""
    return re.sub(r"[^0-9a-z]+", " ", _fold_keep_punctuation(text)).strip()


def _fold_keep_punctuation(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    if decomposed.isascii():  # no combining mark to drop (most subjects)
        return decomposed.casefold()
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def name_in_subject(last_name: str, subject: str) -> bool:
    """The last name (or one of its words) as a whole word, ignoring case and
    accents; words shorter than 3 letters and particles are ignored."""
    name = fold(last_name)
    folded = f" {fold(subject)} "
    candidates = {name} | {w for w in name.split() if w not in _PARTICLES}
    for candidate in candidates:
        if sum(c.isalpha() for c in candidate) < _MIN_NAME_LETTERS:
            continue
        if candidate in _PARTICLES:
            continue
        if f" {candidate} " in folded:
            return True
    return False


def _dates_in(subject: str) -> Iterable[tuple[int, int, int]]:
    """(day, month, year) triples written in a subject, in any common format."""
    text = _fold_keep_punctuation(subject)
    for pattern, order in _NUMERIC_DATES:
        for match in pattern.finditer(text):
            parts = dict(zip(order, match.groups(), strict=True))
            month_text = parts["m"]
            month = _MONTHS.get(month_text) if not month_text.isdigit() else int(month_text)
            if month is None:
                continue
            yield int(parts["d"]), month, int(parts["y"])


def birth_date_in_subject(birth: date | None, raw: str, subject: str) -> bool:
    """The date of birth in the subject (2-digit years too), or the header's
    raw DOB text when it could not be read as a date."""
    if birth is not None:
        for day, month, year in _dates_in(subject):
            if (day, month) == (birth.day, birth.month) and year in (birth.year, birth.year % 100):
                return True
    raw = raw.strip()
    if len(raw) >= 6:
        return re.search(rf"(?<!\d){re.escape(raw)}(?!\d)", subject) is not None
    return False


def nir_in_subject(nir: str, subject: str) -> bool:
    """The header's NIR (with or without its key) in the subject, spaces ignored."""
    nir = compact_nir(nir)
    if len(nir) < 13:
        return False
    compact = compact_nir(subject)
    return nir[:13] in compact


def nir_shaped_in_subject(subject: str) -> bool:
    return _NIR_SHAPED.search(_fold_keep_punctuation(subject)) is not None


# --- a person named by the subject alone ---------------------------------------
# Upper-case words of medical subjects that are not names: acronyms, headings,
# titles (compared folded). Words without a vowel (TSH, NFS, CRH) never count.
_NOT_NAMES = frozenset(
    {"ait", "alat", "ald", "ame", "anapath", "apa", "apicrypt", "ars", "asalee", "asat", "avc",
     "avis", "bilan", "bilans", "biologie", "biopsie", "bpco", "cardio", "cardiologie", "ccam",
     "cda", "certificat", "chirurgie", "chr", "chu", "cmp", "cmu", "compte", "confidentiel",
     "consultation", "controle", "convocation", "courrier", "covid", "cpam", "cpts", "crc",
     "crh", "cro", "ddn", "dmp", "docteur", "dossier", "dpc", "ecbu", "echo", "echographie",
     "ehpad", "emg", "enfant", "entree", "eoh", "epu", "examen", "examens", "fin", "fmc",
     "gastro", "ggt", "grippe", "gyneco", "had", "has", "hdj", "holter", "hospitalisation",
     "hprim", "ide", "idel", "imagerie", "important", "info", "information", "ins", "irm",
     "labo", "laboratoire", "lettre", "madame", "mademoiselle", "mapa", "mdph", "monsieur",
     "msp", "mss", "neuro", "ngap", "nir", "nouveau", "nouvelle", "objet", "oncologie",
     "ophtalmo", "ordonnance", "orl", "patient", "patiente", "pcr", "pdf", "pediatrie", "pmi",
     "pneumo", "prescription", "professeur", "psa", "psy", "psychiatrie", "radio", "radiologie",
     "rappel", "ras", "rdv", "rea", "relance", "rendu", "resultat", "resultats", "samu", "sau",
     "scanner", "smur", "soins", "sortie", "sos", "ssiad", "suivi", "tca", "tdm", "tep", "uhcd",
     "urgence", "urgences", "urgent", "urps", "usic", "vaccin", "vih"}
)  # fmt: skip
_TITLES = frozenset({"dr", "dre", "drs", "docteur", "pr", "pre", "prs", "professeur"})
_U = "A-ZÀ-ÖØ-Þ"
_L = "a-zß-öø-ÿ"
# One to four upper-case words: "ROCHE", "LE GALL", "N'DIAYE", "MARTIN-QUÉRÉ".
_UPPER_RUN = rf"[{_U}]+(?:['’][{_U}]+)?(?:[ \-][{_U}]+(?:['’][{_U}]+)?){{0,3}}"
_FIRST = rf"[{_U}][{_L}]+(?:-[{_U}][{_L}]+)?"
_END = r"(?![^\W_])"  # no letter or digit glued after
_CIVILITY_NAME = re.compile(
    r"(?<![^\W_])(?P<civ>M\.|(?i:madame|mademoiselle|monsieur|mme|mlle|melle|mr\.?|enfant|"
    r"b[ée]b[ée]))(?:\s+|(?<=\.))"
    rf"(?:(?!(?i:dr|pr|docteur|professeur)\b){_FIRST}\s+)?(?P<name>{_UPPER_RUN}){_END}"
)
_BIRTH_DATE = (
    r"[\s,;:(\-]*(?:(?i:n[ée]e?|n[ée]\(e\))\s+le\s*|(?i:ddn)\s*:?\s*)?"
    r"(?P<date>\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2}))(?!\d)"
)
_NAME_FIRST_DATE = re.compile(
    rf"(?<![^\W_])(?:(?P<name>{_UPPER_RUN})\s+{_FIRST}|{_FIRST}\s+(?P<name2>{_UPPER_RUN}))"
    rf"{_END}{_BIRTH_DATE}"
)
_TITLE_BEFORE = re.compile(r"(?i:\b(?:dr|dre|drs|docteur|pr|professeur)\.?)\s*$")


def _is_name_word(word: str) -> bool:
    """An upper-case word that can be a last name: 3 letters or more, a vowel,
    no digit, and not an acronym or heading of the stop-list."""
    folded = fold(word).replace(" ", "")
    return (
        word.isupper()
        and folded.isalpha()
        and len(folded) >= _MIN_NAME_LETTERS
        and any(v in folded for v in "aeiouy")
        and folded not in _NOT_NAMES
        and folded not in _TITLES
    )


def _names_someone(run: str) -> bool:
    return any(_is_name_word(w) for w in re.split(r"[ \-'’]+", run))


def subject_names_a_person(subject: str, today: date) -> list[str]:
    """Subject-only evidence of a person: a civility before an upper-case NAME
    ("CRH Mme CHEVALIER", "Re: M. FAURE Julien"), or an upper-case NAME with a
    first name and a past date ("MARCHAND Louis 28/02/1958"). Practitioners
    ("Dr MARTIN Paul …") and acronyms ("IRM", "CHU", "HbA1c") never count."""
    signals: list[str] = []
    has_lower = any(c.islower() for c in subject)
    for match in _CIVILITY_NAME.finditer(subject):
        # In an all-capitals subject "ENFANT ASTHME" names nobody.
        child = match["civ"][0] in "EeBb"
        if (has_lower or not child) and _names_someone(match["name"]):
            signals.append("civility_name")
            break
    for match in _NAME_FIRST_DATE.finditer(subject):
        name = match["name"] or match["name2"]
        if _TITLE_BEFORE.search(subject[: match.start()]):
            continue
        if _names_someone(name) and parse_birth_date(match["date"], today) is not None:
            signals.append("name_birth_date")
            break
    return signals


def _text_last_name(last_name: str) -> str:
    """A last name read from a letter's text is a best effort ("GARNIER DDN"):
    keep only the words that are no heading, acronym or title."""
    kept = [w for w in last_name.split() if fold(w) not in _NOT_NAMES | _TITLES]
    return " ".join(kept)


_SIGNALS = {
    # signal -> (French, English) what was found
    "last_name": ("le nom du patient", "the patient's last name"),
    "birth_date": ("la date de naissance du patient", "the patient's date of birth"),
    "nir": ("le NIR du patient", "the patient's NIR"),
    "nir_shaped": ("un numéro de sécurité sociale (NIR)", "a social security number (NIR)"),
    "civility_name": (
        "un nom de personne précédé d'une civilité",
        "a person's name after a civility",
    ),
    "name_birth_date": (
        "un nom, un prénom et une date",
        "a last name, a first name and a date",
    ),
}


def _identity_signals(identity: PatientIdentity, raw_dob: str, subject: str) -> list[str]:
    signals: list[str] = []
    if identity.last_name and name_in_subject(identity.last_name, subject):
        signals.append("last_name")
    if birth_date_in_subject(identity.birth_date, raw_dob, subject):
        signals.append("birth_date")
    if identity.nir and nir_in_subject(identity.nir, subject):
        signals.append("nir")
    return signals


class IdentityInSubject(Rule):
    """`privacy.identity-in-subject`: the Subject (which APICRYPT does not encrypt)
    names a patient: the name, date of birth or NIR of a patient identified in
    the message (HPRIM header, HPRIM Santé, CDA, or the letter's text), any
    NIR-shaped number, or a person named by the subject alone (a civility
    before an upper-case NAME, or NAME Firstname and a date)."""

    id = "privacy.identity-in-subject"
    article = None
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> list[Finding] | None:
        subject = ctx.message.subject
        if not subject.strip():
            return None
        found: dict[str, str] = {}  # signal -> record number ("" when not tied to one)
        scan = ctx.hprim
        for hprim_record in scan.records:
            signals = _identity_signals(
                hprim_record.identity, hprim_record.birth_date_text, subject
            )
            for signal in signals:
                found.setdefault(signal, str(hprim_record.index))
        for sante in scan.sante:
            for patient in sante.patients:
                signals = _identity_signals(patient.identity, patient.birth_date_text, subject)
                for signal in signals:
                    found.setdefault(signal, str(patient.index))
        # Identities from CDA documents or the letter's text (the text is only
        # read when no HPRIM identity exists: then the HPRIM ones above count).
        for identity in ctx.patient_data.identities:
            if identity.source in ("hprim", "hprim-sante"):
                continue
            if identity.source == "text":
                identity = replace(identity, last_name=_text_last_name(identity.last_name))
            for signal in _identity_signals(identity, "", subject):
                found.setdefault(signal, "")
        if "nir" not in found and nir_shaped_in_subject(subject):
            found["nir_shaped"] = ""
        if "last_name" not in found:
            for signal in subject_names_a_person(subject, ctx.charter.now.date()):
                found[signal] = ""
        findings: list[Finding] = []
        for signal, record in found.items():
            what_fr, what_en = _SIGNALS[signal]
            where_fr = f" (dossier HPRIM {record})" if record else ""
            where_en = f" (HPRIM record {record})" if record else ""
            details = {"signal": signal}
            if record:
                details["record"] = record
            findings.append(
                self.finding(
                    f"l'objet du message contient {what_fr}{where_fr} ; il n'est pas chiffré",
                    f"the subject contains {what_en}{where_en}; it is not encrypted",
                    "Retirez toute donnée d'identité du patient (nom, date de naissance, NIR) "
                    "de l'objet : APICRYPT ne chiffre pas l'objet. Écrivez par exemple "
                    "« Compte rendu de consultation » ; l'identité reste dans le corps.",
                    "Remove every patient identity detail (name, date of birth, NIR) from "
                    "the subject: APICRYPT does not encrypt it. Write for example "
                    '"Consultation report"; the identity stays in the body.',
                    details=details,
                )
            )
        return findings or None


RULES: list[type[Rule]] = [IdentityInSubject]
