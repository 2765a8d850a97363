"""8-bit content for a relay that does not offer 8BITMIME (RFC 6152 §3).

Such a relay may only be sent 7-bit data. As Postfix does (its
`mime_state` downgrade), each body part with 8-bit octets is encoded, losslessly:
a text/* part in quoted-printable, any other in base64, and its
Content-Transfer-Encoding header changed to say so; multipart/* and
message/rfc822 entities are walked into, and an 8bit composite's encoding
becomes 7bit once its parts are. Nothing else changes: the other bytes of
the message, headers included, are passed through as they are, and a 7-bit
message is returned untouched (same object). HPRIM letters are often Latin-1
text without MIME headers: the body is then a text part (RFC 2045's
default) and gets `MIME-Version: 1.0` with its new encoding header, without
which a reader would not decode it.

8-bit octets in a header cannot be encoded without changing what the header
says (RFC 2047 words are a different text): they are left, as Postfix leaves
them.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import re
from dataclasses import dataclass

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)
# A body with 8-bit octets and one of these encodings is malformed; it is
# sent as it is (encoding it again would change what it says).
_ENCODED = frozenset({"quoted-printable", "base64"})


def seven_bit(message: bytes) -> bytes:
    """`message` with its 8-bit body parts encoded (see the module's text);
    `message` itself when it is 7-bit already."""
    if message.isascii():
        return message
    if message.count(b"\n") != message.count(b"\r\n") or message.count(b"\r") != message.count(
        b"\r\n"
    ):
        message = _LINE_ENDS.sub(b"\r\n", message)
    return _entity(message, top=True)


@dataclass(frozen=True, slots=True)
class _Head:
    """An entity's header block, as bytes, and what it says about the body."""

    raw: bytes  # the header lines joined by CRLF, without the empty line
    content_type: str
    boundary: bytes | None
    encoding: str
    has_mime_version: bool

    @classmethod
    def read(cls, raw: bytes) -> _Head:
        fields = _PARSER.parsebytes(raw + b"\r\n\r\n")
        boundary = fields.get_boundary()
        return cls(
            raw,
            fields.get_content_type(),
            boundary.encode("ascii", "surrogateescape") if boundary else None,
            str(fields.get("content-transfer-encoding", "7bit")).strip().lower(),
            "mime-version" in fields,
        )


def _entity(entity: bytes, *, top: bool = False) -> bytes:
    """One MIME entity (a message or a body part), converted."""
    if entity.startswith(b"\r\n"):
        raw_head, body = b"", entity[2:]
    else:
        raw_head, separator, body = entity.partition(b"\r\n\r\n")
        if not separator:
            return entity  # no body: nothing to encode
    if body.isascii():
        return entity
    head = _Head.read(raw_head)
    if head.content_type.startswith("multipart/") and head.boundary:
        new_body = _multipart(body, head.boundary)
        raw = _composite_encoding(head, new_body)
    elif head.content_type == "message/rfc822":
        new_body = _entity(body)
        raw = _composite_encoding(head, new_body)
    elif head.encoding in _ENCODED:
        return entity
    else:
        if head.content_type.startswith("text/"):
            new_body, name = quoted_printable(body), b"quoted-printable"
        else:
            new_body, name = base64_lines(body), b"base64"
        raw = set_field(head.raw, b"Content-Transfer-Encoding", name)
        if top and not head.has_mime_version:
            raw = set_field(raw, b"MIME-Version", b"1.0")
    return raw + b"\r\n\r\n" + new_body if raw else b"\r\n" + new_body


def _composite_encoding(head: _Head, new_body: bytes) -> bytes:
    """A multipart or message entity's header: "8bit" (or "binary") becomes
    "7bit" when its content is 7-bit now (RFC 2045 §6.4)."""
    if head.encoding in ("8bit", "binary") and new_body.isascii():
        return set_field(head.raw, b"Content-Transfer-Encoding", b"7bit")
    return head.raw


def _multipart(body: bytes, boundary: bytes) -> bytes:
    """The parts between the boundary lines converted; the preamble, the
    delimiters and the epilogue unchanged (RFC 2046 §5.1.1: the CRLF before a
    delimiter belongs to it)."""
    delimiter = re.compile(
        rb"(?:^|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r\n|$)", re.DOTALL
    )
    pieces: list[bytes] = []
    done = 0  # what is copied already
    start = -1  # where the current part starts, once a delimiter was seen
    for match in delimiter.finditer(body):
        if start >= 0 and match.start() >= start:
            pieces += [body[done:start], _entity(body[start : match.start()])]
            done = match.start()
        if match.group(1):  # the close delimiter: the epilogue follows
            break
        start = match.end() + 2  # after the delimiter line's CRLF
    pieces.append(body[done:])
    return b"".join(pieces)


def set_field(raw_head: bytes, name: bytes, value: bytes) -> bytes:
    """The header block with field `name` (and its folded lines) replaced by
    `name: value`, or the field added at the end when it is not there."""
    lines = raw_head.split(b"\r\n") if raw_head else []
    wanted = name.lower() + b":"
    new_line = name + b": " + value
    for index, line in enumerate(lines):
        if line.lower().replace(b" ", b"").replace(b"\t", b"").startswith(wanted):
            end = index + 1
            while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
                end += 1
            lines[index:end] = [new_line]
            return b"\r\n".join(lines)
    return b"\r\n".join([*lines, new_line])


def quoted_printable(body: bytes) -> bytes:
    """`body` (CRLF line ends) in quoted-printable, lines of at most 76
    characters; decoding it gives `body` back. (With a CRLF to see, the
    encoder breaks lines with CRLF, not with its default LF.)"""
    encoded = binascii.b2a_qp(body + b"\r\n", quotetabs=False, istext=True, header=False)
    return encoded.removesuffix(b"\r\n")


def base64_lines(body: bytes) -> bytes:
    """`body` in base64, 76 characters a line, CRLF line ends."""
    return base64.encodebytes(body).replace(b"\n", b"\r\n")
