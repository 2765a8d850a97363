"""Enhanced status codes (RFC 2034, RFC 3463) on every reply apiguard sends.

apiguard's own replies carry one (`apiguard.smtp.replies.Reply`); aiosmtpd's
built-in ones do not (`250 OK`, `221 Bye`, `503 Error: need RCPT command`).
EHLO advertises ENHANCEDSTATUSCODES, so each 2xx, 4xx and 5xx reply must
start its text with one, except the greeting and the replies to HELO and
EHLO (RFC 2034 §3); 3xx replies (354, 334) never carry one. The codes are
the ones Postfix gives for the same replies.
"""

from __future__ import annotations

import re

# Already there: "250 2.1.0 OK", "451-4.3.0 ...".
_HAS_CODE = re.compile(r"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

# By basic code, where the class's general code would say less.
_BY_CODE = {
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.2",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.1",
}


def with_enhanced_code(reply: str) -> str:
    """`reply` (one line, without CRLF) with an enhanced status code after its
    basic code when it is a 2xx, 4xx or 5xx reply that has none."""
    code = reply[:3]
    if len(reply) < 3 or code[0] not in "245" or not code.isdigit() or _HAS_CODE.match(reply):
        return reply
    separator, text = reply[3:4] or " ", reply[4:]
    enhanced = _BY_CODE.get(code, f"{code[0]}.0.0")
    return f"{code}{separator}{enhanced} {text}".rstrip()
