"""Only real ciphertext switches the content rules off: a `$APICRYPT` line
or an `.apz` name is a claim that structure and entropy must bear out."""

from __future__ import annotations

import base64
import random
from email.message import EmailMessage
from pathlib import Path

import pytest

from apiguard.attachments import sniff
from apiguard.ciphertext import armoured_ciphertext, binary_ciphertext, entropy
from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter
from apiguard.policy.verdict import Decision, Verdict
from tests.samples import pe_executable, text_pdf

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
CORPUS = Path(__file__).resolve().parent.parent / "corpus"
CIPHERTEXT = random.Random(18).randbytes(2048)
ARMOURED = base64.encodebytes(CIPHERTEXT[:300]).decode("ascii")
INVITATION = (
    "Chers confrères, nous avons le plaisir de vous inviter à notre soirée de "
    "formation sur le diabète, jeudi prochain à 20 h, suivie d'un buffet. "
    "Inscription auprès du secrétariat."
)
HTML_PAGE = b"<html><body><script>document.location='http://x.example'</script></body></html>"


def check(body: str, attachments: list[tuple[str, bytes]] = ()) -> Decision:  # type: ignore[assignment]
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = COLLEAGUE
    mail["Subject"] = "Invitation"
    mail.set_content(body)
    for filename, content in attachments:
        mail.add_attachment(
            content, maintype="application", subtype="octet-stream", filename=filename
        )
    envelope = Envelope(SENDER, (COLLEAGUE,))
    return Charter.build().check_message(envelope, parse_message(mail.as_bytes()))


def rules(decision: Decision) -> set[str]:
    return {f.rule for f in decision.findings}


@pytest.mark.parametrize(
    "body",
    [
        "$APICRYPT\n" + INVITATION,
        "$APICRYPT$V2$ " + INVITATION,
        INVITATION + "\n$APICRYPT$V2$\n" + ARMOURED,  # a block after readable text
        "$APICRYPT$V2$\nInvitationSoireeFormationDiabeteJeudiProchainBuffetInscription\n",
    ],
    ids=["marker-then-text", "marker-line-with-text", "text-then-block", "words-without-spaces"],
)
def test_a_marker_before_plain_text_does_not_switch_the_charter_off(body: str) -> None:
    decision = check(body)
    assert "content.encrypted" not in rules(decision)
    assert "art1.no-patient-data" in decision.checked
    assert "art2.announcement" in decision.checked
    assert decision.verdict is not Verdict.FORWARD


@pytest.mark.parametrize(
    ("content", "expected_rules"),
    [
        (pe_executable(), {"art3.type-mismatch", "art3.forbidden-type", "art3.active-content"}),
        (HTML_PAGE, {"art3.type-mismatch", "art3.forbidden-type", "art3.active-content"}),
        (text_pdf(), {"art3.type-mismatch"}),
        (INVITATION.encode("utf-8"), {"art3.type-mismatch"}),
    ],
    ids=["executable", "html-with-script", "pdf", "plain-text"],
)
def test_an_apz_that_is_not_ciphertext_is_judged_for_what_it_is(
    content: bytes, expected_rules: set[str]
) -> None:
    decision = check("Message chiffré par APICRYPT.", [("lettre.apz", content)])
    assert "content.encrypted" not in rules(decision)
    assert expected_rules <= rules(decision)
    assert decision.verdict is Verdict.REJECT


def test_readable_attachments_are_judged_beside_an_encrypted_one() -> None:
    decision = check(
        "Message chiffré par APICRYPT.",
        [("lettre.apz", CIPHERTEXT), ("programme.exe", pe_executable()), ("page.htm", HTML_PAGE)],
    )
    assert "content.encrypted" in rules(decision)
    assert {"art3.forbidden-type", "art3.active-content"} <= rules(decision)
    assert "art1.no-patient-data" in decision.skipped
    assert decision.verdict is Verdict.REJECT


@pytest.mark.parametrize(
    "body",
    ["$APICRYPT$V2$\n" + ARMOURED, "  $APICRYPT\n\n" + ARMOURED + "\n$APICRYPT$FIN$\n"],
    ids=["block", "indented-marker-and-end-marker"],
)
def test_a_real_apicrypt_body_still_skips_the_content_rules(body: str) -> None:
    decision = check(body)
    assert "content.encrypted" in rules(decision)
    assert "art1.no-patient-data" in decision.skipped
    assert decision.verdict is Verdict.FORWARD


def test_a_real_apz_is_still_an_opaque_payload() -> None:
    assert sniff(CIPHERTEXT, "apz", "application/octet-stream") == "apz"
    assert sniff(ARMOURED.encode("ascii"), "apz", "application/octet-stream") == "apz"
    assert sniff(pe_executable(), "apz") == "exe"
    assert sniff(HTML_PAGE, "apz") == "html"
    assert sniff(text_pdf(), "apz") == "pdf"
    assert sniff(INVITATION.encode("utf-8"), "apz") == "text"


@pytest.mark.parametrize("name", ["legit-24-chiffre-apicrypt.eml", "legit-25-piece-jointe-apz.eml"])
def test_the_corpus_encrypted_letters_are_still_recognised(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    message = parse_message(raw)
    decision = Charter.build().check_message(Envelope(SENDER, (COLLEAGUE,)), message)
    assert "content.encrypted" in rules(decision)
    assert decision.verdict is Verdict.FORWARD


def test_entropy_tells_ciphertext_from_text() -> None:
    assert entropy(CIPHERTEXT) > 7.5
    assert entropy(INVITATION.encode("utf-8") * 20) < 5
    assert binary_ciphertext(CIPHERTEXT)
    assert not binary_ciphertext(INVITATION.encode("utf-8") * 20)
    assert not binary_ciphertext(bytes(4096))
    assert armoured_ciphertext("$APICRYPT\n" + ARMOURED)
    assert not armoured_ciphertext(ARMOURED)  # a body needs its marker
    assert armoured_ciphertext(ARMOURED, marker_required=False)
    assert not armoured_ciphertext("$APICRYPT\n" + "QUFB" * 40)  # "AAA…": no spread
