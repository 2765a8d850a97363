"""8-bit parts encoded for a relay without 8BITMIME: lossless, 7-bit, and
nothing else in the message changed."""

from __future__ import annotations

import binascii
import email
import email.message
import email.policy
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apiguard.relay.eightbit import base64_lines, quoted_printable, set_field, seven_bit

HEAD = (
    b"From: dr.martin@medical13.apicrypt.org\r\n"
    b"To: dr.durand@medical69.apicrypt.org\r\n"
    b"Subject: Compte rendu\r\n"
)
LATIN1_TEXT = b"Cher confr\xe8re,\r\n.         dr.martin\r\nbilan \xe0 l'effort \r\n"


def parsed(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def test_a_7bit_message_is_returned_as_it_is() -> None:
    raw = HEAD + b"MIME-Version: 1.0\r\n\r\nBonjour.\r\n"
    assert seven_bit(raw) is raw


def test_an_8bit_text_part_becomes_quoted_printable_and_nothing_else_changes() -> None:
    head = (
        HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\nX-After: kept\r\n"
    )
    converted = seven_bit(head + b"\r\n" + LATIN1_TEXT)
    assert converted.isascii()
    assert converted == (
        head.replace(b"8bit", b"quoted-printable")
        + b"\r\nCher confr=E8re,\r\n.         dr.martin\r\nbilan =E0 l'effort=20\r\n"
    )
    assert parsed(converted).get_payload(decode=True) == LATIN1_TEXT


def test_a_letter_without_mime_headers_is_declared_mime_to_be_decoded() -> None:
    """HPRIM letters written by practice software: Latin-1, no MIME at all."""
    converted = seven_bit(HEAD + b"\r\n" + LATIN1_TEXT)
    assert converted.startswith(
        HEAD + b"Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\n"
    )
    assert parsed(converted).get_payload(decode=True) == LATIN1_TEXT


def test_multipart_parts_are_converted_one_by_one_and_the_rest_kept() -> None:
    pdf = b"%PDF-1.4 \x00\xff\xfe binary\r\n"
    raw = (
        HEAD + b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="==b=="\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"preamble\r\n"
        b"--==b==\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + LATIN1_TEXT + b"\r\n"
        b"--==b==\r\nContent-Type: text/plain\r\n\r\nascii part\r\n"
        b"--==b==\r\nContent-Type: application/pdf\r\n\r\n" + pdf + b"\r\n"
        b"--==b==--\r\nepilogue\r\n"
    )
    converted = seven_bit(raw)
    assert converted.isascii()
    message = parsed(converted)
    assert message["Content-Transfer-Encoding"] == "7bit"
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert [p.get_payload(decode=True) for p in parts] == [LATIN1_TEXT, b"ascii part", pdf]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", None, "base64"]
    assert b"preamble\r\n--==b==\r\n" in converted
    assert converted.endswith(
        b"\r\n--==b==\r\nContent-Type: text/plain\r\n\r\nascii part\r\n"
        b"--==b==\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64_lines(pdf)
        + b"\r\n--==b==--\r\nepilogue\r\n"
    )


def test_a_forwarded_message_inside_is_converted_too() -> None:
    inner = HEAD + b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\n" + LATIN1_TEXT
    raw = HEAD + b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + inner
    converted = seven_bit(raw)
    assert converted.isascii()
    embedded = parsed(converted).get_payload()
    assert isinstance(embedded, list)
    assert embedded[0].get_payload(decode=True) == LATIN1_TEXT


def test_8bit_headers_and_already_encoded_bodies_are_left_as_they_are() -> None:
    raw = (
        b"Subject: compte rendu d\xc3\xa9taill\xc3\xa9\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nnot really base64 \xe9\r\n"
    )
    assert seven_bit(raw) == raw


def test_set_field_replaces_a_folded_field_whole() -> None:
    head = b"A: 1\r\nContent-Transfer-Encoding:\r\n 8bit\r\nB: 2"
    assert set_field(head, b"Content-Transfer-Encoding", b"7bit") == (
        b"A: 1\r\nContent-Transfer-Encoding: 7bit\r\nB: 2"
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))))
def test_quoted_printable_is_lossless_7bit_and_76_wide(lines: list[bytes]) -> None:
    body = b"\r\n".join(lines)
    encoded = quoted_printable(body)
    assert encoded.isascii()
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert binascii.a2b_qp(encoded) == body


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=5))
def test_every_8bit_part_decodes_to_its_bytes(bodies: list[bytes]) -> None:
    """Whatever the bytes; line ends are CRLF in mail (a bare CR or LF is sent
    as a CRLF in any case, see `apiguard.relay.smtp.wire_form`)."""
    assume(b"--b" not in b"".join(bodies))  # else not a valid message
    assume(not b"".join(bodies).isascii())  # a 7-bit one is left as it is
    parts = b"".join(
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\n" + body + b"\r\n" for body in bodies
    )
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n"
    converted = seven_bit(raw)
    assert converted.isascii()
    payload = parsed(converted).get_payload()
    assert isinstance(payload, list)
    line_ends = re.compile(rb"\r\n|\r|\n")
    assert [p.get_payload(decode=True) for p in payload] == [
        line_ends.sub(b"\r\n", body) for body in bodies
    ]
