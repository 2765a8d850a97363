"""Every file of the shared HPRIM corpus gives the outcome its SOURCES.md describes,
as a message body and as an attached file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from apiguard.hprim import parse_hprim
from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter, rule_classes
from apiguard.policy.context import CharterContext, MessageContext
from apiguard.policy.verdict import Action, Verdict

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "hprim"
NOW = datetime(2024, 6, 1, tzinfo=UTC)
ENVELOPE = Envelope("labo.fake@labo.apicrypt.org", ("dr.dest@cabinet.apicrypt.org",))
ART4_RULES = {c.id for c in rule_classes() if c.id.startswith(("art4.hprim-", "privacy."))}

# file -> (verdict, rules that reject, RES lines, patient last name)
EXPECTED: dict[str, tuple[Verdict, set[str], int, str]] = {
    "freehealth_hprim1_lab_allergie_crlf.hpr": (Verdict.FORWARD, set(), 2, "FAKENAME"),
    "freehealth_hprim1_lab_bilan_lf_utf8.hpr": (Verdict.FORWARD, set(), 33, "NEWFAKE"),
    "freehealth_hprim1_text_only_crlf.hpr": (Verdict.FORWARD, set(), 0, "FAKENAME"),
    "freehealth_header_only_valid_lf.txt": (Verdict.FORWARD, set(), 0, "FAKENAME"),
    "freehealth_invalid_text_between_fin_and_finfichier_crlf.hpr": (
        Verdict.REJECT,
        {"art4.hprim-structure"},
        0,
        "FAKENAME",
    ),
    "freehealth_invalid_text_after_finfichier_crlf.hpr": (
        Verdict.REJECT,
        {"art4.hprim-structure"},
        0,
        "FAKENAME",
    ),
    "freehealth_invalid_finfichier_before_fin_crlf.hpr": (
        Verdict.REJECT,
        {"art4.hprim-structure"},
        0,
        "FAKENAME",
    ),
    "freehealth_invalid_missing_fin_crlf.hpr": (
        Verdict.REJECT,
        {"art4.hprim-structure"},
        0,
        "FAKENAME",
    ),
    "freehealth_header_only_missing_dob_lf.txt": (
        Verdict.REJECT,
        {"art4.hprim-identity"},
        0,
        "FAKENAME",
    ),
    "libhprim_hprim_sante_2.1_oru_crlf.hps": (Verdict.FORWARD, set(), 0, "GAULLE"),
}


def corpus_file(name: str) -> bytes:
    if not CORPUS.is_dir():
        pytest.skip(f"HPRIM corpus not present at {CORPUS}")
    return (CORPUS / name).read_bytes()


def as_body(content: bytes) -> bytes:
    return (
        b"From: labo.fake@labo.apicrypt.org\r\nTo: dr.dest@cabinet.apicrypt.org\r\n"
        b"Subject: Resultats\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + content
    )


def as_attachment(name: str, content: bytes) -> bytes:
    return (
        b"From: labo.fake@labo.apicrypt.org\r\nTo: dr.dest@cabinet.apicrypt.org\r\n"
        b'Subject: Resultats\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="c"'
        b"\r\n\r\n--c\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nResultats joints.\r\n"
        b"--c\r\nContent-Type: application/octet-stream\r\n"
        + f'Content-Disposition: attachment; filename="{name}"\r\n'.encode()
        + b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + content
        + b"\r\n--c--\r\n"
    )


def charter() -> Charter:
    others = {c.id: {"enabled": False} for c in rule_classes() if c.id not in ART4_RULES}
    return Charter.build(others, CharterContext(now=NOW))


def test_the_expectation_table_covers_every_corpus_file() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"HPRIM corpus not present at {CORPUS}")
    present = {p.name for p in CORPUS.iterdir() if p.name != "SOURCES.md"}

    assert present == set(EXPECTED)


@pytest.mark.parametrize("carrier", ["body", "attachment"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_corpus_file_gives_its_documented_outcome(name: str, carrier: str) -> None:
    content = corpus_file(name)
    verdict, rejecting, _res, last_name = EXPECTED[name]
    raw = as_body(content) if carrier == "body" else as_attachment(name, content)

    message = parse_message(raw)
    decision = charter().check_message(ENVELOPE, message)

    assert decision.verdict is verdict, [f.message_fr for f in decision.findings]
    assert {f.rule for f in decision.findings if f.action is Action.REJECT} == rejecting
    for finding in decision.findings:
        assert last_name not in finding.message_fr + finding.fix_fr + str(finding.details)
    ctx = MessageContext(ENVELOPE, message, CharterContext(now=NOW))
    assert [i.last_name for i in ctx.hprim.identities] == [last_name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_corpus_file_reads_its_lab_results(name: str) -> None:
    text = corpus_file(name).decode("utf-8")

    document = parse_hprim(text, today=NOW.date())

    assert document.found
    assert sum(len(r.lab_results) for r in document.records) == EXPECTED[name][2]


def test_the_missing_dob_header_names_line_7() -> None:
    raw = as_body(corpus_file("freehealth_header_only_missing_dob_lf.txt"))

    decision = charter().check_message(ENVELOPE, parse_message(raw))

    rejected = decision.first_reject
    assert rejected is not None
    assert rejected.message_fr.startswith("en-tête HPRIM, dossier 1, ligne 7 :")
