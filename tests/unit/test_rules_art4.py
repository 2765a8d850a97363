"""Article 4 HPRIM rules and `privacy.identity-in-subject`, through the charter.

Messages are built as raw RFC 5322 bytes and go through `parse_message` then
`Charter.build().check_message`, with only these rules enabled so that each
verdict is theirs alone.
"""

from __future__ import annotations

import email.header
from datetime import UTC, datetime

import pytest

from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter, rule_classes
from apiguard.policy.context import CharterContext, MessageContext
from apiguard.policy.verdict import Action, Decision, Finding, Verdict
from tests.samples import hprim_header

NOW = datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
ENVELOPE = Envelope("dr.exemple@cabinet.apicrypt.org", ("dr.dest@chu.apicrypt.org",))
MY_RULES = (
    "art4.hprim-identity",
    "art4.hprim-dob",
    "art4.hprim-structure",
    "art4.hprim-nir",
    "art4.hprim-lab",
    "privacy.identity-in-subject",
)
# Distinctive synthetic patient data: none of it may appear in any finding.
PATIENT_VALUES = (
    "ZÉPHYRIN",
    "Zéphyrin",
    "ZEPHYRIN",
    "Léopoldine",
    "05/09/1962",
    "1962",
    "2620975123456",
    "P000451",
    "Tilleuls",
    "BREST",
    "EX-2024-0042",
)


def header(**overrides: str) -> list[str]:
    return hprim_header(**{"recipient": "dr.dest Dr Destinataire", **overrides})


def letter(*extra: str, **overrides: str) -> list[str]:
    return [*header(**overrides), " ", "Compte rendu : examen clinique normal.", *extra]


def hprim(*records: list[str], after: str = "") -> str:
    lines: list[str] = []
    for record in records:
        lines.extend([*record, "****FIN****"])
    return "\n".join([*lines, "****FINFICHIER****", ""]) + after


def rfc5322(
    body: str | bytes,
    *,
    subject: str = "Compte rendu",
    charset: str | None = "utf-8",
    encoding: str = "utf-8",
    eol: str = "\n",
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    """A whole message as bytes: `body` encoded with `encoding`, declared as `charset`."""
    payload = body if isinstance(body, bytes) else body.replace("\n", eol).encode(encoding)
    declared = f"; charset={charset}" if charset else ""
    if not subject.isascii():
        subject = email.header.Header(subject, "utf-8").encode()
    head = (
        "From: dr.exemple@cabinet.apicrypt.org\r\nTo: dr.dest@chu.apicrypt.org\r\n"
        f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
    ).encode()
    if attachment is None:
        content_type = f"Content-Type: text/plain{declared}\r\n"
        return head + content_type.encode() + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + payload
    filename, content = attachment
    return (
        head
        + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
        + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + payload
        + b"\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
        + f'Content-Disposition: attachment; filename="{filename}"\r\n'.encode()
        + b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + content
        + b"\r\n--b1--\r\n"
    )


def charter(**settings: dict[str, object]) -> Charter:
    others = {c.id: {"enabled": False} for c in rule_classes() if c.id not in MY_RULES}
    return Charter.build({**others, **settings}, CharterContext(now=NOW))


def check(raw: bytes) -> Decision:
    decision = charter().check_message(ENVELOPE, parse_message(raw))
    assert_no_patient_data(decision.findings)
    return decision


def assert_no_patient_data(findings: tuple[Finding, ...]) -> None:
    for finding in findings:
        texts = [finding.message_fr, finding.message_en, finding.fix_fr, finding.fix_en]
        texts.extend(value for _key, value in finding.details)
        for text in texts:
            for value in PATIENT_VALUES:
                assert value.casefold() not in text.casefold(), (finding.rule, value)


def hits(decision: Decision) -> list[tuple[str, str]]:
    """(rule, signal) of each finding."""
    return [(f.rule, dict(f.details).get("signal", "")) for f in decision.findings]


def test_every_rule_runs_and_a_valid_letter_forwards_with_no_finding() -> None:
    decision = check(rfc5322(hprim(letter())))

    assert decision.verdict is Verdict.FORWARD
    assert decision.findings == ()
    assert set(decision.checked) == set(MY_RULES)


# --- encodings and line ends -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoding", "charset", "eol"),
    [
        ("UTF-8 declared, LF", "utf-8", "utf-8", "\n"),
        ("UTF-8 declared, CRLF", "utf-8", "utf-8", "\r\n"),
        ("UTF-8 declared, CR alone", "utf-8", "utf-8", "\r"),
        ("UTF-8 mislabelled as ISO-8859-1", "utf-8", "iso-8859-1", "\r\n"),
        ("UTF-8 undeclared", "utf-8", None, "\n"),
        ("Latin-1 declared", "latin-1", "iso-8859-1", "\r\n"),
        ("Latin-1 mislabelled as UTF-8", "latin-1", "utf-8", "\r\n"),
        ("Windows-1252 declared", "cp1252", "windows-1252", "\r\n"),
        ("Windows-1252 undeclared, CR alone", "cp1252", None, "\r"),
    ],
)
def test_encodings_and_line_ends_all_read_the_same_patient(
    name: str, encoding: str, charset: str | None, eol: str
) -> None:
    extra = "Œdème, suivi d’un mois." if encoding != "latin-1" else "Oedème, suivi à un mois."
    body = hprim(letter(extra))
    raw = rfc5322(body, charset=charset, encoding=encoding, eol=eol)

    decision = check(raw)
    ctx = MessageContext(ENVELOPE, parse_message(raw), CharterContext(now=NOW))

    assert decision.verdict is Verdict.FORWARD, (name, decision.findings)
    (identity,) = ctx.hprim.identities
    assert (identity.last_name, identity.first_name) == ("ZÉPHYRIN", "Léopoldine"), name
    assert identity.birth_date is not None and identity.birth_date.year == 1962


