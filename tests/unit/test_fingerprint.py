"""The content fingerprint: same content, same hash; different content, different hash."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from apiguard.fingerprint import content_fingerprint, normalised_text
from apiguard.mail import parse_message

LETTER = (
    "Cher confrère,\n"
    "J'ai vu en consultation votre patiente pour un bilan cardiologique.\n"
    "L'examen clinique est normal, l'ECG aussi.\n"
    "Bien confraternellement.\n"
    "Dr Alice Martin\n"
    "Cardiologue\n"
)


def message(text: str, attachments: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    mail = EmailMessage()
    mail["From"] = "dr.martin@medical13.apicrypt.org"
    mail["To"] = "dr.durand@medical69.apicrypt.org"
    mail["Subject"] = "Compte rendu"
    mail.set_content(text)
    for name, content in attachments:
        mail.add_attachment(content, maintype="application", subtype="pdf", filename=name)
    return mail.as_bytes()


def fingerprint(raw: bytes, recipients: tuple[str, ...] = ()) -> str | None:
    return content_fingerprint(parse_message(raw), recipients)


BASE = fingerprint(message(LETTER))

SAME_CONTENT = {
    "spacing and line breaks": LETTER.replace(" ", "  ").replace(",\n", ",\n\n"),
    "letter case": LETTER.upper(),
    "another greeting": LETTER.replace("Cher confrère,", "Chère consœur,"),
    "a personal greeting": LETTER.replace("Cher confrère,", "Bonjour Docteur Durand,"),
    "no greeting": LETTER.replace("Cher confrère,\n", ""),
    "greeting on the first line": LETTER.replace("Cher confrère,\n", "Bonjour, "),
    "another closing": LETTER.replace("Bien confraternellement.", "Cordialement,"),
    "closing at the end of a sentence": LETTER.replace(
        "l'ECG aussi.\nBien confraternellement.", "l'ECG aussi. Bien confraternellement."
    ),
    "another signature": LETTER.replace("Dr Alice Martin\nCardiologue\n", "A. Martin\n"),
    "a signature block": LETTER + "-- \nCabinet de cardiologie\n04 91 00 00 00\n",
    "windows line ends": LETTER.replace("\n", "\r\n"),
}


@pytest.mark.parametrize("variant", SAME_CONTENT.values(), ids=SAME_CONTENT.keys())
def test_the_same_letter_dressed_differently_has_the_same_fingerprint(variant: str) -> None:
    assert fingerprint(message(variant)) == BASE


DIFFERENT_CONTENT = {
    "another finding": LETTER.replace("est normal", "montre un souffle"),
    "another patient word": LETTER.replace("patiente", "patient"),
    "an added sentence": LETTER.replace("aussi.", "aussi. Contrôle dans un an."),
}


@pytest.mark.parametrize("variant", DIFFERENT_CONTENT.values(), ids=DIFFERENT_CONTENT.keys())
def test_a_different_letter_has_a_different_fingerprint(variant: str) -> None:
    assert fingerprint(message(variant)) != BASE


def test_attachments_count_by_content_not_by_name_nor_order() -> None:
    one, two = b"%PDF-1.4 first report", b"%PDF-1.4 second report"
    reference = fingerprint(message(LETTER, (("a.pdf", one), ("b.pdf", two))))
    assert fingerprint(message(LETTER, (("x.pdf", one), ("y.pdf", two)))) == reference
    assert fingerprint(message(LETTER, (("b.pdf", two), ("a.pdf", one)))) == reference
    assert fingerprint(message(LETTER, (("a.pdf", one),))) != reference
    assert fingerprint(message(LETTER, (("a.pdf", one), ("b.pdf", b"%PDF other")))) != reference
    assert reference != BASE


def test_an_attachment_alone_still_has_a_fingerprint() -> None:
    assert fingerprint(message("", (("cr.pdf", b"%PDF-1.4 report"),))) is not None


@pytest.mark.parametrize("text", ["", "\n\n", "Cher confrère,\nCordialement\n"])
def test_a_message_saying_nothing_has_no_fingerprint(text: str) -> None:
    assert fingerprint(message(text)) is None


def test_mentions_of_the_recipient_are_folded_so_personalised_copies_match() -> None:
    durand = LETTER.replace("votre patiente", "votre patiente (copie dr.durand)")
    petit = LETTER.replace("votre patiente", "votre patiente (copie dr.petit)")
    assert fingerprint(message(durand), ("dr.durand@medical69.apicrypt.org",)) == fingerprint(
        message(petit), ("dr.petit@medical75.apicrypt.org",)
    )
    assert fingerprint(message(durand)) != fingerprint(message(petit))


def test_the_fingerprint_is_a_short_hash_and_keeps_no_text() -> None:
    assert BASE is not None
    assert len(BASE) == 32
    int(BASE, 16)
    assert "cardiolog" not in BASE


def test_normalised_text_keeps_the_meaningful_sentences_only() -> None:
    assert normalised_text(LETTER) == (
        "j ai vu en consultation votre patiente pour un bilan cardiologique "
        "l examen clinique est normal l ecg aussi"
    )


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\xff\xfe garbage", b"Subject: x\r\n\r\n\xff\xfe\xfa", b"\r\r\r" * 1000],
)
def test_any_input_gives_a_fingerprint_or_none_without_raising(raw: bytes) -> None:
    result = fingerprint(raw)
    assert result is None or len(result) == 32
