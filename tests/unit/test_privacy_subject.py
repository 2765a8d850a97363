"""`privacy.identity-in-subject` beyond HPRIM: the names of patients identified
in the letter's text, and subjects that name a person on their own (a civility
before an upper-case NAME, or NAME Firstname and a date), never practitioners
or medical acronyms."""

from __future__ import annotations

import email.header
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter, rule_classes
from apiguard.policy.context import CharterContext
from apiguard.policy.rules.privacy import subject_names_a_person
from apiguard.policy.verdict import Action, Decision

RULE = "privacy.identity-in-subject"
NOW = datetime(2025, 6, 20, 9, 0, tzinfo=UTC)
TODAY = NOW.date()
ENVELOPE = Envelope("dr.exemple@cabinet.apicrypt.org", ("dr.dest@chu.apicrypt.org",))
HELDOUT = Path(__file__).resolve().parents[1] / "corpus_heldout"

# A patient identified in the text only (no HPRIM header).
TEXT_LETTER = (
    "Cher confrère,\n\nPatient : Mme ZÉPHYRIN Léopoldine, née le 05/09/1962.\n"
    "Examen clinique sans particularité. Je la reverrai dans un an.\n\nDr Exemple\n"
)
# The same patient in an HPRIM header (the text is then not scanned).
HPRIM_LETTER = "\n".join(
    [
        "P000451", "ZÉPHYRIN", "Léopoldine", "12 allée des Tilleuls", " ", "29200 BREST",
        "05/09/1962", "", "EX-2025-0042", "18/06/2025", "lab.ouest Laboratoire Synthèse Ouest",
        "dr.dest Dr Destinataire", " ", "Compte rendu : examen clinique normal.",
        "****FIN****", "****FINFICHIER****", "",
    ]
)  # fmt: skip
PATIENT_VALUES = ("zéphyrin", "zephyrin", "léopoldine", "05/09/1962", "1962")


def raw_message(body: str, subject: str) -> bytes:
    if not subject.isascii():
        subject = email.header.Header(subject, "utf-8").encode()
    return (
        "From: dr.exemple@cabinet.apicrypt.org\r\nTo: dr.dest@chu.apicrypt.org\r\n"
        f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + body.encode()


def decide(raw: bytes) -> Decision:
    others = {c.id: {"enabled": False} for c in rule_classes() if c.id != RULE}
    charter = Charter.build(others, CharterContext(now=NOW))
    return charter.check_message(ENVELOPE, parse_message(raw))


def signals(decision: Decision) -> list[str]:
    return [dict(f.details)["signal"] for f in decision.findings if f.rule == RULE]


# --- the subject alone -----------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        # a civility before an upper-case NAME
        ("CRH Mme CHEVALIER", ["civility_name"]),
        ("Re: M. FAURE Julien", ["civility_name"]),
        ("Suivi de grossesse Mme ROCHE", ["civility_name"]),
        ("Courrier Madame LE GALL", ["civility_name"]),
        ("Avis Monsieur N'DIAYE", ["civility_name"]),
        ("Consultation Mlle MARTIN-QUÉRÉ", ["civility_name"]),
        ("Mr. SMITH follow-up", ["civility_name"]),
        ("CR MME DUPONT", ["civility_name"]),
        ("Vaccins Enfant GIRAUD", ["civility_name"]),
        ("Bébé LEROY : ictère", ["civility_name"]),
        ("Bilan Mme Odette CHEVALIER", ["civility_name"]),
        ("TR: M.BOYER", ["civility_name"]),
        # an upper-case NAME, a first name and a date of birth
        ("MARCHAND Louis 28/02/1958", ["name_birth_date"]),
        ("Résultats Louis MARCHAND né le 28/02/1958", ["name_birth_date"]),
        ("GAUTIER Léa (13/08/15)", ["name_birth_date"]),
        ("LE GALL Maëlle - DDN 23.08.1994", ["name_birth_date"]),
        ("Mme ROCHE Anaïs 02/02/1994", ["civility_name", "name_birth_date"]),
        # practitioners
        ("Courrier du Dr MARTIN", []),
        ("Avis du Pr DURAND", []),
        ("Dr MARTIN Paul 12/06/2025", []),
        ("Réponse du Docteur Paul MARTIN 12/06/2025", []),
        ("Mme le Dr DURAND", []),
        ("Mme Dr DURAND", []),
        # acronyms, headings and ordinary capitals
        ("CRH court séjour gériatrique", []),
        ("IRM genou droit", []),
        ("IRM Genou 12/06/2025", []),
        ("Fiche RCP sénologie du 17/06/2025", []),
        ("Demande d'avis ORL", []),
        ("Bilan HbA1c et NFS", []),
        ("TSH Mme TSH", []),
        ("Entrée en EHPAD de votre patient", []),
        ("Mme CHU", []),
        ("URGENT - résultat critique", []),
        ("SCANNER Thoracique 12/06/2025", []),
        ("DERMAVEL, la nouvelle référence", []),
        ("ENFANT ASTHME", []),
        ("Résultats de Mme Dupont", []),  # no upper-case NAME
        ("Mme AB", []),  # too short
        ("Bilan DUPONT Jean 01/01/2090", []),  # not a date of birth: future
        ("Bilan DUPONT Jean 31/02/1980", []),  # not a date at all
        ("", []),
    ],
)
def test_subject_alone(subject: str, expected: list[str]) -> None:
    assert subject_names_a_person(subject, TODAY) == expected


