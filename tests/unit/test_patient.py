"""Patient-data detection: which messages carry nominative patient data."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.mail import Envelope, parse_message
from apiguard.patient import (
    SIGNAL_CDA,
    SIGNAL_HPRIM,
    SIGNAL_HPRIM_SANTE,
    SIGNAL_TEXT_FIELDS,
    SIGNAL_TEXT_LABEL,
    SIGNAL_TEXT_NAME_BIRTH,
    SIGNAL_TEXT_REFERENCE,
    detect_patient_data,
    find_text_identities,
    parse_birth_date,
)
from apiguard.policy.context import CharterContext, MessageContext

TODAY = date(2025, 3, 11)


@pytest.mark.parametrize(
    ("text", "signal", "last_name", "first_name", "birth_date"),
    [
        (
            "Je vous adresse Mme DUPONT Jeanne, née le 12/03/1954, pour avis.",
            SIGNAL_TEXT_NAME_BIRTH, "DUPONT", "Jeanne", date(1954, 3, 12),
        ),
        (
            "voici le compte rendu de Mme Martin née le 3/4/1950.",
            SIGNAL_TEXT_NAME_BIRTH, "Martin", "", date(1950, 4, 3),
        ),
        (
            "Enfant MARTIN Léo, né le 3 mai 2019, vu pour une otite.",
            SIGNAL_TEXT_NAME_BIRTH, "MARTIN", "Léo", date(2019, 5, 3),
        ),
        (
            "M. LEFEVRE Pierre, 54 ans, né le 01/02/1970",
            SIGNAL_TEXT_NAME_BIRTH, "LEFEVRE", "Pierre", date(1970, 2, 1),
        ),
        (
            "DUPONT Jean (né le 01/02/1960) a été hospitalisé",
            SIGNAL_TEXT_NAME_BIRTH, "DUPONT", "Jean", date(1960, 2, 1),
        ),
        (
            "le dossier de Mme ARNAUD Lise, née le\n03/03/1970 ?",
            SIGNAL_TEXT_NAME_BIRTH, "ARNAUD", "Lise", date(1970, 3, 3),
        ),
        (
            "Mme D'ALMEIDA-SOUSA Ana née le 1er janvier 1980",
            SIGNAL_TEXT_NAME_BIRTH, "D'ALMEIDA-SOUSA", "Ana", date(1980, 1, 1),
        ),
        (
            "M. VIDAL Antoine (DDN : 01/12/1960)",
            SIGNAL_TEXT_NAME_BIRTH, "VIDAL", "Antoine", date(1960, 12, 1),
        ),
        (
            "Patient: Mr John SMITH, date of birth 04/07/1970.",
            SIGNAL_TEXT_NAME_BIRTH, "SMITH", "John", date(1970, 7, 4),
        ),
        ("Patient : DUPONT Jean\nVu ce jour", SIGNAL_TEXT_LABEL, "DUPONT", "Jean", None),
        ("Patiente : Mme ROUX", SIGNAL_TEXT_LABEL, "ROUX", "", None),
        ("Objet : Mme DUPONT Jeanne", SIGNAL_TEXT_LABEL, "DUPONT", "Jeanne", None),
        ("> Patient : Jean Dupont", SIGNAL_TEXT_LABEL, "Jean", "Dupont", None),
        (
            "Concernant votre patiente Marie DURAND (12/03/1954), ",
            SIGNAL_TEXT_REFERENCE, "DURAND", "Marie", date(1954, 3, 12),
        ),
        (
            "Nom : DUPONT   Prénom : Jeanne\nDate de naissance : 12/03/1954",
            SIGNAL_TEXT_FIELDS, "DUPONT", "Jeanne", date(1954, 3, 12),
        ),
        (
            "Nom de naissance : dupont\nPrénom : jeanne",
            SIGNAL_TEXT_FIELDS, "dupont", "jeanne", None,
        ),
        (
            "Nom et prénom : DUPONT Jeanne\nDDN: 12.03.54",
            SIGNAL_TEXT_FIELDS, "DUPONT", "Jeanne", date(1954, 3, 12),
        ),
    ],
)  # fmt: skip
def test_text_identification_is_found(
    text: str, signal: str, last_name: str, first_name: str, birth_date: date | None
) -> None:
    found = find_text_identities(text, TODAY)
    identities = [identity for name, identity in found if name == signal]
    assert identities, found
    identity = identities[0]
    assert (identity.last_name, identity.first_name, identity.birth_date) == (
        last_name,
        first_name,
        birth_date,
    )
    assert identity.source == "text"


@pytest.mark.parametrize(
    "text",
    [
        "Cher confrère, je vous adresse M. LEFEVRE pour avis.",  # a name alone
        "Je vous adresse Jeanne DUPONT pour une gonalgie.",
        "Objet : Compte rendu de Mme DUPONT",
        "Patient : vu ce jour pour une toux.",
        "Patient : Jean",
        "Concerne : Soirée FMC",
        "Madame, Monsieur,\nnous avons le plaisir de vous informer",
        "Le Dr MARTIN Paul vous invite le 12/03/2025 à 20h.",
        "Formation d'un thrombus ; réunion de concertation pluridisciplinaire du 12/03/2025.",
        "Le patient a changé d'adresse le 01/02/2025.",
        "Nom : DUPONT",  # a last name alone
        "Nom du médecin : Dr MARTIN\nDate : 12/03/2025",
        "",
    ],
)
def test_no_identification_without_a_birth_date_or_patient_label(text: str) -> None:
    assert find_text_identities(text, TODAY) == []


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("12/03/1954", date(1954, 3, 12)),
        ("1/2/1960", date(1960, 2, 1)),
        ("12.03.1954", date(1954, 3, 12)),
        ("15/03/85", date(1985, 3, 15)),
        ("15/03/05", date(2005, 3, 15)),
        ("1985-03-15", date(1985, 3, 15)),
        ("3 mai 2019", date(2019, 5, 3)),
        ("1er janvier 1980", date(1980, 1, 1)),
        ("14 Février 1990", date(1990, 2, 14)),
        ("31/02/1980", None),  # not a day
        ("01/01/2090", None),  # in the future
        ("01/01/1850", None),  # implausible
        ("12 foo 1980", None),
        ("", None),
    ],
)
def test_birth_dates_are_read_as_letters_write_them(written: str, expected: date | None) -> None:
    assert parse_birth_date(written, TODAY) == expected


@given(st.text(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_text_search_never_raises(text: str) -> None:
    for signal, identity in find_text_identities(text, TODAY):
        assert signal.startswith("text-")
        assert identity.source == "text"


@pytest.mark.parametrize(
    "hostile",
    [
        "AB " * 50_000,
        "D'" * 50_000,
        ("Nom :" + " " * 5_000 + "\n") * 20,
        ("AB" + " " * 5_000 + "\n") * 20,
        "Mme " * 50_000,
    ],
    ids=["capitals", "apostrophes", "label-spaces", "name-spaces", "civilities"],
)
def test_text_search_stays_fast_on_hostile_input(hostile: str) -> None:
    started = time.perf_counter()
    find_text_identities(hostile, TODAY)
    assert time.perf_counter() - started < 5.0  # generous: catches quadratic blow-ups


# --- whole messages -----------------------------------------------------------

HPRIM_BODY = (
    "0000458120\nPERRIN\nMonique\n12 RUE DES TILLEULS\n \n44300 NANTES\n17/08/1956\n"
    "2560844109123 05\n250310-0412\n10/03/2025\n         C BIOLAM\n     DR LEMAIRE\n"
    "Hémoglobine 13,8 g/dL\n****FIN****\n****FINFICHIER****\n"
)
HPRIM_SANTE = (
    "H|~^\\&|RES.HPR||BIOLAM~LABO||ORU|||ROUSSEAU~DR||P|H2.1~C|202503110915\r\n"
    "P|1|458777|B2503110042||ROCHE~ANDRE||19620714|M\r\n"
    "OBR|1||250311-0042|LIPID~BILAN LIPIDIQUE~L|||202503110730\r\n"
    "OBX|1|NM|CHOL~CHOLESTEROL TOTAL~L||2.14|g/l|1.50 - 2.00|H|||F\r\n"
    "L|1\r\n"
)
CDA = b"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <code code="11488-4" codeSystem="2.16.840.1.113883.6.1"/>
  <recordTarget><patientRole>
    <patient><name><family>LEBLANC</family><given>Anne</given></name>
    <birthTime value="19700101"/></patient>
  </patientRole></recordTarget>
</ClinicalDocument>
"""


