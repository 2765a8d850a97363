"""Pinned fingerprints: stored fingerprints are compared across restarts and
versions, so the same input must keep the same hex value. A change here means
normalisation drifted (bump `_VERSION` in apiguard/fingerprint.py instead)."""

from __future__ import annotations

import base64
import random

import pytest

from apiguard.fingerprint import content_fingerprint, normalised_text
from apiguard.mail import parse_message

RECIPIENTS = ("dr.durand@medical69.apicrypt.org",)

LETTER = (
    "Bonjour Docteur Durand,\n"
    "J'ai vu en consultation le 18/11/2026 votre patiente pour un bilan cardiologique.\n"
    "Échocardiographie : FEVG 62 %, pas de valvulopathie ; cœur non dilaté.\n"
    "Bonjour à l'équipe, le Holter est normal.   Bien confraternellement.\n"
    "Dr Alice Martin\n"
    "Cardiologue\n"
)
# Full-width letters, a ligature, a digraph, CRLF, an en dash, a recipient code
# and a signature block: NFKC, case folding and signature cutting all matter.
UNICODE = (
    "ＣＨÈＲＥ consœur,\n"
    "Le ﬁchier du patient ǅ est prêt – dr.durand.\r\n"
    "Cordialement\n"
    "-- \n"
    "04 91 00 00 00\n"
)


def _raw(text: str, attachment: bytes | None = None) -> bytes:
    headers = (
        "From: dr.martin@medical13.apicrypt.org\r\n"
        "To: dr.durand@medical69.apicrypt.org\r\n"
        "Subject: Compte rendu\r\n"
        "MIME-Version: 1.0\r\n"
    )
    body = text.replace("\r\n", "\n").replace("\n", "\r\n")
    text_part = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    if attachment is None:
        return (headers + text_part + "\r\n" + body).encode("utf-8")
    return (
        headers
        + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        + "--b1\r\n"
        + text_part
        + "\r\n"
        + body
        + "--b1\r\n"
        + 'Content-Type: application/pdf; name="cr.pdf"\r\n'
        + 'Content-Disposition: attachment; filename="cr.pdf"\r\n'
        + "Content-Transfer-Encoding: 8bit\r\n\r\n"
        + attachment.decode("ascii")
        + "\r\n--b1--\r\n"
    ).encode("utf-8")


def _base64_lines(data: bytes, eol: str, width: int = 76) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "".join(encoded[i : i + width] + eol for i in range(0, len(encoded), width))


def _multipart(eol: str, encoded: str, *, nested: bool = False) -> bytes:
    """A letter in 8-bit text and a big base64 attachment (the parser's fast path)."""
    attachment = (
        'Content-Type: application/pdf; name="cr.pdf"\nContent-Transfer-Encoding: base64\n\n'
    )
    if nested:
        attachment = f'Content-Type: multipart/mixed; boundary="b2"\n\n--b2\n{attachment}'
    head = (
        "From: dr.martin@medical13.apicrypt.org\n"
        "To: dr.durand@medical69.apicrypt.org\n"
        "Subject: Compte rendu\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b1"\n\n'
        "--b1\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\n"
        f"{LETTER}--b1\n{attachment}"
    )
    tail = "--b2--\n--b1--\n" if nested else "--b1--\n"
    return (head.replace("\n", eol) + encoded + tail.replace("\n", eol)).encode("utf-8")


# Random bytes: about 1000 base64 lines once encoded.
_PDF = random.Random(1).randbytes(60_000)

PINNED = {
    "letter": (_raw(LETTER), (), "9e5fbfddaadda258a533d6fb578e7ed2"),
    "letter, recipient folded": (_raw(LETTER), RECIPIENTS, "9e5fbfddaadda258a533d6fb578e7ed2"),
    "unicode": (_raw(UNICODE), RECIPIENTS, "a5890915d5f575fb096386ae60782756"),
    "attachment": (_raw(LETTER, b"%PDF-1.4 fake"), RECIPIENTS, "06e040d0a2b7a17b6d6e7e0f8775de6a"),
    "big base64 attachment, CRLF": (
        _multipart("\r\n", _base64_lines(_PDF, "\r\n")),
        RECIPIENTS,
        "1f80338158404b9bf7610ac51ef296c8",
    ),
    "big base64 attachment, LF, nested": (
        _multipart("\n", _base64_lines(_PDF, "\n"), nested=True),
        RECIPIENTS,
        "1f80338158404b9bf7610ac51ef296c8",
    ),
    "big base64 attachment, bad padding": (
        _multipart("\r\n", _base64_lines(_PDF, "\r\n")[:-3] + "\r\n"),
        RECIPIENTS,
        "710e024f8300f6ae75e726e3e4a8da52",
    ),
}


@pytest.mark.parametrize(("raw", "recipients", "expected"), PINNED.values(), ids=PINNED.keys())
def test_fingerprint_is_pinned(raw: bytes, recipients: tuple[str, ...], expected: str) -> None:
    assert content_fingerprint(parse_message(raw), recipients) == expected


NORMALISED = {
    "letter": (
        LETTER,
        (),
        "j ai vu en consultation le 18 11 2026 votre patiente pour un bilan cardiologique"
        " échocardiographie fevg 62 pas de valvulopathie cœur non dilaté à l équipe"
        " le holter est normal",
    ),
    "unicode": (UNICODE, ("dr.durand",), "le fichier du patient dž est prêt"),
}


@pytest.mark.parametrize(("text", "tokens", "expected"), NORMALISED.values(), ids=NORMALISED.keys())
def test_normalised_text_is_pinned(text: str, tokens: tuple[str, ...], expected: str) -> None:
    assert normalised_text(text, tokens) == expected