# --- through the charter ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "subject", "expected"),
    [
        # the name or date of birth of the patient identified in the text
        (TEXT_LETTER, "Compte rendu de consultation", []),
        (TEXT_LETTER, "Avis - Léopoldine Zéphyrin", ["last_name"]),
        (TEXT_LETTER, "résultats zephyrin", ["last_name"]),
        (TEXT_LETTER, "Bilan du 05/09/1962", ["birth_date"]),
        (TEXT_LETTER, "CRH Mme ZÉPHYRIN", ["last_name"]),  # one finding for one name
        (TEXT_LETTER, "Avis du Dr MARTIN", []),
        # a patient in an HPRIM header
        (HPRIM_LETTER, "Résultats Zéphyrin", ["last_name"]),
        (HPRIM_LETTER, "Résultats de biologie", []),
        # no patient identified: the subject alone
        ("Bonjour, voici le compte rendu.", "CRH Mme CHEVALIER", ["civility_name"]),
        ("Bonjour, voici le compte rendu.", "MARCHAND Louis 28/02/1958", ["name_birth_date"]),
        ("Bonjour, voici le compte rendu.", "Compte rendu du Dr MARTIN", []),
    ],
)
def test_identity_in_subject_through_the_charter(
    body: str, subject: str, expected: list[str]
) -> None:
    decision = decide(raw_message(body, subject))

    assert signals(decision) == expected
    for finding in decision.findings:
        assert finding.action is Action.REJECT
        written = " ".join(
            [finding.message_fr, finding.message_en, finding.fix_fr, finding.fix_en]
            + [f"{key} {value}" for key, value in finding.details]
        ).casefold()
        assert not any(value in written for value in PATIENT_VALUES)


def test_a_heading_read_with_the_name_is_not_taken_for_it() -> None:
    """The text reader may keep a heading with the name ("GARNIER DDN"): the
    heading alone in the subject is not the patient's name."""
    body = "Patient : GARNIER Paul DDN : 12/12/1950\nScanner thoracique normal.\n"
    assert signals(decide(raw_message(body, "Résultats, DDN à vérifier"))) == []
    assert signals(decide(raw_message(body, "Résultats Garnier"))) == ["last_name"]


# The held-out letters, with the patient's identity moved into the subject as
# practitioners do: each must now be refused.
@pytest.mark.parametrize(
    ("file", "subject"),
    [
        ("legit-05-sortie-geriatrie-html-qp.eml", "CRH Mme CHEVALIER"),
        ("legit-06-reponse-neurologue-citee.eml", "Re: M. FAURE Julien"),
        ("legit-17-sage-femme-grossesse.eml", "Suivi de grossesse Mme ROCHE"),
        ("legit-20-remplacante-otite.eml", "Avis ORL - Lea GAUTIER"),
        ("legit-20-remplacante-otite.eml", "Avis ORL - Léa Gautier"),
        ("legit-12-anapath-prostate.eml", "MARCHAND Louis 28/02/1958"),
        ("legit-03-hprim-echographie-latin1.eml", "Echographie Mme LEROUX"),
    ],
)
def test_heldout_letters_with_the_patient_in_the_subject_are_refused(
    file: str, subject: str
) -> None:
    raw = (HELDOUT / file).read_bytes()
    encoded = email.header.Header(subject, "utf-8").encode().encode()
    changed, count = re.subn(rb"(?m)^Subject:[^\r\n]*", b"Subject: " + encoded, raw, count=1)
    assert count == 1
    original = decide(raw)
    decision = decide(changed)

    assert signals(original) == []
    assert signals(decision), subject
    assert decision.findings[0].action is Action.REJECT


def test_subject_names_a_person_uses_the_given_day() -> None:
    subject = "DUPONT Jean 18/06/2025"
    assert subject_names_a_person(subject, date(2025, 6, 18)) == ["name_birth_date"]
    assert subject_names_a_person(subject, date(2025, 6, 17)) == []
