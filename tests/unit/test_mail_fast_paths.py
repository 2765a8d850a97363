"""The parser's fast paths give exactly what the stdlib gives.

`_parse_mime` hides runs of base64 lines from the stdlib parser and puts them
back, and parses only the header section of a message that is neither
multipart nor message/*; `_valid_base64_payload` decodes with a SIMD decoder;
`decode_header_value` skips the RFC 2047 decoder for plain one-line values.
All must be invisible: same tree, headers, payloads, preambles, epilogues,
defects and decoded bytes as `BytesParser(policy=compat32)` and
`get_payload(decode=True)`, whatever the line widths, line ends or damage.
"""

from __future__ import annotations

import base64
import binascii
import email.feedparser
import email.header
import email.message
import email.parser
import email.policy
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.mail import (
    _PARSER_BLANK,
    _PARSER_HEADER,
    _base64_runs,
    _parse_mime,
    _parse_single_part,
    _unfold,
    _valid_base64_payload,
    decode_header_value,
    parse_message,
)


def _shape(message: email.message.Message) -> list[object]:
    shape: list[object] = []
    for part in message.walk():
        payload = part._payload  # the parser's own string (or list of parts)
        shape.append(
            (
                part.get_content_type(),
                part.items(),
                payload if isinstance(payload, str) else len(payload),
                part.preamble,
                part.epilogue,
                [type(defect).__name__ for defect in part.defects],
            )
        )
    return shape


def _stdlib(raw: bytes) -> email.message.Message:
    return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)


@dataclass(frozen=True)
class Shape:
    """How a letter with a base64 attachment is laid out, and damaged."""

    width: int = 76  # of the base64 lines
    eol: bytes = b"\r\n"
    damage: tuple[tuple[float, bytes], ...] = ()  # (where in the body, what replaces a byte)
    blank_lines: int = 0  # more blank lines before the body
    trailer: bytes = b""  # after the body, before the boundary
    nested: bool = False  # the attachment in a nested multipart


def _message(payload: bytes, shape: Shape) -> bytes:
    width, eol = shape.width, shape.eol
    encoded = base64.b64encode(payload)
    body = b"".join(encoded[i : i + width] + eol for i in range(0, len(encoded), width))
    body = bytearray(body)
    for where, what in shape.damage:
        index = int(where * len(body))
        body[index : index + 1] = what
    text = ("Compte rendu de consultation, ligne de texte numéro {}." + "\n").format
    letter = "".join(text(n) for n in range(40)).replace("\n", eol.decode()).encode("latin-1")
    part = (
        eol.join(
            [
                b"--B1",
                b"Content-Type: application/pdf; name=cr.pdf",
                b"Content-Transfer-Encoding: base64",
                b"",
                b"",
            ]
        )
        + eol * shape.blank_lines
        + bytes(body)
        + shape.trailer
    )
    if shape.nested:
        part = (
            b"--B1"
            + eol
            + b'Content-Type: multipart/mixed; boundary="B2"'
            + eol
            + eol
            + part.replace(b"--B1", b"--B2")
            + b"--B2--"
            + eol
        )
    head = [
        b"From: a@b.fr",
        b"Subject: x",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="B1"',
        b"",
        b"preamble",
        b"--B1",
        b"Content-Type: text/plain; charset=latin-1",
        b"",
        b"",
    ]
    return eol.join(head) + letter + part + b"--B1--" + eol + b"epilogue" + eol


_DAMAGE = st.sampled_from(
    [b"-", b"\r", b"\n", b" ", b":", b"=", b"\x00", b"\xe9", b"--B1\r\n", b"\r\n\r\n", b""]
)


_SHAPES = st.builds(
    Shape,
    width=st.sampled_from([4, 8, 60, 64, 72, 76, 77, 100, 999, 1_200]),
    eol=st.sampled_from([b"\r\n", b"\n"]),
    damage=st.lists(st.tuples(st.floats(0, 0.999), _DAMAGE), max_size=3).map(tuple),
    blank_lines=st.integers(0, 2),
    trailer=st.sampled_from([b"", b"\r\n", b"\n", b"AAAA\r\n", b"AAA=\n", b"-- \r\n"]),
    nested=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(min_value=9_000, max_value=40_000), shape=_SHAPES, seed=st.integers(0, 2**16)
)
def test_the_fast_parse_is_the_stdlib_parse(size: int, shape: Shape, seed: int) -> None:
    raw = _message(random.Random(seed).randbytes(size), shape)
    fast, slow = _parse_mime(raw), _stdlib(raw)
    assert _shape(fast) == _shape(slow)
    for ours, theirs in zip(fast.walk(), slow.walk(), strict=True):
        if not ours.is_multipart():
            assert (_valid_base64_payload(ours) or ours.get_payload(decode=True)) == (
                theirs.get_payload(decode=True)
            )


def test_a_usual_attachment_is_found_as_one_run_in_both_line_end_styles() -> None:
    payload = random.Random(1).randbytes(150_000)
    for eol in (b"\r\n", b"\n"):
        raw = _message(payload, Shape(eol=eol))
        runs = list(_base64_runs(raw))
        assert len(runs) == 1
        start, end = runs[0]
        assert raw[start:end] == b"".join(line + eol for line in raw[start:end].split(eol)[:-1]), (
            "whole lines"
        )
        encoded = base64.b64encode(payload)
        assert raw[start:end].replace(eol, b"") == encoded  # the last, shorter line too
        assert parse_message(raw).attachments[0].content == payload


