"""Enhanced status codes added to aiosmtpd's own replies (RFC 2034)."""

from __future__ import annotations

import pytest

from apiguard.smtp.enhanced import with_enhanced_code


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ("501 Syntax: NOOP", "501 5.5.4 Syntax: NOOP"),
        ("454 TLS not available", "454 4.7.0 TLS not available"),
        ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
        (
            "555 MAIL FROM parameters not recognized",
            "555 5.0.0 MAIL FROM parameters not recognized",
        ),
        ("250", "250 2.0.0"),
    ],
)
def test_a_reply_without_an_enhanced_code_gets_the_one_postfix_gives(
    reply: str, expected: str
) -> None:
    assert with_enhanced_code(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "250 2.1.0 OK",
        "550 5.7.1 art1.x (Art. 1): refus",
        "354 End data with <CR><LF>.<CR><LF>",
        "334 VXNlcm5hbWU6",
        "235 2.7.0 Authentication successful",
    ],
)
def test_replies_with_a_code_and_3xx_replies_stay_as_they_are(reply: str) -> None:
    assert with_enhanced_code(reply) == reply