def context(body: str, attachments: tuple[tuple[str, str, bytes], ...] = ()) -> MessageContext:
    mail = EmailMessage()
    mail["From"] = "dr.lemaire@medical44.apicrypt.org"
    mail["To"] = "dr.rousseau@medical13.apicrypt.org"
    mail["Subject"] = "Compte rendu"
    mail.set_content(body)
    for filename, content_type, content in attachments:
        maintype, subtype = content_type.split("/")
        mail.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    envelope = Envelope(mail["From"], (mail["To"],))
    charter = CharterContext(now=datetime(2025, 3, 11, tzinfo=UTC))
    return MessageContext(envelope, parse_message(mail.as_bytes()), charter)


@pytest.mark.parametrize(
    ("body", "attachments", "signal"),
    [
        (HPRIM_BODY, (), SIGNAL_HPRIM),
        ("Résultats ci-joints.", (("res.hps", "text/plain", HPRIM_SANTE.encode()),),
         SIGNAL_HPRIM_SANTE),
        ("Compte rendu structuré ci-joint.", (("cr.xml", "text/xml", CDA),), SIGNAL_CDA),
        ("Voici le compte rendu de Mme PETIT née le 02/09/1961.", (), SIGNAL_TEXT_NAME_BIRTH),
    ],
    ids=["hprim", "hprim-sante", "cda", "text"],
)  # fmt: skip
def test_each_source_of_patient_data_is_a_signal(
    body: str, attachments: tuple[tuple[str, str, bytes], ...], signal: str
) -> None:
    found = detect_patient_data(context(body, attachments))
    assert found.present
    assert signal in found.signals
    assert all(identity.last_name for identity in found.identities)