def test_a_damaged_run_is_left_to_the_exact_scan() -> None:
    raw = _message(random.Random(2).randbytes(60_000), Shape(damage=((0.5, b"-"),)))
    runs = list(_base64_runs(raw))
    # The exact scan stops at the damaged line: the run before it is still hidden.
    assert runs
    assert all(b"-" not in raw[start:end] for start, end in runs)
    assert _shape(_parse_mime(raw)) == _shape(_stdlib(raw))


def _strict_binascii(data: bytes) -> bytes | None:
    """What `_valid_base64_payload` gave before the SIMD decoder."""
    if not data or any(byte > 127 for byte in data):
        return None
    data = data.translate(None, b"\r\n")
    if len(data) % 4:
        return None
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


_BASE64_ISH = st.lists(
    st.sampled_from([b"A", b"z", b"0", b"+", b"/", b"=", b"==", b"\r\n", b"-", b"\xe9", b" "]),
    max_size=40,
).map(b"".join)


@settings(max_examples=3_000)
@given(st.binary(max_size=64).map(base64.b64encode) | _BASE64_ISH | st.binary(max_size=64))
def test_the_simd_decoder_agrees_with_strict_binascii(data: bytes) -> None:
    message = email.message.Message()
    message["Content-Transfer-Encoding"] = "base64"
    message.set_payload(data.decode("latin-1"))
    assert _valid_base64_payload(message) == _strict_binascii(data)


def test_a_whole_quad_of_padding_is_still_accepted_as_binascii_does() -> None:
    message = email.message.Message()
    message["Content-Transfer-Encoding"] = "base64"
    message.set_payload("RuWQ====")
    assert _valid_base64_payload(message) == b"F\xe5\x90"


# -- messages that are neither multipart nor message/* --------------------------

_HEADER_LINES = st.sampled_from(
    [
        "Subject: Compte rendu",
        "From: a@b.fr",
        "From a@b.fr Thu Nov 26 10:00:00 2026",  # a Unix "From " line
        "Content-Type: text/plain; charset=utf-8",
        "Content-Type: text/html",
        "Content-Type: application/pdf",
        "Content-Type: multipart/mixed; boundary=B",
        "Content-Type: multipart/mixed",
        "Content-Type: message/rfc822",
        "Content-Type: message/delivery-status",
        "Content-Type: text/plain; boundary=B",
        "Content-Type: ???",
        "Content-Transfer-Encoding: base64",
        " continued",  # a continuation line
        "\tcontinued",
        ":empty name",
        "X-Odd:",
        "not a header",
        "--B",
        "",
    ]
)
_BODY_LINES = st.sampled_from(
    ["Cher confrère,", "", "--B", "--B--", "Subject: not a header here", "é\udce9", " ", "."]
)


@settings(max_examples=2_000, deadline=None)
@given(
    head=st.lists(_HEADER_LINES, max_size=8),
    body=st.lists(_BODY_LINES, max_size=6),
    eol=st.sampled_from(["\r\n", "\n", "\r"]),
    odd_eols=st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["\r\n", "\n", "\r"]))),
    ending=st.sampled_from(["", "\n", "\r\n", "\r"]),
)
def test_a_single_part_message_parses_as_the_stdlib_parses_it(
    head: list[str], body: list[str], eol: str, odd_eols: list[tuple[int, str]], ending: str
) -> None:
    lines = [*head, *body]
    ends = [eol] * len(lines)
    for index, other in odd_eols:  # mixed line ends
        if index < len(ends):
            ends[index] = other
    text = "".join(line + end for line, end in zip(lines, ends, strict=True))
    raw = (text[: -len(eol)] + ending if lines and not ending.startswith(eol) else text).encode(
        "utf-8", "surrogateescape"
    )
    assert _shape(_parse_mime(raw)) == _shape(_stdlib(raw))
    single = _parse_single_part(raw)
    if single is not None:  # when it answers, it answers what the stdlib does
        assert _shape(single) == _shape(_stdlib(raw))
        assert single.get_unixfrom() == _stdlib(raw).get_unixfrom()


def test_the_header_section_is_found_with_the_stdlib_parser_s_own_tests() -> None:
    assert _PARSER_HEADER.pattern == email.feedparser.headerRE.pattern  # type: ignore[attr-defined]
    assert _PARSER_BLANK.pattern == email.feedparser.NLCRE.pattern  # type: ignore[attr-defined]


def test_a_plain_letter_takes_the_single_part_path_and_a_multipart_one_does_not() -> None:
    letter = b"Subject: x\r\nContent-Type: text/plain\r\n\r\nCher confr\xc3\xa8re,\r\n"
    parsed = _parse_single_part(letter)
    assert parsed is not None
    assert parsed._payload == "Cher confr\udcc3\udca8re,\r\n"  # the parser's own string
    multipart = _message(b"%PDF", Shape())
    assert _parse_single_part(multipart) is None
    no_blank_line = b"Subject: x\r\nnot a header\r\nbody\r\n"
    assert _parse_single_part(no_blank_line) is None
    assert _shape(_parse_mime(no_blank_line)) == _shape(_stdlib(no_blank_line))


@settings(max_examples=2_000)
@given(st.text(st.sampled_from(list('ab é=?\t\x0b\u2028\u00a0\udce9,<>"()')) | st.characters()))
def test_a_plain_header_value_decodes_as_the_rfc_2047_decoder_reads_it(value: str) -> None:
    if "=?" in value or "\n" in value or "\r" in value:
        return
    # What the RFC 2047 path gives for a value without an encoded word.
    if not (not value.isascii() and any("\udc80" <= c <= "\udcff" for c in value)):
        assert email.header.decode_header(value) == [(value, None)]
        assert decode_header_value(value) == _unfold(value)
