"""What the review page shows of one stored message: headers, body text, HTML
parts as source text, attachments with their detected type. Pure; never raises.

Nothing here renders HTML: the templates escape every string they print.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass

from apiguard.attachments import sniff
from apiguard.mail import ParsedMessage, decode_text, parse_message

# Enough of a body to judge it; the rest is cut with a visible mark.
MAX_TEXT = 200_000
MAX_HTML_PARTS = 5


@dataclass(frozen=True, slots=True)
class AttachmentView:
    index: int
    filename: str
    declared_type: str
    detected_type: str
    size: int


@dataclass(frozen=True, slots=True)
class MessageView:
    headers: tuple[tuple[str, str], ...]
    subject: str
    text: str
    text_truncated: bool
    html_sources: tuple[str, ...]
    html_only: bool
    attachments: tuple[AttachmentView, ...]
    defects: tuple[str, ...]


def detected_type(content: bytes, extension: str, declared_type: str) -> str:
    """The type judged from the bytes by the charter's own sniffer."""
    try:
        return sniff(content, extension, declared_type)
    except Exception:  # display must go on whatever the sniffer trips on
        return "unknown"


def html_sources(raw: bytes) -> tuple[str, ...]:
    """The decoded source of the inline text/html parts, to show as text."""
    try:
        parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
        sources: list[str] = []
        for part in parsed.walk():
            if part.get_content_type() != "text/html":
                continue
            if (part.get("Content-Disposition") or "").lower().startswith("attachment"):
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            text, _ = decode_text(payload[:MAX_TEXT], part.get_content_charset())
            sources.append(text)
            if len(sources) >= MAX_HTML_PARTS:
                break
        return tuple(sources)
    except Exception:
        return ()


def message_view(raw: bytes) -> MessageView:
    parsed: ParsedMessage = parse_message(raw)
    attachments = tuple(
        AttachmentView(
            index=i,
            filename=a.filename or "",
            declared_type=a.declared_type,
            detected_type=detected_type(a.content, a.extension, a.declared_type),
            size=a.size,
        )
        for i, a in enumerate(parsed.attachments)
    )
    return MessageView(
        headers=parsed.headers,
        subject=parsed.subject,
        text=parsed.text[:MAX_TEXT],
        text_truncated=len(parsed.text) > MAX_TEXT,
        html_sources=html_sources(raw),
        html_only=parsed.html_only,
        attachments=attachments,
        defects=parsed.defects,
    )


def attachment_content(raw: bytes, index: int) -> tuple[str, bytes] | None:
    """(file name, bytes) of attachment `index`, for an explicit download."""
    attachments = parse_message(raw).attachments
    if not 0 <= index < len(attachments):
        return None
    chosen = attachments[index]
    return chosen.filename or f"piece-jointe-{index + 1}", chosen.content
