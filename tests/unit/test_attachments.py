"""Attachment analysis: sniffing by content, PDF, safe zip reading, IHE XDM, CDA.

Every sample is built here, in code: real PDFs written with pypdf, real zips
written with zipfile, a PE header, a docx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiguard.attachments import (
    AnalysisLimits,
    AttachmentAnalysis,
    AttachmentReport,
    analyse_attachments,
    analyse_file,
    parse_xml,
    read_cda,
    sniff,
)
from apiguard.mail import Attachment, ParsedMessage
from tests.samples import (
    HPRIM_FILE,
    JPEG,
    PNG,
    TIFF,
    auto_uri_pdf,
    cda,
    docx,
    embedded_file_pdf,
    encrypted_pdf,
    goto_open_pdf,
    image_pdf,
    javascript_pdf,
    launch_pdf,
    make_zip,
    mark_encrypted,
    pe_executable,
    text_pdf,
    xdm,
)


def report_of(
    content: bytes, extension: str = "", declared: str = "application/octet-stream"
) -> AttachmentReport:
    return analyse_file(content, declared_type=declared, extension=extension)[0]


# --- sniffing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "extension", "expected"),
    [
        (b"", "txt", "empty"),
        (text_pdf(), "pdf", "pdf"),
        (b"garbage before\n%PDF-1.4\n", "pdf", "pdf"),
        (b"Bonjour,\nvoici le texte.\n", "txt", "text"),
        ("Compte rendu accentué\n".encode("cp1252"), "txt", "text"),
        (HPRIM_FILE, "hpr", "hprim"),
        (b"H|^~\\&|||LABO|||||||P|H2.2|20240601\r\n", "hps", "hprim"),
        (b"{\\rtf1\\ansi Bonjour}", "rtf", "rtf"),
        (PNG, "png", "png"),
        (JPEG, "jpg", "jpeg"),
        (TIFF, "tif", "tiff"),
        (cda(), "xml", "cda"),
        (b'<?xml version="1.0"?><root/>', "xml", "xml"),
        (b"<!DOCTYPE html><html><body>x</body></html>", "html", "html"),
        (b"<html><body>unclosed", "htm", "html"),
        (xdm(), "zip", "xdm"),
        (make_zip({"a.txt": b"x"}), "zip", "zip"),
        (docx(), "docx", "docx"),
        (docx(macros=True), "docm", "docm"),
        (make_zip({"META-INF/MANIFEST.MF": b"x", "A.class": b"\xca\xfe"}), "jar", "jar"),
        (pe_executable(), "exe", "exe"),
        (b"\x7fELF\x02\x01\x01" + bytes(40), "", "elf"),
        (b"#!/bin/sh\nrm -rf /\n", "", "script"),
        (b"echo hello\r\n", "bat", "script"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "gz", "gz"),
        (b"7z\xbc\xaf\x27\x1c" + bytes(20), "7z", "7z"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "doc", "ole"),
        (b"ID3\x03\x00" + bytes(40) + b"\x00\xff", "mp3", "audio"),
        (b"MZ est un sigle cite dans ce texte.\n", "txt", "text"),
        (b"BM a rappele ce matin.\n", "txt", "text"),
        (bytes(range(256)) * 4, "apz", "apz"),
        (bytes(range(256)) * 4, "bin", "unknown"),
    ],
)
def test_sniff_names_the_type_by_content(content: bytes, extension: str, expected: str) -> None:
    assert sniff(content, extension) == expected


def test_a_forwarded_message_is_a_message_not_text() -> None:
    raw = b"From: a@b.c\r\nSubject: x\r\n\r\nbody\r\n"
    assert sniff(raw, "", "message/rfc822") == "message"
    assert sniff(raw, "eml") == "message"


# --- type mismatch ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "extension", "declared", "mismatch"),
    [
        (pe_executable(), "pdf", "application/pdf", True),  # a renamed executable
        (pe_executable(), "pdf", "application/octet-stream", True),  # by the name alone
        (pe_executable(), "", "application/pdf", True),  # by the declared type alone
        (make_zip({"a.txt": b"x"}), "txt", "text/plain", True),  # a .txt that is a zip
        (text_pdf(), "pdf", "application/pdf", False),
        (text_pdf(), "", "application/octet-stream", False),  # generic claims nothing
        (HPRIM_FILE, "txt", "text/plain", False),
        (HPRIM_FILE, "hpr", "application/octet-stream", False),
        (JPEG, "jpeg", "image/jpeg", False),
        (JPEG, "png", "image/png", True),
        (cda(), "xml", "text/xml", False),
        (xdm(), "zip", "application/zip", False),
        (docx(), "pdf", "application/pdf", True),
        (text_pdf(), "apz", "application/octet-stream", True),  # a PDF disguised as APICRYPT
        (bytes(range(256)) * 4, "apz", "application/octet-stream", False),
        (b"", "pdf", "application/pdf", False),  # empty: nothing to contradict
    ],
)
def test_type_mismatch_compares_name_and_declared_type_with_content(
    content: bytes, extension: str, declared: str, mismatch: bool
) -> None:
    assert report_of(content, extension, declared).has("mismatch") is mismatch


def test_reports_name_the_claimed_type_never_the_file_name() -> None:
    report = report_of(pe_executable(), "pdf", "application/pdf")
    assert report.name_type == "pdf"
    assert report.detected_type == "exe"
    assert "executable" in report.signals
    assert report.has("active")


# --- PDF --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "flags", "signals"),
    [
        (text_pdf(), {"searchable"}, set()),
        (image_pdf(), {"not-searchable"}, set()),
        (encrypted_pdf(), {"encrypted"}, set()),
        (javascript_pdf(), {"searchable", "active"}, {"javascript"}),
        (embedded_file_pdf(), {"searchable", "active"}, {"embedded-file"}),
        (launch_pdf(), {"searchable", "active"}, {"launch", "auto-action"}),
        (auto_uri_pdf(), {"searchable", "active"}, {"auto-action"}),
        (goto_open_pdf(), {"searchable"}, set()),
    ],
)
def test_pdf_analysis(content: bytes, flags: set[str], signals: set[str]) -> None:
    report = report_of(content, "pdf", "application/pdf")
    assert report.detected_type == "pdf"
    assert set(report.flags) == flags
    assert set(report.signals) == signals


def test_a_pdf_with_only_an_owner_password_opens_and_is_not_encrypted() -> None:
    report = report_of(encrypted_pdf(user_password=""), "pdf", "application/pdf")
    assert not report.has("encrypted")
    assert report.has("searchable")


def test_an_unreadable_pdf_is_judged_on_its_raw_bytes() -> None:
    broken = b"%PDF-1.7\n1 0 obj << /S /JavaScript /JS (x) >> garbage"
    report = report_of(broken, "pdf", "application/pdf")
    assert report.has("unreadable")
    assert report.has("not-searchable")
    assert "javascript" in report.signals


# --- zip containers ---------------------------------------------------------------


def test_a_minimal_ihe_xdm_reads_its_cda_patient_and_code() -> None:
    message = ParsedMessage(
        headers=(),
        text="",
        attachments=(Attachment("IHE_XDM.ZIP", "application/zip", xdm()),),
        defects=(),
        size=0,
    )
    analysis = analyse_attachments(message)
    (report,) = analysis.reports
    assert report.detected_type == "xdm"
    assert report.problems == ()
    assert report.cda_codes == ("11488-4",)
    assert analysis.cda_codes == ("11488-4",)
    (patient,) = analysis.cda_patients
    assert (patient.last_name, patient.first_name) == ("ZEPHYRIN", "Leopoldine")
    assert patient.birth_date == date(1962, 9, 5)
    assert patient.nir == "262097512345650"
    assert patient.source == "cda"
    kinds = {entry.location: entry.detected_type for entry in report.entries}
    assert sorted(kinds.values()) == ["cda", "html", "text", "xml"]
    package = [e for e in report.entries if e.has("xdm-package")]
    assert sorted(e.detected_type for e in package) == ["html", "text", "xml"]
    assert all(e.location.startswith("1/") for e in report.entries)


@pytest.mark.parametrize(
    ("archive", "problem"),
    [
        (make_zip({"../../etc/evil.txt": b"x"}), "path-traversal"),
        (make_zip({"C:/Windows/evil.txt": b"x"}), "path-traversal"),
        (make_zip({"/abs.txt": b"x"}), "path-traversal"),
        (mark_encrypted(make_zip({"secret.pdf": b"%PDF-1.4"}), "secret.pdf"), "encrypted-entry"),
        (make_zip({"bomb.txt": bytes(2 * 1024 * 1024)}), "zip-bomb"),
        (xdm({"DOC0001.XML": cda(), "inner.zip": make_zip({"x.txt": b"x"})}), "nested-archive"),
        (make_zip({f"f{i}.txt": b"x" for i in range(12)}), "too-many-entries"),
    ],
    ids=["dotdot", "drive", "absolute", "encrypted", "bomb", "nested", "entries"],
)
def test_unsafe_archives_are_named_by_their_problem(archive: bytes, problem: str) -> None:
    limits = AnalysisLimits(max_entries=10)
    report, _ = analyse_file(archive, extension="zip", limits=limits)
    assert problem in report.problems


def test_a_small_compressible_file_is_not_a_bomb() -> None:
    report = report_of(make_zip({"blank.txt": bytes(100_000)}), "zip")
    assert "zip-bomb" not in report.problems


def test_a_bomb_is_not_opened() -> None:
    report = report_of(make_zip({"bomb.txt": bytes(2 * 1024 * 1024)}), "zip")
    assert report.entries == ()


def test_an_encrypted_entry_marks_the_archive_encrypted_and_is_not_read() -> None:
    archive = mark_encrypted(xdm({"DOC0001.PDF": text_pdf()}), "IHE_XDM/SUBSET01/DOC0001.PDF")
    report = report_of(archive, "zip")
    assert report.detected_type == "xdm"
    assert report.has("encrypted")
    assert [e.detected_type for e in report.entries if not e.has("xdm-package")] == []


def test_documents_inside_an_xdm_are_judged_like_attachments() -> None:
    archive = xdm(
        {"DOC0001.XML": cda(), "DOC0002.PDF": javascript_pdf(), "RUN.EXE": pe_executable()}
    )
    report = report_of(archive, "zip")
    inner = {e.detected_type: e for e in report.entries if not e.has("xdm-package")}
    assert "javascript" in inner["pdf"].signals
    assert "executable" in inner["exe"].signals
    assert inner["exe"].location.startswith("1/")


def test_a_nested_zip_is_refused_and_never_opened() -> None:
    inner = make_zip({"deep.exe": pe_executable()})
    report = report_of(xdm({"inner.zip": inner}), "zip")
    (nested,) = [e for e in report.entries if e.detected_type == "zip"]
    assert nested.entries == ()
    assert "nested-archive" in report.problems


def test_office_macros_are_active_content() -> None:
    assert "macro" in report_of(docx(macros=True), "docm").signals
    assert report_of(docx(), "docx").signals == ()


def test_html_with_script_and_rtf_with_object_are_active() -> None:
    assert "script" in report_of(b"<html><script>alert(1)</script></html>", "html").signals
    assert "embedded-object" in report_of(b"{\\rtf1 {\\object\\objemb x}}", "rtf").signals
    assert report_of(b"{\\rtf1\\ansi Bonjour}", "rtf").signals == ()


# --- CDA and hardened XML -----------------------------------------------------------


def test_read_cda_takes_the_birth_name_and_first_given_name() -> None:
    document = read_cda(cda(code="34112-3", birth="19620905120000+0100"))
    assert document is not None
    assert document.code == "34112-3"
    assert document.patient is not None
    assert document.patient.birth_date == date(1962, 9, 5)


@pytest.mark.parametrize(
    "content",
    [
        b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:other"/>',
        b"<ClinicalDocument/>",
        b"not xml at all",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="&a;"/></ClinicalDocument>',
    ],
)
def test_read_cda_refuses_what_is_not_a_safe_cda(content: bytes) -> None:
    assert read_cda(content) is None


def test_xml_with_a_doctype_is_refused_before_any_entity_expansion() -> None:
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>'
    )
    with pytest.raises(ValueError, match="DOCTYPE"):
        parse_xml(laughs)
    external = b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd"><x/>'
    with pytest.raises(ValueError, match="DOCTYPE"):
        parse_xml(external)
    assert sniff(laughs, "xml") == "text"


# --- JSON ---------------------------------------------------------------------------


def test_to_json_gives_types_sizes_and_rule_ids_never_file_names() -> None:
    from apiguard.policy.verdict import Action, Finding

    message = ParsedMessage(
        headers=(),
        text="",
        attachments=(
            Attachment("DUPONT Jean.pdf", "application/pdf", pe_executable()),
            Attachment("lettre.pdf", "application/pdf", text_pdf()),
        ),
        defects=(),
        size=0,
    )
    analysis = analyse_attachments(message)
    finding = Finding(
        rule="art3.type-mismatch",
        article=3,
        action=Action.REJECT,
        message_fr="",
        message_en="",
        details=(("attachments", "1"),),
    )
    data = analysis.to_json([finding])
    assert [item["rules"] for item in data] == [["art3.type-mismatch"], []]
    assert data[0]["detected_type"] == "exe"
    assert data[0]["declared_type"] == "application/pdf"
    assert data[0]["size"] == len(pe_executable())
    assert "DUPONT" not in repr(data) and "lettre" not in repr(data)


# --- never raises, bounded time -------------------------------------------------------

_PREFIXES = [
    b"",
    b"%PDF-1.4\n",
    b"PK\x03\x04",
    b"MZ",
    b"<?xml version='1.0'?>",
    b"{\\rtf1",
    b"\xff\xfe",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
]
_EXTENSIONS = ["pdf", "txt", "zip", "xml", "exe", "apz", "docx", "hpr", "", "jpg"]
_DECLARED = ["application/pdf", "text/plain", "application/zip", "application/octet-stream", ""]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    prefix=st.sampled_from(_PREFIXES),
    body=st.binary(max_size=20_000),
    extension=st.one_of(st.sampled_from(_EXTENSIONS), st.text(max_size=6)),
    declared=st.one_of(st.sampled_from(_DECLARED), st.text(max_size=30)),
)
def test_analysis_never_raises_and_stays_fast(
    prefix: bytes, body: bytes, extension: str, declared: str
) -> None:
    content = prefix + body
    message = ParsedMessage(
        headers=(),
        text="",
        attachments=(Attachment(f"f.{extension}", declared, content),),
        defects=(),
        size=len(content),
    )
    started = time.perf_counter()
    analysis = analyse_attachments(message)
    elapsed = time.perf_counter() - started
    assert isinstance(analysis, AttachmentAnalysis)
    assert len(analysis.reports) == 1
    assert analysis.reports[0].size == len(content)
    megabytes = max(len(content) / 1_000_000, 0.05)  # a small floor for fixed costs
    assert elapsed / megabytes < 2.0


@pytest.mark.parametrize(
    "builder",
    [
        lambda: text_pdf() + b"%" + bytes(range(256)) * 20_000,  # a 5 MB PDF
        lambda: b"Ligne de texte du compte rendu.\n" * 160_000,  # 5 MB of text
        lambda: image_pdf(side=3300),  # a 10 MiB scan
        lambda: xdm({"DOC0001.XML": cda(), "SCAN.PDF": image_pdf(side=2300)}),  # 5 MiB inside
    ],
    ids=["pdf-with-junk", "text", "scan", "xdm-with-scan"],
)
def test_big_attachments_take_bounded_time_per_megabyte(builder: Callable[[], bytes]) -> None:
    content = builder()
    started = time.perf_counter()
    report = report_of(content, "", "application/octet-stream")
    elapsed = time.perf_counter() - started
    assert report.detected_type in ("pdf", "text", "xdm")
    assert "zip-bomb" not in report.problems
    assert elapsed / (len(content) / 1_000_000) < 2.0
