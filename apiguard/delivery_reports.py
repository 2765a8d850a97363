"""What a genuine report under the null sender looks like.

`MAIL FROM:<>` is for reports about another message, which must never be
answered (RFC 5321 §4.5.5, RFC 3464, RFC 8098). A client could otherwise send
anything with it and skip the rules that do not apply to reports. So the null
sender is accepted only for a message shaped like a report and nothing else:

- `multipart/report` with `report-type` delivery-status or
  disposition-notification (or their RFC 6533 `global-` forms), one recipient;
- its parts, at the top level only: one `text/plain` explanation, then the
  machine-readable status part matching the report type, then optionally the
  original's headers (`text/rfc822-headers`, `message/rfc822-headers` or
  `message/global-headers`): never the original body, no other part, no file;
- at most `MAX_REPORT_SIZE` bytes: reports are a few kilobytes.

Anything else with the null sender is refused by `sender.null`. A genuine
report still skips the content rules that cannot apply to it (it names no
patient and is no announcement), and never gets a notice back; the volume
rules count it like any other message.
"""

from __future__ import annotations

from apiguard.mail import Envelope, ParsedMessage

MAX_REPORT_SIZE = 64 * 1024
STATUS_PARTS = {
    "delivery-status": "message/delivery-status",
    "disposition-notification": "message/disposition-notification",
    "global-delivery-status": "message/global-delivery-status",
    "global-disposition-notification": "message/global-disposition-notification",
}
HEADER_PARTS = frozenset(
    {"text/rfc822-headers", "message/rfc822-headers", "message/global-headers"}
)


def report_type(message: ParsedMessage) -> str | None:
    """The `report-type` of a top-level multipart/report, lower case, or None."""
    content_type = (message.header("Content-Type") or "").lower()
    kind, _, params = content_type.partition(";")
    if kind.strip() != "multipart/report":
        return None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip() == "report-type":
            return value.strip().strip('"').strip()
    return None


def is_genuine_report(envelope: Envelope, message: ParsedMessage) -> bool:
    """Is this null-sender message a report, and only a report?"""
    if not envelope.is_notification or len(envelope.rcpt_tos) != 1:
        return False
    if message.size > MAX_REPORT_SIZE or message.attachments or message.severe_defects:
        return False
    status = STATUS_PARTS.get(report_type(message) or "")
    parts = message.part_types
    if status is None or len(parts) not in (2, 3):
        return False
    if parts[0] != "text/plain" or parts[1] != status:
        return False
    return len(parts) == 2 or parts[2] in HEADER_PARTS