# --- identity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "overrides", "line", "signal", "label_fr"),
    [
        ("empty last name", {"last": ""}, 2, "last_name", "nom du patient absent"),
        ("blank last name", {"last": "   "}, 2, "last_name", "nom du patient absent"),
        ("empty first name", {"first": ""}, 3, "first_name", "prénom du patient absent"),
        ("empty date of birth", {"dob": ""}, 7, "birth_date", "date de naissance du patient"),
    ],
)
def test_a_missing_identity_field_is_rejected_naming_record_and_line(
    name: str, overrides: dict[str, str], line: int, signal: str, label_fr: str
) -> None:
    decision = check(rfc5322(hprim(letter(**overrides))))

    assert decision.verdict is Verdict.REJECT, name
    (finding,) = decision.findings
    assert finding.rule == "art4.hprim-identity"
    assert finding.article == 4
    assert finding.message_fr.startswith(f"en-tête HPRIM, dossier 1, ligne {line} : {label_fr}")
    assert finding.message_en.startswith(f"HPRIM header, record 1, line {line}: ")
    assert f"ligne {line}" in finding.fix_fr
    details = dict(finding.details)
    assert details == {
        "source": "body",
        "record": "1",
        "header_line": str(line),
        "line": str(line),
        "signal": signal,
    }


def test_the_second_record_is_named_with_its_own_header_line() -> None:
    decision = check(rfc5322(hprim(letter(), letter(first=""))))

    (finding,) = decision.findings
    assert finding.message_fr.startswith("en-tête HPRIM, dossier 2, ligne 3 :")
    assert dict(finding.details)["line"] == "18"


def test_an_hprim_attachment_is_named_by_its_number_never_its_name() -> None:
    raw = rfc5322(
        "Voir le résultat joint.",
        attachment=("ZEPHYRIN_resultat.hpr", hprim(letter(last="")).encode("cp1252")),
    )

    decision = check(raw)

    (finding,) = decision.findings
    assert finding.rule == "art4.hprim-identity"
    assert finding.message_fr.startswith("pièce jointe 1, en-tête HPRIM, dossier 1, ligne 2 :")
    assert dict(finding.details)["source"] == "attachment 1"


# --- dates of birth --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dob", "signal"),
    [
        ("05/09/1962", None),
        ("15/03/85", None),
        ("1985-03-15", None),
        ("01/06/2024", None),
        ("02/06/1894", None),
        ("31/02/1980", "unreadable"),
        ("15 mars 1985", "unreadable"),
        ("1985/03/15", "unreadable"),
        ("01/01/2090", "future"),
        ("02/06/2024", "future"),
        ("31/05/1894", "too-old"),
        ("01/01/1800", "too-old"),
    ],
)
def test_dates_of_birth_are_checked_against_the_charter_clock(dob: str, signal: str | None) -> None:
    decision = check(rfc5322(hprim(letter(dob=dob))))

    if signal is None:
        assert decision.findings == ()
        return
    (finding,) = decision.findings
    assert (finding.rule, dict(finding.details)["signal"]) == ("art4.hprim-dob", signal)
    assert finding.action is Action.REJECT
    assert finding.message_fr.startswith("en-tête HPRIM, dossier 1, ligne 7 : ")
    assert dob not in finding.message_fr + finding.fix_fr


def test_the_plausible_age_is_configurable() -> None:
    raw = rfc5322(hprim(letter(dob="01/01/1920")))
    settings = {"art4.hprim-dob": {"max_age_years": 100}}

    decision = charter(**settings).check_message(ENVELOPE, parse_message(raw))

    assert hits(decision) == [("art4.hprim-dob", "too-old")]
    assert "plus de 100 ans" in decision.findings[0].message_fr