def test_a_message_about_no_one_has_no_patient_data() -> None:
    found = detect_patient_data(
        context("Bonjour, peux-tu me rappeler au cabinet pour les gardes ? Merci.")
    )
    assert not found.present
    assert found.signals == ()
    assert found.identities == ()


def test_patient_data_is_shared_through_the_context() -> None:
    ctx = context("Patient : DUPONT Jean\nVu ce jour.")
    assert ctx.patient_data is ctx.patient_data
    assert ctx.patient_data.signals == (SIGNAL_TEXT_LABEL,)


@pytest.mark.parametrize(
    ("text", "last_name", "birth_date"),
    [
        ("pansement fait chez mr chapuis gerard ne le 14/05/1938.", "chapuis", date(1938, 5, 14)),
        ("je vous adresse Mr BLANCHARD kevin ne le 3/2/91 pour", "BLANCHARD", date(1991, 2, 3)),
        (
            "Thank you for referring Mrs Claire Roussel (born 14 February 1958).",
            "Claire",
            date(1958, 2, 14),
        ),
        ("Point sur Mme Lucette ROUX (née 14/03/1939), en HAD", "ROUX", date(1939, 3, 14)),
        ("J'ai vu Mme CARRÉ Élodie (09/12/1984) hier.", "CARRÉ", date(1984, 12, 9)),
    ],
)
def test_a_civility_names_a_person_in_any_case_before_a_birth_date(
    text: str, last_name: str, birth_date: date
) -> None:
    (_, identity), *_ = find_text_identities(text, TODAY)
    assert (identity.last_name, identity.birth_date) == (last_name, birth_date)


@pytest.mark.parametrize(
    "text",
    ["Mme X vue le 12/03/2025 pour un contrôle.", "Madame, Monsieur, (12/03/2025)"],
)
def test_a_civility_and_a_date_that_is_not_a_birth_date_are_no_identity(text: str) -> None:
    assert find_text_identities(text, TODAY) == []
