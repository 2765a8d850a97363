"""What passes for a genuine report under the null sender (`sender.null`)."""

from __future__ import annotations

import pytest

from apiguard.delivery_reports import is_genuine_report
from apiguard.mail import Envelope, parse_message
from apiguard.notices import FailedRecipient, NoticeIdentity, bounce
from tests.support import letter

RCPT = "dr.martin@medical13.apicrypt.org"
BOUNDARY = "b0undary"


def report(*parts: tuple[str, str], report_type: str = "delivery-status") -> bytes:
    body = "".join(
        f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n{content}\r\n" for kind, content in parts
    )
    return (
        f"From: <MAILER-DAEMON@medical13.apicrypt.org>\r\nTo: {RCPT}\r\n"
        f"Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{BOUNDARY}"\r\n'
        f"\r\n{body}--{BOUNDARY}--\r\n"
    ).encode()


EXPLANATION = ("text/plain; charset=utf-8", "Your message could not be delivered.")
STATUS = ("message/delivery-status", "Reporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; a@b.fr")
HEADERS = ("text/rfc822-headers", "From: a@b.fr\r\nMessage-ID: <x@b.fr>")
MDN = ("message/disposition-notification", "Final-Recipient: rfc822; a@b.fr\r\nDisposition: x")


def genuine(raw: bytes, recipients: tuple[str, ...] = (RCPT,), sender: str = "") -> bool:
    return is_genuine_report(Envelope(sender, recipients), parse_message(raw))


def test_apiguards_own_bounce_is_a_genuine_report() -> None:
    raw = bounce(
        identity=NoticeIdentity(),
        message_id="m1",
        sender=RCPT,
        failures=[FailedRecipient("x@medical69.apicrypt.org", "failed", "5.1.1", "smtp; 550")],
        original_raw=letter(1),
        arrival=0.0,
    )
    assert genuine(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (report(EXPLANATION, STATUS, HEADERS), True),
        (report(EXPLANATION, STATUS), True),
        (report(EXPLANATION, MDN, report_type="disposition-notification"), True),
        # the status part must match the report type
        (report(EXPLANATION, MDN), False),
        # no original message (it could be any letter), no file, no extra part
        (report(EXPLANATION, STATUS, ("message/rfc822", "Subject: x\r\n\r\nbody")), False),
        (report(EXPLANATION, STATUS, ("application/pdf", "%PDF-1.4")), False),
        (report(EXPLANATION, STATUS, HEADERS, EXPLANATION), False),
        (report(("text/html", "<p>x</p>"), STATUS), False),
        (report(EXPLANATION), False),
        (report(EXPLANATION, STATUS, report_type="webinar"), False),
        (letter(1), False),
        (b"Subject: Undelivered Mail\r\n\r\nYour message could not be delivered.\r\n", False),
        # reports are small
        (report(("text/plain", "x" * 70_000), STATUS), False),
    ],
)
def test_report_shapes(raw: bytes, expected: bool) -> None:
    assert genuine(raw) is expected


def test_a_report_goes_to_one_recipient_under_the_null_sender_only() -> None:
    raw = report(EXPLANATION, STATUS, HEADERS)
    assert not genuine(raw, recipients=(RCPT, "dr.durand@medical69.apicrypt.org"))
    assert not genuine(raw, sender=RCPT)
    assert genuine(raw, sender="<>")
