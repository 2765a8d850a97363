"""Article 3 (attachments the recipient can use) and the structured-format rules
of Article 4, through the charter with real MIME messages."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from apiguard.correspondents import CorrespondentsDirectory
from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter, CharterConfigError
from apiguard.policy.context import CharterContext, MessageContext
from apiguard.policy.rules.art3 import letter_words
from apiguard.policy.verdict import Action, Decision, Finding, Verdict
from tests.samples import (
    cda,
    docx,
    embedded_file_pdf,
    encrypted_pdf,
    image_pdf,
    javascript_pdf,
    make_zip,
    mark_encrypted,
    pe_executable,
    text_pdf,
    xdm,
)

SENDER = "dr.martin@medical13.apicrypt.org"
RECIPIENT = "dr.durand@medical69.apicrypt.org"
LETTER = (
    "Cher confrère,\n"
    "J'ai vu en consultation votre patiente pour un bilan cardiologique complet.\n"
    "L'examen clinique et l'électrocardiogramme sont normaux ; pas de traitement.\n"
    "Bien confraternellement,\n"
    "Dr Martin\n"
)
HPRIM_BODY = (
    "P000451\nZEPHYRIN\nLeopoldine\n \n \n29200 BREST\n05/09/1962\n\nEX-1\n01/06/2024\n"
    ".  dr.martin\n.  dr.durand\n\nVoir le compte rendu joint.\n****FIN****\n****FINFICHIER****\n"
)
PDF = ("application", "pdf", "compte-rendu.pdf")
ZIP = ("application", "zip", "IHE_XDM.ZIP")
CHU = CorrespondentsDirectory.from_toml(
    '[[correspondent]]\ndomain = "chu-exemple.mssante.fr"\nformats = ["hprim", "pdf", "xdm"]\n'
    '[[correspondent]]\naddress = "labo@medical69.apicrypt.org"\nformats = ["hprim"]\n'
)


def mime(
    body: str = LETTER,
    attachments: list[tuple[bytes, tuple[str, str, str]]] | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = "Compte rendu"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    for data, (maintype, subtype, filename) in attachments or []:
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


def decide(
    raw: bytes,
    settings: dict[str, dict[str, object]] | None = None,
    recipients: tuple[str, ...] = (RECIPIENT,),
    directory: CorrespondentsDirectory | None = None,
) -> Decision:
    charter = Charter.build(settings, CharterContext(directory=directory))
    return charter.check_message(Envelope(SENDER, recipients), parse_message(raw))


def hits(decision: Decision, rule_id: str) -> list[Finding]:
    assert rule_id in decision.checked or rule_id in decision.skipped
    return [f for f in decision.findings if f.rule == rule_id]


def only_hit(decision: Decision, rule_id: str) -> Finding:
    (finding,) = hits(decision, rule_id)
    return finding


# --- art3.attachment-only --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "held"),
    [
        ("", True),
        ("cf PJ", True),
        ("Voir pièce jointe.", True),
        (
            "Bonjour,\n\nVeuillez trouver ci-joint le compte rendu de votre patiente."
            "\n\nCordialement",
            True,
        ),
        ("Cher confrère,\nvous trouverez en PJ le courrier.\nBien à vous", True),
        (
            "Cordialement,\nDr Alice Martin\nMédecin généraliste\n12 rue des Lilas 75012 Paris\n"
            "Tél : 01 23 45 67 89\nRPPS 10001234567",
            True,
        ),
        (
            "--\nDr Alice Martin\nCardiologue, cabinet des Tilleuls, consultations sur rendez-vous",
            True,
        ),
        (LETTER, False),
        (
            "Je vous adresse Mme Z. pour avis sur une douleur thoracique atypique "
            "depuis trois semaines.",
            False,
        ),
        (HPRIM_BODY, False),  # an HPRIM header in the body is the expected form
    ],
)
def test_attachment_only(body: str, held: bool) -> None:
    decision = decide(mime(body, [(text_pdf(), PDF)]))
    found = hits(decision, "art3.attachment-only")
    assert bool(found) is held
    if held:
        assert found[0].action is Action.HOLD
        assert "HPRIM" in found[0].fix_fr and "dossier du patient" in found[0].fix_fr


def test_attachment_only_needs_an_attachment() -> None:
    assert hits(decide(mime("")), "art3.attachment-only") == []


def test_letter_words_ignores_greetings_references_and_signature() -> None:
    assert letter_words("Bonjour,\nci-joint le CR.\nCordialement,\nDr X\nTél 0123456789") == 0
    assert letter_words("Patiente revue ce jour, tension normale, on poursuit le traitement.") >= 8


COVERING_NOTE = (
    "Bonjour,\n\nVeuillez trouver ci-joint le compte rendu de consultation de M. ZEPHYRIN."
    "\n\nCordialement"
)
CDA_FILE = ("text", "xml", "CR.xml")
HPRIM_SANTE_FILE = (
    "H|~^\\&|SYNTH.HPR||LABO~LABORATOIRE||ORU|||DEST~DR EXEMPLE||P|H2.1~C|202405281015\r\n"
    "P|1|P000451|||ZEPHYRIN~LEOPOLDINE|HOUAT|19620905|F\r\n"
    "OBR|1|||GLY~GLYCEMIE~L\r\n"
    "OBX|1|NM|GLY~GLYCEMIE~L||0.92|g/l|0.74 - 1.06|N|||F\r\n"
    "L|1\r\n"
).encode("ascii")
CDA_READER = CorrespondentsDirectory.from_toml(
    '[[correspondent]]\naddress = "dr.durand@medical69.apicrypt.org"\n'
    'formats = ["hprim", "pdf", "cda"]\n'
)


@pytest.mark.parametrize(
    ("attachment", "recipient", "directory", "held"),
    [
        # A structured document naming the patient, which the recipient reads.
        ((xdm(), ZIP), "cardio@chu-exemple.mssante.fr", CHU, False),
        ((cda(), CDA_FILE), RECIPIENT, CDA_READER, False),
        ((HPRIM_SANTE_FILE, ("text", "plain", "resultats.hps")), RECIPIENT, None, False),
        # The same to a recipient not declared as reading it: the note must say it.
        ((xdm(), ZIP), RECIPIENT, CHU, True),
        ((cda(), CDA_FILE), RECIPIENT, None, True),
        (
            (HPRIM_SANTE_FILE, ("text", "plain", "resultats.hps")),
            "labo-pdf@chu.mssante.fr",
            CorrespondentsDirectory.from_toml(
                '[[correspondent]]\naddress = "labo-pdf@chu.mssante.fr"\nformats = ["pdf"]\n'
            ),
            True,
        ),
        # A structured document that names nobody is no letter either.
        ((cda(family="", given_name=""), CDA_FILE), RECIPIENT, CDA_READER, True),
        ((text_pdf(), PDF), "cardio@chu-exemple.mssante.fr", CHU, True),
    ],
)
def test_a_readable_structured_document_naming_the_patient_is_content(
    attachment: tuple[bytes, tuple[str, str, str]],
    recipient: str,
    directory: CorrespondentsDirectory | None,
    held: bool,
) -> None:
    decision = decide(
        mime(COVERING_NOTE, [attachment]), recipients=(recipient,), directory=directory
    )
    assert bool(hits(decision, "art3.attachment-only")) is held


# --- art3.type-mismatch / forbidden-type ---------------------------------------------


def test_a_renamed_executable_is_refused_first_for_type_mismatch() -> None:
    decision = decide(mime(LETTER, [(pe_executable(), PDF)]))
    assert decision.verdict is Verdict.REJECT
    assert decision.first_reject is not None
    assert decision.first_reject.rule == "art3.type-mismatch"
    assert decision.first_reject.reply_text.startswith(
        "le contenu d'une pièce jointe ne correspond pas"
    )
    finding = only_hit(decision, "art3.type-mismatch")
    assert dict(finding.details)["types"] == "exe"
    assert "compte-rendu" not in repr(finding)
    assert only_hit(decision, "art3.active-content").action is Action.REJECT


@pytest.mark.parametrize(
    ("data", "part"),
    [
        (make_zip({"a.txt": b"x"}), ("text", "plain", "notes.txt")),  # a .txt that is a zip
        (text_pdf(), ("image", "jpeg", "photo.jpg")),
    ],
)
def test_type_mismatch_hits(data: bytes, part: tuple[str, str, str]) -> None:
    assert only_hit(decide(mime(LETTER, [(data, part)])), "art3.type-mismatch")


def test_type_mismatch_misses_honest_attachments() -> None:
    decision = decide(mime(LETTER, [(text_pdf(), PDF), (xdm(), ZIP)]))
    assert hits(decision, "art3.type-mismatch") == []


@pytest.mark.parametrize(
    ("data", "part", "types", "problems"),
    [
        (docx(), ("application", "octet-stream", "lettre.docx"), "docx", None),
        (make_zip({"a.pdf": text_pdf()}), ("application", "zip", "docs.zip"), "zip", None),
        (b"<html><body>x</body></html>", ("text", "html", "page.html"), "html", None),
        (pe_executable(), ("application", "octet-stream", "setup.exe"), "exe", None),
        (
            xdm({"DOC0001.XML": cda(), "inner.zip": make_zip({"x.txt": b"x"})}),
            ZIP,
            "zip",
            "nested-archive",
        ),
        (xdm({"../../evil.xml": cda()}), ZIP, None, "path-traversal"),
        (make_zip({"a.txt": bytes(2 * 1024 * 1024)}), ZIP, "zip", "zip-bomb"),
    ],
)
def test_forbidden_type_hits(
    data: bytes, part: tuple[str, str, str], types: str | None, problems: str | None
) -> None:
    finding = only_hit(decide(mime(LETTER, [(data, part)])), "art3.forbidden-type")
    details = dict(finding.details)
    assert details.get("types") == types
    assert details.get("problems") == problems
    assert finding.action is Action.REJECT


@pytest.mark.parametrize(
    ("data", "part"),
    [
        (text_pdf(), PDF),
        (xdm(), ZIP),
        (cda(), ("text", "xml", "cr.xml")),
        (b"{\\rtf1\\ansi Bonjour}", ("application", "rtf", "cr.rtf")),
        (b"\x89PNG\r\n\x1a\n" + bytes(16), ("image", "png", "ecg.png")),
        (b"Compte rendu\n****FIN****\n", ("text", "plain", "cr.hpr")),
    ],
)
def test_forbidden_type_misses_allowed_types(data: bytes, part: tuple[str, str, str]) -> None:
    assert hits(decide(mime(LETTER, [(data, part)])), "art3.forbidden-type") == []


def test_allowed_types_are_configurable_and_checked() -> None:
    rtf = (b"{\\rtf1\\ansi Bonjour}", ("application", "rtf", "cr.rtf"))
    settings: dict[str, dict[str, object]] = {
        "art3.forbidden-type": {"allowed_types": ["pdf", "hprim", "text"]}
    }
    assert only_hit(decide(mime(LETTER, [rtf]), settings), "art3.forbidden-type")
    with pytest.raises(CharterConfigError, match="allowed_types"):
        Charter.build({"art3.forbidden-type": {"allowed_types": ["pdff"]}})


# --- art3.encrypted-document / active-content / not-searchable ------------------------


def test_encrypted_document() -> None:
    assert only_hit(decide(mime(LETTER, [(encrypted_pdf(), PDF)])), "art3.encrypted-document")
    locked_xdm = mark_encrypted(xdm(), "IHE_XDM/SUBSET01/DOC0001.XML")
    assert only_hit(decide(mime(LETTER, [(locked_xdm, ZIP)])), "art3.encrypted-document")
    owner_only = encrypted_pdf(user_password="")
    assert hits(decide(mime(LETTER, [(owner_only, PDF)])), "art3.encrypted-document") == []
    assert hits(decide(mime(LETTER, [(text_pdf(), PDF)])), "art3.encrypted-document") == []


@pytest.mark.parametrize(
    ("data", "part", "signal", "location"),
    [
        (javascript_pdf(), PDF, "javascript", "1"),
        (embedded_file_pdf(), PDF, "embedded-file", "1"),
        (xdm({"DOC0001.XML": cda(), "RUN.EXE": pe_executable()}), ZIP, "executable", "1/5"),
        (b"echo off\r\n", ("text", "plain", "run.bat"), "script", "1"),
        (docx(macros=True), ("application", "octet-stream", "lettre.docm"), "macro", "1"),
    ],
)
def test_active_content_hits_anywhere(
    data: bytes, part: tuple[str, str, str], signal: str, location: str
) -> None:
    finding = only_hit(decide(mime(LETTER, [(data, part)])), "art3.active-content")
    details = dict(finding.details)
    assert signal in details["signals"].split(",")
    assert details["attachments"] == location


def test_active_content_misses_plain_documents() -> None:
    decision = decide(mime(LETTER, [(text_pdf(), PDF), (xdm(), ZIP)]))
    assert hits(decision, "art3.active-content") == []


def test_a_scanned_pdf_warns_that_it_will_not_reach_the_record() -> None:
    decision = decide(mime(LETTER, [(image_pdf(), PDF)]))
    finding = only_hit(decision, "art3.not-searchable")
    assert finding.action is Action.WARN
    assert "dossier du patient" in finding.message_fr
    scan_in_xdm = xdm({"DOC0001.XML": cda(), "SCAN.PDF": image_pdf()})
    inside = only_hit(decide(mime(LETTER, [(scan_in_xdm, ZIP)])), "art3.not-searchable")
    assert dict(inside.details)["attachments"].startswith("1/")
    assert hits(decide(mime(LETTER, [(text_pdf(), PDF)])), "art3.not-searchable") == []


# --- art3.too-large --------------------------------------------------------------------


def test_too_large() -> None:
    big = text_pdf() + b"%" + bytes(5000)
    small_limits: dict[str, dict[str, object]] = {"art3.too-large": {"max_attachment_size": 4000}}
    finding = only_hit(decide(mime(LETTER, [(big, PDF)]), small_limits), "art3.too-large")
    assert dict(finding.details)["attachments"] == "1"
    message_limit: dict[str, dict[str, object]] = {"art3.too-large": {"max_message_size": 1000}}
    finding = only_hit(decide(mime(LETTER, [(text_pdf(), PDF)]), message_limit), "art3.too-large")
    assert finding.message_fr.startswith("message trop volumineux")
    assert hits(decide(mime(LETTER, [(big, PDF)])), "art3.too-large") == []


def test_default_size_limits_are_10_and_25_mib() -> None:
    rule = Charter.build().rule("art3.too-large")
    assert rule is not None
    assert rule.params.model_dump()["max_attachment_size"] == 10 * 1024 * 1024
    assert rule.params.model_dump()["max_message_size"] == 25 * 1024 * 1024


def test_an_apicrypt_payload_is_opaque_but_still_measured() -> None:
    apz = (bytes(range(256)) * 40, ("application", "octet-stream", "lettre.apz"))
    decision = decide(mime("", [apz]), {"art3.too-large": {"max_attachment_size": 1000}})
    # The attachment rules that read types still run, and an APICRYPT payload passes them.
    assert "art3.forbidden-type" in decision.checked
    assert hits(decision, "art3.forbidden-type") == []
    assert "art3.attachment-only" in decision.skipped
    assert only_hit(decision, "art3.too-large")
    report = MessageContext(
        Envelope(SENDER, (RECIPIENT,)), parse_message(mime("", [apz]))
    ).attachments.reports[0]
    assert report.detected_type == "apz" and not report.has("mismatch")


# --- art4.recipient-format ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipients", "directory", "held"),
    [
        (("cardio@chu-exemple.mssante.fr",), CHU, {}),
        ((RECIPIENT,), CHU, {RECIPIENT: "xdm"}),
        ((RECIPIENT,), None, {RECIPIENT: "xdm"}),  # nobody declared
        (
            ("cardio@chu-exemple.mssante.fr", RECIPIENT, "labo@medical69.apicrypt.org"),
            CHU,
            {RECIPIENT: "xdm", "labo@medical69.apicrypt.org": "pdf,xdm"},
        ),
    ],
)
def test_recipient_format_for_an_xdm(
    recipients: tuple[str, ...], directory: CorrespondentsDirectory | None, held: dict[str, str]
) -> None:
    raw = mime(LETTER, [(text_pdf(), PDF), (xdm(), ZIP)], {"X-MSS-CODECDA": "11488-4"})
    found = hits(decide(raw, recipients=recipients, directory=directory), "art4.recipient-format")
    assert {f.recipient: dict(f.details)["formats"] for f in found} == held
    assert all(f.action is Action.HOLD for f in found)


def test_recipient_format_for_a_bare_cda_and_for_plain_pdf() -> None:
    raw = mime(LETTER, [(cda(), ("text", "xml", "cr.xml"))])
    assert only_hit(decide(raw, directory=CHU), "art4.recipient-format").recipient == RECIPIENT
    pdf_only = mime(LETTER, [(text_pdf(), PDF)])
    assert hits(decide(pdf_only, directory=CHU), "art4.recipient-format") == []


# --- art4.mss-headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("documents", "header", "problem"),
    [
        ({"DOC0001.XML": cda("11488-4")}, None, "missing"),
        ({"DOC0001.XML": cda("11488-4")}, "11488-4", None),
        ({"DOC0001.XML": cda("11488-4"), "DOC0002.XML": cda("34112-3")}, "34112-3, 11488-4", None),
        ({"DOC0001.XML": cda("11488-4"), "DOC0002.XML": cda("34112-3")}, "11488-4", "mismatch"),
        ({"DOC0001.XML": cda("11488-4")}, "99999-9", "mismatch"),
        ({"DOC0001.PDF": text_pdf()}, "11488-4", "present-without-cda"),
        ({"DOC0001.PDF": text_pdf()}, None, None),
    ],
)
def test_mss_headers(documents: dict[str, bytes], header: str | None, problem: str | None) -> None:
    headers = {"X-MSS-CODECDA": header} if header is not None else {}
    decision = decide(mime(LETTER, [(xdm(documents), ZIP)], headers))
    found = hits(decision, "art4.mss-headers")
    assert [dict(f.details)["problem"] for f in found] == ([problem] if problem else [])
    assert all(f.action is Action.WARN for f in found)


def test_the_codecda_header_without_any_attachment_is_flagged() -> None:
    decision = decide(mime(LETTER, headers={"X-MSS-CODECDA": "11488-4"}))
    assert dict(only_hit(decision, "art4.mss-headers").details)["problem"] == "present-without-cda"


# --- the JSON view and the patient seen by Article 1 -------------------------------------


def test_attachment_json_lists_the_rules_about_each_attachment() -> None:
    raw = mime(LETTER, [(text_pdf(), PDF), (pe_executable(), PDF)])
    envelope = Envelope(SENDER, (RECIPIENT,))
    message = parse_message(raw)
    decision = Charter.build().check_message(envelope, message)
    data = MessageContext(envelope, message).attachments.to_json(decision.findings)
    assert data[0]["rules"] == []
    rules = data[1]["rules"]
    assert isinstance(rules, list)
    assert {"art3.type-mismatch", "art3.active-content", "art3.forbidden-type"} <= set(rules)
    assert "compte-rendu" not in repr(data)


def test_attachment_json_names_rules_about_documents_inside_an_archive() -> None:
    raw = mime(LETTER, [(xdm({"DOC0001.XML": cda(), "RUN.EXE": pe_executable()}), ZIP)])
    envelope = Envelope(SENDER, (RECIPIENT,))
    message = parse_message(raw)
    decision = Charter.build().check_message(envelope, message)
    (archive,) = MessageContext(envelope, message).attachments.to_json(decision.findings)
    assert archive["detected_type"] == "xdm"
    assert "art3.active-content" in archive["rules"]  # type: ignore[operator]
    entries = archive["entries"]
    assert isinstance(entries, list)
    by_type = {entry["detected_type"]: entry["rules"] for entry in entries}
    assert "art3.active-content" in by_type["exe"]
    assert by_type["cda"] == []


def test_cda_patients_inside_an_xdm_are_exposed_to_other_rules() -> None:
    message = parse_message(mime(LETTER, [(xdm(), ZIP)]))
    analysis = MessageContext(Envelope(SENDER, (RECIPIENT,)), message).attachments
    assert [p.last_name for p in analysis.cda_patients] == ["ZEPHYRIN"]
