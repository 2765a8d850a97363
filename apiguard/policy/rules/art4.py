"""Article 4: with the HPRIM format, fill the header correctly (at least the
patient's last name, first name and date of birth).

The header is how the recipient's practice software files a letter or a
result into the right patient record. Findings name the record and the line,
never what the line holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

from pydantic import Field

from apiguard.hprim import (
    LINE_BIRTH_DATE,
    LINE_FIRST_NAME,
    LINE_LAST_NAME,
    LINE_NIR,
    HprimProblem,
    HprimRecord,
    HprimSanteFile,
    SantePatient,
    is_nir_shaped,
    nir_key_valid,
)
from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule, RuleParams
from apiguard.policy.verdict import Action, Finding

_HEADER_LAYOUT_FR = (
    "L'en-tête HPRIM compte 12 lignes : code patient, nom, prénom, adresse (2 lignes), "
    "code postal et ville, date de naissance JJ/MM/AAAA, NIR, numéro d'examen, "
    "date d'examen, expéditeur, destinataire."
)
_HEADER_LAYOUT_EN = (
    "The HPRIM header has 12 lines: patient code, last name, first name, address "
    "(2 lines), postcode and city, date of birth DD/MM/YYYY, NIR, exam number, "
    "exam date, sender, recipient."
)
_REGENERATE_FR = (
    "Régénérez le message depuis votre logiciel métier plutôt que de le corriger à la main."
)
_REGENERATE_EN = (
    "Generate the message again from your practice software rather than editing it by hand."
)


def _prefix(source: str) -> tuple[str, str]:
    """Where the HPRIM text sits: the body (no prefix) or attachment N."""
    if source.startswith("attachment "):
        number = source.removeprefix("attachment ")
        return f"pièce jointe {number}, ", f"attachment {number}, "
    return "", ""


def header_location(record: HprimRecord, header_line: int) -> tuple[str, str]:
    """`en-tête HPRIM, dossier 1, ligne 2` in French and English."""
    fr, en = _prefix(record.source)
    return (
        f"{fr}en-tête HPRIM, dossier {record.index}, ligne {header_line}",
        f"{en}HPRIM header, record {record.index}, line {header_line}",
    )


def sante_location(sante: HprimSanteFile, patient: SantePatient) -> tuple[str, str]:
    fr, en = _prefix(sante.source)
    return (
        f"{fr}fichier HPRIM Santé, patient {patient.index}, ligne {patient.line}",
        f"{en}HPRIM Santé file, patient {patient.index}, line {patient.line}",
    )


def _record_details(record: HprimRecord, header_line: int, signal: str) -> dict[str, str]:
    return {
        "source": record.source,
        "record": str(record.index),
        "header_line": str(header_line),
        "line": str(record.document_line(header_line)),
        "signal": signal,
    }


def _sante_details(sante: HprimSanteFile, patient: SantePatient, signal: str) -> dict[str, str]:
    return {
        "source": sante.source,
        "format": "hprim-sante",
        "record": str(patient.index),
        "line": str(patient.line),
        "signal": signal,
    }


def _sante_patients(ctx: MessageContext) -> Iterator[tuple[HprimSanteFile, SantePatient]]:
    for sante in ctx.hprim.sante:
        for patient in sante.patients:
            yield sante, patient


# (header line, identity field, French label, English label)
_IDENTITY_FIELDS = (
    (LINE_LAST_NAME, "last_name", "nom du patient absent", "patient's last name missing"),
    (LINE_FIRST_NAME, "first_name", "prénom du patient absent", "patient's first name missing"),
    (
        LINE_BIRTH_DATE,
        "birth_date",
        "date de naissance du patient absente",
        "patient's date of birth missing",
    ),
)


class HprimIdentity(Rule):
    """`art4.hprim-identity`: an HPRIM header without last name, first name or date of birth."""

    id = "art4.hprim-identity"
    article = 4
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> list[Finding] | None:
        findings: list[Finding] = []
        for record in ctx.hprim.records:
            present = {
                "last_name": bool(record.last_name),
                "first_name": bool(record.first_name),
                "birth_date": bool(record.birth_date_text),
            }
            for line, name, label_fr, label_en in _IDENTITY_FIELDS:
                if present[name]:
                    continue
                where_fr, where_en = header_location(record, line)
                findings.append(
                    self.finding(
                        f"{where_fr} : {label_fr}",
                        f"{where_en}: {label_en}",
                        f"Renseignez la ligne {line} de l'en-tête HPRIM du dossier "
                        f"{record.index} dans la fiche du patient. {_HEADER_LAYOUT_FR} "
                        f"{_REGENERATE_FR}",
                        f"Fill in line {line} of the HPRIM header of record {record.index} "
                        f"in the patient's file. {_HEADER_LAYOUT_EN} {_REGENERATE_EN}",
                        details=_record_details(record, line, name),
                    )
                )
        for sante, patient in _sante_patients(ctx):
            identity = patient.identity
            present = {
                "last_name": bool(identity.last_name),
                "first_name": bool(identity.first_name),
                "birth_date": bool(patient.birth_date_text),
            }
            for _line, name, label_fr, label_en in _IDENTITY_FIELDS:
                if present[name]:
                    continue
                where_fr, where_en = sante_location(sante, patient)
                findings.append(
                    self.finding(
                        f"{where_fr} : {label_fr}",
                        f"{where_en}: {label_en}",
                        "Renseignez l'identité du patient dans l'enregistrement P (champ 5 "
                        "NOM~PRÉNOM, champ 7 date de naissance AAAAMMJJ) depuis votre "
                        "logiciel de laboratoire.",
                        "Fill in the patient's identity in the P record (field 5 "
                        "LAST~FIRST name, field 7 date of birth YYYYMMDD) from your "
                        "laboratory software.",
                        details=_sante_details(sante, patient, name),
                    )
                )
        return findings or None


class HprimDobParams(RuleParams):
    max_age_years: int = Field(default=130, ge=1, le=200)


def _years_before(today: date, years: int) -> date:
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


class HprimDob(Rule):
    """`art4.hprim-dob`: a date of birth that is unreadable, in the future or implausible."""

    id = "art4.hprim-dob"
    article = 4
    default_action = Action.REJECT
    Params = HprimDobParams

    def _problem(self, text: str, birth: date | None, today: date) -> tuple[str, str, str] | None:
        """(signal, French, English) for what is wrong with a date of birth, if anything."""
        assert isinstance(self.params, HprimDobParams)
        years = self.params.max_age_years
        if not text:
            return None  # absent: art4.hprim-identity says so
        if birth is None:
            return "unreadable", "date de naissance illisible", "unreadable date of birth"
        if birth > today:
            return "future", "date de naissance dans le futur", "date of birth in the future"
        if birth < _years_before(today, years):
            return (
                "too-old",
                f"date de naissance invraisemblable (plus de {years} ans)",
                f"implausible date of birth (more than {years} years ago)",
            )
        return None

    def check(self, ctx: MessageContext) -> list[Finding] | None:
        today = ctx.charter.now.date()
        findings: list[Finding] = []
        fix_fr = (
            f"Corrigez la date de naissance dans la fiche du patient : ligne {LINE_BIRTH_DATE} "
            "de l'en-tête HPRIM, au format JJ/MM/AAAA (jour, mois, année sur 4 chiffres). "
            f"{_REGENERATE_FR}"
        )
        fix_en = (
            "Correct the date of birth in the patient's file: line "
            f"{LINE_BIRTH_DATE} of the HPRIM header, as DD/MM/YYYY (day, month, 4-digit year). "
            f"{_REGENERATE_EN}"
        )
        for record in ctx.hprim.records:
            problem = self._problem(record.birth_date_text, record.birth_date, today)
            if problem is None:
                continue
            signal, label_fr, label_en = problem
            where_fr, where_en = header_location(record, LINE_BIRTH_DATE)
            findings.append(
                self.finding(
                    f"{where_fr} : {label_fr}",
                    f"{where_en}: {label_en}",
                    fix_fr,
                    fix_en,
                    details=_record_details(record, LINE_BIRTH_DATE, signal),
                )
            )
        for sante, patient in _sante_patients(ctx):
            problem = self._problem(patient.birth_date_text, patient.identity.birth_date, today)
            if problem is None:
                continue
            signal, label_fr, label_en = problem
            where_fr, where_en = sante_location(sante, patient)
            findings.append(
                self.finding(
                    f"{where_fr} : {label_fr}",
                    f"{where_en}: {label_en}",
                    "Corrigez la date de naissance du patient (champ 7 de l'enregistrement P, "
                    "au format AAAAMMJJ) depuis votre logiciel de laboratoire.",
                    "Correct the patient's date of birth (field 7 of the P record, as "
                    "YYYYMMDD) from your laboratory software.",
                    details=_sante_details(sante, patient, signal),
                )
            )
        return findings or None


_FIX_MARKERS_FR = (
    "Chaque dossier HPRIM se termine par une ligne ****FIN**** et le fichier par une "
    "ligne ****FINFICHIER****, sans rien entre les deux ni après (pas de signature). "
)
_FIX_MARKERS_EN = (
    "Each HPRIM record ends with a ****FIN**** line and the file with a "
    "****FINFICHIER**** line, with nothing between or after them (no signature). "
)

# kind -> (French, English) description of the structure problem.
_STRUCTURE_TEXTS: dict[str, tuple[str, str]] = {
    "header-too-short": (
        "en-tête trop court (12 lignes attendues)",
        "header too short (12 lines expected)",
    ),
    "missing-fin": (
        "ligne ****FIN**** manquante à la fin du dossier",
        "****FIN**** line missing at the end of the record",
    ),
    "missing-finfichier": (
        "ligne ****FINFICHIER**** manquante à la fin du fichier",
        "****FINFICHIER**** line missing at the end of the file",
    ),
    "markers-misordered": (
        "****FIN**** placé après ****FINFICHIER****",
        "****FIN**** placed after ****FINFICHIER****",
    ),
    "text-between-markers": (
        "texte entre ****FIN**** et ****FINFICHIER****",
        "text between ****FIN**** and ****FINFICHIER****",
    ),
    "text-after-finfichier": (
        "texte après ****FINFICHIER****",
        "text after ****FINFICHIER****",
    ),
    "sante-no-patient": (
        "aucun enregistrement patient (P)",
        "no patient (P) record",
    ),
    "sante-no-terminator": (
        "enregistrement de fin (L) manquant",
        "end (L) record missing",
    ),
    "sante-text-after-terminator": (
        "enregistrements après l'enregistrement de fin (L)",
        "records after the end (L) record",
    ),
}


def _structure_location(problem: HprimProblem) -> tuple[str, str]:
    fr, en = _prefix(problem.source)
    if problem.kind.startswith("sante-"):
        return f"{fr}fichier HPRIM Santé", f"{en}HPRIM Santé file"
    if problem.kind == "header-too-short" and problem.header_line is not None:
        return (
            f"{fr}en-tête HPRIM, dossier {problem.record}, ligne {problem.header_line}",
            f"{en}HPRIM header, record {problem.record}, line {problem.header_line}",
        )
    if problem.record is not None:
        return f"{fr}HPRIM, dossier {problem.record}", f"{en}HPRIM, record {problem.record}"
    return f"{fr}HPRIM", f"{en}HPRIM"


class HprimStructure(Rule):
    """`art4.hprim-structure`: header too short, end markers missing or misplaced,
    text after the end."""

    id = "art4.hprim-structure"
    article = 4
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> list[Finding] | None:
        findings: list[Finding] = []
        for problem in ctx.hprim.problems:
            if problem.category != "structure":
                continue
            what_fr, what_en = _STRUCTURE_TEXTS.get(
                problem.kind, ("structure HPRIM incorrecte", "incorrect HPRIM structure")
            )
            where_fr, where_en = _structure_location(problem)
            if problem.kind.startswith("sante-"):
                fix_fr = (
                    "Un fichier HPRIM Santé commence par H, nomme le patient dans un "
                    "enregistrement P et se termine par L. Régénérez-le depuis votre "
                    "logiciel de laboratoire."
                )
                fix_en = (
                    "An HPRIM Santé file starts with H, names the patient in a P record "
                    "and ends with L. Generate it again from your laboratory software."
                )
            elif problem.kind == "header-too-short":
                fix_fr = f"{_HEADER_LAYOUT_FR} Complétez les lignes manquantes. {_REGENERATE_FR}"
                fix_en = f"{_HEADER_LAYOUT_EN} Add the missing lines. {_REGENERATE_EN}"
            else:
                fix_fr, fix_en = _FIX_MARKERS_FR + _REGENERATE_FR, _FIX_MARKERS_EN + _REGENERATE_EN
            details = {"source": problem.source, "signal": problem.kind, "line": str(problem.line)}
            if problem.record is not None:
                details["record"] = str(problem.record)
            if problem.header_line is not None:
                details["header_line"] = str(problem.header_line)
            findings.append(
                self.finding(
                    f"{where_fr}, ligne {problem.line} : {what_fr}"
                    if problem.header_line is None
                    else f"{where_fr} : {what_fr}",
                    f"{where_en}, line {problem.line}: {what_en}"
                    if problem.header_line is None
                    else f"{where_en}: {what_en}",
                    fix_fr,
                    fix_en,
                    details=details,
                )
            )
        return findings or None


class HprimNir(Rule):
    """`art4.hprim-nir`: a NIR (line 8) that is malformed or whose key does not verify."""

    id = "art4.hprim-nir"
    article = 4
    default_action = Action.WARN

    def check(self, ctx: MessageContext) -> list[Finding] | None:
        findings: list[Finding] = []
        for record in ctx.hprim.records:
            if not record.nir_text:
                continue
            if not is_nir_shaped(record.nir_text):
                signal = "malformed"
                what_fr = "NIR mal formé (13 caractères puis une clé de 2 chiffres attendus)"
                what_en = "malformed NIR (13 characters then a 2-digit key expected)"
            elif nir_key_valid(record.nir_text) is False:
                signal = "bad-key"
                what_fr, what_en = "la clé du NIR ne correspond pas", "the NIR key does not verify"
            else:
                continue
            where_fr, where_en = header_location(record, LINE_NIR)
            findings.append(
                self.finding(
                    f"{where_fr} : {what_fr}",
                    f"{where_en}: {what_en}",
                    "Vérifiez le numéro de sécurité sociale (NIR) dans la fiche du patient, "
                    f"ligne {LINE_NIR} de l'en-tête HPRIM ; laissez-la vide si vous ne le "
                    "connaissez pas.",
                    "Check the patient's social security number (NIR) in the patient's file, "
                    f"line {LINE_NIR} of the HPRIM header; leave it empty if you do not know it.",
                    details=_record_details(record, LINE_NIR, signal),
                )
            )
        return findings or None


_LAB_DETAIL_LINES = 10


class HprimLab(Rule):
    """`art4.hprim-lab`: malformed `****LAB****` result lines."""

    id = "art4.hprim-lab"
    article = 4
    default_action = Action.WARN

    def check(self, ctx: MessageContext) -> list[Finding] | None:
        findings: list[Finding] = []
        for record in ctx.hprim.records:
            lab = [p for p in record.problems if p.category == "lab"]
            if not lab:
                continue
            lines = sorted({p.line for p in lab})
            kinds = sorted({p.kind for p in lab})
            fr, en = _prefix(record.source)
            findings.append(
                self.finding(
                    f"{fr}HPRIM, dossier {record.index}, bloc ****LAB****, ligne {lines[0]} : "
                    f"{len(lines)} ligne(s) de résultat mal formée(s)",
                    f"{en}HPRIM, record {record.index}, ****LAB**** block, line {lines[0]}: "
                    f"{len(lines)} malformed result line(s)",
                    "Chaque ligne du bloc ****LAB**** est TEX|texte ou "
                    "RES|libellé|code|type N/A/C|valeur|unité|min|max|L/H/LL/HH/N|F/R/C. "
                    "Régénérez le résultat depuis votre logiciel de laboratoire.",
                    "Each ****LAB**** line is TEX|text or "
                    "RES|label|code|type N/A/C|value|unit|low|high|L/H/LL/HH/N|F/R/C. "
                    "Generate the result again from your laboratory software.",
                    details={
                        "source": record.source,
                        "record": str(record.index),
                        "line": str(lines[0]),
                        "lines": ",".join(str(n) for n in lines[:_LAB_DETAIL_LINES]),
                        "count": str(len(lines)),
                        "signals": ",".join(kinds),
                    },
                )
            )
        return findings or None


RULES: list[type[Rule]] = [HprimIdentity, HprimDob, HprimStructure, HprimNir, HprimLab]
