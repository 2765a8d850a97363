"""The pure HPRIM reader: detection, records, structure, dates, NIR, LAB, HPRIM Santé."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.hprim import (
    HprimScan,
    is_nir_shaped,
    nir_key_valid,
    parse_hprim,
    parse_hprim_date,
    scan_message,
    split_lines,
)
from apiguard.identity import PatientIdentity
from apiguard.mail import parse_message
from tests.samples import hprim_header

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hprim"
TODAY = date(2024, 6, 1)


def header(**overrides: str) -> list[str]:
    """A synthetic 12-line HPRIM Médecin header (fields overridable by name)."""
    return hprim_header(**overrides)


def hprim(*records: list[str], end: str = "****FINFICHIER****\n") -> str:
    """Records (lists of lines) each closed by ****FIN****, then the file end."""
    out = []
    for lines in records:
        out.extend([*lines, "****FIN****"])
    return "\n".join(out) + "\n" + end


LETTER = [*header(), " ", "Compte rendu de consultation.", "Examen clinique normal."]


def kinds(text: str) -> list[str]:
    return [p.kind for p in parse_hprim(text, today=TODAY).problems]


# --- records -----------------------------------------------------------------


def test_a_valid_letter_gives_one_record_with_every_header_field() -> None:
    document = parse_hprim(hprim(LETTER), today=TODAY)

    assert document.problems == ()
    (record,) = document.records
    assert record.index == 1
    assert record.first_line == 1
    assert record.header_line_count == 12
    assert record.identity == PatientIdentity(
        "ZÉPHYRIN", "Léopoldine", date(1962, 9, 5), "262097512345650", "hprim"
    )
    assert (record.patient_code, record.address_1, record.address_2) == (
        "P000451",
        "12 allée des Tilleuls",
        "",
    )
    assert (record.postcode, record.city) == ("29200", "BREST")
    assert (record.exam_number, record.exam_date) == ("EX-2024-0042", date(2024, 5, 28))
    assert (record.sender_code, record.sender_name) == ("lab.ouest", "Laboratoire Synthèse Ouest")
    assert (record.recipient_code, record.recipient_name) == ("dr.exemple", "Dr Exemple")
    assert record.text == "Compte rendu de consultation.\nExamen clinique normal."


@pytest.mark.parametrize(
    ("name", "eol"),
    [("CRLF", "\r\n"), ("LF", "\n"), ("CR alone", "\r")],
)
def test_every_line_end_style_reads_the_same(name: str, eol: str) -> None:
    text = hprim(LETTER).replace("\n", eol)

    document = parse_hprim(text, today=TODAY)

    assert document.problems == (), name
    assert document.records[0].identity.last_name == "ZÉPHYRIN"
    assert document.records[0].text.splitlines() == LETTER[13:]


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("12 header lines", [*header(), "Texte de la lettre."]),
        ("13th line blank", [*header(), "", "Texte de la lettre."]),
        ("13th line one space", [*header(), " ", "Texte de la lettre."]),
    ],
)
def test_the_13th_header_line_is_optional(name: str, lines: list[str]) -> None:
    (record,) = parse_hprim(hprim(lines), today=TODAY).records

    assert record.identity.first_name == "Léopoldine", name
    assert record.text == "Texte de la lettre."


def test_two_records_in_one_file_are_read_in_order_with_their_own_lines() -> None:
    text = (FIXTURES / "two_records_crlf_utf8.hpr").read_text(encoding="utf-8")

    document = parse_hprim(text, today=TODAY)

    assert document.problems == ()
    first, second = document.records
    assert (first.index, first.first_line, first.last_name) == (1, 1, "ZÉPHYRIN")
    assert (second.index, second.first_line, second.last_name) == (2, 21, "QUIMPERLÉ-MARTIN")
    assert second.birth_date == date(1948, 11, 17)
    assert second.document_line(2) == 22
    assert [r.label for r in first.lab_results] == ["Glycémie à jeun", "Potassium"]
    assert first.lab_results[1].flag == "H"
    assert second.lab_results == ()


def test_an_empty_first_name_is_read_as_empty_not_shifted() -> None:
    (record,) = parse_hprim(hprim([*header(first=""), "Texte."]), today=TODAY).records

    assert record.first_name == ""
    assert record.birth_date == date(1962, 9, 5)


def test_a_header_without_end_markers_is_read_when_its_shape_is_strong() -> None:
    document = parse_hprim("\n".join([*header(), " ", "Lettre sans marqueurs."]), today=TODAY)

    assert [r.last_name for r in document.records] == ["ZÉPHYRIN"]
    assert document.problems == ()


# --- detection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty", ""),
        ("a real letter", (FIXTURES / "plain_letter_not_hprim.txt").read_text(encoding="utf-8")),
        ("twelve lines of prose", "\n".join(f"Ligne {n} de la lettre." for n in range(1, 13))),
        (
            "twelve lines with a bare date on line 7 only",
            "\n".join(["Dr A", "Cardiologie", "", "", "", "", "28/05/2024", *["texte"] * 8]),
        ),
        (
            "an address block on line 6 and a date on line 10 (no DOB, no NIR)",
            "\n".join(["Dr A", "B", "C", "D", "E", "29200 BREST", "x", "y", "z", "28/05/2024"])
            + "\nSuite.\nFin.",
        ),
        ("header cut to 11 lines without markers", "\n".join(header()[:11])),
    ],
)
def test_a_text_that_is_not_hprim_gives_nothing(name: str, text: str) -> None:
    document = parse_hprim(text, today=TODAY)

    assert not document.found, name
    assert document.records == ()
    assert document.problems == ()


def test_a_bare_end_marker_makes_a_text_hprim_even_with_a_broken_header() -> None:
    document = parse_hprim("Bonjour\nVoici le résultat.\n****FIN****\n****FINFICHIER****\n")

    assert document.found
    assert [p.kind for p in document.problems] == ["header-too-short"]
    assert document.problems[0].header_line == 3


# --- structure -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("valid", hprim(LETTER), []),
        ("marker with a leading space", hprim(LETTER).replace("****FIN****", " ****FIN****"), []),
        ("trailing blank lines", hprim(LETTER) + "\n \n\t\n", []),
        ("text after FINFICHIER", hprim(LETTER) + "Dr Exemple\n", ["text-after-finfichier"]),
        (
            "text between FIN and FINFICHIER",
            hprim(LETTER, end="blabla\n****FINFICHIER****\n"),
            ["text-between-markers"],
        ),
        (
            "FINFICHIER before FIN",
            "\n".join([*LETTER, "****FINFICHIER****", "****FIN****", ""]),
            ["markers-misordered"],
        ),
        ("FIN missing", "\n".join([*LETTER, "****FINFICHIER****", ""]), ["missing-fin"]),
        ("FINFICHIER missing", hprim(LETTER, end=""), ["missing-finfichier"]),
        (
            "LAB block without end markers",
            "\n".join([*LETTER, "****LAB****", "TEX|texte"]),
            ["missing-fin", "missing-finfichier"],
        ),
        ("header of 10 lines", hprim(header()[:10]), ["header-too-short"]),
        (
            "second record missing FIN",
            hprim(LETTER, end="\n".join([*LETTER, "****FINFICHIER****", ""])),
            ["missing-fin"],
        ),
    ],
)
def test_structure_problems_are_named_by_kind(name: str, text: str, expected: list[str]) -> None:
    assert kinds(text) == expected, name


def test_structure_problems_carry_line_and_record_numbers() -> None:
    text = hprim(LETTER, LETTER) + "signature\n"

    (problem,) = parse_hprim(text, today=TODAY).problems

    assert (problem.kind, problem.line, problem.record) == ("text-after-finfichier", 34, 2)
    assert problem.category == "structure"


def test_a_short_header_names_the_first_missing_header_line() -> None:
    (problem,) = parse_hprim(hprim(header()[:6]), today=TODAY).problems

    assert (problem.kind, problem.header_line, problem.line, problem.record) == (
        "header-too-short",
        7,
        7,
        1,
    )


# --- dates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15/03/1985", date(1985, 3, 15)),
        ("15/03/85", date(1985, 3, 15)),
        ("01/02/24", date(2024, 2, 1)),
        ("01/02/25", date(1925, 2, 1)),
        ("1985-03-15", date(1985, 3, 15)),
        ("15.03.1985", date(1985, 3, 15)),
        ("  5/3/1985 ", date(1985, 3, 5)),
        ("31/02/1980", None),
        ("15/13/1985", None),
        ("1985/03/15", None),
        ("15 mars 1985", None),
        ("", None),
    ],
)
def test_header_dates_read_in_the_formats_practice_software_writes(
    text: str, expected: date | None
) -> None:
    assert parse_hprim_date(text, TODAY) == expected


# --- NIR -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nir", "shaped", "key_valid"),
    [
        ("2620975123456 50", True, True),
        ("262097512345650", True, True),
        ("2 62 09 75 123 456 50", True, True),
        ("2620975123456 51", True, False),
        ("185032A123456 01", True, True),
        ("185032B123456 28", True, True),
        ("185032A123456 28", True, False),
        ("185032b123456 28", True, True),
        ("7620975123456 99", True, None),
        ("8620975123456", True, None),
        ("2620975123456", True, None),
        ("12345", False, None),
        ("9620975123456 50", False, None),
        ("", False, None),
    ],
)
def test_nir_shape_and_key(nir: str, shaped: bool, key_valid: bool | None) -> None:
    assert is_nir_shaped(nir) is shaped
    assert nir_key_valid(nir) is key_valid


# --- LAB -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("TEX|Bilan", []),
        ("TEX", []),
        ("RES|Glycémie|GLY|N|0,92|g/l|0,74|1,06|N|F", []),
        ("RES|Créatinine|CREA|N|8.3|mg/l|6.0|11.0|N|F|73.5|umol/l|53.1|97.4", []),
        ("RES|Aspect|ASP|A|Limpide||||N|F", []),
        ("RES|Glycémie|GLY|N|0,92", []),
        ("RES||IGET 005|A", ["lab-too-few-fields"]),
        ("RES|Glycémie", ["lab-too-few-fields"]),
        ("RES|Glycémie|GLY|X|0,92|g/l", ["lab-bad-type"]),
        ("RES|Glycémie|GLY|N|élevée|g/l", ["lab-bad-value"]),
        ("RES|Glycémie|GLY|N|0,92|g/l|||Z|F", ["lab-bad-flag"]),
        ("RES|Glycémie|GLY|N|0,92|g/l|||N|Q", ["lab-bad-status"]),
        ("RES|||N|0,92", ["lab-no-label"]),
        ("RES|a|b|N|1|u|||N|F|1|u|||x", ["lab-too-many-fields"]),
        ("Glycémie 0,92 g/l", ["lab-unknown-line"]),
    ],
)
def test_lab_lines_are_checked_field_by_field(line: str, expected: list[str]) -> None:
    text = hprim([*LETTER, "****LAB****", "", line])

    document = parse_hprim(text, today=TODAY)

    assert [p.kind for p in document.problems] == expected
    assert all(p.line == 18 and p.category == "lab" for p in document.problems)
    assert len(document.records[0].lab_results) == int(line.startswith("RES"))


# --- HPRIM Santé -----------------------------------------------------------------

SANTE_CLASSIC = (
    "H|~^\\&|SYNTH.HPR||LABO~LABORATOIRE||ORU|||DEST~DR EXEMPLE||P|H2.1~C|202405281015\r\n"
    "P|1|P000451|||ZÉPHYRIN~LÉOPOLDINE|HOUAT|19620905|F\r\n"
    "OBR|1|||GLY~GLYCEMIE~L\r\n"
    "OBX|1|NM|GLY~GLYCEMIE~L||0.92|g/l|0.74 - 1.06|N|||F\r\n"
    "L|1\r\n"
)


@pytest.mark.parametrize(
    ("name", "text", "component", "repetition"),
    [
        ("classic order", SANTE_CLASSIC, "~", "^"),
        (
            "HL7 order",
            (FIXTURES / "sante_hl7_order_lf.hps").read_text(encoding="utf-8"),
            "^",
            "~",
        ),
    ],
)
def test_hprim_sante_reads_the_patient_with_the_declared_delimiters(
    name: str, text: str, component: str, repetition: str
) -> None:
    document = parse_hprim(text, today=TODAY)

    assert document.sante is not None, name
    assert document.records == ()
    assert document.problems == ()
    sante = document.sante
    assert (sante.delimiters.component, sante.delimiters.repetition) == (component, repetition)
    assert sante.identities == (
        PatientIdentity("ZÉPHYRIN", "LÉOPOLDINE", date(1962, 9, 5), "", "hprim-sante"),
    )
    assert [segment.kind for segment in sante.records] == ["H", "P", "OBR", "OBX", "L"]
    assert sante.patients[0].line == 2


def test_hprim_sante_joins_continuation_lines_and_reports_a_missing_end() -> None:
    text = "H|~^\\&|F.HPR\nP|1|X|||NOM~PRE|\nA|NOM|19620905\nOBX|1|NM|GLY||1\n"

    document = parse_hprim(text, today=TODAY)

    assert document.sante is not None
    assert [s.kind for s in document.sante.records] == ["H", "P", "OBX"]
    assert [p.kind for p in document.problems] == ["sante-no-terminator"]


def test_hprim_sante_without_a_patient_record_is_a_structure_problem() -> None:
    document = parse_hprim("H|~^\\&|F.HPR\nOBX|1|NM|GLY||1\nL|1\n", today=TODAY)

    assert [p.kind for p in document.problems] == ["sante-no-patient"]


# --- messages --------------------------------------------------------------------


def message(body: bytes, *attachments: tuple[str, str, bytes]) -> bytes:
    """An RFC 5322 message; attachments are (filename, content type, bytes)."""
    head = b"From: dr@a.apicrypt.org\r\nTo: dr@b.apicrypt.org\r\nSubject: Resultats\r\n"
    if not attachments:
        return head + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
    parts = [b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body]
    for filename, content_type, content in attachments:
        parts.append(
            f"Content-Type: {content_type}\r\n"
            f'Content-Disposition: attachment; filename="{filename}"\r\n'
            "Content-Transfer-Encoding: 8bit\r\n\r\n".encode()
            + content
        )
    boundary = b"--sep\r\n"
    return (
        head
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="sep"\r\n\r\n'
        + b"".join(boundary + part + b"\r\n" for part in parts)
        + b"--sep--\r\n"
    )


@pytest.mark.parametrize(
    ("filename", "content_type", "found"),
    [
        ("resultat.hpr", "application/octet-stream", True),
        ("resultat.HPM", "application/octet-stream", True),
        ("resultat.txt", "text/plain", True),
        ("resultat", "text/plain", True),
        ("resultat.pdf", "application/pdf", False),
    ],
)
def test_hprim_is_looked_for_in_text_attachments(
    filename: str, content_type: str, found: bool
) -> None:
    content = hprim(LETTER).encode("cp1252")
    parsed = parse_message(message(b"Voir la piece jointe.\r\n", (filename, content_type, content)))

    scan = scan_message(parsed, today=TODAY)

    assert scan.found is found
    if found:
        assert [r.source for r in scan.records] == ["attachment 1"]
        assert scan.identities[0].last_name == "ZÉPHYRIN"


def test_a_scan_lists_medecin_then_sante_identities() -> None:
    parsed = parse_message(
        message(
            hprim(LETTER).encode(),
            ("labo.hps", "application/octet-stream", SANTE_CLASSIC.encode("latin-1")),
        )
    )

    scan = scan_message(parsed, today=TODAY)

    assert [i.source for i in scan.identities] == ["hprim", "hprim-sante"]
    assert scan.sante[0].source == "attachment 1"


def test_the_summary_holds_counts_and_booleans_never_values() -> None:
    parsed = parse_message(message(hprim([*header(first="", nir=""), "Texte."]).encode()))

    summary = scan_message(parsed, today=TODAY).summary()

    assert summary["records"] == 1
    rows = summary["per_record"]
    assert isinstance(rows, list)
    (row,) = rows
    assert row["last_name"] is True
    assert row["first_name"] is False
    assert row["birth_date"] is True
    assert row["nir"] is False
    dumped = json.dumps(summary, ensure_ascii=False)
    for value in ("ZÉPHYRIN", "1962", "P000451", "BREST", "Tilleuls", "EX-2024", "lab.ouest"):
        assert value not in dumped


def test_a_message_without_hprim_scans_empty() -> None:
    parsed = parse_message(message(b"Bonjour,\r\nmerci pour votre courrier.\r\n"))

    assert scan_message(parsed) == HprimScan()


# --- properties ------------------------------------------------------------------

_FIELD_TEXT = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters="|"
    ),
    max_size=30,
).map(str.strip)
_NAME = (
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZÉÈÏÖ -'", min_size=1, max_size=25)
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=300)
@given(st.text(max_size=3000))
def test_the_reader_never_raises_on_arbitrary_text(text: str) -> None:
    document = parse_hprim(text)

    assert all(p.line >= 1 for p in document.problems)


@settings(max_examples=150)
@given(
    st.lists(
        st.sampled_from(
            ["****FIN****", "****FINFICHIER****", "****LAB****", "RES|a|b|N|1", "H|~^\\&|x"]
        )
        | st.text(max_size=40),
        max_size=40,
    )
)
def test_the_reader_never_raises_on_marker_soup(lines: list[str]) -> None:
    document = parse_hprim("\n".join(lines))

    assert all(p.line <= len(split_lines("\n".join(lines))) + 1 for p in document.problems)


@settings(max_examples=150)
@given(st.binary(max_size=3000))
def test_scanning_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    for data in (raw, message(raw), message(b"x", ("f.hpr", "text/plain", raw))):
        scan = scan_message(parse_message(data))
        assert scan.found == bool(scan.records or scan.sante)


@settings(max_examples=200)
@given(
    last=_NAME,
    first=_NAME,
    birth=st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
    iso=st.booleans(),
    code=_FIELD_TEXT,
    address=_FIELD_TEXT,
    text=st.lists(_FIELD_TEXT, max_size=5),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_a_generated_valid_header_parses_back_to_the_same_identity(
    last: str,
    first: str,
    birth: date,
    iso: bool,
    code: str,
    address: str,
    text: list[str],
    eol: str,
) -> None:
    dob = birth.isoformat() if iso else birth.strftime("%d/%m/%Y")
    lines = header(code=code, last=last, first=first, addr1=address, dob=dob)
    lines = [line.replace("****", "") for line in [*lines, " ", *text]]

    document = parse_hprim(hprim(lines).replace("\n", eol), today=TODAY)

    assert [p.kind for p in document.problems] == []
    (record,) = document.records
    assert record.identity == PatientIdentity(last, first, birth, "262097512345650", "hprim")