# --- NIR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nir", "signal"),
    [
        ("2620975123456 50", None),
        ("", None),
        ("2620975123456", None),
        ("185032A123456 01", None),
        ("185032B123456 28", None),
        ("7620975123456 12", None),
        ("8620975123456 00", None),
        ("2620975123456 51", "bad-key"),
        ("185032A123456 28", "bad-key"),
        ("26209751234", "malformed"),
        ("non communiqué", "malformed"),
    ],
)
def test_a_nir_whose_key_does_not_verify_only_warns(nir: str, signal: str | None) -> None:
    decision = check(rfc5322(hprim(letter(nir=nir))))

    assert decision.verdict is Verdict.FORWARD
    if signal is None:
        assert decision.findings == ()
        return
    (finding,) = decision.findings
    assert (finding.rule, finding.action) == ("art4.hprim-nir", Action.WARN)
    assert dict(finding.details)["signal"] == signal
    assert finding.message_fr.startswith("en-tête HPRIM, dossier 1, ligne 8 : ")


# --- LAB ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lab_lines", "bad_lines"),
    [
        (["TEX|Bilan", "RES|Glycémie|GLY|N|0,92|g/l|0,74|1,06|N|F"], []),
        (["RES|Glycémie|GLY"], [16]),
        (["TEX|Bilan", "RES||IGET 005|A", "RES|K|K|N|5.1|mmol/l|3.5|4.8|HHH|F"], [17, 18]),
    ],
)
def test_malformed_lab_lines_warn_once_per_record_with_their_line_numbers(
    lab_lines: list[str], bad_lines: list[int]
) -> None:
    decision = check(rfc5322(hprim(letter("****LAB****", *lab_lines))))

    assert decision.verdict is Verdict.FORWARD
    if not bad_lines:
        assert decision.findings == ()
        return
    (finding,) = decision.findings
    assert (finding.rule, finding.action) == ("art4.hprim-lab", Action.WARN)
    details = dict(finding.details)
    assert details["lines"] == ",".join(map(str, bad_lines))
    assert details["count"] == str(len(bad_lines))
    assert f"ligne {bad_lines[0]} :" in finding.message_fr


# --- structure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "signal", "text_fr"),
    [
        (
            "text after FINFICHIER",
            hprim(letter(), after="-- \nDr Exemple\n"),
            "text-after-finfichier",
            "HPRIM, dossier 1, ligne 17 : texte après ****FINFICHIER****",
        ),
        (
            "FIN missing",
            "\n".join([*letter(), "****FINFICHIER****"]),
            "missing-fin",
            "HPRIM, dossier 1, ligne 15 : ligne ****FIN**** manquante",
        ),
        (
            "header too short",
            hprim(header()[:9]),
            "header-too-short",
            "en-tête HPRIM, dossier 1, ligne 10 : en-tête trop court",
        ),
    ],
)
def test_structure_problems_are_rejected_naming_the_line(
    name: str, body: str, signal: str, text_fr: str
) -> None:
    decision = check(rfc5322(body))

    assert decision.verdict is Verdict.REJECT
    structure = [f for f in decision.findings if f.rule == "art4.hprim-structure"]
    assert [dict(f.details)["signal"] for f in structure] == [signal], name
    assert structure[0].message_fr.startswith(text_fr)
    assert "****FINFICHIER****" in structure[0].fix_fr or "12 lignes" in structure[0].fix_fr


# --- HPRIM Santé ---------------------------------------------------------------------------------

SANTE = (
    "H|{enc}|SYNTH.HPR||LABO{c}LABORATOIRE||ORU|||DEST{c}DR EXEMPLE||P|H2.1{c}C|202405281015\r\n"
    "P|1|P000451|||{name}|HOUAT|{dob}|F\r\n"
    "OBX|1|NM|GLY{c}GLYCEMIE{c}L||0.92|g/l|0.74 - 1.06|N|||F\r\n"
    "L|1\r\n"
)


