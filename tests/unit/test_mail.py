"""Parsing never raises, decodes bodies sensibly and turns defects into data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.mail import decode_text, html_to_text, parse_message


@pytest.mark.parametrize(
    ("payload", "declared", "expected"),
    [
        ("Créatinine élevée".encode(), "utf-8", "Créatinine élevée"),
        ("Créatinine élevée".encode("latin-1"), "iso-8859-1", "Créatinine élevée"),
        ("Créatinine élevée".encode("cp1252"), None, "Créatinine élevée"),
        # UTF-8 mislabelled as Latin-1 (APICRYPT v2 software): read as UTF-8.
        ("Créatinine élevée".encode(), "iso-8859-1", "Créatinine élevée"),
        # Latin-1 mislabelled as UTF-8: falls back to Windows-1252.
        ("Créatinine élevée".encode("latin-1"), "utf-8", "Créatinine élevée"),
        ("œuf – 5 €".encode("cp1252"), "iso-8859-1", "œuf – 5 €"),
        (b"a\r\nb\rc\nd", None, "a\nb\nc\nd"),
        (b"x", "x-unknown-charset", "x"),
    ],
)
def test_body_text_is_decoded_with_sensible_fallbacks(
    payload: bytes, declared: str | None, expected: str
) -> None:
    assert decode_text(payload, declared)[0] == expected


def test_a_simple_message_gives_headers_text_and_no_defects() -> None:
    raw = (
        "From: Dr A <a@medical13.apicrypt.org>\r\nTo: b@medical69.apicrypt.org\r\n"
        "Subject: =?utf-8?q?R=C3=A9sultats?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "\r\nBonjour,\r\nrésultats ci-dessous.\r\n"
    ).encode()
    message = parse_message(raw)
    assert message.subject == "Résultats"
    assert message.text == "Bonjour,\nrésultats ci-dessous.\n"
    assert message.attachments == ()
    assert message.severe_defects == ()


def test_cr_only_line_ends_are_read() -> None:
    message = parse_message(b"From: a@b.fr\rSubject: x\r\rligne 1\rligne 2\r")
    assert message.subject == "x"
    assert message.text.splitlines() == ["ligne 1", "ligne 2"]


def test_html_only_bodies_become_text_without_markup() -> None:
    raw = (
        b"From: a@b.fr\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p{}</style></head><body><p>Bonjour</p>"
        b"<script>alert(1)</script><p>Mme &Eacute;lise</p></body></html>"
    )
    message = parse_message(raw)
    assert message.html_only
    assert "Bonjour" in message.text and "Mme Élise" in message.text
    assert "alert" not in message.text and "<" not in message.text


def test_attachments_are_listed_with_name_type_and_bytes() -> None:
    raw = (
        b"From: a@b.fr\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nVoir le compte rendu.\r\n"
        b"--B\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="cr.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n"
    )
    message = parse_message(raw)
    assert message.text.strip() == "Voir le compte rendu."
    (attachment,) = message.attachments
    assert attachment.filename == "cr.pdf"
    assert attachment.declared_type == "application/pdf"
    assert attachment.content == b"%PDF-1.4\n"
    assert attachment.extension == "pdf"


@pytest.mark.parametrize(
    ("raw", "defect"),
    [
        (b"no header here at all\r\nline two\r\n", "NoHeaders"),
        (bytes(range(256)) * 10, "BinaryGarbage"),
        (
            b'From: a@b.fr\r\nContent-Type: multipart/mixed; boundary="X"\r\n\r\n'
            b"--X\r\nContent-Type: text/plain\r\n\r\ntrunc",
            "CloseBoundaryNotFoundDefect",
        ),
        (
            b"From: a@b.fr\r\nContent-Type: multipart/mixed\r\n\r\nno boundary\r\n",
            "NoBoundaryInMultipartDefect",
        ),
    ],
)
def test_broken_input_becomes_defects_not_exceptions(raw: bytes, defect: str) -> None:
    assert defect in parse_message(raw).severe_defects


def test_html_to_text_keeps_paragraphs() -> None:
    assert html_to_text("<p>a</p><p>b</p>").split() == ["a", "b"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_parsing_arbitrary_bytes_never_raises(raw: bytes) -> None:
    message = parse_message(raw)
    assert message.size == len(raw)
    assert isinstance(message.text, str)


@pytest.mark.parametrize("charset", ["utf-8", "cp1252"])
def test_raw_8bit_headers_are_decoded_like_bodies(charset: str) -> None:
    raw = "Subject: Résultats ZÉPHYRIN\r\nFrom: a@b.fr\r\n\r\nx".encode(charset)
    assert parse_message(raw).subject == "Résultats ZÉPHYRIN"