@pytest.mark.parametrize(
    ("name", "enc", "c", "patient", "dob", "expected"),
    [
        ("classic order", "~^\\&", "~", "ZÉPHYRIN~LÉOPOLDINE", "19620905", []),
        ("HL7 order", "^~\\&", "^", "ZÉPHYRIN^LÉOPOLDINE", "19620905", []),
        ("no first name", "~^\\&", "~", "ZÉPHYRIN", "19620905", ["art4.hprim-identity"]),
        ("no date of birth", "^~\\&", "^", "ZÉPHYRIN^LÉOPOLDINE", "", ["art4.hprim-identity"]),
        ("impossible date", "~^\\&", "~", "ZÉPHYRIN~LÉOPOLDINE", "19620231", ["art4.hprim-dob"]),
    ],
)
def test_hprim_sante_attachments_are_held_to_article_4_too(
    name: str, enc: str, c: str, patient: str, dob: str, expected: list[str]
) -> None:
    sante = SANTE.format(enc=enc, c=c, name=patient, dob=dob)
    raw = rfc5322("Résultats joints.", attachment=("resultat.hps", sante.encode("latin-1")))

    decision = check(raw)

    assert [f.rule for f in decision.findings] == expected, name
    for finding in decision.findings:
        assert finding.message_fr.startswith("pièce jointe 1, fichier HPRIM Santé, patient 1, ")


# --- a body that is not HPRIM ---------------------------------------------------------


def test_a_plain_letter_is_not_hprim_and_every_article_4_rule_misses() -> None:
    body = "\n".join(
        [
            "Dr Jeanne Exemple",
            "4 rue du Port",
            "29200 BREST",
            "",
            "Brest, le 28/05/2024",
            "",
            "Cher confrère,",
            "",
            "Je vous adresse ma patiente pour avis.",
            "Elle présente une dyspnée d'effort.",
            "",
            "Bien confraternellement,",
            "Dr Exemple",
        ]
    )
    raw = rfc5322(body)

    decision = check(raw)

    assert decision.findings == ()
    assert set(decision.misses) == set(MY_RULES)
    ctx = MessageContext(ENVELOPE, parse_message(raw), CharterContext(now=NOW))
    assert not ctx.hprim.found


# --- privacy.identity-in-subject ------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "signals"),
    [
        ("Compte rendu de consultation", []),
        ("Résultats ZÉPHYRIN", ["last_name"]),
        ("résultats zephyrin léopoldine", ["last_name"]),
        ("Bilan de Mme Zéphyrin.", ["last_name"]),
        ("Re: =?utf-8?q?Z=C3=A9phyrin?= bilan", ["last_name"]),
        ("Zéphyrinette et compagnie", []),
        ("Bilan 05/09/1962", ["birth_date"]),
        ("Bilan 5/9/62", ["birth_date"]),
        ("Bilan 1962-09-05", ["birth_date"]),
        ("Bilan 05.09.1962", ["birth_date"]),
        ("Bilan né le 5 septembre 1962", ["birth_date"]),
        ("Bilan 1er sept. 1962", []),
        ("Bilan Sept 5, 1962", ["birth_date"]),
        ("Bilan 05091962", ["birth_date"]),
        ("Bilan du 05/09/2024", []),
        ("NIR 2 62 09 75 123 456 50", ["nir"]),
        ("NIR 2620975123456", ["nir"]),
        ("Numéro 1 85 03 2A 123 456", ["nir_shaped"]),
        ("Dossier 185032B12345628", ["nir_shaped"]),
        ("Rappeler au 02 98 00 00 00", []),
        ("Commande 0012345678901234567", []),
        ("ZÉPHYRIN 05/09/1962", ["last_name", "birth_date"]),
    ],
)
def test_identity_in_the_subject_is_rejected(subject: str, signals: list[str]) -> None:
    decision = check(rfc5322(hprim(letter()), subject=subject))

    assert hits(decision) == [("privacy.identity-in-subject", s) for s in signals]
    for finding in decision.findings:
        assert finding.action is Action.REJECT
        assert "objet" in finding.message_fr and "subject" in finding.message_en


@pytest.mark.parametrize(
    ("last_name", "subject", "hit"),
    [
        ("LI", "Résultats Li", False),
        ("DE LA TOUR", "Résultats de la semaine", False),
        ("DE LA TOUR", "Résultats M. de la Tour", True),
        ("DES ESSARTS", "Résultats des examens", False),
        ("MARTIN-QUÉRÉ", "Résultats Quéré", True),
        ("MARTIN-QUÉRÉ", "Résultats Queré-Martin", True),
        ("N'DIAYE", "Résultats Ndiaye", False),
        ("N'DIAYE", "Résultats N'Diaye", True),
    ],
)
def test_names_match_as_whole_words_ignoring_case_accents_and_short_words(
    last_name: str, subject: str, hit: bool
) -> None:
    decision = check(rfc5322(hprim(letter(last=last_name)), subject=subject))

    assert hits(decision) == ([("privacy.identity-in-subject", "last_name")] if hit else [])


def test_a_nir_shaped_number_in_the_subject_is_rejected_without_any_hprim() -> None:
    decision = check(rfc5322("Bonjour, merci.", subject="Patient 1 85 03 75 123 456 12"))

    assert hits(decision) == [("privacy.identity-in-subject", "nir_shaped")]
    assert "1 85 03" not in decision.findings[0].message_fr
